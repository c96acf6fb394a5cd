//! A decision's saves: their commit records (the typed reserved part: the next policy state, the
//! run's facts, pending deletions, the loggers' resume states), written synchronously or handed to
//! the save queue, and the finalization of each decision on the training thread, in order:
//! deletions and metrics only after its saves committed; a failed decision rolled back (what it
//! and every later decision committed is removed, the policy state restored) and its error
//! returned.
//!
//! It must not decide (the policy and `events.rs` do) nor write bytes itself (the engine does).

use super::{Checkpointable, Run, SavedCheckpoint};
use crate::engine::{
    CheckpointMeta, Deleted, Finished, JobOutcome, JobResult, JobSave, TensorRef, run_saves,
};
use crate::error::{Error, Result};
use crate::format::{Reserved, RunFacts, Superseded};
use crate::loggers::CheckpointEvent;
use crate::policy::{Action, MetricValue, PolicyState};
use crate::storage::StoragePath;
use std::time::{Duration, Instant};

/// Checkpoints to delete (by name and step), each with the reason for the log.
type Deletes = Vec<(Superseded, &'static str)>;

/// The checkpoints `outcomes` made appear at `step` (not those that replaced a checkpoint of the
/// same name).
fn created(outcomes: Vec<JobOutcome>, step: u64) -> Vec<Superseded> {
    outcomes
        .into_iter()
        .filter(|o| !o.replaced)
        .map(|o| Superseded {
            name: o.save.dir.as_str().to_owned(),
            step,
        })
        .collect()
}

/// What the run keeps with a decision whose saves are in flight.
#[derive(Debug)]
pub(super) struct Pending {
    /// The policy state before the decision, restored if it fails.
    rollback: PolicyState,
    /// The deletions the decision planned, done once its saves committed.
    deletes: Deletes,
    /// The names its saves write: no deletion of these names runs while it is in flight.
    names: Vec<String>,
    step: u64,
}

/// How a decision's checkpoints are saved.
pub(super) struct SaveRequest {
    pub actions: Vec<Action>,
    pub next: PolicyState,
    pub step: u64,
    pub epoch: u64,
    /// The checkpoints end a completed run.
    pub completed: bool,
    /// With `context/`.
    pub with_context: bool,
    /// A preemption save: never weights-only, it must resume the run.
    pub preempting: bool,
    pub asynchronous: bool,
}

impl Run {
    /// Saves what `request` asks for: in the background (the state staged, the job queued), or
    /// now, then finalized.
    pub(super) fn save(
        &mut self,
        request: SaveRequest,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let (saves, deletes) = self.plan(&request)?;
        let step = request.step;
        let names: Vec<String> = saves.iter().map(|s| s.dir.as_str().to_owned()).collect();
        // A deletion of a name this decision writes may be running: it must end first, or it
        // could remove the checkpoint written now.
        for name in &names {
            self.queue.deletions().settle(name);
        }
        let rollback = std::mem::replace(&mut self.state, request.next);
        if request.asynchronous {
            let optimizer = match saves.iter().any(|s| !s.weights_only) {
                true => state.optimizer_tensors(),
                false => Vec::new(),
            };
            let pending = Pending {
                rollback,
                deletes,
                names,
                step,
            };
            let model = state.model_tensors();
            if let Err((e, pending)) =
                self.queue
                    .submit(model, optimizer, state.trainer_state(), saves, pending)
            {
                self.state = pending.rollback;
                return Err(e);
            }
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let tensors = |optimizer: bool| -> Vec<TensorRef<'_>> {
            let mut t = state.model_tensors();
            if optimizer {
                t.extend(state.optimizer_tensors());
            }
            t
        };
        let result = run_saves(
            self.storage.as_ref(),
            self.checkpointer.options(),
            self.coordinator.as_ref(),
            &tensors,
            &state.trainer_state(),
            saves,
        );
        let elapsed = started.elapsed();
        self.finalize(Finished {
            result,
            payload: Pending {
                rollback,
                deletes,
                names,
                step,
            },
            blocked: elapsed,
            elapsed,
        })
    }

    /// The saves (with their commit records' reserved part) and deletions of a decision.
    fn plan(&mut self, request: &SaveRequest) -> Result<(Vec<JobSave>, Deletes)> {
        // A checkpoint to delete is named with the step the policy saved it at (the step of its
        // record): its name may be reused by a newer checkpoint before the deletion runs.
        let deletes: Deletes = request
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { name, reason } => match self.state.saved.get(name) {
                    Some(&step) => Some((
                        Superseded {
                            name: name.clone(),
                            step,
                        },
                        *reason,
                    )),
                    None => {
                        tracing::debug!(checkpoint = %name, "not deleting: the policy has no step for it");
                        None
                    }
                },
                _ => None,
            })
            .collect();
        let reserved = self.reserved(request, &deletes)?;
        let config_weights_only = self.policy.config().save_weights_only();
        let mut saves = Vec::new();
        for action in &request.actions {
            let (name, weights_only, link_to) = match action {
                Action::Save {
                    name, weights_only, ..
                } => (name, *weights_only, None),
                Action::Link { link, target } => (link, config_weights_only, Some(target.clone())),
                Action::Delete { .. } => continue,
            };
            // A preemption save must resume the run: never weights-only.
            let weights_only = if request.preempting {
                config_weights_only
            } else {
                weights_only
            };
            let mut waypoint = reserved.clone();
            if let Some(run) = &mut waypoint.run {
                run.weights_only = weights_only;
            }
            let meta = CheckpointMeta {
                step: request.step,
                epoch: request.epoch,
                waypoint,
                context: match request.with_context {
                    true => self.config.context.clone(),
                    false => Vec::new(),
                },
            };
            saves.push(JobSave {
                dir: StoragePath::new(name)?,
                meta,
                weights_only,
                link_to,
                // NeMo and Lightning overwrite a checkpoint of the same name; waypoint replaces it
                // atomically (or refuses where the storage cannot).
                replace: !self.policy.config().enable_version_counter(),
            });
        }
        Ok((saves, deletes))
    }

    /// The reserved part shared by a decision's records. The loggers are flushed first, so the
    /// metrics up to the checkpoint are on disk before it commits.
    fn reserved(
        &mut self,
        request: &SaveRequest,
        deletes: &[(Superseded, &'static str)],
    ) -> Result<Reserved> {
        let policy_state =
            serde_json::to_value(&request.next).map_err(|source| Error::TrainerState {
                path: self.dirpath.clone(),
                source,
            })?;
        // Deletions not known to be done are recorded too, so that a resumed run finishes them.
        let pending: Vec<Superseded> = deletes
            .iter()
            .map(|(d, _)| d)
            .chain(self.queue.pending_deletions())
            .cloned()
            .collect();
        let mut reserved = Reserved {
            model_checkpoint: Some(policy_state),
            run: Some(RunFacts {
                completed: request.completed,
                weights_only: false,
                experiment: self.config.name.clone(),
                version: self.config.version.clone(),
            }),
            superseded: Some(pending),
            ..Reserved::default()
        };
        if let Some(loggers) = &mut self.loggers {
            if let Err(e) = loggers.flush() {
                tracing::warn!(error = %e, "a metric logger failed before a checkpoint save");
            }
            // The MLflow / W&B run ids, so that a run resumed from here continues them.
            reserved.loggers = loggers.resume_state();
        }
        Ok(reserved)
    }

    /// Finalizes the `count` oldest background saves, in order.
    pub(super) fn finalize_oldest(&mut self, count: usize) -> Result<Vec<SavedCheckpoint>> {
        let mut saved = Vec::new();
        for _ in 0..count {
            let Some(finished) = self.queue.pop() else {
                break;
            };
            saved.extend(self.finalize(finished)?);
        }
        Ok(saved)
    }

    /// Waits for every background save and finalizes it. With several ranks every rank holds
    /// the same saves in flight (rank 0 decides which are finalized when), so this is the same
    /// on all of them.
    pub(super) fn finalize_all(&mut self) -> Result<Vec<SavedCheckpoint>> {
        self.finalize_oldest(self.queue.len())
    }

    /// Applies the outcome of one decision: on success, its deletions, metrics and report; on
    /// failure, a rollback of it and of every later decision, then the error.
    fn finalize(&mut self, finished: Finished<Pending>) -> Result<Vec<SavedCheckpoint>> {
        let Finished {
            result: JobResult { outcomes, failure },
            payload,
            blocked,
            elapsed,
        } = finished;
        if let Some(failure) = failure {
            // Undo the decision, but only what it created: the names its saves committed, and the
            // failed save's directory only if that save made it appear (committed, but the final
            // fsync failed). A name that was there before (a collision, another committer that won
            // the race) is not this decision's; a replaced checkpoint cannot come back, and its
            // replacement is kept.
            let created_at = |dir: StoragePath, step| Superseded {
                name: dir.as_str().to_owned(),
                step,
            };
            let mut undo = created(outcomes, payload.step);
            undo.extend(
                failure
                    .created
                    .then(|| created_at(failure.dir, payload.step)),
            );
            // Later decisions were made on top of this one: undo them too.
            for later in self.queue.drain() {
                let step = later.payload.step;
                undo.extend(created(later.result.outcomes, step));
                undo.extend(
                    later
                        .result
                        .failure
                        .and_then(|f| f.created.then(|| created_at(f.dir, step))),
                );
            }
            self.roll_back(undo, payload.rollback);
            tracing::error!(step = payload.step, error = %failure.error, "checkpoint save failed; the checkpoints that were there before it are intact");
            return Err(failure.error);
        }
        // The decision committed: its deletions may go ahead (rank 0 alone deletes; the other
        // ranks share its storage).
        if self.coordinator.is_root() {
            // Saves still in flight may write a name being deleted (one freed and reused): their
            // names wait until they finished.
            let busy: Vec<String> = self
                .queue
                .payloads()
                .flat_map(|p| p.names.iter().cloned())
                .collect();
            self.queue
                .deletions()
                .start(payload.deletes, &|name| busy.iter().any(|b| b == name));
        }
        let step = payload.step;
        let saved: Vec<SavedCheckpoint> = outcomes
            .into_iter()
            .map(|outcome| {
                let (bytes, write) = outcome
                    .report
                    .as_ref()
                    .map_or((0, Duration::ZERO), |r| (r.file_bytes, r.elapsed));
                let name = outcome.save.dir.as_str().to_owned();
                tracing::info!(checkpoint = %name, step, bytes, blocked_ms = blocked.as_millis() as u64, write_ms = write.as_millis() as u64, "checkpoint saved");
                SavedCheckpoint {
                    path: self.dirpath.join(&name),
                    name,
                    step,
                    bytes,
                    elapsed: write,
                    blocked,
                    link: outcome.report.is_none(),
                }
            })
            .collect();
        self.report(&saved, step, blocked, elapsed);
        Ok(saved)
    }

    /// Removes what a failed decision (and those after it) committed, and restores the policy
    /// state from before it.
    fn roll_back(&mut self, undo: Vec<Superseded>, rollback: PolicyState) {
        if self.coordinator.is_root() {
            for doomed in undo.iter().filter(|d| !d.name.is_empty()) {
                if let Err(e) = self.queue.deletions().delete_now(doomed) {
                    tracing::warn!(checkpoint = %doomed.name, error = %e, "could not roll back a checkpoint of a failed decision");
                }
            }
        }
        self.state = rollback;
    }

    /// Tells the loggers about the committed checkpoints and records the save metrics
    /// (`checkpoint/blocked_ms`, `checkpoint/write_ms`, `checkpoint/throughput_gib_s`).
    fn report(
        &mut self,
        saved: &[SavedCheckpoint],
        step: u64,
        blocked: Duration,
        elapsed: Duration,
    ) {
        if let Some(loggers) = &mut self.loggers {
            for s in saved {
                loggers.checkpoint_saved(&CheckpointEvent {
                    step,
                    path: s.path.clone(),
                    bytes: s.bytes,
                    blocked_ms: blocked.as_secs_f64() * 1e3,
                    write_ms: s.elapsed.as_secs_f64() * 1e3,
                });
            }
        }
        let bytes: u64 = saved.iter().map(|s| s.bytes).sum();
        let secs = elapsed.as_secs_f64();
        let mut record = |name: &str, value: f64| {
            self.metrics
                .insert(name.to_owned(), MetricValue { value, step });
        };
        record("checkpoint/blocked_ms", blocked.as_secs_f64() * 1e3);
        record("checkpoint/write_ms", secs * 1e3);
        if secs > 0.0 {
            record(
                "checkpoint/throughput_gib_s",
                bytes as f64 / (1u64 << 30) as f64 / secs,
            );
        }
    }

    /// Waits for every save in flight and finalizes it; returns the checkpoints they committed, or
    /// the first failure.
    pub fn wait_for_saves(&mut self) -> Result<Vec<SavedCheckpoint>> {
        let saved = self.finalize_all();
        // Deletions in flight finish too, also when a save failed: the directory then holds
        // exactly what the policy keeps.
        self.retry_deletions();
        saved
    }

    /// Tries the deletions that failed earlier once more (at the end of the saves in flight).
    pub(super) fn retry_deletions(&mut self) {
        if self.coordinator.is_root() {
            self.queue.deletions().retry();
        }
    }

    /// Deletes what the resumed checkpoint's decision had planned but a crash interrupted: each
    /// only while its name still holds that checkpoint, never the resumed one.
    pub(super) fn finish_interrupted_deletions(&mut self, doomed: Vec<Superseded>) {
        let resumed = self.protected.clone();
        for d in doomed {
            if resumed.as_deref() == Some(d.name.as_str()) {
                tracing::debug!(checkpoint = %d.name, "not deleted: the run resumes from it");
                continue;
            }
            match self.queue.deletions().delete_now(&d) {
                Ok(Deleted::Yes) => {
                    tracing::info!(checkpoint = %d.name, step = d.step, "deleted: superseded before the previous run was interrupted")
                }
                Ok(Deleted::Absent) => {}
                Ok(Deleted::Other(now)) => {
                    tracing::debug!(checkpoint = %d.name, step = d.step, now = ?now, "not deleted: the name holds another checkpoint now")
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %d.name, error = %e, "could not delete a superseded checkpoint")
                }
            }
        }
    }

    /// Saves in flight.
    pub fn pending_saves(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of staging memory held for asynchronous saves.
    pub fn staging_bytes(&self) -> u64 {
        self.queue.staging_bytes()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Saves in flight are completed, never abandoned; their errors have nowhere else to go.
        if let Err(e) = self.finalize_all() {
            tracing::error!(error = %e, "a background checkpoint save failed before the run was dropped");
        }
        self.retry_deletions();
    }
}
