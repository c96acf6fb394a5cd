//! Incremental saves: a tensor whose bytes are unchanged since the previous committed save of the
//! run is not written again. This module owns the run's memory of that save ([`SaveHistory`]),
//! finding the unchanged tensors (the caller's `frozen` promise, or block checksums compared with
//! the previous record), choosing the previous files that can be carried over whole, and checking
//! their headers on the storage before they are. The carrying itself is the storage's
//! ([`crate::storage::Transaction::carry`]: a hard link, a server-side copy), driven by
//! [`mod@super::write`]; the layout of the other files is [`super::plan`]'s. Pure except
//! [`confirm_sources`], which reads the previous files' headers.
//!
//! A carried file is the new checkpoint's own (a second name of the same inode, or a copy): the
//! checkpoint stays self-contained, and deleting the one it came from never changes it.

use crate::engine::pool;
use crate::engine::tensors::TensorRef;
use crate::format::{CommitRecord, FileEntry, WEIGHTS_DIR};
use crate::storage::{Storage, StoragePath};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::SaveOptions;

/// The previous committed save of a run, which the next save carries unchanged files from.
///
/// It lives in [`SaveOptions::history`]; clones share it, so the options a run hands to its
/// checkpointer and to its background queue remember the same save. It remembers one save per
/// storage (by the storage's root description) and is only used for a sibling of that save (a
/// checkpoint in the same directory). Equality ignores it: two options with the same knobs are
/// equal whatever they remember. A new one remembers nothing; a resumed run starts with a full
/// save.
#[derive(Clone, Default)]
pub struct SaveHistory(Arc<Mutex<Option<Arc<Base>>>>);

/// A committed save: the storage it went to, its directory and its record.
pub(super) struct Base {
    storage: PathBuf,
    pub(super) dir: StoragePath,
    pub(super) record: CommitRecord,
}

impl SaveHistory {
    /// A history remembering nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the remembered save: the next save writes every file.
    pub fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The remembered save on `storage`, if it is a sibling of `dir` (or `dir` itself, replaced).
    pub(super) fn base_for(&self, storage: &Path, dir: &StoragePath) -> Option<Arc<Base>> {
        let base = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        (base.storage == storage && base.dir.parent() == dir.parent()).then_some(base)
    }

    /// Remembers the save of `dir` on `storage` that just committed `record`.
    pub(super) fn remember(&self, storage: PathBuf, dir: &StoragePath, record: CommitRecord) {
        let base = Base {
            storage,
            dir: dir.clone(),
            record,
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(base));
    }
}

impl fmt::Debug for SaveHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        f.debug_tuple("SaveHistory")
            .field(&base.map(|b| b.dir.to_string()))
            .finish()
    }
}

