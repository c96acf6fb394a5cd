//! Turning the policy's decisions into checkpoints, synchronously or in the background, and
//! finalizing them in order on the training thread: deletions and metrics only after the saves of
//! a decision committed; a failed decision rolled back (what it committed is removed, the policy
//! state restored) and its error surfaced on the next call, on finish or (logged) on drop.

use super::{
    Checkpointable, LOGGERS_STATE_KEY, PENDING_DELETES_KEY, POLICY_STATE_KEY, RUN_STATE_KEY, Run,
    SavedCheckpoint,
};
use crate::engine::{CheckpointMeta, Job, JobResult, JobSave, Staged, TensorRef, run_saves};
use crate::error::{Error, Result};
use crate::policy::{Action, DecideContext, Event, MetricValue, PendingFull, PolicyState};
use crate::storage::StoragePath;
use std::time::{Duration, Instant};

/// A decision whose saves run in the background.
pub(super) struct Pending {
    job: Job,
    /// The policy state before the decision, restored if it fails.
    rollback: PolicyState,
    deletes: Vec<(String, &'static str)>,
    step: u64,
}

/// The saves a decision asks for, and its deletions.
struct Plan {
    saves: Vec<JobSave>,
    deletes: Vec<(String, &'static str)>,
}

impl Run {
    pub(super) fn handle(
        &mut self,
        event: Event,
        state: &dyn Checkpointable,
        completed: bool,
    ) -> Result<Vec<SavedCheckpoint>> {
        self.handle_event(event, state, completed, false)
    }

    /// Saves what the run needs to resume at `step` (the `-last` checkpoint, with the optimizer),
    /// synchronously, after every save in flight: the preemption path.
    pub(super) fn save_for_preemption(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let mut saved = self.finalize_ready(true)?;
        let now_s = (self.clock)();
        saved.extend(self.handle_event(
            Event::TrainEnd { step, epoch, now_s },
            state,
            false,
            true,
        )?);
        if self.state.last_save_step != Some(step) {
            tracing::warn!(
                step,
                "preempted, but save_last is off: the progress since the previous checkpoint is lost"
            );
        }
        Ok(saved)
    }

