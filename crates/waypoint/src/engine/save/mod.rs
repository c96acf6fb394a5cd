//! Saving a checkpoint: validate what the caller hands over, lay out the shard files, write tensor
//! bytes straight from the caller's buffers through a pool of writer threads (checksumming as they
//! go), then commit through the storage's transaction. Extra memory is bounded by the number of
//! writer threads times one gather buffer, whatever the state size.

use super::tensors::TensorRef;
use super::{CheckpointMeta, record_path};
use crate::dist::Coordinator;
use crate::error::{Error, Result};
use crate::format::{
    CONTEXT_DIR, ChunkEntry, CommitRecord, DEFAULT_BLOCK_SIZE, FORMAT_NAME, FORMAT_VERSION,
    FileEntry, ShardItem, ShardLayout, TensorEntry, TrainerState, WEIGHTS_DIR, layout_shard,
    shard_file_name,
};
use crate::storage::{Storage, StoragePath, Transaction, WriteHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod assign;
mod ranks;

/// Pieces smaller than this are gathered into one buffer and written with one call; larger ones
/// are written directly from the caller's memory.
const GATHER_BYTES: usize = 1 << 20;

/// How a save lays out and writes its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    /// Size of the blocks each chunk's CRC-32C covers (default 1 MiB). Smaller blocks make
    /// partial reads verify less; larger ones make the record smaller.
    pub block_size: u64,
    /// A new shard file is started when the current one would grow past this (default 2 GiB).
    /// A single chunk larger than this gets a file of its own.
    pub max_shard_bytes: u64,
    /// Writer threads; 0 picks the number of CPUs, at most 8.
    pub threads: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            max_shard_bytes: 2 << 30,
            threads: 0,
        }
    }
}

impl SaveOptions {
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidArgument {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.block_size == 0 || self.block_size > 1 << 30 {
            return bad("block_size", "must be between 1 byte and 1 GiB");
        }
        if self.max_shard_bytes == 0 {
            return bad("max_shard_bytes", "must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn thread_count(&self, work: usize) -> usize {
        super::pool::thread_count(self.threads, work)
    }
}

/// What a save did. With several ranks, the counts are this rank's files and chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The committed checkpoint.
    pub dir: StoragePath,
    /// Its step.
    pub step: u64,
    /// Tensor bytes written.
    pub tensor_bytes: u64,
    /// Bytes written in shard files (headers included).
    pub file_bytes: u64,
    /// Shard files written.
    pub files: usize,
    /// Tensor chunks written.
    pub chunks: usize,
    /// Bytes of buffers the save allocated for gathering small pieces (its memory beyond the
    /// caller's tensors, headers and record excepted).
    pub buffer_bytes: u64,
    /// Wall time of the whole save, commit included.
    pub elapsed: Duration,
}

/// One shard file to write.
pub(super) struct PlannedFile {
    name: String,
    /// Indices into the caller's tensors, in the order of `layout.placements`' item indices.
    refs: Vec<usize>,
    layout: ShardLayout,
}

/// Where the caller's tensors go.
pub(super) struct Plan {
    pub(super) files: Vec<PlannedFile>,
    pub(super) record: CommitRecord,
    /// For each caller tensor: (name in record, chunk index, first CRC slot).
    slots: Vec<(String, usize, usize)>,
    total_blocks: usize,
}

/// Saves `tensors` as checkpoint `dir`: alone when `coordinator` has one rank, otherwise together
/// with the other ranks ([`ranks`]).
pub(crate) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    tensors: &[TensorRef<'_>],
    user: serde_json::Value,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
) -> Result<SaveReport> {
    if coordinator.world_size() > 1 {
        return ranks::save(storage, dir, meta, tensors, user, options, coordinator);
    }
    let started = Instant::now();
    options.validate()?;
    let record_rel = record_path(&StoragePath::root())?;
    let described = storage.describe(&record_path(dir)?);
    let mut plan = plan(tensors, meta, user, options, &described, Layout::SINGLE)?;
    let context = context_files(&meta.context)?;
    let txn = storage.begin(dir)?;
    match write_and_commit(txn, &mut plan, tensors, options, &record_rel, &context) {
        Ok(buffer_bytes) => {
            let report = SaveReport {
                dir: dir.clone(),
                step: meta.step,
                tensor_bytes: plan.record.total_bytes(),
                file_bytes: plan.files.iter().map(|f| f.layout.file_len).sum(),
                files: plan.files.len(),
                chunks: tensors.len(),
                buffer_bytes,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                checkpoint = %storage.describe(dir).display(),
                step = meta.step,
                bytes = report.file_bytes,
                ms = report.elapsed.as_millis() as u64,
                "checkpoint committed"
            );
            Ok(report)
        }
        Err(e) => {
            tracing::warn!(checkpoint = %storage.describe(dir).display(), error = %e, "save failed; nothing was made visible");
            Err(e)
        }
    }
}

/// Who writes the planned files: their rank (in the file names), the number of ranks, and whether
/// the tensors are complete here (one rank) or only this rank's part (checked as a whole later).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) rank: u64,
    pub(super) world_size: u64,
    pub(super) complete: bool,
}

