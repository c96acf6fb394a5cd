//! Reading tensor bytes: a region of a tensor is planned into work items (block-aligned spans of
//! one chunk, with the runs of [`crate::engine::region::chunk_runs`] that copy out of them), then
//! a thread pool reads them straight into the caller's buffer, verifying each block on the way
//! (in place when the block lands contiguously there). It must not check requests against the
//! record (the public API in [`super`] does) nor open files other than through
//! [`CheckpointReader`]'s verified handles.

use crate::engine::pool;
use crate::engine::region::{RegionError, Run, chunk_runs};
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Dtype, TensorEntry};

use super::{CheckpointReader, LoadOptions};

/// Reads are grouped into work items of about this many bytes.
const WORK_BYTES: u64 = 4 << 20;

/// Where one work item's bytes go.
#[derive(Clone, Copy)]
pub(super) struct OutPtr {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an OutPtr is only dereferenced through `OutPtr::slice` on ranges that the work planning
// keeps disjoint between items (chunks of a tensor never overlap — the record is validated — and
// the runs of one chunk are disjoint), while the buffer it points into is exclusively borrowed for
// the whole load.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn new(buf: &mut [u8]) -> Self {
        OutPtr {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// No other live slice may overlap `offset..offset + len`, and the buffer must be alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: u64, len: u64) -> &mut [u8] {
        let (offset, len) = (offset as usize, len as usize);
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "run outside its buffer"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}

/// A piece of work: some blocks of one chunk, with the runs that copy out of them.
pub(super) struct ReadWork<'r> {
    tensor: &'r str,
    chunk: &'r ChunkEntry,
    /// Byte span of the chunk covered by this item (block aligned, except at the chunk's end).
    span: (u64, u64),
    runs: Vec<Run>,
    out: OutPtr,
}

impl CheckpointReader {
    /// Executes read work on a pool of threads; the first error stops the others.
    pub(super) fn run(&self, works: Vec<ReadWork<'_>>, options: &LoadOptions) -> Result<()> {
        // Open (and verify the headers of) every file up front, on this thread.
        for w in &works {
            self.handle(&w.chunk.file)?;
        }
        let threads = pool::thread_count(options.threads, works.len());
        pool::for_each(&works, threads, "a load", |work, scratch| {
            self.run_one(work, options.verify_checksums, scratch)
        })
    }

    fn run_one(&self, work: &ReadWork<'_>, verify: bool, scratch: &mut Vec<u8>) -> Result<()> {
        let handle = self.handle(&work.chunk.file)?;
        let base = work.chunk.byte_range[0];
        if !verify {
            for run in &work.runs {
                // SAFETY: runs of distinct work items write disjoint ranges (see OutPtr).
                let out = unsafe { work.out.slice(run.dst, run.len) };
                handle.read_at(base + run.src, out)?;
            }
            return Ok(());
        }
        let bs = self.record.block_size;
        let mut r = 0usize;
        let mut block_start = work.span.0;
        while block_start < work.span.1 {
            let block_end = (block_start + bs).min(work.chunk.byte_len());
            let block = (block_start / bs) as usize;
            while r < work.runs.len() && work.runs[r].src + work.runs[r].len <= block_start {
                r += 1;
            }
            let covering = work
                .runs
                .get(r)
                .filter(|run| run.src <= block_start && run.src + run.len >= block_end);
            if let Some(run) = covering {
                // The block lands contiguously in the output: read it there and check it in place.
                // SAFETY: as above.
                let out = unsafe {
                    work.out
                        .slice(run.dst + (block_start - run.src), block_end - block_start)
                };
                handle.read_at(base + block_start, out)?;
                self.check_block(work.tensor, work.chunk, block, out)?;
            } else if work.runs.get(r).is_some_and(|run| run.src < block_end) {
                scratch.resize((block_end - block_start) as usize, 0);
                handle.read_at(base + block_start, scratch)?;
                self.check_block(work.tensor, work.chunk, block, scratch)?;
                let mut k = r;
                while let Some(run) = work.runs.get(k).filter(|run| run.src < block_end) {
                    let from = run.src.max(block_start);
                    let to = (run.src + run.len).min(block_end);
                    // SAFETY: as above.
                    let out = unsafe { work.out.slice(run.dst + (from - run.src), to - from) };
                    out.copy_from_slice(
                        &scratch[(from - block_start) as usize..(to - block_start) as usize],
                    );
                    k += 1;
                }
            }
            block_start = block_end;
        }
        Ok(())
    }
}

/// Whether a tensor's chunks come in row order: first rows and row ends both non-decreasing (what
/// every waypoint writer records), so that the chunks a region's rows meet are one contiguous run
/// found by binary search ([`candidates`]).
pub(super) fn row_ordered(entry: &TensorEntry) -> bool {
    let rows = |c: &ChunkEntry| {
        let start = c.offsets.first().copied().unwrap_or(0);
        (start, start + c.sizes.first().copied().unwrap_or(1))
    };
    !entry.shape.is_empty()
        && entry.chunks.windows(2).all(|w| {
            let (a, b) = (rows(&w[0]), rows(&w[1]));
            a.0 <= b.0 && a.1 <= b.1
        })
}