    fn handle_event(
        &mut self,
        event: Event,
        state: &dyn Checkpointable,
        completed: bool,
        preempting: bool,
    ) -> Result<Vec<SavedCheckpoint>> {
        let mut finalized = self.finalize_ready(false)?;
        let (step, epoch, _) = event.parts();
        let train_end = matches!(event, Event::TrainEnd { .. });
        let asynchronous = self.policy.config().async_save() && !train_end;
        let (actions, next) = loop {
            // With several ranks, rank 0 decides (including whether a save waits for or skips
            // the one in flight) and the others follow, so every rank saves the same checkpoints.
            if !self.coordinator.is_root() {
                let decided: super::ranks::Decided = super::ranks::share(
                    self.coordinator.as_ref(),
                    "the checkpoint decision",
                    None,
                )?;
                if decided.skip {
                    return Ok(finalized);
                }
                break (decided.actions(), decided.next);
            }
            let decision = self.decide(&event);
            let skip = if decision.actions.is_empty() {
                false
            } else if asynchronous && self.pending.len() >= self.policy.config().max_pending_saves()
            {
                match self.policy.config().when_pending_full() {
                    PendingFull::Wait => {
                        finalized.extend(self.finalize_oldest()?);
                        continue; // decide again on the state the finished save left
                    }
                    PendingFull::Skip => {
                        tracing::warn!(
                            step,
                            in_flight = self.pending.len(),
                            "a save is due but the previous one is still being written: skipped (when_pending_full = skip)"
                        );
                        true
                    }
                }
            } else {
                false
            };
            if self.coordinator.world_size() > 1 {
                let decided =
                    super::ranks::Decided::new(skip, decision.next.clone(), &decision.actions);
                super::ranks::share(
                    self.coordinator.as_ref(),
                    "the checkpoint decision",
                    Some(Ok(decided)),
                )?;
            }
            if skip {
                return Ok(finalized);
            }
            break (decision.actions, decision.next);
        };
        if actions.is_empty() {
            // Nothing to save; the state still advances (the time trigger's clock).
            self.state = next;
            return Ok(finalized);
        }
        // The other ranks wait for their own save in flight where rank 0 waited for its.
        while asynchronous && self.pending.len() >= self.policy.config().max_pending_saves() {
            finalized.extend(self.finalize_oldest()?);
        }
        if !asynchronous {
            finalized.extend(self.finalize_ready(true)?);
        }
        let completed = completed || self.max_steps.is_some_and(|m| step >= m);
        let config = self.policy.config();
        let with_context =
            config.always_save_context() || (train_end && config.save_context_on_train_end());
        let mut plan = self.plan(&actions, &next, step, epoch, completed, with_context)?;
        if preempting {
            // A preemption save must resume the run: never weights-only.
            let weights_only = config.save_weights_only();
            for save in &mut plan.saves {
                save.weights_only = weights_only;
            }
        }
        if let Some(loggers) = &mut self.loggers
            && let Err(e) = loggers.flush()
        {
            // The metrics up to this checkpoint should be on disk before it commits.
            tracing::warn!(error = %e, "a metric logger failed before a checkpoint save");
        }
        if let Some(loggers) = &self.loggers {
            // The MLflow / W&B run ids, so that a run resumed from here continues them.
            let states = loggers.resume_state();
            if !states.is_empty() {
                for save in &mut plan.saves {
                    save.meta
                        .waypoint
                        .insert(LOGGERS_STATE_KEY.into(), states.clone().into());
                }
            }
        }
        let rollback = std::mem::replace(&mut self.state, next);
        if asynchronous {
            let with_optimizer = plan.saves.iter().any(|s| !s.weights_only);
            let optimizer = if with_optimizer {
                state.optimizer_tensors()
            } else {
                Vec::new()
            };
            let staged = match Staged::stage(
                &self.pool,
                state.model_tensors(),
                optimizer,
                state.trainer_state(),
                self.checkpointer.options().thread_count(usize::MAX),
            ) {
                Ok(staged) => staged,
                Err(e) => {
                    self.state = rollback;
                    return Err(e);
                }
            };
            let options = self.background_options();
            match Job::spawn(
                self.storage.clone(),
                options,
                self.background.clone(),
                staged,
                plan.saves,
            ) {
                Ok(job) => self.pending.push_back(Pending {
                    job,
                    rollback,
                    deletes: plan.deletes,
                    step,
                }),
                Err(e) => {
                    self.state = rollback;
                    return Err(e);
                }
            }
            return Ok(finalized);
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
            plan.saves,
        );
        let elapsed = started.elapsed();
        finalized.extend(self.finalize(result, rollback, plan.deletes, step, elapsed, elapsed)?);
        Ok(finalized)
    }

    fn decide(&self, event: &Event) -> crate::policy::Decision {
        let storage = self.storage.clone();
        let existing = |name: &str| -> bool {
            StoragePath::new(name)
                .ok()
                .and_then(|p| storage.stat(&p).ok().flatten())
                .is_some()
        };
        // The resumed checkpoint is protected from the policy when the policy does not manage it
        // (another run's, or forgotten after a monitor change). A managed one is rotated like any
        // other, and only after its replacement committed (saves come before deletes), so a resume
        // point is never lost and no stale -last outlives the restart.
        let protected = self
            .protected
            .as_deref()
            .filter(|p| !self.state.saved.contains_key(*p));
        let ctx = DecideContext {
            existing: &existing,
            protected,
        };
        let decision = self.policy.decide(&self.state, event, &self.metrics, &ctx);
        for note in &decision.notes {
            tracing::info!("{note}");
        }
        decision
    }

