//! The one home of asynchronous saves: [`SaveQueue`] stages a state, starts its saves as a
//! background [`Job`], holds at most `max_pending_saves` of them in flight, says what a full
//! queue means (`when_pending_full`: wait for the oldest, or skip), hands the finished jobs back
//! in the order they were submitted, drains the later ones when an earlier one failed (so the
//! caller can roll them back), and runs the deletions of superseded checkpoints.
//!
//! It knows nothing of the policy: each job carries an opaque payload of the caller's (the run's
//! rollback state and deletions), returned with its outcome. It must not decide what to save or
//! delete, and it never finalizes on its own: finalization happens on the caller's thread, in
//! order, when the caller asks (with several ranks, when rank 0 says so, on every rank at once).

use super::background::{Job, JobResult, JobSave};
use super::deletions::Deletions;
use super::save::SaveOptions;
use super::staging::{Staged, StagingPool, arena_len};
use super::tensors::TensorRef;
use crate::dist::SharedCoordinator;
use crate::error::Error;
use crate::policy::PendingFull;
use crate::storage::SharedStorage;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// What to do with a save that is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// There is room: submit it.
    Submit,
    /// The queue is full and `when_pending_full = wait`: finalize the oldest job first.
    WaitForOldest,
    /// The queue is full and `when_pending_full = skip`: skip this save.
    Skip,
}

/// A job the queue handed back, with the caller's payload.
#[derive(Debug)]
pub(crate) struct Finished<T> {
    /// What the job's saves did.
    pub result: JobResult,
    /// The caller's payload, as submitted.
    pub payload: T,
    /// How long the caller was blocked staging it.
    pub blocked: Duration,
    /// The job's wall time.
    pub elapsed: Duration,
}

/// The bounded queue of background saves of one run (see the module documentation).
#[derive(Debug)]
pub(crate) struct SaveQueue<T> {
    storage: SharedStorage,
    /// How background jobs write: fewer threads than a synchronous save by default.
    options: SaveOptions,
    /// Threads that copy borrowed tensors into the staging buffer.
    stage_threads: usize,
    /// The channel each job's own channel is duplicated from (on the caller's thread, at submit):
    /// jobs in flight at once never share one, so their collectives cannot take each other's
    /// messages.
    channel: SharedCoordinator,
    depth: usize,
    when_full: PendingFull,
    pool: Arc<StagingPool>,
    /// Whether the staging memory was prepared ahead ([`SaveQueue::prepare`]).
    prepared: bool,
    /// The jobs in flight, oldest first, each with the names its saves write and the payload.
    jobs: VecDeque<(Job, Vec<String>, T)>,
    deletions: Deletions,
}

impl<T> SaveQueue<T> {
    /// A queue writing to `storage` with `options` (background jobs use half the cores when
    /// `options.threads` is 0), at most `depth` jobs in flight, `when_full` when more are due.
    /// `channel` must be a channel of its own to the other ranks
    /// ([`crate::dist::Coordinator::duplicate`]), used by no other thread: each job gets a
    /// duplicate of it, made when it is submitted. Deletions run on a
    /// thread of their own when `background_deletions`.
    pub(crate) fn new(
        storage: SharedStorage,
        options: &SaveOptions,
        channel: SharedCoordinator,
        depth: usize,
        when_full: PendingFull,
        background_deletions: bool,
    ) -> Self {
        let mut background = options.clone();
        if background.threads == 0 {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            background.threads = (cpus / 2).max(1);
        }
        SaveQueue {
            deletions: Deletions::new(storage.clone(), background_deletions),
            storage,
            stage_threads: options.thread_count(usize::MAX),
            options: background,
            channel,
            depth: depth.max(1),
            when_full,
            pool: Arc::new(StagingPool::new()),
            prepared: false,
            jobs: VecDeque::new(),
        }
    }

    /// Jobs in flight (finished or not, but not handed back yet).
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// What to do with a save due now.
    pub(crate) fn admission(&self) -> Admission {
        if self.jobs.len() < self.depth {
            Admission::Submit
        } else {
            match self.when_full {
                PendingFull::Wait => Admission::WaitForOldest,
                PendingFull::Skip => Admission::Skip,
            }
        }
    }

    /// How many jobs at the front have finished: those [`SaveQueue::pop`] hands back without
    /// waiting.
    pub(crate) fn ready(&self) -> usize {
        self.jobs
            .iter()
            .take_while(|(job, _, _)| job.is_finished())
            .count()
    }