/// The chunks of `entry` that may meet the rows `offsets[0]..offsets[0] + sizes[0]`: all of them,
/// or, when `ordered` ([`row_ordered`]), the run found by two binary searches, so that a rank
/// plans its region in time proportional to the chunks it reads, not to every rank's chunks.
fn candidates<'r>(
    entry: &'r TensorEntry,
    offsets: &[u64],
    sizes: &[u64],
    ordered: bool,
) -> &'r [ChunkEntry] {
    let (Some(&first), Some(&rows), true) = (offsets.first(), sizes.first(), ordered) else {
        return &entry.chunks;
    };
    let start = |c: &ChunkEntry| c.offsets.first().copied().unwrap_or(0);
    let lo = entry
        .chunks
        .partition_point(|c| start(c) + c.sizes.first().copied().unwrap_or(1) <= first);
    let hi = entry.chunks.partition_point(|c| start(c) < first + rows);
    &entry.chunks[lo..hi.max(lo)]
}

/// Cuts the reads of a region of one tensor into work items of about [`WORK_BYTES`], each a
/// block-aligned span of one chunk with the runs (clipped to the span) that copy out of it.
/// `ordered` says the tensor's chunks are [`row_ordered`].
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_region<'r>(
    name: &'r str,
    entry: &'r TensorEntry,
    ordered: bool,
    offsets: &[u64],
    sizes: &[u64],
    out: OutPtr,
    block_size: u64,
    works: &mut Vec<ReadWork<'r>>,
) -> Result<()> {
    let step = WORK_BYTES.div_ceil(block_size).max(1) * block_size;
    for chunk in candidates(entry, offsets, sizes, ordered) {
        let runs = chunk_runs(
            entry.dtype.bits(),
            &chunk.offsets,
            &chunk.sizes,
            offsets,
            sizes,
        )
        .map_err(|RegionError::NotByteAligned| {
            Error::tensor(
                name,
                format!(
                    "region {offsets:?}+{sizes:?} splits a byte of {}",
                    sub_byte(entry.dtype)
                ),
            )
        })?;
        let Some(first) = runs.first() else { continue };
        let Some(last) = runs.last() else { continue };
        let lo = first.src / block_size * block_size;
        let hi = last.src + last.len;
        let mut start = lo;
        let mut r = 0usize;
        while start < hi {
            let end = (start + step).min(hi);
            let mut clipped = Vec::new();
            while r < runs.len() && runs[r].src < end {
                let run = runs[r];
                let from = run.src.max(start);
                let to = (run.src + run.len).min(end);
                if from < to {
                    clipped.push(Run {
                        src: from,
                        dst: run.dst + (from - run.src),
                        len: to - from,
                    });
                }
                if run.src + run.len <= end {
                    r += 1;
                } else {
                    break;
                }
            }
            if !clipped.is_empty() {
                let span_end = end
                    .div_ceil(block_size)
                    .saturating_mul(block_size)
                    .min(chunk.byte_len());
                works.push(ReadWork {
                    tensor: name,
                    chunk,
                    span: (start, span_end),
                    runs: clipped,
                    out,
                });
            }
            start = end;
        }
    }
    Ok(())
}

fn sub_byte(dtype: Dtype) -> String {
    format!("{dtype} (sub-byte elements; regions must start and end on whole bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: &[(u64, u64)]) -> TensorEntry {
        TensorEntry {
            dtype: Dtype::F32,
            shape: vec![rows.iter().map(|r| r.1).sum(), 4],
            chunks: rows
                .iter()
                .map(|&(start, n)| ChunkEntry {
                    offsets: vec![start, 0],
                    sizes: vec![n, 4],
                    file: String::new(),
                    byte_range: [0, n * 16],
                    block_crc32c: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_region_meets_only_the_chunks_its_rows_reach() {
        // Four row shards of 2, 2, 4, 2 rows: rows 0-1, 2-3, 4-7, 8-9.
        let t = tensor(&[(0, 2), (2, 2), (4, 4), (8, 2)]);
        assert!(row_ordered(&t));
        let table: &[((u64, u64), &[u64])] = &[
            ((0, 10), &[0, 2, 4, 8]),
            ((0, 1), &[0]),
            ((1, 2), &[0, 2]),
            ((3, 6), &[2, 4, 8]),
            ((5, 2), &[4]),
            ((9, 1), &[8]),
            ((4, 0), &[]),
        ];
        for &((first, rows), want) in table {
            let got: Vec<u64> = candidates(&t, &[first, 0], &[rows, 4], true)
                .iter()
                .map(|c| c.offsets[0])
                .collect();
            assert_eq!(got, want, "rows {first}+{rows}");
        }
        // Out of order: every chunk is a candidate.
        let shuffled = tensor(&[(2, 2), (0, 2)]);
        assert!(!row_ordered(&shuffled));
        assert_eq!(candidates(&shuffled, &[0, 0], &[1, 4], false).len(), 2);
    }
}
