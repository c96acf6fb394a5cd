//! The zip archives `torch.save` writes (stored entries, ZIP64 end records, 64-byte-aligned data
//! relative to the archive's start), read from a byte slice and written to a buffer.
//!
//! Reading takes the archive as a slice: a `.distcp` item must be cut out of its file by the
//! metadata's (offset, length) *before* it gets here (opening the whole file would find another
//! item's central directory). Only stored (method 0) entries are accepted; every entry's CRC-32 is
//! checked when it is read; every offset and size is checked against the slice. Data is returned
//! as sub-slices: callers copy values out with `from_le_bytes`, never by casting (an item's
//! absolute offset in its file is not aligned).

/// Why an archive was refused.
pub type ZipError = String;

/// One entry of an archive: its name and where its bytes are in the slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// The entry's full name, e.g. `archive/data.pkl`.
    pub name: String,
    /// Byte offset of the data in the archive slice.
    pub start: usize,
    /// Byte length of the data.
    pub len: usize,
    /// The CRC-32 the central directory records.
    pub crc32: u32,
}

/// An archive's entries, in central-directory order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipIndex {
    /// The entries.
    pub entries: Vec<ZipEntry>,
}

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
/// Most entries an archive may list (torch writes 6 plus one per storage).
const MAX_ENTRIES: u64 = 1 << 20;

fn u16_at(data: &[u8], at: usize) -> Result<u16, ZipError> {
    let b = data
        .get(at..at.checked_add(2).ok_or("offset overflow")?)
        .ok_or_else(|| format!("truncated at byte {at}"))?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ZipError> {
    let b = data
        .get(at..at.checked_add(4).ok_or("offset overflow")?)
        .ok_or_else(|| format!("truncated at byte {at}"))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, ZipError> {
    let lo = u64::from(u32_at(data, at)?);
    let hi = u64::from(u32_at(data, at + 4)?);
    Ok(lo | (hi << 32))
}

fn to_usize(v: u64, what: &str) -> Result<usize, ZipError> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory"))
}

/// Reads the central directory of the archive `data` (which must start with a local header).
pub fn read_index(data: &[u8]) -> Result<ZipIndex, ZipError> {
    if data.len() < 4 || u32_at(data, 0)? != LOCAL {
        return Err("does not start with a zip local header (PK\\x03\\x04)".into());
    }
    let eocd = find_eocd(data)?;
    let mut count = u64::from(u16_at(data, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(data, eocd + 12)?);
    let mut cd_offset = u64::from(u32_at(data, eocd + 16)?);
    if eocd >= 20 && u32_at(data, eocd - 20)? == LOCATOR64 {
        let at = to_usize(u64_at(data, eocd - 20 + 8)?, "ZIP64 record offset")?;
        if u32_at(data, at)? != EOCD64 {
            return Err("the ZIP64 locator does not point at a ZIP64 end record".into());
        }
        count = u64_at(data, at + 32)?;
        cd_size = u64_at(data, at + 40)?;
        cd_offset = u64_at(data, at + 48)?;
    }
    if count > MAX_ENTRIES {
        return Err(format!("{count} entries is more than {MAX_ENTRIES}"));
    }
    let cd_start = to_usize(cd_offset, "central directory offset")?;
    let cd_end = cd_start
        .checked_add(to_usize(cd_size, "central directory size")?)
        .filter(|&end| end <= data.len())
        .ok_or("the central directory lies outside the archive")?;
    let mut entries = Vec::new();
    let mut at = cd_start;
    for _ in 0..count {
        if at >= cd_end {
            return Err(
                "the central directory holds fewer entries than its end record says".into(),
            );
        }
        let (entry, next) = central_entry(data, at)?;
        entries.push(entry);
        at = next;
    }
    Ok(ZipIndex { entries })
}

/// The offset of the end-of-central-directory record, searched from the end.
fn find_eocd(data: &[u8]) -> Result<usize, ZipError> {
    let lowest = data.len().saturating_sub(22 + 0xffff);
    let mut at = data
        .len()
        .checked_sub(22)
        .ok_or("too short for a zip archive")?;
    loop {
        if u32_at(data, at)? == EOCD {
            return Ok(at);
        }
        if at == lowest {
            return Err("no end-of-central-directory record (not a whole zip archive)".into());
        }
        at -= 1;
    }
}

/// Parses the central-directory entry at `at`; returns it and the next entry's offset.
fn central_entry(data: &[u8], at: usize) -> Result<(ZipEntry, usize), ZipError> {
    if u32_at(data, at)? != CENTRAL {
        return Err(format!("no central directory entry at byte {at}"));
    }
    let method = u16_at(data, at + 10)?;
    let crc32 = u32_at(data, at + 16)?;
    let mut csize = u64::from(u32_at(data, at + 20)?);
    let mut usize_ = u64::from(u32_at(data, at + 24)?);
    let name_len = usize::from(u16_at(data, at + 28)?);
    let extra_len = usize::from(u16_at(data, at + 30)?);
    let comment_len = usize::from(u16_at(data, at + 32)?);
    let mut local = u64::from(u32_at(data, at + 42)?);
    let name_start = at + 46;
    let name = data
        .get(name_start..name_start + name_len)
        .ok_or("an entry name runs past the archive")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| "an entry name is not UTF-8")?;
    let extra = data
        .get(name_start + name_len..name_start + name_len + extra_len)
        .ok_or("an entry's extra field runs past the archive")?;
    zip64_extra(extra, &mut usize_, &mut csize, &mut local)?;
    if method != 0 {
        return Err(format!(
            "entry {name:?} is compressed (method {method}); torch.save stores entries uncompressed"
        ));
    }
    if csize != usize_ {
        return Err(format!(
            "entry {name:?}: stored sizes differ ({csize} vs {usize_})"
        ));
    }
    let local = to_usize(local, "local header offset")?;
    if u32_at(data, local)? != LOCAL {
        return Err(format!("entry {name:?}: no local header at byte {local}"));
    }
    let start = local
        + 30
        + usize::from(u16_at(data, local + 26)?)
        + usize::from(u16_at(data, local + 28)?);
    let len = to_usize(usize_, "entry size")?;
    if start.checked_add(len).is_none_or(|end| end > data.len()) {
        return Err(format!("entry {name:?}: its data runs past the archive"));
    }
    let next = name_start + name_len + extra_len + comment_len;
    Ok((
        ZipEntry {
            name,
            start,
            len,
            crc32,
        },
        next,
    ))
}

/// Applies a ZIP64 extended-information extra field (id 1) to the fields saturated at 0xffffffff.
fn zip64_extra(
    extra: &[u8],
    usize_: &mut u64,
    csize: &mut u64,
    local: &mut u64,
) -> Result<(), ZipError> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = u16_at(extra, at)?;
        let len = usize::from(u16_at(extra, at + 2)?);
        let body = extra
            .get(at + 4..at + 4 + len)
            .ok_or("an extra field runs past its entry")?;
        if id == 1 {
            let mut off = 0;
            for field in [&mut *usize_, &mut *csize, &mut *local] {
                if *field == 0xffff_ffff {
                    *field = u64_at(body, off)?;
                    off += 8;
                }
            }
        }
        at += 4 + len;
    }
    Ok(())
}