impl Layout {
    pub(super) const SINGLE: Layout = Layout {
        rank: 0,
        world_size: 1,
        complete: true,
    };
}

/// Validates the tensors, assigns chunks to files and builds the record (checksums still zero).
pub(super) fn plan(
    tensors: &[TensorRef<'_>],
    meta: &CheckpointMeta,
    user: serde_json::Value,
    options: &SaveOptions,
    described: &std::path::Path,
    writer: Layout,
) -> Result<Plan> {
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        t.validate()?;
        let group = by_name.entry(t.name.as_ref()).or_default();
        if let Some(&first) = group.first() {
            let f = &tensors[first];
            if f.dtype != t.dtype || f.global_shape != t.global_shape {
                return Err(Error::tensor(
                    t.name.as_ref(),
                    format!(
                        "chunks disagree: {} {:?} and {} {:?}",
                        f.dtype, f.global_shape, t.dtype, t.global_shape
                    ),
                ));
            }
        }
        group.push(i);
    }
    // Assign chunks to files: first fit, one chunk of a tensor per file, deterministic order.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        (tensors[a].name.as_ref(), &tensors[a].offsets)
            .cmp(&(tensors[b].name.as_ref(), &tensors[b].offsets))
    });
    let mut bins: Vec<(Vec<usize>, u64, BTreeSet<&str>)> = Vec::new();
    for i in order {
        let t = &tensors[i];
        let len = t.data.len() as u64;
        let fits = |(_, bytes, names): &(Vec<usize>, u64, BTreeSet<&str>)| {
            !names.contains(t.name.as_ref())
                && (*bytes == 0 || bytes.saturating_add(len) <= options.max_shard_bytes)
        };
        let bin = match bins.iter().position(fits) {
            Some(b) => b,
            None => {
                bins.push((Vec::new(), 0, BTreeSet::new()));
                bins.len() - 1
            }
        };
        bins[bin].0.push(i);
        bins[bin].1 += len;
        bins[bin].2.insert(t.name.as_ref());
    }
    let mut files = Vec::with_capacity(bins.len());
    let mut record = CommitRecord {
        format: FORMAT_NAME.to_owned(),
        format_version: FORMAT_VERSION,
        producer: concat!("waypoint ", env!("CARGO_PKG_VERSION")).to_owned(),
        step: meta.step,
        epoch: meta.epoch,
        world_size: writer.world_size,
        block_size: options.block_size,
        files: BTreeMap::new(),
        tensors: BTreeMap::new(),
        trainer_state: TrainerState {
            user,
            waypoint: meta.waypoint.clone(),
        },
    };
    let mut placements: Vec<(String, u64)> = vec![(String::new(), 0); tensors.len()];
    for (index, (refs, _, _)) in bins.into_iter().enumerate() {
        let name = shard_file_name(writer.rank, index as u64);
        let items: Vec<ShardItem> = refs
            .iter()
            .map(|&i| {
                let t = &tensors[i];
                ShardItem {
                    name: t.name.to_string(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    offsets: t.offsets.clone(),
                    byte_len: t.data.len() as u64,
                    split: by_name.get(t.name.as_ref()).is_some_and(|g| g.len() > 1)
                        || !t.is_whole(),
                }
            })
            .collect();
        let layout = layout_shard(&items).ok_or_else(|| Error::InvalidArgument {
            name: "tensors",
            reason: format!(
                "the safetensors header of {name} would exceed 100 MB; lower max_shard_bytes"
            ),
        })?;
        for &(item, start) in &layout.placements {
            placements[refs[item]] = (name.clone(), start);
        }
        record.files.insert(
            name.clone(),
            FileEntry {
                rank: writer.rank,
                size: layout.file_len,
                header_len: layout.header.len() as u64,
                header_crc32c: crc32c::crc32c(&layout.header),
            },
        );
        files.push(PlannedFile { name, refs, layout });
    }
    let mut slots = Vec::with_capacity(tensors.len());
    let mut total_blocks = 0usize;
    for (name, group) in &by_name {
        let first = &tensors[group[0]];
        let mut chunks = Vec::with_capacity(group.len());
        for &i in group {
            let t = &tensors[i];
            let (file, start) = placements[i].clone();
            let len = t.data.len() as u64;
            let blocks = len.div_ceil(options.block_size) as usize;
            slots.push((i, (name.to_string(), chunks.len(), total_blocks)));
            total_blocks += blocks;
            chunks.push(ChunkEntry {
                offsets: t.offsets.clone(),
                sizes: t.shape.clone(),
                file,
                byte_range: [start, start + len],
                block_crc32c: vec![0; blocks],
            });
        }
        record.tensors.insert(
            name.to_string(),
            TensorEntry {
                dtype: first.dtype,
                shape: first.global_shape.clone(),
                chunks,
            },
        );
    }
    slots.sort_by_key(|(i, _)| *i);
    let slots = slots.into_iter().map(|(_, s)| s).collect();
    // The skeleton must already satisfy every invariant a reader checks (tiling, overlaps). A
    // rank's part of a distributed save is checked whole, by rank 0, before it commits.
    if writer.complete {
        validate_as_arguments(&record, described)?;
    }
    Ok(Plan {
        files,
        record,
        slots,
        total_blocks,
    })
}

