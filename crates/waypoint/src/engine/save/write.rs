//! Writing a planned save into an open transaction: cuts every shard file into work items, writes
//! tensor bytes straight from the caller's buffers on the engine's thread pool (checksumming as it
//! goes), finishes (fsyncs) the files, fills the checksums into the planned record, writes
//! `context/` and aborts on failure. A file planned to be carried over from the previous save is
//! put in place by the storage ([`Transaction::carry`]) instead, or written where it cannot be. Extra memory is bounded by the number of writer threads times
//! one gather buffer. It must not decide the layout ([`super::plan`]) nor commit: committing is
//! the protocol's step ([`super::single`], [`super::ranks`]).

use crate::engine::pool;
use crate::engine::tensors::TensorRef;
use crate::error::{Error, Result};
use crate::format::{CarriedFrom, WEIGHTS_DIR};
use crate::storage::{StoragePath, Transaction, WriteHandle};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::SaveOptions;
use super::plan::Plan;

/// Pieces smaller than this are gathered into one buffer and written with one call; larger ones
/// are written directly from the caller's memory.
const GATHER_BYTES: usize = 1 << 20;

/// Gather buffers start at a multiple of this (a page: what `O_DIRECT` writes need).
const ALIGN: usize = 4096;

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

/// What [`write_files`] did besides writing.
pub(super) struct Written {
    /// Gather buffer bytes allocated.
    pub(super) buffer_bytes: u64,
    /// Files carried over from the previous save, and their bytes.
    pub(super) carried_files: usize,
    pub(super) carried_bytes: u64,
}

/// Writes (or carries over) and finishes every planned shard file and fills the checksums into
/// `plan.record`, marking the carried files there. The caller aborts the transaction on error.
pub(super) fn write_files(
    txn: &dyn Transaction,
    plan: &mut Plan,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
) -> Result<Written> {
    let weights = StoragePath::new(WEIGHTS_DIR)?;
    let mut handles = Vec::with_capacity(plan.files.len());
    let mut carried = Vec::new();
    for (f, file) in plan.files.iter().enumerate() {
        let path = weights.join(&file.name)?;
        let len = file.layout.file_len;
        if let Some(from) = &file.carry
            && txn.carry(&path, &from.path, len)?
        {
            carried.push(f);
            handles.push(None);
            continue;
        }
        handles.push(Some(txn.create(&path, len)?));
    }
    let crcs = known_checksums(plan, tensors, options.block_size);
    let (works, buffer) = make_work(plan, tensors, &handles, options);
    let threads = options.thread_count(works.len());
    pool::for_each(&works, threads, "a save", |work, gather| {
        run_one(work, &handles, &crcs, gather, buffer)
    })?;
    finish_all(handles.into_iter().flatten().collect(), threads)?;
    let buffers = if works.iter().any(|w| w.pieces.len() > 1) {
        threads * buffer
    } else {
        0
    };
    drop(works);
    fill_checksums(plan, tensors, &crcs, options.block_size);
    let mut carried_bytes = 0;
    for &f in &carried {
        let file = &plan.files[f];
        carried_bytes += file.layout.file_len;
        if let (Some(from), Some(entry)) = (&file.carry, plan.record.files.get_mut(&file.name)) {
            entry.carried_from = Some(CarriedFrom {
                checkpoint: from.checkpoint.clone(),
                file: from.file.clone(),
            });
        }
    }
    Ok(Written {
        buffer_bytes: buffers as u64,
        carried_files: carried.len(),
        carried_bytes,
    })
}