    /// The saves (with their commit-record metadata) and deletions of a decision.
    fn plan(
        &self,
        actions: &[Action],
        next: &PolicyState,
        step: u64,
        epoch: u64,
        completed: bool,
        with_context: bool,
    ) -> Result<Plan> {
        let deletes: Vec<(String, &'static str)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { name, reason } => Some((name.clone(), *reason)),
                _ => None,
            })
            .collect();
        // Deletions that failed earlier are recorded too, so that a resumed run finishes them.
        let pending: Vec<&str> = deletes
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.undeleted.iter().map(String::as_str))
            .chain(
                self.deleting
                    .iter()
                    .flat_map(|(names, _)| names.iter().map(String::as_str)),
            )
            .collect();
        let mut saves = Vec::new();
        for action in actions {
            let (name, weights_only, link_to) = match action {
                Action::Save {
                    name, weights_only, ..
                } => (name, *weights_only, None),
                Action::Link { link, target } => (
                    link,
                    self.policy.config().save_weights_only(),
                    Some(target.clone()),
                ),
                Action::Delete { .. } => continue,
            };
            let mut meta = CheckpointMeta {
                step,
                epoch,
                ..Default::default()
            };
            if with_context {
                meta.context = self.context.clone();
            }
            let policy_state =
                serde_json::to_value(next).map_err(|source| Error::TrainerState {
                    path: self.dirpath.join(name),
                    source,
                })?;
            meta.waypoint.insert(POLICY_STATE_KEY.into(), policy_state);
            meta.waypoint
                .insert(PENDING_DELETES_KEY.into(), serde_json::json!(pending));
            meta.waypoint.insert(
                RUN_STATE_KEY.into(),
                serde_json::json!({
                    "completed": completed,
                    "weights_only": weights_only,
                    "experiment": self.experiment,
                    "version": self.version,
                }),
            );
            saves.push(JobSave {
                dir: StoragePath::new(name)?,
                meta,
                weights_only,
                link_to,
            });
        }
        Ok(Plan { saves, deletes })
    }

    /// Background saves write with fewer threads than synchronous ones, leaving a core to
    /// training.
    fn background_options(&self) -> crate::engine::SaveOptions {
        let mut options = self.checkpointer.options().clone();
        if options.threads == 0 {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            options.threads = (cpus / 2).max(1);
        }
        options
    }

    /// Finalizes the finished background saves in order; with `block`, all of them.
    pub(super) fn finalize_ready(&mut self, block: bool) -> Result<Vec<SavedCheckpoint>> {
        let mut saved = Vec::new();
        while let Some(front) = self.pending.front() {
            if !block && !front.job.is_finished() {
                break;
            }
            saved.extend(self.finalize_oldest()?);
        }
        Ok(saved)
    }

