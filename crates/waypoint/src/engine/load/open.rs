//! Opening a checkpoint: the directory, the commit record (read and validated), the `weights/`
//! listing checked against it (sizes, unexpected or missing files, links), and each shard's
//! handle, opened on first use with its header verified (CRC-32C and agreement with the record).
//! It must not read tensor bytes: that is [`super::read`] and [`super::verify`].

use crate::engine::record_path;
use crate::error::{Error, Result};
use crate::format::{
    CommitRecord, MAX_RECORD_LEN, ParsedHeader, RECORD_FILE, WEIGHTS_DIR, parse_header,
};
use crate::storage::{EntryKind, ReadHandle, SharedStorage, StoragePath, read_to_vec};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::CheckpointReader;

impl CheckpointReader {
    pub(crate) fn open(storage: SharedStorage, dir: StoragePath) -> Result<Self> {
        let (reader, problems) = Self::open_lenient(storage, dir)?;
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(reader),
        }
    }

    /// Opens a checkpoint whose commit record is valid, collecting (instead of failing on) the
    /// problems of its `weights/` listing: missing, resized, unexpected or linked files.
    pub(crate) fn open_lenient(
        storage: SharedStorage,
        dir: StoragePath,
    ) -> Result<(Self, Vec<Error>)> {
        let rec = record_path(&dir)?;
        let record_path = storage.describe(&rec);
        check_is_dir(&storage, &dir)?;
        let bytes = read_to_vec(storage.as_ref(), &rec, MAX_RECORD_LEN)?;
        let record = CommitRecord::from_json(&bytes, &record_path)?;
        let (seen, problems) = check_listing(&storage, &dir, &record)?;
        let handles = record
            .files
            .keys()
            .map(|k| (k.clone(), OnceLock::new()))
            .collect();
        let by_file = chunks_by_file(&record);
        let row_ordered = record
            .tensors
            .iter()
            .filter(|(_, entry)| super::row_ordered(entry))
            .map(|(name, _)| name.clone())
            .collect();
        let reader = CheckpointReader {
            storage,
            dir,
            record,
            record_path,
            handles,
            present: seen,
            by_file,
            row_ordered,
        };
        Ok((reader, problems))
    }

    /// The open handle of a shard, its header verified on first use.
    pub(super) fn handle(&self, file: &str) -> Result<&dyn ReadHandle> {
        let cell = self.handles.get(file).ok_or_else(|| {
            Error::record(&self.record_path, format!("file {file:?} is not listed"))
        })?;
        if let Some(h) = cell.get() {
            return Ok(h.as_ref());
        }
        let handle = self
            .storage
            .open(&self.dir.join(WEIGHTS_DIR)?.join(file)?)?;
        self.verify_header(file, handle.as_ref())?;
        let _ = cell.set(handle);
        match cell.get() {
            Some(h) => Ok(h.as_ref()),
            None => Err(Error::WorkerPanicked {
                what: "opening a shard".into(),
            }),
        }
    }

    /// Checks a shard's size and header (CRC-32C, then agreement with the record).
    fn verify_header(&self, file: &str, handle: &dyn ReadHandle) -> Result<()> {
        let path = self.file_path(file);
        let entry = &self.record.files[file];
        if handle.len() != entry.size {
            return Err(Error::ShardSize {
                path,
                expected: entry.size,
                actual: handle.len(),
            });
        }
        let mut header = vec![0u8; entry.header_len as usize];
        handle.read_at(0, &mut header)?;
        let actual = crc32c::crc32c(&header);
        if actual != entry.header_crc32c {
            return Err(Error::Checksum {
                path,
                what: "safetensors header".into(),
                start: 0,
                end: entry.header_len,
                expected: entry.header_crc32c,
                actual,
            });
        }
        let parsed =
            parse_header(&header, entry.size).map_err(|reason| Error::shard(&path, reason))?;
        if parsed.header_len != entry.header_len {
            return Err(Error::shard(
                &path,
                format!(
                    "header is {} bytes, the record says {}",
                    parsed.header_len, entry.header_len
                ),
            ));
        }
        self.check_header_agrees(file, &path, entry.header_len, &parsed)
    }

    /// Every chunk the record places in `file` must be in its parsed header with the same dtype,
    /// shape and byte range, and the header must list nothing else.
    fn check_header_agrees(
        &self,
        file: &str,
        path: &Path,
        header_len: u64,
        parsed: &ParsedHeader,
    ) -> Result<()> {
        let placed = self.by_file.get(file).map_or(&[][..], Vec::as_slice);
        for (name, index) in placed {
            let name: &str = name;
            if let Some(tensor) = self.record.tensors.get(name)
                && let Some(chunk) = tensor.chunks.get(*index)
            {
                let agrees = parsed.tensors.get(name).is_some_and(|h| {
                    h.dtype == tensor.dtype
                        && h.shape == chunk.sizes
                        && h.data_offsets
                            == [
                                chunk.byte_range[0] - header_len,
                                chunk.byte_range[1] - header_len,
                            ]
                });
                if !agrees {
                    return Err(Error::shard(
                        path,
                        format!("tensor {name:?} in the header disagrees with the commit record"),
                    ));
                }
            }
        }
        let expected = placed.len();
        if parsed.tensors.len() != expected {
            return Err(Error::shard(
                path,
                format!(
                    "header lists {} tensors, the record {expected}",
                    parsed.tensors.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Per shard file, the chunks the record places there, so that checking a header costs what the
/// file holds, not the whole record.
fn chunks_by_file(record: &CommitRecord) -> HashMap<String, Vec<(Arc<str>, usize)>> {
    let mut by_file: HashMap<String, Vec<(Arc<str>, usize)>> = HashMap::new();
    for (name, tensor) in &record.tensors {
        let name: Arc<str> = Arc::from(name.as_str());
        for (i, chunk) in tensor.chunks.iter().enumerate() {
            by_file
                .entry(chunk.file.clone())
                .or_default()
                .push((name.clone(), i));
        }
    }
    by_file
}

/// The checkpoint must be a directory, not a link to one.
fn check_is_dir(storage: &SharedStorage, dir: &StoragePath) -> Result<()> {
    match storage.stat(dir)? {
        Some(e) if e.kind == EntryKind::Dir => Ok(()),
        Some(e) if e.kind == EntryKind::Symlink => Err(Error::SymlinkRefused {
            path: storage.describe(dir),
        }),
        _ => Err(Error::NotFound {
            path: storage.describe(dir),
        }),
    }
}

/// Checks the `weights/` listing against the record. Returns the shard files present with the
/// recorded size, and the problems: links, resized, unexpected and missing files.
fn check_listing(
    storage: &SharedStorage,
    dir: &StoragePath,
    record: &CommitRecord,
) -> Result<(BTreeSet<String>, Vec<Error>)> {
    let weights = dir.join(WEIGHTS_DIR)?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in storage.list(&weights)? {
        if entry.name == RECORD_FILE {
            continue;
        }
        let path = weights.join(&entry.name)?;
        match (record.files.get(&entry.name), entry.kind) {
            (_, EntryKind::Symlink) => problems.push(Error::SymlinkRefused {
                path: storage.describe(&path),
            }),
            (Some(file), EntryKind::File) if entry.size != file.size => {
                problems.push(Error::ShardSize {
                    path: storage.describe(&path),
                    expected: file.size,
                    actual: entry.size,
                })
            }
            (Some(_), EntryKind::File) => {
                seen.insert(entry.name);
            }
            _ => problems.push(Error::UnexpectedFile {
                path: storage.describe(&weights),
                file: entry.name,
            }),
        }
    }
    // The paths already reported (links, wrong sizes), to name each missing file once.
    let reported: BTreeSet<std::path::PathBuf> = problems
        .iter()
        .filter_map(|p| match p {
            Error::SymlinkRefused { path: p } | Error::ShardSize { path: p, .. } => Some(p.clone()),
            _ => None,
        })
        .collect();
    for (name, _) in record
        .files
        .iter()
        .filter(|(name, _)| !seen.contains(*name))
    {
        let path = storage.describe(&weights.join(name)?);
        if !reported.contains(&path) {
            problems.push(Error::NotFound { path });
        }
    }
    Ok((seen, problems))
}