impl ZipIndex {
    /// The entry whose name is `prefix/<suffix>` for the archive's one prefix (`archive/`, or the
    /// stem torch used), i.e. the entry whose name ends with `/<suffix>`.
    pub fn find(&self, suffix: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| {
            e.name
                .split_once('/')
                .is_some_and(|(_, rest)| rest == suffix)
        })
    }

    /// The data of `entry` in `data`, its CRC-32 checked.
    pub fn read<'d>(&self, data: &'d [u8], entry: &ZipEntry) -> Result<&'d [u8], ZipError> {
        let bytes = self.slice(data, entry)?;
        let actual = crc32(bytes);
        if actual != entry.crc32 {
            return Err(format!(
                "entry {:?}: CRC-32 mismatch (recorded {:#010x}, computed {actual:#010x})",
                entry.name, entry.crc32
            ));
        }
        Ok(bytes)
    }
}

impl ZipIndex {
    /// The data of `entry` in `data`, unchecked (its bounds only).
    pub fn slice<'d>(&self, data: &'d [u8], entry: &ZipEntry) -> Result<&'d [u8], ZipError> {
        data.get(entry.start..entry.start + entry.len)
            .ok_or_else(|| format!("entry {:?} runs past the archive", entry.name))
    }
}

/// The CRC-32 (IEEE, as zip uses) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Continues a CRC-32 over more bytes.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][usize::from(b[4])]
            ^ t[2][usize::from(b[5])]
            ^ t[1][usize::from(b[6])]
            ^ t[0][usize::from(b[7])];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Writes a `torch.save`-style archive: stored entries, each entry's data 64-byte aligned from the
/// archive's start (a `"FB"` padding extra field, as torch writes), ZIP64 end records.
#[derive(Debug, Default)]
pub struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u64,
}