    fn finalize_oldest(&mut self) -> Result<Vec<SavedCheckpoint>> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(Vec::new());
        };
        let blocked = pending.job.blocked;
        let (result, elapsed) = pending.job.wait();
        self.finalize(
            result,
            pending.rollback,
            pending.deletes,
            pending.step,
            blocked,
            elapsed,
        )
    }

    /// Applies the outcome of one decision: on success, its deletions, metrics and report; on
    /// failure, a rollback of it and of every later decision, then the error.
    fn finalize(
        &mut self,
        result: JobResult,
        rollback: PolicyState,
        deletes: Vec<(String, &'static str)>,
        step: u64,
        blocked: Duration,
        elapsed: Duration,
    ) -> Result<Vec<SavedCheckpoint>> {
        let JobResult { outcomes, failure } = result;
        if let Some((failed, error)) = failure {
            // Undo the decision: what it committed, and the failed save's directory in case only
            // the final fsync of its commit failed (visible, but not known to be durable).
            let mut undo: Vec<StoragePath> = outcomes.into_iter().map(|o| o.save.dir).collect();
            undo.push(failed);
            // Later decisions were made on top of this one: undo them too.
            while let Some(later) = self.pending.pop_front() {
                let (later, _) = later.job.wait();
                undo.extend(later.outcomes.into_iter().map(|o| o.save.dir));
                undo.extend(later.failure.map(|(dir, _)| dir));
            }
            for dir in undo.into_iter().filter(|d| !d.is_root()) {
                if let Err(e) = self.delete(dir.as_str()) {
                    tracing::warn!(checkpoint = %dir, error = %e, "could not roll back a checkpoint of a failed decision");
                    self.undeleted.push(dir.as_str().to_owned());
                }
            }
            self.state = rollback;
            tracing::error!(step, error = %error, "checkpoint save failed; the previous checkpoints are intact");
            return Err(error);
        }
        // The decision committed: its deletions may go ahead. With asynchronous saves they run
        // on a thread of their own (removing a large checkpoint takes a while), joined at the
        // next finalization, at finish and on drop.
        self.collect_deletions();
        let retries = std::mem::take(&mut self.undeleted)
            .into_iter()
            .map(|n| (n, "retrying an earlier deletion"));
        let names: Vec<(String, &'static str)> = deletes.into_iter().chain(retries).collect();
        // Rank 0 alone deletes (the other ranks share its storage).
        if !names.is_empty() && self.coordinator.is_root() {
            if self.policy.config().async_save() {
                let storage = self.storage.clone();
                let in_flight: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
                match std::thread::Builder::new()
                    .name("waypoint-delete".into())
                    .spawn(move || delete_all(storage.as_ref(), names))
                {
                    // Until it reports, its names count as pending in the records saved meanwhile.
                    Ok(handle) => self.deleting = Some((in_flight, handle)),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a deletion thread; retried after the next save")
                    }
                }
            } else {
                let failed = delete_all(self.storage.as_ref(), names);
                self.undeleted.extend(failed);
            }
        }
        let mut saved = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let (bytes, write) = outcome
                .report
                .as_ref()
                .map_or((0, Duration::ZERO), |r| (r.file_bytes, r.elapsed));
            let name = outcome.save.dir.as_str().to_owned();
            tracing::info!(checkpoint = %name, step, bytes, blocked_ms = blocked.as_millis() as u64, write_ms = write.as_millis() as u64, "checkpoint saved");
            saved.push(SavedCheckpoint {
                path: self.dirpath.join(&name),
                name,
                step,
                bytes,
                elapsed: write,
                blocked,
                link: outcome.report.is_none(),
            });
        }
        if let Some(loggers) = &mut self.loggers {
            for s in &saved {
                loggers.checkpoint_saved(&crate::loggers::CheckpointEvent {
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
        Ok(saved)
    }

    /// Waits for every save in flight and finalizes it; returns the checkpoints they committed, or
    /// the first failure.
    pub fn wait_for_saves(&mut self) -> Result<Vec<SavedCheckpoint>> {
        let saved = self.finalize_ready(true);
        // Deletions in flight finish too, also when a save failed: the directory then holds
        // exactly what the policy keeps.
        self.retry_deletions();
        saved
    }

    /// Tries the deletions that failed earlier once more (at the end of the saves in flight).
    pub(super) fn retry_deletions(&mut self) {
        self.collect_deletions();
        for name in std::mem::take(&mut self.undeleted) {
            if let Err(e) = self.delete(&name) {
                tracing::warn!(checkpoint = %name, error = %e, "could not delete a superseded checkpoint; a resumed run retries");
                self.undeleted.push(name);
            }
        }
    }

    /// Saves in flight.
    pub fn pending_saves(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of staging memory held for asynchronous saves.
    pub fn staging_bytes(&self) -> u64 {
        self.pool.allocated_bytes()
    }

    pub(super) fn delete(&self, name: &str) -> Result<()> {
        if !self.coordinator.is_root() {
            return Ok(()); // rank 0 deletes for everyone
        }
        delete_checkpoint(self.storage.as_ref(), name)
    }

    /// Waits for the deletions running in the background; what failed is retried later.
    fn collect_deletions(&mut self) {
        if let Some((_, handle)) = self.deleting.take() {
            match handle.join() {
                Ok(failed) => {
                    for name in failed {
                        if !self.undeleted.contains(&name) {
                            self.undeleted.push(name);
                        }
                    }
                }
                Err(_) => tracing::warn!(
                    "the deletion thread panicked; its checkpoints are retried by a resumed run"
                ),
            }
        }
    }
}

/// Deletes a checkpoint (a directory, or a `-last` link); nothing there is fine.
pub(super) fn delete_checkpoint(storage: &dyn crate::storage::Storage, name: &str) -> Result<()> {
    let path = StoragePath::new(name)?;
    match storage.stat(&path)? {
        Some(e) if e.kind == crate::storage::EntryKind::Symlink => storage.remove_link(&path),
        Some(_) => storage.remove_dir_all(&path, &crate::engine::record_path(&path)?),
        None => Ok(()),
    }
}

/// Deletes superseded checkpoints and returns those that could not be deleted.
fn delete_all(
    storage: &dyn crate::storage::Storage,
    names: Vec<(String, &'static str)>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, reason) in names {
        match delete_checkpoint(storage, &name) {
            Ok(()) => tracing::info!(checkpoint = %name, reason, "deleted"),
            Err(e) => {
                tracing::warn!(checkpoint = %name, error = %e, "could not delete a superseded checkpoint; retried after the next save");
                failed.push(name);
            }
        }
    }
    failed
}

impl Drop for Run {
    fn drop(&mut self) {
        // Saves in flight are completed, never abandoned; their errors have nowhere else to go.
        if let Err(e) = self.finalize_ready(true) {
            tracing::error!(error = %e, "a background checkpoint save failed before the run was dropped");
        }
        self.retry_deletions();
    }
}
