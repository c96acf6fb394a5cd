//! Staging the caller's tensors for a background save: a copy of borrowed bytes into a pooled,
//! reused, pre-faulted buffer ([`StagingPool`], whose first buffer can be prepared ahead of the
//! first save), or a hand-over without a copy for owned and shared buffers. Owns the staging
//! memory and its bound. It must not write anything: `background.rs` runs the saves of a
//! [`Staged`] state.

use super::pool::lower_priority;
use super::tensors::{TensorData, TensorRef};
use crate::error::Result;
use crate::format::Dtype;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A reusable pool of staging buffers: each kept after use (pages already faulted in) for the
/// next save; at most one buffer is prepared ahead of the first save ([`StagingPool::prepare`]).
#[derive(Debug)]
pub struct StagingPool {
    free: Mutex<Vec<Vec<u8>>>,
    allocated: Mutex<u64>,
    /// A buffer being allocated and faulted in on a background thread, and its length.
    preparing: Mutex<Option<(usize, JoinHandle<Vec<u8>>)>>,
}

impl Default for StagingPool {
    fn default() -> Self {
        Self::new()
    }
}

/// A page: the alignment `O_DIRECT` needs of memory, offsets and lengths.
const PAGE: usize = 4096;

/// Staged tensors of at least this size start on a page boundary of the staging buffer: a
/// shard file's data starts on a page boundary too (the header is padded to 4 KiB), so the
/// whole pages of such a tensor can be written with `O_DIRECT` straight from the buffer, without
/// a copy into an aligned one. Smaller tensors are gathered anyway.
const ALIGN_FROM: usize = 1 << 20;

/// Where a borrowed tensor of `len` bytes starts in the staging buffer when the previous one
/// ended at `cursor` (both from the buffer's first page boundary).
fn place(cursor: usize, len: usize) -> usize {
    match len >= ALIGN_FROM {
        true => cursor.next_multiple_of(PAGE),
        false => cursor,
    }
}

/// The staging buffer's length for the borrowed ones of `tensors`: laid out by [`place`], plus
/// a page for the buffer's first page boundary.
pub(super) fn arena_len<'a, 'b: 'a>(tensors: impl Iterator<Item = &'a TensorData<'b>>) -> usize {
    let laid = tensors
        .filter(|d| matches!(d, TensorData::Borrowed(_)))
        .fold(0, |cursor, d| place(cursor, d.len()) + d.len());
    match laid {
        0 => 0,
        laid => laid + PAGE,
    }
}