impl ZipWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends entry `name` holding `data`.
    pub fn add(&mut self, name: &str, data: &[u8]) {
        let offset = self.out.len() as u64;
        let crc = crc32(data);
        let size = data.len() as u64;
        let big = size >= 0xffff_ffff || offset >= 0xffff_ffff;
        let mut extra = Vec::new();
        if big {
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
        }
        // Pad so that the data starts on a 64-byte boundary (an "FB" field, at least 4 bytes).
        let header_end = self.out.len() + 30 + name.len() + extra.len() + 4;
        let pad = (64 - header_end % 64) % 64;
        extra.extend_from_slice(&0x4246u16.to_le_bytes());
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.resize(extra.len() + pad, b'Z');
        let small = |v: u64| if big { 0xffff_ffff } else { v as u32 };
        let o = &mut self.out;
        o.extend_from_slice(&LOCAL.to_le_bytes());
        o.extend_from_slice(&[45, 0, 0, 8, 0, 0, 0, 0, 0, 0]);
        o.extend_from_slice(&crc.to_le_bytes());
        o.extend_from_slice(&small(size).to_le_bytes());
        o.extend_from_slice(&small(size).to_le_bytes());
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&extra);
        o.extend_from_slice(data);
        let mut cextra = Vec::new();
        let coff_big = offset >= 0xffff_ffff;
        if big || coff_big {
            let mut body = Vec::new();
            if big {
                body.extend_from_slice(&size.to_le_bytes());
                body.extend_from_slice(&size.to_le_bytes());
            }
            if coff_big {
                body.extend_from_slice(&offset.to_le_bytes());
            }
            cextra.extend_from_slice(&1u16.to_le_bytes());
            cextra.extend_from_slice(&(body.len() as u16).to_le_bytes());
            cextra.extend_from_slice(&body);
        }
        let c = &mut self.central;
        c.extend_from_slice(&CENTRAL.to_le_bytes());
        c.extend_from_slice(&[45, 3, 45, 0, 0, 8, 0, 0, 0, 0, 0, 0]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&small(size).to_le_bytes());
        c.extend_from_slice(&small(size).to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(cextra.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 6]);
        c.extend_from_slice(&0o100644u32.wrapping_shl(16).to_le_bytes());
        let loc = if coff_big { 0xffff_ffff } else { offset as u32 };
        c.extend_from_slice(&loc.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&cextra);
        self.count += 1;
    }

    /// Writes the central directory and the end records; returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        let cd_offset = self.out.len() as u64;
        let cd_size = self.central.len() as u64;
        self.out.extend_from_slice(&self.central);
        let eocd64 = self.out.len() as u64;
        let o = &mut self.out;
        o.extend_from_slice(&EOCD64.to_le_bytes());
        o.extend_from_slice(&44u64.to_le_bytes());
        o.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        o.extend_from_slice(&self.count.to_le_bytes());
        o.extend_from_slice(&self.count.to_le_bytes());
        o.extend_from_slice(&cd_size.to_le_bytes());
        o.extend_from_slice(&cd_offset.to_le_bytes());
        o.extend_from_slice(&LOCATOR64.to_le_bytes());
        o.extend_from_slice(&0u32.to_le_bytes());
        o.extend_from_slice(&eocd64.to_le_bytes());
        o.extend_from_slice(&1u32.to_le_bytes());
        o.extend_from_slice(&EOCD.to_le_bytes());
        o.extend_from_slice(&[0, 0, 0, 0]);
        let n = self.count.min(0xffff) as u16;
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&(cd_size.min(0xffff_ffff) as u32).to_le_bytes());
        o.extend_from_slice(&(cd_offset.min(0xffff_ffff) as u32).to_le_bytes());
        o.extend_from_slice(&[0, 0]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn written_archives_read_back_aligned() {
        let mut w = ZipWriter::new();
        w.add("archive/data.pkl", b"\x80\x02N.");
        w.add("archive/data/0", &[7u8; 100]);
        let bytes = w.finish();
        let index = read_index(&bytes).unwrap();
        assert_eq!(index.entries.len(), 2);
        let data = index.find("data/0").unwrap();
        assert_eq!(data.start % 64, 0);
        assert_eq!(index.read(&bytes, data).unwrap(), &[7u8; 100][..]);
        assert_eq!(
            index.read(&bytes, index.find("data.pkl").unwrap()).unwrap(),
            b"\x80\x02N."
        );
    }

    #[test]
    fn damage_is_refused_not_panicked() {
        let mut w = ZipWriter::new();
        w.add("archive/data/0", &[1u8; 70]);
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            let _ = read_index(&bytes[..cut]);
        }
        let mut flipped = bytes.clone();
        let at = read_index(&bytes).unwrap().entries[0].start;
        flipped[at] ^= 1;
        let index = read_index(&flipped).unwrap();
        assert!(
            index
                .read(&flipped, &index.entries[0])
                .unwrap_err()
                .contains("CRC-32")
        );
    }
}