/// Validates a record the save built, reporting a problem as the caller's bad argument.
pub(super) fn validate_as_arguments(
    record: &CommitRecord,
    described: &std::path::Path,
) -> Result<()> {
    record.validate(described).map_err(|e| match e {
        Error::InvalidRecord { reason, .. } => Error::InvalidArgument {
            name: "tensors",
            reason,
        },
        other => other,
    })
}

/// A byte source to be written (and, with a slot, checksummed).
#[derive(Clone, Copy)]
struct Src<'a> {
    data: &'a [u8],
    crc_slot: Option<usize>,
}

/// One unit of work for a writer thread: bytes for one file range (pieces laid end to end), or,
/// with `file == None`, checksums only.
struct Work<'a> {
    file: Option<usize>,
    offset: u64,
    pieces: Vec<Src<'a>>,
}

/// Cuts every file into work items. Returns them and the gather buffer size each thread needs.
fn make_work<'a>(
    plan: &'a Plan,
    tensors: &'a [TensorRef<'_>],
    handles: &[Box<dyn WriteHandle>],
    block_size: u64,
) -> (Vec<Work<'a>>, usize) {
    let mut works = Vec::new();
    let mut buffer = 0usize;
    for (f, file) in plan.files.iter().enumerate() {
        // The file's content in order: header, then chunks by placement, cut into CRC blocks.
        let mut sources: Vec<Src<'a>> = vec![Src {
            data: &file.layout.header,
            crc_slot: None,
        }];
        for &(item, _) in &file.layout.placements {
            let r = file.refs[item];
            let data: &'a [u8] = tensors[r].data.as_ref();
            let first_slot = plan.slots[r].2;
            for (b, block) in data.chunks(block_size as usize).enumerate() {
                sources.push(Src {
                    data: block,
                    crc_slot: Some(first_slot + b),
                });
            }
        }
        match handles[f].part_size() {
            None => {
                buffer = buffer.max(GATHER_BYTES);
                gather_posix(f, &sources, &mut works);
            }
            Some(part) => {
                let part = part.max(1) as usize;
                buffer = buffer.max(part);
                split_parts(f, &sources, part, &mut works);
            }
        }
    }
    (works, buffer)
}