/// Below this, preparing a buffer ahead is not worth a thread.
const PREPARE_MIN_BYTES: usize = 8 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StagingPool {
    /// An empty pool.
    pub fn new() -> Self {
        StagingPool {
            free: Mutex::new(Vec::new()),
            allocated: Mutex::new(0),
            preparing: Mutex::new(None),
        }
    }

    /// Bytes held by the pool's buffers (free, in use, and being prepared): the staging memory.
    pub fn allocated_bytes(&self) -> u64 {
        *lock(&self.allocated)
    }

    /// Starts allocating a buffer of `len` bytes and faulting its pages in on a background
    /// thread, at the background writers' lower priority, so that the first save copies into
    /// memory that is ready instead of faulting a fresh buffer in while the caller waits (on a
    /// virtual machine that costs several times the copy itself). Does nothing when the pool
    /// holds or prepares memory already, or for less than 8 MiB. Takes the memory the first
    /// save would take, only earlier.
    pub fn prepare(&self, len: usize) {
        if len < PREPARE_MIN_BYTES {
            return;
        }
        let mut preparing = lock(&self.preparing);
        let mut allocated = lock(&self.allocated);
        if preparing.is_some() || *allocated > 0 {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("waypoint-stage".into())
            .spawn(move || {
                lower_priority();
                faulted_in(Vec::new(), len)
            });
        match spawned {
            Ok(handle) => {
                *allocated += len as u64;
                *preparing = Some((len, handle));
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not prepare staging memory ahead; the first save allocates it")
            }
        }
    }

    /// Waits for the buffer being prepared, if any, and puts it with the free ones.
    fn collect_prepared(&self) {
        let Some((len, handle)) = lock(&self.preparing).take() else {
            return;
        };
        match handle.join() {
            Ok(buf) => {
                *lock(&self.allocated) += (buf.capacity() - len) as u64;
                lock(&self.free).push(buf);
            }
            Err(_) => *lock(&self.allocated) -= len as u64,
        }
    }

    /// A buffer of exactly `len` bytes whose pages are faulted in.
    fn take(&self, len: usize) -> Vec<u8> {
        self.collect_prepared();
        let reused = lock(&self.free).pop();
        let mut allocated = lock(&self.allocated);
        let buf = match reused {
            Some(b) if b.capacity() >= len => b,
            other => {
                if let Some(old) = other {
                    *allocated -= old.capacity() as u64;
                }
                let b: Vec<u8> = Vec::with_capacity(len);
                *allocated += b.capacity() as u64;
                b
            }
        };
        drop(allocated);
        faulted_in(buf, len)
    }

    fn give_back(&self, buf: Vec<u8>) {
        lock(&self.free).push(buf);
    }
}

impl Drop for StagingPool {
    fn drop(&mut self) {
        // A buffer still being prepared is waited for, not left to a thread outliving the pool.
        self.collect_prepared();
    }
}

/// `buf` resized to exactly `len` bytes, with every page faulted in: writing every byte faults
/// every page in now, once; later saves reuse the pages.
fn faulted_in(mut buf: Vec<u8>, len: usize) -> Vec<u8> {
    buf.resize(len, 0);
    buf.truncate(len);
    buf
}

/// Where a staged tensor's bytes are.
#[derive(Debug)]
enum StagedBytes {
    /// A range of the staging buffer (a copy of borrowed bytes).
    Arena(Range<usize>),
    /// Bytes handed over.
    Owned(Vec<u8>),
    /// A shared immutable buffer.
    Shared(Arc<[u8]>),
}

#[derive(Debug)]
struct StagedTensor {
    name: String,
    dtype: Dtype,
    global_shape: Vec<u64>,
    offsets: Vec<u64>,
    shape: Vec<u64>,
    optimizer: bool,
    bytes: StagedBytes,
}

/// A state staged for a background save: independent of the caller's buffers.
#[derive(Debug)]
pub struct Staged {
    arena: Vec<u8>,
    tensors: Vec<StagedTensor>,
    pub(super) user: serde_json::Value,
    pool: Arc<StagingPool>,
    /// Time the caller was blocked staging.
    pub blocked: Duration,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.arena));
    }
}

impl Staged {
    /// Stages `model` and `optimizer` tensors and the user state. Borrowed bytes are copied (with
    /// `threads` threads) into a pooled buffer; owned and shared bytes are taken without a copy.
    pub fn stage(
        pool: &Arc<StagingPool>,
        model: Vec<TensorRef<'_>>,
        optimizer: Vec<TensorRef<'_>>,
        user: serde_json::Value,
        threads: usize,
    ) -> Result<Staged> {
        let started = Instant::now();
        let all: Vec<(TensorRef<'_>, bool)> = model
            .into_iter()
            .map(|t| (t, false))
            .chain(optimizer.into_iter().map(|t| (t, true)))
            .collect();
        for (t, _) in &all {
            t.validate()?;
        }
        let mut arena = pool.take(arena_len(all.iter().map(|(t, _)| &t.data)));
        // Offsets are laid out from the buffer's first page boundary.
        let skip = arena.as_ptr().align_offset(PAGE).min(PAGE);
        let mut copies: Vec<(&[u8], Range<usize>)> = Vec::new();
        let mut tensors = Vec::with_capacity(all.len());
        let mut cursor = 0usize;
        for (t, optimizer) in all {
            let bytes = match t.data {
                TensorData::Borrowed(b) => {
                    let start = place(cursor, b.len());
                    cursor = start + b.len();
                    let range = skip + start..skip + cursor;
                    copies.push((b, range.clone()));
                    StagedBytes::Arena(range)
                }
                TensorData::Owned(v) => StagedBytes::Owned(v),
                TensorData::Shared(a) => StagedBytes::Shared(a),
            };
            tensors.push(StagedTensor {
                name: t.name.into_owned(),
                dtype: t.dtype,
                global_shape: t.global_shape,
                offsets: t.offsets,
                shape: t.shape,
                optimizer,
                bytes,
            });
        }
        parallel_copy(&mut arena, &copies, threads);
        Ok(Staged {
            arena,
            tensors,
            user,
            pool: pool.clone(),
            blocked: started.elapsed(),
        })
    }

    /// The staged tensors as save input; `optimizer: false` leaves the optimizer's out.
    pub fn refs(&self, optimizer: bool) -> Vec<TensorRef<'_>> {
        self.tensors
            .iter()
            .filter(|t| optimizer || !t.optimizer)
            .map(|t| {
                let data: &[u8] = match &t.bytes {
                    StagedBytes::Arena(r) => &self.arena[r.clone()],
                    StagedBytes::Owned(v) => v,
                    StagedBytes::Shared(a) => a,
                };
                TensorRef {
                    name: t.name.as_str().into(),
                    dtype: t.dtype,
                    global_shape: t.global_shape.clone(),
                    offsets: t.offsets.clone(),
                    shape: t.shape.clone(),
                    data: TensorData::Borrowed(data),
                }
            })
            .collect()
    }
}

