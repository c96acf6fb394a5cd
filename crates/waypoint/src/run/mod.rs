//! [`Run`]: the one handle a training loop talks to. It holds a handle to each concern and the
//! glue between them: the pure policy ([`crate::policy`]) decides, the run turns its actions into
//! saves (through the engine's [`SaveQueue`] when asynchronous), deletions only after their
//! replacement committed, and restores every piece of state from the checkpoint AutoResume
//! ([`crate::resume`]) planned. It works with no framework: the loop calls it at step, validation
//! and epoch ends.
//!
//! The files, in the order a step goes through them: `events.rs` (an event → rank 0's decision,
//! shared with every rank → saves), `saves.rs` (a decision's saves and their commit records;
//! finalizing a finished one: deletions, metrics, or its rollback), `restore.rs` (the resume
//! point into the loop's state), `config.rs` (building), `ranks.rs` (the messages ranks
//! exchange). It must not write bytes itself (the engine does) nor decide what to keep (the
//! policy does).

mod checkpointable;
mod config;
mod events;
mod manual;
mod ranks;
mod restore;
mod saves;
mod train_end;

pub use checkpointable::{Checkpointable, SavedCheckpoint};
pub use config::{RunBuilder, RunConfig};
pub(crate) use ranks::share;

use crate::dist::SharedCoordinator;
use crate::engine::{Checkpointer, SaveQueue};
use crate::error::{Error, Result};
use crate::loggers::Loggers;
use crate::policy::{Event, MetricValue, Metrics, Policy, PolicyState};
use crate::resume::ResumePoint;
use crate::storage::SharedStorage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The handle a training loop talks to: report metrics, tell it where training is, and it saves,
/// rotates and deletes checkpoints as the [`ModelCheckpoint`](crate::ModelCheckpoint) policy says, synchronously.
///
/// ```
/// use waypoint::{AutoResume, Checkpointable, Dtype, ModelCheckpoint, Run, SinkSlot, TensorRef};
///
/// struct Model { w: Vec<u8>, step: u64 }
/// impl Checkpointable for Model {
///     fn model_tensors(&self) -> Vec<TensorRef<'_>> { vec![TensorRef::whole("w", Dtype::U8, vec![4], self.w.as_slice())] }
///     fn trainer_state(&self) -> serde_json::Value { serde_json::json!({"step": self.step}) }
///     fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
///         vec![SinkSlot { name: "w", dtype: Dtype::U8, shape: &[4], data: &mut self.w }]
///     }
///     fn restore_trainer_state(&mut self, s: serde_json::Value) -> waypoint::Result<()> {
///         self.step = s["step"].as_u64().unwrap_or(0);
///         Ok(())
///     }
/// }
///
/// let tmp = tempfile::tempdir().unwrap();
/// let policy = ModelCheckpoint::builder().no_monitor().save_top_k(1).every_n_train_steps(2).build().unwrap();
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build().unwrap();
/// let mut model = Model { w: vec![0; 4], step: 0 };
/// let mut run = Run::builder().log_dir(tmp.path()).checkpoint(policy.clone()).resume(resume.clone()).build().unwrap();
/// run.restore(&mut model).unwrap();
/// for step in model.step + 1..=4 {
///     model.w[0] = step as u8;
///     model.step = step;
///     run.step_end(step, 0, &model).unwrap();
/// }
/// run.finish(4, 0, &model).unwrap();
///
/// // A new process: the same command resumes from step 4.
/// let mut model = Model { w: vec![0; 4], step: 0 };
/// let mut run = Run::builder().log_dir(tmp.path()).checkpoint(policy).resume(resume).build().unwrap();
/// let point = run.restore(&mut model).unwrap().unwrap();
/// assert_eq!((point.step, model.step, model.w[0]), (4, 4, 4));
/// ```
pub struct Run {
    /// The settings it was built with.
    config: RunConfig,
    storage: SharedStorage,
    /// Synchronous saves and loads.
    checkpointer: Checkpointer,
    dirpath: PathBuf,
    exp_dir: PathBuf,
    policy: Policy,
    /// The policy's state: live once the saves of the decision that produced it were submitted,
    /// rolled back if they fail.
    state: PolicyState,
    metrics: Metrics,
    resume: Option<ResumePoint>,
    /// The resumed checkpoint, protected from the policy unless the policy manages it.
    protected: Option<String>,
    /// AutoResume's restore_config, when it applies (nothing to resume), then its report.
    elsewhere: Option<restore::Elsewhere>,
    clock: Box<dyn Fn() -> f64 + Send>,
    /// Background saves in flight and the deletions of superseded checkpoints.
    queue: SaveQueue<saves::Pending>,
    preemption: Option<Arc<AtomicBool>>,
    stopped: bool,
    loggers: Option<Loggers>,
    /// Metrics of earlier steps were logged by the run this one resumed from.
    logged_from: u64,
    /// The ranks (the training thread's channel).
    coordinator: SharedCoordinator,
    /// Checkpoint decisions shared with the other ranks so far (each carries its number).
    decisions: u64,
    /// The warning of a monitor never reported was given (`on_missing_monitor(Warn)`: once).
    monitor_warned: bool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("dirpath", &self.dirpath)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Starts a builder with NeMo's defaults.
    pub fn builder() -> RunBuilder {
        RunBuilder::default()
    }

