//! Saves in the background: staging the caller's tensors (a copy into a pooled, reused,
//! pre-faulted buffer, or a hand-over without a copy for owned and shared buffers) and running
//! one or more saves of the staged state on a background thread. Owns the staging memory and its
//! bound; knows nothing of policy: the caller decides what to save and finalizes the outcome.

use super::save::SaveOptions;
use super::tensors::{TensorData, TensorRef};
use super::{CheckpointMeta, SaveReport, save};
use crate::dist::{Coordinator, SharedCoordinator};
use crate::error::{Error, Result};
use crate::format::Dtype;
use crate::storage::{SharedStorage, StoragePath};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A reusable pool of staging buffers: at most `capacity` buffers exist at once, each kept after
/// use (pages already faulted in) for the next save.
#[derive(Debug)]
pub struct StagingPool {
    free: Mutex<Vec<Vec<u8>>>,
    allocated: Mutex<u64>,
}

impl Default for StagingPool {
    fn default() -> Self {
        Self::new()
    }
}

impl StagingPool {
    /// An empty pool.
    pub fn new() -> Self {
        StagingPool {
            free: Mutex::new(Vec::new()),
            allocated: Mutex::new(0),
        }
    }

    /// Bytes held by the pool's buffers (free and in use): the staging memory.
    pub fn allocated_bytes(&self) -> u64 {
        *self.allocated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of exactly `len` bytes whose pages are faulted in.
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut allocated = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = match reused {
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
        // Writing every byte faults every page in now, once; later saves reuse the pages.
        buf.resize(len, 0);
        buf.truncate(len);
        buf
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf);
    }
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
    user: serde_json::Value,
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
        let arena_len: usize = all
            .iter()
            .filter(|(t, _)| matches!(t.data, TensorData::Borrowed(_)))
            .map(|(t, _)| t.data.len())
            .sum();
        let mut arena = pool.take(arena_len);
        let mut copies: Vec<(&[u8], Range<usize>)> = Vec::new();
        let mut tensors = Vec::with_capacity(all.len());
        let mut cursor = 0usize;
        for (t, optimizer) in all {
            let bytes = match t.data {
                TensorData::Borrowed(b) => {
                    let range = cursor..cursor + b.len();
                    cursor += b.len();
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
    let per = total.div_ceil(threads);
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

/// One save of a staged state: where, with what metadata, and whether without the optimizer.
#[derive(Debug, Clone)]
pub struct JobSave {
    /// The checkpoint directory to create.
    pub dir: StoragePath,
    /// Step, epoch and waypoint's reserved state.
    pub meta: CheckpointMeta,
    /// Leave the optimizer's tensors out.
    pub weights_only: bool,
    /// Instead of a full save, a link to this sibling (saved earlier in the same job); a full save
    /// when the storage has no links.
    pub link_to: Option<String>,
    /// A checkpoint (or link) already of this name is replaced atomically (the version counter is
    /// off); otherwise the save fails with [`Error::AlreadyExists`] and removes nothing.
    pub replace: bool,
}

/// What one save of a job did.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The save.
    pub save: JobSave,
    /// The engine's report (`None` for a link).
    pub report: Option<SaveReport>,
    /// It replaced a checkpoint of the same name (which is gone: undoing it cannot bring that
    /// back, so a rollback keeps it).
    pub replaced: bool,
}

/// The save of a job that failed.
#[derive(Debug)]
pub struct JobFailure {
    /// The checkpoint it was writing.
    pub dir: StoragePath,
    /// Why.
    pub error: Error,
    /// It made `dir` appear (committed, but not durably: [`Error::NotDurable`]) where nothing was
    /// before, so undoing it removes `dir`. Otherwise what is at `dir` is not this save's.
    pub created: bool,
}

/// What a job did: the saves that committed, in order, and the first failure.
#[derive(Debug)]
pub struct JobResult {
    /// The saves that committed.
    pub outcomes: Vec<JobOutcome>,
    /// The save that failed and why; later saves were not attempted.
    pub failure: Option<JobFailure>,
}

/// A background job: saves of one staged state, in order, on their own thread.
#[derive(Debug)]
pub struct Job {
    handle: Option<JoinHandle<JobResult>>,
    started: Instant,
    /// Time the caller was blocked staging.
    pub blocked: Duration,
}

impl Job {
    /// Starts writing `saves` of `staged` to `storage` on a new thread. With several ranks,
    /// `coordinator` must be a channel of its own ([`crate::dist::Coordinator::duplicate`]), used
    /// by no other thread and no other job, so that the save's collectives never mix with the
    /// caller's nor with another job's in flight (the run's `SaveQueue` makes
    /// one per job).
    pub fn spawn(
        storage: SharedStorage,
        options: SaveOptions,
        coordinator: SharedCoordinator,
        staged: Staged,
        saves: Vec<JobSave>,
    ) -> Result<Job> {
        let blocked = staged.blocked;
        let handle = std::thread::Builder::new()
            .name("waypoint-save".into())
            .spawn(move || {
                lower_priority();
                run_saves(
                    storage.as_ref(),
                    &options,
                    coordinator.as_ref(),
                    &|optimizer| staged.refs(optimizer),
                    &staged.user,
                    saves,
                )
            })
            .map_err(|e| Error::io("spawn a background save thread", "waypoint-save", e))?;
        Ok(Job {
            handle: Some(handle),
            started: Instant::now(),
            blocked,
        })
    }

    /// Whether the job has finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the job and returns its outcome and its wall time since it started.
    pub fn wait(mut self) -> (JobResult, Duration) {
        let panicked = |what: &str| JobResult {
            outcomes: Vec::new(),
            failure: Some(JobFailure {
                dir: StoragePath::root(),
                error: Error::WorkerPanicked { what: what.into() },
                created: false,
            }),
        };
        let result = match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| panicked("a background save")),
            None => panicked("a background save (already joined)"),
        };
        (result, self.started.elapsed())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // A job is never abandoned half-way: dropping waits for it (its error is logged here,
        // since nobody is left to receive it).
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(JobResult { failure: None, .. }) => {}
                Ok(JobResult {
                    failure: Some(failure),
                    ..
                }) => {
                    tracing::error!(checkpoint = %failure.dir, error = %failure.error, "a background save failed while its run was being dropped")
                }
                Err(_) => {
                    tracing::error!("a background save panicked while its run was being dropped")
                }
            }
        }
    }
}