/// The checksum slots, filled with the checksums known before writing (a carried or unchanged
/// tensor's); the others are computed as the bytes are written.
fn known_checksums(plan: &Plan, tensors: &[TensorRef<'_>], block_size: u64) -> Vec<AtomicU32> {
    let crcs: Vec<AtomicU32> = (0..plan.total_blocks).map(|_| AtomicU32::new(0)).collect();
    for (i, known) in plan.known_crcs.iter().enumerate() {
        let Some(known) = known else { continue };
        let first = plan.slots[i].2;
        let blocks = tensors[i].data.len().div_ceil(block_size as usize);
        for (b, crc) in known.iter().take(blocks).enumerate() {
            crcs[first + b].store(*crc, Ordering::Relaxed);
        }
    }
    crcs
}

/// Fills the checksums into the planned record in place: no copy of a record that grows with
/// the number of tensors.
fn fill_checksums(plan: &mut Plan, tensors: &[TensorRef<'_>], crcs: &[AtomicU32], block_size: u64) {
    let Plan { record, slots, .. } = plan;
    for (i, t) in tensors.iter().enumerate() {
        let (name, chunk, first) = &slots[i];
        let blocks = t.data.len().div_ceil(block_size as usize);
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
}

/// Cuts every file into work items. Returns them and the gather buffer size each thread needs.
fn make_work<'a>(
    plan: &'a Plan,
    tensors: &'a [TensorRef<'_>],
    handles: &[Option<Box<dyn WriteHandle>>],
    options: &SaveOptions,
) -> (Vec<Work<'a>>, usize) {
    let block_size = options.block_size;
    let mut works = Vec::new();
    let mut buffer = 0usize;
    for (f, file) in plan.files.iter().enumerate() {
        // A carried file is in place already.
        let Some(handle) = &handles[f] else { continue };
        // The file's content in order: header, then chunks by placement, cut into CRC blocks.
        let mut sources: Vec<Src<'a>> = vec![Src {
            data: &file.layout.header,
            crc_slot: None,
        }];
        for &(item, _) in &file.layout.placements {
            let r = file.refs[item];
            let data: &'a [u8] = tensors[r].data.as_ref();
            let first_slot = plan.slots[r].2;
            let known = plan.known_crcs.get(r).is_some_and(|k| k.is_some());
            for (b, block) in data.chunks(block_size as usize).enumerate() {
                sources.push(Src {
                    data: block,
                    crc_slot: (!known).then_some(first_slot + b),
                });
            }
        }
        // Whole parts where the storage demands them, or where they can bypass the page cache.
        let direct = || {
            options
                .direct_io
                .then(|| handle.direct_part_size())
                .flatten()
        };
        match handle.part_size().or_else(direct) {
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

fn run_one(
    work: &Work<'_>,
    handles: &[Option<Box<dyn WriteHandle>>],
    crcs: &[AtomicU32],
    gather: &mut Vec<u8>,
    buffer: usize,
) -> Result<()> {
    for piece in &work.pieces {
        if let Some(slot) = piece.crc_slot {
            crcs[slot].store(crc32c::crc32c(piece.data), Ordering::Relaxed);
        }
    }
    let Some(Some(handle)) = work.file.map(|f| &handles[f]) else {
        return Ok(());
    };
    if let [single] = work.pieces.as_slice() {
        handle.write_at(work.offset, single.data)?;
        // Start writeback now, so the device works while later pieces are written, instead of
        // all at the final fsync.
        handle.start_writeback(work.offset, single.data.len() as u64);
        return Ok(());
    }
    if gather.capacity() < buffer + ALIGN {
        gather.reserve_exact(buffer + ALIGN);
    }
    // The bytes start on a page boundary of the buffer (which does not move once reserved), so
    // that a whole part can be written with O_DIRECT.
    let skip = gather.as_ptr().align_offset(ALIGN).min(ALIGN);
    gather.clear();
    gather.resize(skip, 0);
    for piece in &work.pieces {
        gather.extend_from_slice(piece.data);
    }
    let bytes = &gather[skip..];
    handle.write_at(work.offset, bytes)?;
    handle.start_writeback(work.offset, bytes.len() as u64);
    Ok(())
}

/// Finishes (fsyncs) every file, several at a time, on the engine's worker pool.
fn finish_all(handles: Vec<Box<dyn WriteHandle>>, threads: usize) -> Result<()> {
    let slots: Vec<Mutex<Option<Box<dyn WriteHandle>>>> =
        handles.into_iter().map(|h| Mutex::new(Some(h))).collect();
    let threads = pool::thread_count(threads, slots.len());
    pool::for_each(&slots, threads, "finishing a save", |slot, _| {
        match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(handle) => handle.finish(),
            None => Ok(()),
        }
    })
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

/// Aborts the transaction of a failed save (a failure to clean up is only logged) and returns
/// the save's error.
pub(super) fn abort(txn: Box<dyn Transaction>, error: Error) -> Error {
    if let Err(e) = txn.abort() {
        tracing::warn!(error = %e, "could not remove the temporary files of a failed save");
    }
    error
}