    /// The checkpoints directory.
    pub fn checkpoint_dir(&self) -> &Path {
        &self.dirpath
    }

    /// The experiment directory (`<log_dir>/<name>[/<version>]`).
    pub fn experiment_dir(&self) -> &Path {
        &self.exp_dir
    }

    /// The checkpoint chosen to resume from, if any.
    pub fn resume_point(&self) -> Option<&ResumePoint> {
        self.resume.as_ref()
    }

    /// The policy's current state (top-k, last, …).
    pub fn policy_state(&self) -> &PolicyState {
        &self.state
    }

    /// Records metric values measured at `step`; the policy ranks by the monitored one, and a
    /// name uses only values measured at its checkpoint's step. A trainer that counts samples
    /// reports them as the metric `consumed_samples` (NeMo's Megatron trainers log it at every
    /// step): with the default filename, a checkpoint saved at a step where it was reported is
    /// named `…-consumed_samples=<n>`, as NeMo names it.
    pub fn log_metrics(&mut self, step: u64, metrics: &[(&str, f64)]) {
        for (name, value) in metrics {
            self.metrics.insert(
                (*name).to_owned(),
                MetricValue {
                    value: *value,
                    step,
                },
            );
        }
        if step < self.logged_from {
            return; // logged by the run this one resumed
        }
        if let Some(loggers) = &mut self.loggers {
            loggers.log_metrics(step, metrics);
        }
    }

    /// Hands hyperparameters to the loggers (TensorBoard's hparams, the CSV logger's hparams.yaml).
    pub fn log_hyperparams(&mut self, params: &serde_json::Map<String, serde_json::Value>) {
        if let Some(loggers) = &mut self.loggers {
            loggers.log_hyperparams(params);
        }
    }

    /// Logs a text record (TensorBoard's text plugin).
    pub fn log_text(&mut self, step: u64, tag: &str, text: &str) {
        if let Some(loggers) = &mut self.loggers {
            loggers.log_text(step, tag, text);
        }
    }