/// POSIX: large pieces go straight from the caller's memory; runs of small ones are gathered.
fn gather_posix<'a>(file: usize, sources: &[Src<'a>], works: &mut Vec<Work<'a>>) {
    let mut offset = 0u64;
    let mut group: Vec<Src<'a>> = Vec::new();
    let mut group_start = 0u64;
    let mut group_len = 0usize;
    for &src in sources {
        if (src.data.len() >= GATHER_BYTES || group_len + src.data.len() > GATHER_BYTES)
            && !group.is_empty()
        {
            works.push(Work {
                file: Some(file),
                offset: group_start,
                pieces: std::mem::take(&mut group),
            });
            group_len = 0;
        }
        if src.data.len() >= GATHER_BYTES {
            works.push(Work {
                file: Some(file),
                offset,
                pieces: vec![src],
            });
        } else {
            if group.is_empty() {
                group_start = offset;
            }
            group.push(src);
            group_len += src.data.len();
        }
        offset += src.data.len() as u64;
    }
    if !group.is_empty() {
        works.push(Work {
            file: Some(file),
            offset: group_start,
            pieces: group,
        });
    }
}

/// Object stores: whole parts, assembled from slices of the sources; checksums computed in
/// separate work items because parts do not line up with blocks.
fn split_parts<'a>(file: usize, sources: &[Src<'a>], part: usize, works: &mut Vec<Work<'a>>) {
    let mut current: Vec<Src<'a>> = Vec::new();
    let mut current_len = 0usize;
    let mut part_start = 0u64;
    for &src in sources {
        if let Some(slot) = src.crc_slot {
            works.push(Work {
                file: None,
                offset: 0,
                pieces: vec![Src {
                    data: src.data,
                    crc_slot: Some(slot),
                }],
            });
        }
        let mut rest = src.data;
        while !rest.is_empty() {
            let take = (part - current_len).min(rest.len());
            current.push(Src {
                data: &rest[..take],
                crc_slot: None,
            });
            current_len += take;
            rest = &rest[take..];
            if current_len == part {
                works.push(Work {
                    file: Some(file),
                    offset: part_start,
                    pieces: std::mem::take(&mut current),
                });
                part_start += part as u64;
                current_len = 0;
            }
        }
    }
    if !current.is_empty() {
        works.push(Work {
            file: Some(file),
            offset: part_start,
            pieces: current,
        });
    }
}

/// Writes every file, finishes them, fills in the checksums and commits. Returns the gather
/// buffer bytes allocated. Aborts the transaction on any error.
fn write_and_commit(
    txn: Box<dyn Transaction>,
    plan: &mut Plan,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
    record_rel: &StoragePath,
    context: &[(StoragePath, &[u8])],
) -> Result<u64> {
    let buffers = match write_files(txn.as_ref(), plan, tensors, options) {
        Ok(buffers) => buffers,
        Err(e) => return Err(abort(txn, e)),
    };
    if let Err(e) = write_context(txn.as_ref(), context) {
        return Err(abort(txn, e));
    }
    txn.commit(record_rel, &plan.record.to_json())?;
    Ok(buffers)
}

/// Writes the context files into the transaction.
pub(super) fn write_context(txn: &dyn Transaction, context: &[(StoragePath, &[u8])]) -> Result<()> {
    for (path, bytes) in context {
        let h = txn.create(path, bytes.len() as u64)?;
        h.write_at(0, bytes)?;
        h.finish()?;
    }
    Ok(())
}

