//! W&B's transaction-log framing (`wandb/sdk/internal/datastore.py`): a 7-byte header (`:W&B`,
//! u16 LE 0xBEE1, version 0), then LevelDB's log format in 32 KiB blocks counted from the start
//! of the file: each chunk is a u32 LE CRC-32 (IEEE, of the type byte then the payload), a u16
//! LE length and a type byte (FULL 1, FIRST 2, MIDDLE 3, LAST 4); fewer than 7 bytes left in a
//! block are zero padding. Pure: it appends to a byte buffer.
//!
//! It must not build the records it frames (`mod.rs` encodes them) nor touch the file: writing the
//! buffer out is `mod.rs`'s.

/// The file header.
pub(super) const HEADER: [u8; 7] = [b':', b'W', b'&', b'B', 0xE1, 0xBE, 0];
/// Bytes of a block.
pub(super) const BLOCK: usize = 32 * 1024;
/// Bytes of a chunk header.
const CHUNK_HEADER: usize = 7;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

/// Appends `data` as one record to `out`, which holds the file from its start (at `offset`
/// bytes into the file: `out` may hold only its unwritten tail). Returns the new offset.
pub(super) fn append_record(out: &mut Vec<u8>, mut offset: usize, data: &[u8]) -> usize {
    let mut left = BLOCK - offset % BLOCK;
    if left < CHUNK_HEADER {
        out.extend(std::iter::repeat_n(0u8, left));
        offset += left;
        left = BLOCK;
    }
    if data.len() + CHUNK_HEADER <= left {
        return chunk(out, offset, FULL, data);
    }
    let (first, mut rest) = data.split_at(left - CHUNK_HEADER);
    offset = chunk(out, offset, FIRST, first);
    while rest.len() > BLOCK - CHUNK_HEADER {
        let (middle, tail) = rest.split_at(BLOCK - CHUNK_HEADER);
        offset = chunk(out, offset, MIDDLE, middle);
        rest = tail;
    }
    chunk(out, offset, LAST, rest)
}

fn chunk(out: &mut Vec<u8>, offset: usize, kind: u8, data: &[u8]) -> usize {
    let mut crc = crc32_ieee(0, &[kind]);
    crc = crc32_ieee(crc, data);
    out.extend_from_slice(&crc.to_le_bytes());
    // A chunk never exceeds a block, so its length fits in 16 bits.
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(data);
    offset + CHUNK_HEADER + data.len()
}

/// CRC-32 (IEEE 802.3, zlib's `crc32`) of `data`, continuing from `crc`.
pub(super) fn crc32_ieee(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads records back the way datastore.py's `scan_data` does.
    fn scan(file: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(&file[..7], &HEADER);
        let mut at = 7;
        let mut out = Vec::new();
        let mut partial: Vec<u8> = Vec::new();
        while at < file.len() {
            let left = BLOCK - at % BLOCK;
            if left < CHUNK_HEADER {
                assert!(file[at..at + left].iter().all(|b| *b == 0));
                at += left;
                continue;
            }
            let crc = u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
            let len = usize::from(u16::from_le_bytes(file[at + 4..at + 6].try_into().unwrap()));
            let kind = file[at + 6];
            let data = &file[at + 7..at + 7 + len];
            assert_eq!(crc, crc32_ieee(crc32_ieee(0, &[kind]), data));
            assert!(len + CHUNK_HEADER <= left, "a chunk crosses a block");
            at += 7 + len;
            match kind {
                FULL => out.push(data.to_vec()),
                FIRST => partial = data.to_vec(),
                MIDDLE => partial.extend_from_slice(data),
                LAST => {
                    partial.extend_from_slice(data);
                    out.push(std::mem::take(&mut partial));
                }
                other => panic!("type {other}"),
            }
        }
        out
    }

    #[test]
    fn crc32_matches_zlib() {
        // zlib.crc32(b"123456789") and zlib.crc32(b"\x01") (datastore.py's seed for FULL).
        assert_eq!(crc32_ieee(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_ieee(0, &[1]), 0xA505_DF1B);
    }

    #[test]
    fn records_of_every_size_read_back() {
        // Sizes around the block and chunk boundaries, after a first record that leaves the
        // offset at various places.
        for lead in [0usize, 1, BLOCK - 7 - 7 - 3, BLOCK - 7 - 7, 100] {
            for size in [0usize, 1, 6, 7, BLOCK - 14, BLOCK - 7, BLOCK, 3 * BLOCK + 5] {
                let mut file = HEADER.to_vec();
                let mut offset = file.len();
                let a = vec![7u8; lead];
                let b: Vec<u8> = (0..size).map(|i| i as u8).collect();
                offset = append_record(&mut file, offset, &a);
                offset = append_record(&mut file, offset, &b);
                offset = append_record(&mut file, offset, b"end");
                assert_eq!(offset, file.len());
                assert_eq!(
                    scan(&file),
                    vec![a, b, b"end".to_vec()],
                    "lead {lead}, size {size}"
                );
            }
        }
    }
}