impl PartialEq for SaveHistory {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SaveHistory {}

/// What is known about the caller's tensors before anything is written.
pub(super) struct Known {
    /// The previous save, when carrying from it is possible.
    pub(super) base: Arc<Base>,
    /// Per caller tensor: its block checksums, when known already (from the previous record for
    /// an unchanged tensor, or computed here for comparison).
    pub(super) crcs: Vec<Option<Vec<u32>>>,
    /// Per caller tensor: its bytes equal those of the same chunk in the previous save.
    pub(super) unchanged: Vec<bool>,
    /// Per caller tensor: kept in files apart from the changing tensors (frozen or unchanged), so
    /// that the next save can carry those files whole.
    pub(super) still: Vec<bool>,
}

/// Finds the tensors unchanged since `base`: those the caller marked frozen (trusted) and, with
/// `detect_unchanged`, those whose block checksums, computed here with `threads` threads, equal
/// the previous record's.
/// Only chunks of the same name, dtype, shapes and offsets compare; a different block size
/// compares nothing.
pub(super) fn detect(
    tensors: &[TensorRef<'_>],
    base: Arc<Base>,
    options: &SaveOptions,
    threads: usize,
) -> crate::error::Result<Known> {
    let n = tensors.len();
    let mut crcs: Vec<Option<Vec<u32>>> = vec![None; n];
    let mut unchanged = vec![false; n];
    let still: Vec<bool> = tensors
        .iter()
        .map(|t| options.frozen.contains(t.name.as_ref()))
        .collect();
    let same_blocks = base.record.block_size == options.block_size;
    // The previous checksums of each tensor's chunk, where one of the same shape is there.
    let previous: Vec<Option<&[u32]>> = tensors
        .iter()
        .map(|t| {
            same_blocks
                .then(|| previous_crcs(&base.record, t))
                .flatten()
        })
        .collect();
    let mut to_compute: Vec<(usize, usize)> = Vec::new();
    for (i, prev) in previous.iter().enumerate() {
        match prev {
            Some(p) if still[i] => {
                crcs[i] = Some(p.to_vec());
                unchanged[i] = true;
            }
            Some(_) if options.detect_unchanged => {
                let blocks = tensors[i].data.len().div_ceil(options.block_size as usize);
                to_compute.extend((0..blocks).map(|b| (i, b)));
            }
            _ => {}
        }
    }
    let computed: Vec<AtomicU32> = to_compute.iter().map(|_| AtomicU32::new(0)).collect();
    let block = options.block_size as usize;
    let items: Vec<usize> = (0..to_compute.len()).collect();
    pool::for_each(&items, threads.max(1), "checksumming a save", |&k, _| {
        let (i, b) = to_compute[k];
        let data = tensors[i].data.as_slice();
        let end = ((b + 1) * block).min(data.len());
        computed[k].store(crc32c::crc32c(&data[b * block..end]), Ordering::Relaxed);
        Ok(())
    })?;
    let mut k = 0;
    while k < to_compute.len() {
        let i = to_compute[k].0;
        let mut mine = Vec::new();
        while k < to_compute.len() && to_compute[k].0 == i {
            mine.push(computed[k].load(Ordering::Relaxed));
            k += 1;
        }
        unchanged[i] = previous[i] == Some(mine.as_slice());
        crcs[i] = Some(mine);
    }
    let still = still
        .iter()
        .zip(&unchanged)
        .map(|(s, u)| *s || *u)
        .collect();
    Ok(Known {
        base,
        crcs,
        unchanged,
        still,
    })
}

/// The block checksums of `t`'s chunk in `record`, if a chunk of the same name, dtype, global
/// shape, offsets and sizes is there.
fn previous_crcs<'r>(record: &'r CommitRecord, t: &TensorRef<'_>) -> Option<&'r [u32]> {
    let entry = record.tensors.get(t.name.as_ref())?;
    if entry.dtype != t.dtype || entry.shape != t.global_shape {
        return None;
    }
    let chunk = entry
        .chunks
        .iter()
        .find(|c| c.offsets == t.offsets && c.sizes == t.shape)?;
    (chunk.byte_len() == t.data.len() as u64).then_some(chunk.block_crc32c.as_slice())
}

/// The previous files that hold only unchanged tensors of this save, each with those tensors
/// (where they start there, and their indices into the caller's tensors) in the order of their
/// bytes. A file with anything else in it (a tensor changed or no longer saved) is not carried.
pub(super) fn carriable_files(
    tensors: &[TensorRef<'_>],
    known: &Known,
) -> BTreeMap<String, Vec<(u64, usize)>> {
    let record = &known.base.record;
    if record.world_size != 1 {
        return BTreeMap::new();
    }
    // Where each chunk of the previous save is: file -> (start, caller tensor or None).
    let mut by_file: BTreeMap<&str, Vec<(u64, Option<usize>)>> = BTreeMap::new();
    let mut index: BTreeMap<(&str, &[u64]), usize> = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        if known.unchanged[i] {
            index.insert((t.name.as_ref(), t.offsets.as_slice()), i);
        }
    }
    for (name, entry) in &record.tensors {
        for chunk in &entry.chunks {
            let caller = index
                .get(&(name.as_str(), chunk.offsets.as_slice()))
                .copied();
            by_file
                .entry(chunk.file.as_str())
                .or_default()
                .push((chunk.byte_range[0], caller));
        }
    }
    by_file
        .into_iter()
        .filter(|(_, chunks)| chunks.iter().all(|(_, caller)| caller.is_some()))
        .map(|(file, mut chunks)| {
            chunks.sort_unstable();
            let refs = chunks
                .into_iter()
                .filter_map(|(start, c)| c.map(|c| (start, c)))
                .collect();
            (file.to_owned(), refs)
        })
        .collect()
}

/// Where a planned file is carried from.
#[derive(Debug, Clone)]
pub(super) struct CarrySource {
    /// The previous file, from the storage's root.
    pub(super) path: StoragePath,
    /// The previous checkpoint's name and the file's name there, for the record.
    pub(super) checkpoint: String,
    pub(super) file: String,
    /// The previous record's entry of the file (size, header checksum).
    pub(super) entry: FileEntry,
    /// Where each of the file's tensors starts, in the order of the planned file's tensors.
    pub(super) starts: Vec<u64>,
}

/// The carry source of the previous file `file` of `base`, whose tensors start at `starts`.
pub(super) fn source(base: &Base, file: &str, starts: Vec<u64>) -> Option<CarrySource> {
    let entry = base.record.files.get(file)?.clone();
    Some(CarrySource {
        path: base.dir.join(WEIGHTS_DIR).ok()?.join(file).ok()?,
        checkpoint: base.dir.file_name()?.to_owned(),
        file: file.to_owned(),
        entry,
        starts,
    })
}

/// Whether the previous file is still what its record says, as far as a cheap look tells: its
/// size and its header's checksum (names, shapes and places of its tensors). A file that fails
/// (gone, changed, unreadable) is written instead of carried.
pub(super) fn confirm_source(storage: &dyn Storage, source: &CarrySource) -> bool {
    let check = || -> crate::error::Result<bool> {
        let handle = storage.open(&source.path)?;
        if handle.len() != source.entry.size {
            return Ok(false);
        }
        let mut header = vec![0u8; source.entry.header_len as usize];
        handle.read_at(0, &mut header)?;
        Ok(crc32c::crc32c(&header) == source.entry.header_crc32c)
    };
    match check() {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(file = %storage.describe(&source.path).display(), "an earlier checkpoint's file changed since its save; writing the bytes");
            false
        }
        Err(e) => {
            tracing::info!(file = %storage.describe(&source.path).display(), error = %e, "cannot carry an earlier checkpoint's file over; writing the bytes");
            false
        }
    }
}
