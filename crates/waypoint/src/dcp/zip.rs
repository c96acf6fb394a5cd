//! The zip archives `torch.save` writes (stored entries, ZIP64 end records, 64-byte-aligned data
//! relative to the archive's start), indexed from a byte slice and written to a buffer, both
//! through the `zip` crate; CRC-32s through `crc32fast`.
//!
//! Reading takes the archive as a slice: a `.distcp` item must be cut out of its file by the
//! metadata's (offset, length) *before* it gets here (opening the whole file would find another
//! item's central directory). The `zip` crate parses the central directory (ZIP64 included) and
//! each local header; this module keeps only the entries' positions, so that data is returned as
//! sub-slices of the caller's buffer (no copy through `Read`; a contiguous tensor is moved in
//! place by `archive::read_tensor_owned`). Callers copy values out with `from_le_bytes`, never by
//! casting (an item's absolute offset in its file is not aligned). Only stored (method 0) entries
//! are accepted; every offset and size is checked against the slice; CRC-32 is checked on read.

use std::io::Cursor;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive};

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

/// Most entries an archive may list (torch writes 6 plus one per storage).
const MAX_ENTRIES: usize = 1 << 20;
/// torch's "FB" padding extra field id (`caffe2/serialize/inline_container.cc`).
const TORCH_PADDING_ID: u16 = 0x4246;
/// The alignment torch gives each entry's data, from the archive's start.
const TORCH_ALIGNMENT: u16 = 64;

/// Reads the central directory of the archive `data` (which must start with a local header).
pub fn read_index(data: &[u8]) -> Result<ZipIndex, ZipError> {
    if !data.starts_with(b"PK\x03\x04") {
        return Err("does not start with a zip local header (PK\\x03\\x04)".into());
    }
    let mut archive = ZipArchive::new(Cursor::new(data)).map_err(|e| format!("zip: {e}"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!(
            "{} entries is more than {MAX_ENTRIES}",
            archive.len()
        ));
    }
    let mut entries = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let file = archive
            .by_index_raw(i)
            .map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = file
            .name()
            .map_err(|e| format!("zip entry {i}: its name: {e}"))?
            .into_owned();
        if file.compression() != CompressionMethod::Stored {
            return Err(format!(
                "entry {name:?} is compressed ({}); torch.save stores entries uncompressed",
                file.compression()
            ));
        }
        if file.compressed_size() != file.size() {
            return Err(format!(
                "entry {name:?}: stored sizes differ ({} vs {})",
                file.compressed_size(),
                file.size()
            ));
        }
        let start = file
            .data_start()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| format!("entry {name:?}: its data offset is unknown"))?;
        let len = usize::try_from(file.size())
            .map_err(|_| format!("entry {name:?}: its size does not fit in memory"))?;
        if start.checked_add(len).is_none_or(|end| end > data.len()) {
            return Err(format!("entry {name:?}: its data runs past the archive"));
        }
        let crc32 = file.crc32();
        entries.push(ZipEntry {
            name,
            start,
            len,
            crc32,
        });
    }
    Ok(ZipIndex { entries })
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
        let actual = crc32fast::hash(bytes);
        if actual != entry.crc32 {
            return Err(format!(
                "entry {:?}: CRC-32 mismatch (recorded {:#010x}, computed {actual:#010x})",
                entry.name, entry.crc32
            ));
        }
        Ok(bytes)
    }

    /// The data of `entry` in `data`, unchecked (its bounds only).
    pub fn slice<'d>(&self, data: &'d [u8], entry: &ZipEntry) -> Result<&'d [u8], ZipError> {
        data.get(entry.start..entry.start + entry.len)
            .ok_or_else(|| format!("entry {:?} runs past the archive", entry.name))
    }
}

/// Writes a `torch.save`-style archive: stored entries, each entry's data 64-byte aligned from the
/// archive's start with torch's own `"FB"` padding extra field, ZIP64 records where sizes need
/// them.
pub struct ZipWriter {
    inner: zip::ZipWriter<Cursor<Vec<u8>>>,
    /// The first error, reported by [`ZipWriter::finish`] (adding to a memory buffer only fails
    /// on a broken invariant, so `add` stays infallible for its callers).
    error: Option<String>,
}

impl std::fmt::Debug for ZipWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipWriter").finish_non_exhaustive()
    }
}

impl Default for ZipWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ZipWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            inner: zip::ZipWriter::new(Cursor::new(Vec::new())),
            error: None,
        }
    }

    /// Appends entry `name` holding `data`.
    pub fn add(&mut self, name: &str, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(data.len() as u64 >= 0xffff_ffff)
            .with_alignment_and_header_id(TORCH_ALIGNMENT, TORCH_PADDING_ID);
        let result = self
            .inner
            .start_file(name, options)
            .and_then(|()| std::io::Write::write_all(&mut self.inner, data).map_err(Into::into));
        if let Err(e) = result {
            self.error = Some(format!("zip entry {name:?}: {e}"));
        }
    }

    /// Writes the central directory and the end records; returns the archive.
    pub fn finish(self) -> Result<Vec<u8>, ZipError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let cursor = self.inner.finish().map_err(|e| format!("zip: {e}"))?;
        Ok(cursor.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_archives_read_back_aligned() {
        let mut w = ZipWriter::new();
        w.add("archive/data.pkl", b"\x80\x02N.");
        w.add("archive/data/0", &[7u8; 100]);
        let bytes = w.finish().unwrap();
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
        let bytes = w.finish().unwrap();
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