/// Copies each source into its range of `arena`, spreading the bytes over `threads` threads.
fn parallel_copy(arena: &mut [u8], copies: &[(&[u8], Range<usize>)], threads: usize) {
    let total: usize = copies.iter().map(|(s, _)| s.len()).sum();
    if threads <= 1 || total < (8 << 20) {
        for (src, range) in copies {
            arena[range.clone()].copy_from_slice(src);
        }
        return;
    }
    // Cut the arena into `threads` contiguous slices and give each thread the copies (or parts of
    // copies) that fall into its slice: disjoint destinations, no unsafe code.
    let per = arena.len().div_ceil(threads);
    let mut slices: Vec<(usize, &mut [u8])> = Vec::with_capacity(threads);
    let mut rest = arena;
    let mut base = 0usize;
    while !rest.is_empty() {
        let take = per.min(rest.len());
        let (head, tail) = rest.split_at_mut(take);
        slices.push((base, head));
        base += take;
        rest = tail;
    }
    std::thread::scope(|s| {
        for (start, slice) in slices {
            s.spawn(move || {
                let end = start + slice.len();
                for (src, range) in copies {
                    let (lo, hi) = (range.start.max(start), range.end.min(end));
                    if lo < hi {
                        let from = &src[lo - range.start..hi - range.start];
                        slice[lo - start..hi - start].copy_from_slice(from);
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared buffer is the one the first save takes: no second allocation, and the staged
    /// bytes are the caller's.
    #[test]
    fn the_prepared_buffer_stages_the_first_save() {
        let pool = Arc::new(StagingPool::new());
        let len = 2 * PREPARE_MIN_BYTES;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let small = [7u8; 100];
        let model = || {
            vec![
                TensorRef::whole("s", Dtype::U8, vec![100], &small),
                TensorRef::whole("w", Dtype::U8, vec![len as u64], &data),
            ]
        };
        let need = arena_len(model().iter().map(|t| &t.data));
        assert!((len + 100..=len + 100 + 2 * PAGE).contains(&need));
        pool.prepare(need);
        assert_eq!(pool.allocated_bytes(), need as u64);
        pool.prepare(need);
        assert_eq!(pool.allocated_bytes(), need as u64, "prepared once");
        let staged = Staged::stage(&pool, model(), Vec::new(), serde_json::Value::Null, 2).unwrap();
        assert_eq!(pool.allocated_bytes(), need as u64, "no second buffer");
        let refs = staged.refs(true);
        assert_eq!(refs[0].data.as_slice(), small.as_slice());
        assert_eq!(refs[1].data.as_slice(), data.as_slice());
        assert!(
            (refs[1].data.as_ptr() as usize).is_multiple_of(PAGE),
            "a large tensor starts on a page boundary"
        );
        drop(refs);
        drop(staged);
        pool.prepare(need);
        assert_eq!(
            pool.allocated_bytes(),
            need as u64,
            "a pool holding memory prepares none"
        );
    }

    /// Small states are not worth a thread; a pool dropped while preparing waits for it.
    #[test]
    fn small_states_are_not_prepared_and_a_dropped_pool_waits() {
        let pool = StagingPool::new();
        pool.prepare(PREPARE_MIN_BYTES - 1);
        assert_eq!(pool.allocated_bytes(), 0);
        pool.prepare(PREPARE_MIN_BYTES);
        drop(pool);
    }
}