/// Writes and finishes every planned shard file and fills the checksums into `plan.record`.
/// Returns the gather buffer bytes allocated. The caller aborts the transaction on error.
pub(super) fn write_files(
    txn: &dyn Transaction,
    plan: &mut Plan,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
) -> Result<u64> {
    let weights = StoragePath::new(WEIGHTS_DIR)?;
    let mut handles = Vec::with_capacity(plan.files.len());
    for file in &plan.files {
        handles.push(txn.create(&weights.join(&file.name)?, file.layout.file_len)?);
    }
    let crcs: Vec<AtomicU32> = (0..plan.total_blocks).map(|_| AtomicU32::new(0)).collect();
    let (works, buffer) = make_work(plan, tensors, &handles, options.block_size);
    let threads = options.thread_count(works.len());
    super::pool::for_each(&works, threads, "a save", |work, gather| {
        run_one(work, &handles, &crcs, gather, buffer)
    })?;
    finish_all(handles, threads)?;
    let buffers = if works.iter().any(|w| w.pieces.len() > 1) {
        threads * buffer
    } else {
        0
    };
    drop(works);
    // Fill the checksums into the planned record in place: no copy of a record that grows with
    // the number of tensors.
    let Plan { record, slots, .. } = plan;
    for (i, t) in tensors.iter().enumerate() {
        let (name, chunk, first) = &slots[i];
        let blocks = t.data.len().div_ceil(options.block_size as usize);
        if let Some(entry) = record
            .tensors
            .get_mut(name)
            .and_then(|e| e.chunks.get_mut(*chunk))
        {
            for b in 0..blocks {
                entry.block_crc32c[b] = crcs[first + b].load(Ordering::Relaxed);
            }
        }
    }
    Ok(buffers as u64)
}

/// Validates the context file names (one plain component each) and places them under
/// `context/`.
pub(super) fn context_files(files: &[(String, Vec<u8>)]) -> Result<Vec<(StoragePath, &[u8])>> {
    let dir = StoragePath::new(CONTEXT_DIR)?;
    files
        .iter()
        .map(|(name, bytes)| {
            if name.contains('/') || name.starts_with('.') {
                return Err(Error::UnsafePath {
                    path: name.clone(),
                    reason: "a context file name is one component not starting with '.'",
                });
            }
            Ok((dir.join(name)?, bytes.as_slice()))
        })
        .collect()
}

pub(super) fn abort(txn: Box<dyn Transaction>, error: Error) -> Error {
    if let Err(e) = txn.abort() {
        tracing::warn!(error = %e, "could not remove the temporary files of a failed save");
    }
    error
}

fn run_one(
    work: &Work<'_>,
    handles: &[Box<dyn WriteHandle>],
    crcs: &[AtomicU32],
    gather: &mut Vec<u8>,
    buffer: usize,
) -> Result<()> {
    for piece in &work.pieces {
        if let Some(slot) = piece.crc_slot {
            crcs[slot].store(crc32c::crc32c(piece.data), Ordering::Relaxed);
        }
    }
    let Some(file) = work.file else { return Ok(()) };
    if let [single] = work.pieces.as_slice() {
        handles[file].write_at(work.offset, single.data)?;
        // Start writeback now, so the device works while later pieces are written, instead of
        // all at the final fsync.
        handles[file].start_writeback(work.offset, single.data.len() as u64);
        return Ok(());
    }
    if gather.capacity() < buffer {
        gather.reserve_exact(buffer);
    }
    gather.clear();
    for piece in &work.pieces {
        gather.extend_from_slice(piece.data);
    }
    handles[file].write_at(work.offset, gather)?;
    handles[file].start_writeback(work.offset, gather.len() as u64);
    Ok(())
}

/// Finishes (fsyncs) every file, several at a time, on the engine's worker pool.
fn finish_all(handles: Vec<Box<dyn WriteHandle>>, threads: usize) -> Result<()> {
    let slots: Vec<Mutex<Option<Box<dyn WriteHandle>>>> =
        handles.into_iter().map(|h| Mutex::new(Some(h))).collect();
    let threads = super::pool::thread_count(threads, slots.len());
    super::pool::for_each(&slots, threads, "finishing a save", |slot, _| {
        match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(handle) => handle.finish(),
            None => Ok(()),
        }
    })
}