    /// Call after each optimizer step; `step` counts optimizer steps completed (1 after the first).
    pub fn step_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        if self.policy.config().async_save() {
            // Once: the staging memory of the first background save is faulted in on a
            // background thread now, not while the loop waits for that save.
            self.queue.prepare(|| {
                let mut tensors = state.model_tensors();
                tensors.extend(state.optimizer_tensors());
                tensors
            });
        }
        self.step_end_from(step, epoch, &mut { state })
    }

    /// [`Run::step_end`] with a state built by `make` only when a save is due: steps without a
    /// save cost no locks, no JSON and no snapshot. `make` may be called more than once at one
    /// step (a due save, then the preemption's `-last` save); its error is returned as waypoint's
    /// (crates built on waypoint convert theirs, others wrap it with [`Error::caller`]).
    ///
    /// ```
    /// # fn main() -> Result<(), waypoint::Error> {
    /// # let dir = tempfile::tempdir().map_err(|e| waypoint::Error::caller("tempdir", e))?;
    /// use waypoint::{Checkpointable, ModelCheckpoint, Run, SinkSlot, TensorRef};
    /// struct Counter(u64);
    /// impl Checkpointable for Counter {
    ///     fn model_tensors(&self) -> Vec<TensorRef<'_>> { Vec::new() }
    ///     fn trainer_state(&self) -> serde_json::Value { serde_json::json!({ "step": self.0 }) }
    ///     fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> { Vec::new() }
    ///     fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> { Ok(()) }
    /// }
    /// let policy = ModelCheckpoint::builder().every_n_train_steps(5).save_top_k(-1).build()?;
    /// let mut run = Run::builder().log_dir(dir.path()).checkpoint(policy).build()?;
    /// let mut built = 0;
    /// for step in 1..=10 {
    ///     run.step_end_with(step, 0, || {
    ///         built += 1;
    ///         Ok::<_, waypoint::Error>(Counter(step))
    ///     })?;
    /// }
    /// assert_eq!(built, 2); // steps 5 and 10
    /// # Ok(()) }
    /// ```
    pub fn step_end_with<C, E>(
        &mut self,
        step: u64,
        epoch: u64,
        make: impl FnMut() -> std::result::Result<C, E>,
    ) -> Result<Vec<SavedCheckpoint>>
    where
        C: Checkpointable,
        E: Into<Error>,
    {
        self.step_end_from(step, epoch, &mut events::Lazy(make))
    }

    fn step_end_from(
        &mut self,
        step: u64,
        epoch: u64,
        state: &mut dyn events::StateSource,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        let mut saved = self.handle(Event::TrainStepEnd { step, epoch, now_s }, state, false)?;
        let mut preempted = self
            .preemption
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if self.preemption.is_some() && !self.stopped && self.coordinator.world_size() > 1 {
            // The signal may reach the ranks at different steps: stop together at the first.
            preempted = ranks::any_rank(self.coordinator.as_ref(), preempted)?;
        }
        if !self.stopped && preempted {
            tracing::warn!(
                step,
                "preemption requested: saving the -last checkpoint, then stopping"
            );
            saved.extend(self.save_for_preemption(step, epoch, state)?);
            self.stopped = true;
            if let Some(loggers) = &mut self.loggers
                && let Err(e) = loggers.finalize(crate::loggers::RunStatus::Preempted)
            {
                tracing::warn!(error = %e, "a metric logger failed while the run was preempted");
            }
        }
        Ok(saved)
    }

    /// Whether the loop should stop: a preemption was requested and its checkpoint is saved.
    pub fn should_stop(&self) -> bool {
        self.stopped
    }

    /// Call after a validation run whose metrics were reported with [`Run::log_metrics`] at
    /// `step`. Either order of the loop's calls works: the validation's metrics reported before
    /// [`Run::step_end`] of that step (a save is then ranked at once), or after it, as
    /// Lightning's hooks run (a step-triggered save then waits for this call; see
    /// [`crate::policy`]'s rules on the call order). When validations ran but the monitored
    /// metric was never reported, `on_missing_monitor` warns once (default) or fails this call
    /// with [`Error::MonitorMissing`] (each rank checks the metrics it was given: with several
    /// ranks, report the monitored metric on every rank).
    pub fn validation_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        let saved = self.handle(
            Event::ValidationEnd { step, epoch, now_s },
            &mut { state },
            false,
        )?;
        self.check_monitor(step)?;
        Ok(saved)
    }

    /// Call after a training epoch.
    pub fn epoch_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        self.handle(
            Event::TrainEpochEnd { step, epoch, now_s },
            &mut { state },
            false,
        )
    }

    /// The step at which training completes, for a loop that learns it only once training runs
    /// (burn-train's Learner knows its last epoch, not its last step): from here on a save at or
    /// past `max_steps` is marked as the end of a completed run, as with
    /// [`RunBuilder::max_steps`](crate::RunBuilder::max_steps). Needed where the last step is
    /// saved by `step_end` or an epoch end: [`Run::finish`] then saves nothing new (never twice
    /// at one step), so only that save can carry the mark.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let mut run = waypoint::Run::builder().log_dir(tmp.path()).build().unwrap();
    /// run.set_max_steps(48);
    /// ```
    pub fn set_max_steps(&mut self, max_steps: u64) {
        self.config.max_steps = Some(max_steps);
    }

    /// Call when training completed: saves the last checkpoint if the policy says so, marked as
    /// the end of a completed run (AutoResume then says so instead of resuming). When this step
    /// was saved already, nothing new is saved and the mark is that save's: set `max_steps`
    /// ([`RunBuilder::max_steps`](crate::RunBuilder::max_steps), [`Run::set_max_steps`]) so
    /// that it carries it.
    pub fn finish(
        mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        // Saves in flight finish first: their errors surface here, before the last save.
        let mut saved = self.finalize_all()?;
        let now_s = (self.clock)();
        saved.extend(self.handle(Event::TrainEnd { step, epoch, now_s }, &mut { state }, true)?);
        self.context_on_train_end(step)?;
        self.retry_deletions();
        if let Some(loggers) = &mut self.loggers {
            loggers.finalize(crate::loggers::RunStatus::Success)?;
        }
        Ok(saved)
    }
}