    /// Prepares, once, the staging memory a save of `tensors` (the loop's model and optimizer
    /// tensors, called only the first time) will need: allocated and faulted in on a background
    /// thread, so that the run's first save copies into ready memory instead of waiting for a
    /// fresh buffer's pages (see [`StagingPool::prepare`]).
    pub(crate) fn prepare<'a>(&mut self, tensors: impl FnOnce() -> Vec<TensorRef<'a>>) {
        if self.prepared {
            return;
        }
        self.prepared = true;
        let tensors = tensors();
        self.pool
            .prepare(arena_len(tensors.iter().map(|t| &t.data)));
    }

    /// Stages `model` and `optimizer` (borrowed bytes copied into the pooled staging buffer) with
    /// the trainer state `user`, and starts writing `saves` of it in the background, on a channel
    /// of the job's own. On failure nothing was started, and the payload comes back with the
    /// error.
    ///
    /// Collective with several ranks: every rank submits the same jobs in the same order (rank 0
    /// decides, every rank acts), so the `n`-th job's channel is the same channel on every rank
    /// (ThreadGroup: the `n`-th duplicate; MPI: the `n`-th `MPI_Comm_dup`, made on this thread,
    /// so ordered). The channel is made before staging, so a rank whose staging fails still makes
    /// it, and dropping it unused tells the others' job that this rank left (ThreadGroup).
    pub(crate) fn submit(
        &mut self,
        model: Vec<TensorRef<'_>>,
        optimizer: Vec<TensorRef<'_>>,
        user: serde_json::Value,
        saves: Vec<JobSave>,
        payload: T,
    ) -> std::result::Result<(), (Error, T)> {
        let names = saves.iter().map(|s| s.dir.as_str().to_owned()).collect();
        let job = self.job_channel().and_then(|channel| {
            let staged = Staged::stage(&self.pool, model, optimizer, user, self.stage_threads)?;
            Job::spawn(
                self.storage.clone(),
                self.options.clone(),
                channel,
                staged,
                saves,
            )
        });
        match job {
            Ok(job) => {
                self.jobs.push_back((job, names, payload));
                Ok(())
            }
            Err(e) => Err((e, payload)),
        }
    }

    /// A channel for one job, used by no other: a duplicate of the queue's channel with several
    /// ranks (one process has nothing to mix up).
    fn job_channel(&self) -> crate::error::Result<SharedCoordinator> {
        match self.channel.world_size() {
            1 => Ok(self.channel.clone()),
            _ => Ok(Arc::from(self.channel.duplicate()?)),
        }
    }

    /// Waits for the oldest job and hands it back.
    pub(crate) fn pop(&mut self) -> Option<Finished<T>> {
        let (job, _, payload) = self.jobs.pop_front()?;
        let blocked = job.blocked;
        let (result, elapsed) = job.wait();
        Some(Finished {
            result,
            payload,
            blocked,
            elapsed,
        })
    }

    /// Whether a job in flight (finished or not, not handed back yet) writes `name`.
    pub(crate) fn writes(&self, name: &str) -> bool {
        self.free_after(name) > 0
    }

    /// How many of the oldest jobs must be handed back before no job in flight writes `name`
    /// (0: none does).
    pub(crate) fn free_after(&self, name: &str) -> usize {
        self.jobs
            .iter()
            .rposition(|(_, names, _)| names.iter().any(|n| n == name))
            .map_or(0, |i| i + 1)
    }

    /// Waits for every job in flight and hands them all back, oldest first: the jobs decided on
    /// top of one that failed, to be rolled back with it.
    pub(crate) fn drain(&mut self) -> Vec<Finished<T>> {
        std::iter::from_fn(|| self.pop()).collect()
    }

    /// Bytes of staging memory held (one copy of the state per job in flight, at most).
    pub(crate) fn staging_bytes(&self) -> u64 {
        self.pool.allocated_bytes()
    }

    /// The deletions of superseded checkpoints.
    pub(crate) fn deletions(&mut self) -> &mut Deletions {
        &mut self.deletions
    }

    /// The checkpoints whose deletion is not known to be done (recorded as pending in new
    /// checkpoints).
    pub(crate) fn pending_deletions(&self) -> impl Iterator<Item = &crate::format::Superseded> {
        self.deletions.pending()
    }

    /// The payloads of the jobs in flight, oldest first.
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &T> {
        self.jobs.iter().map(|(_, _, payload)| payload)
    }
}
