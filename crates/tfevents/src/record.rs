//! Record framing of TFRecord / event files, and the masked CRC-32C that guards it.
//!
//! A record is `u64 LE length`, `u32 LE masked_crc32c(length bytes)`, `length` bytes of data,
//! `u32 LE masked_crc32c(data)`. This module owns the bytes of that frame and nothing else: it
//! knows no protobuf and does no I/O.

/// Bytes before a record's data: the length and its masked CRC.
pub const HEADER_LEN: usize = 12;
/// Bytes after a record's data: the data's masked CRC.
pub const FOOTER_LEN: usize = 4;
/// Largest data length a reader accepts (2 GiB, protobuf's own limit on a message). A length
/// field above it is reported as corrupt rather than trusted for an allocation.
pub const MAX_DATA_LEN: u64 = 1 << 31;

const MASK_DELTA: u32 = 0xA282_EAD8;

/// The masked CRC-32C (Castagnoli) of `data`, as stored in record frames:
/// `((c >> 15) | (c << 17)) + 0xA282EAD8` (mod 2³²).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

/// Masks a CRC-32C value the way record frames store it.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Inverse of [`mask`]: the plain CRC-32C of a stored, masked value.
pub fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

/// Appends one framed record holding `data` to `out`.
pub fn append_record(data: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.extend_from_slice(data);
    finish_record(out, start);
}

/// Completes a record whose frame starts at `start` in `buf`: `buf[start..start + HEADER_LEN]`
/// is reserved for the header and everything after it is the data. Fills in the header and
/// appends the footer. Lets a caller encode straight into the output buffer, without a copy.
pub fn finish_record(buf: &mut Vec<u8>, start: usize) {
    let data_start = start + HEADER_LEN;
    let data_len = buf.len().saturating_sub(data_start) as u64;
    let length = data_len.to_le_bytes();
    let data_crc = masked_crc32c(buf.get(data_start..).unwrap_or_default());
    if let Some(header) = buf.get_mut(start..data_start) {
        header[..8].copy_from_slice(&length);
        header[8..].copy_from_slice(&masked_crc32c(&length).to_le_bytes());
    }
    buf.extend_from_slice(&data_crc.to_le_bytes());
}

/// A record header that failed its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The stored CRC of the length does not match the length.
    Crc {
        /// Masked CRC stored in the file.
        stored: u32,
        /// Masked CRC computed from the length bytes.
        computed: u32,
    },
    /// The length is above [`MAX_DATA_LEN`].
    TooLong {
        /// The length stored in the file.
        length: u64,
    },
}

/// Checks a record header and returns the data length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<u64, HeaderError> {
    let (length_bytes, crc_bytes) = header.split_at(8);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = masked_crc32c(length_bytes);
    if stored != computed {
        return Err(HeaderError::Crc { stored, computed });
    }
    let mut le = [0u8; 8];
    le.copy_from_slice(length_bytes);
    let length = u64::from_le_bytes(le);
    if length > MAX_DATA_LEN {
        return Err(HeaderError::TooLong { length });
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors of the reference notes (docs/reference: TensorBoard event files).
    #[test]
    fn golden_length_crc() {
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn golden_file_version_record_crc() {
        let mut data = vec![
            0x09, 0x00, 0x00, 0x80, 0x38, 0x99, 0xd6, 0xd7, 0x41, 0x1a, 0x0d,
        ];
        data.extend_from_slice(b"brain.Event:2");
        assert_eq!(data.len(), 24);
        assert_eq!(masked_crc32c(&data), 0xab36_4b12);
    }

    #[test]
    fn golden_crc_test_string() {
        assert_eq!(masked_crc32c(b"\x1a\x11CRC test, one two"), 0x5794_d08a);
    }

    #[test]
    fn golden_record_frame() {
        let mut data = vec![
            0x09, 0x00, 0x00, 0x80, 0x38, 0x99, 0xd6, 0xd7, 0x41, 0x1a, 0x0d,
        ];
        data.extend_from_slice(b"brain.Event:2");
        let mut out = Vec::new();
        append_record(&data, &mut out);
        assert_eq!(out.len(), HEADER_LEN + 24 + FOOTER_LEN);
        assert_eq!(&out[..8], &24u64.to_le_bytes());
        assert_eq!(&out[8..12], &0x224b_7fa3u32.to_le_bytes());
        assert_eq!(&out[12..36], &data[..]);
        assert_eq!(&out[36..], &0xab36_4b12u32.to_le_bytes());
    }

    #[test]
    fn mask_round_trips() {
        for crc in [0u32, 1, 0xdead_beef, u32::MAX, 0x8000_0000] {
            assert_eq!(unmask(mask(crc)), crc);
        }
    }

    #[test]
    fn header_checks() {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&24u64.to_le_bytes());
        header[8..].copy_from_slice(&0x224b_7fa3u32.to_le_bytes());
        assert_eq!(parse_header(&header), Ok(24));
        header[0] = 25;
        assert!(matches!(
            parse_header(&header),
            Err(HeaderError::Crc {
                stored: 0x224b_7fa3,
                ..
            })
        ));
        let huge = (MAX_DATA_LEN + 1).to_le_bytes();
        header[..8].copy_from_slice(&huge);
        header[8..].copy_from_slice(&masked_crc32c(&huge).to_le_bytes());
        assert_eq!(
            parse_header(&header),
            Err(HeaderError::TooLong {
                length: MAX_DATA_LEN + 1
            })
        );
    }
}
