//! Saves in the background: running one or more saves of a staged state ([`Staged`], staged by
//! `staging.rs`) on a background thread at a lower priority. Knows nothing of policy: the caller
//! decides what to save and finalizes the outcome.

use super::pool::lower_priority;
use super::save::SaveOptions;
use super::staging::Staged;
use super::tensors::TensorRef;
use super::{CheckpointMeta, SaveReport, save};
use crate::dist::{Coordinator, SharedCoordinator};
use crate::error::{Error, Result};
use crate::storage::{SharedStorage, StoragePath};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