/// Background writers run at a lower CPU priority (nice +10) and the lowest best-effort I/O
/// priority (class 2, level 7: the I/O they submit themselves, `sync_file_range` and fsync,
/// yields to the loop's reads and writes where the block scheduler honours priorities), both
/// inherited by the writer threads they start, so that when cores or the disk are scarce the
/// training loop wins them.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory-safety preconditions; on Linux, `who = 0` with
        // PRIO_PROCESS names the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!("could not lower the background writer's priority");
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_BE: libc::c_long = 2;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        let ioprio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7;
        // SAFETY: ioprio_set takes three integers and touches no memory of ours; `who = 0`
        // names the calling thread.
        let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio) };
        if rc != 0 {
            tracing::debug!("could not lower the background writer's I/O priority");
        }
    }
}

/// Runs `saves` in order on the calling thread, with `tensors(include_optimizer)` as the state;
/// stops at the first failure. Each outcome and the failure say what the save did to its name
/// (replaced a checkpoint there, or made it appear), so that a rollback undoes only that.
pub fn run_saves<'a>(
    storage: &dyn crate::storage::Storage,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
    tensors: &dyn Fn(bool) -> Vec<TensorRef<'a>>,
    user: &serde_json::Value,
    saves: Vec<JobSave>,
) -> JobResult {
    let mut outcomes = Vec::with_capacity(saves.len());
    for job in saves {
        // Whether something is there now, to be replaced (only with the version counter off).
        let mut replacing = false;
        let result = match job.replace {
            true => there_now(storage, coordinator, &job),
            false => Ok(false),
        }
        .and_then(|there| {
            replacing = there;
            let linked = match &job.link_to {
                Some(target) => link(storage, coordinator, target, &job, there)?,
                None => false,
            };
            match linked {
                true => Ok(None),
                false => {
                    save_one(storage, options, coordinator, tensors, user, &job, there).map(Some)
                }
            }
        });
        match result {
            Ok(report) => outcomes.push(JobOutcome {
                save: job,
                report,
                replaced: replacing,
            }),
            Err(error) => {
                // Only a commit that put the name in place but could not make it durable leaves
                // something of this save under its name; after a replacement that is the new
                // checkpoint, which is kept (the old one is gone).
                let created = matches!(error, Error::NotDurable { .. }) && !replacing;
                return JobResult {
                    outcomes,
                    failure: Some(JobFailure {
                        dir: job.dir,
                        error,
                        created,
                    }),
                };
            }
        }
    }
    JobResult {
        outcomes,
        failure: None,
    }
}

/// Whether something is at `job.dir` now (see [`rank0_answers`]).
fn there_now(
    storage: &dyn crate::storage::Storage,
    coordinator: &dyn Coordinator,
    job: &JobSave,
) -> Result<bool> {
    let failed = format!("could not tell whether {} exists", job.dir);
    rank0_answers(coordinator, job, &failed, || {
        storage.stat(&job.dir).map(|e| e.is_some())
    })
}

/// Rank 0 answers a yes-or-no question about the storage (`ask`) and tells the other ranks, so
/// that every rank goes on with the same answer, and rank 0's failure (`failed` says what)
/// fails every rank at this point instead of leaving the others in a collective.
fn rank0_answers(
    coordinator: &dyn Coordinator,
    job: &JobSave,
    failed: &str,
    ask: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    if coordinator.world_size() == 1 {
        return ask();
    }
    let mine = coordinator.is_root().then(ask);
    let message: &[u8] = match &mine {
        Some(Ok(true)) => b"yes",
        Some(Ok(false)) => b"no",
        Some(Err(_)) | None => b"failed",
    };
    let told = coordinator.broadcast(0, message)?;
    match (mine, told.as_slice()) {
        (Some(result), _) => result,
        (None, b"yes") => Ok(true),
        (None, b"no") => Ok(false),
        (None, _) => Err(Error::RankFailed {
            step: job.meta.step,
            rank: 0,
            world_size: coordinator.world_size(),
            reason: failed.to_owned(),
        }),
    }
}

fn save_one<'a>(
    storage: &dyn crate::storage::Storage,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
    tensors: &dyn Fn(bool) -> Vec<TensorRef<'a>>,
    user: &serde_json::Value,
    job: &JobSave,
    replacing: bool,
) -> Result<SaveReport> {
    let refs = tensors(!job.weights_only);
    save::save(
        storage,
        &job.dir,
        &job.meta,
        &refs,
        user.clone(),
        options,
        coordinator,
        replacing,
    )
}

/// Links `job.dir` to its sibling `target`: rank 0 makes the link and tells the others whether
/// it did (they then save a copy together, or not at all).
fn link(
    storage: &dyn crate::storage::Storage,
    coordinator: &dyn Coordinator,
    target: &str,
    job: &JobSave,
    replacing: bool,
) -> Result<bool> {
    let make = || match replacing {
        true => storage.replace_with_link(target, &job.dir),
        false => storage.link_sibling(target, &job.dir),
    };
    let failed = format!("could not link {} to {target}", job.dir);
    rank0_answers(coordinator, job, &failed, make)
}
