//! burn-train's `Learner` saving, resuming and logging through a [`waypoint::Run`] (feature
//! `learner`).
//!
//! [`LearnerRun`] owns the one `Run` behind three burn hooks: the three `Checkpointer`s burn-train
//! takes (model, optimizer, LR scheduler: [`Part`]), a `CheckpointingStrategy` that asks
//! for a save at every epoch end and leaves what is kept to waypoint's `ModelCheckpoint`, and a
//! `MetricLogger` ([`WaypointMetricLogger`]) that forwards the Learner's numeric metrics to waypoint's loggers.
//! The three records of an epoch become **one** waypoint checkpoint, saved when the last of the
//! three arrives (each arrives on its own burn `AsyncCheckpointer` thread): an epoch with a part
//! missing leaves nothing visible. Resume: [`LearnerRun::new`] restores the checkpoint AutoResume
//! chose into the three records, which burn's `checkpoint(epoch)` then asks back.
//!
//! It must not decide names or what is kept (waypoint's policy does), nor touch the training
//! loop: burn-train runs it. What burn's hooks cannot carry is in docs/BURN.md (mid-epoch
//! resume, the data loader's position).

mod checkpointers;
mod data;
mod metrics;

pub use checkpointers::{EveryEpoch, Part, RecordPart};
pub use data::ResumedOrder;
pub use metrics::WaypointMetricLogger;

use crate::error::{Error, Result};
use crate::restorer::{Slot, optimizer_record, saved_tensors, scheduler_record};
use crate::snapshot::{BURN_STATE_KEY, OPTIM_PREFIX, Snapshot, USER_STATE_KEY};
use crate::tensors::Record;
use burn::lr_scheduler::LrSchedulerRecord;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::train::{LearnerModel, SupervisedTraining};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use waypoint::{Checkpointable, Experiment, Run, SavedCheckpoint, SinkSlot, TensorRef, serde_json};

/// A burn-train `Learner`'s checkpoints and metrics through one waypoint [`Run`].
///
/// Build the `Run` as for any loop (its `ModelCheckpoint`: `monitor("valid_loss")`,
/// `save_top_k`, `save_last`, `every_n_epochs`…; its `AutoResume`; its loggers), hand it here,
/// then [`LearnerRun::attach`] it to burn's `SupervisedTraining`:
///
/// ```ignore
/// let waypoint = LearnerRun::new(run)?;            // restores what AutoResume chose
/// if waypoint.completed() { return Ok(()) }         // a finished run is not trained again
/// let result = waypoint
///     .attach(SupervisedTraining::new(dir, train, valid)
///         .metric_train_numeric(LossMetric::new())
///         .metric_valid_numeric(LossMetric::new()), 10)
///     .launch(Learner::new(model, optim, scheduler));
/// waypoint.finish()?;                               // -last marked as a completed run
/// ```
///
/// Metrics reach waypoint as `train_<metric>` at every Learner iteration and `valid_<metric>` (the
/// epoch's mean, what burn's own strategies read) at the end of each validation; the step is the
/// number of training iterations (a train numeric metric, e.g. `LossMetric`, must be registered
/// for the iterations to be counted). Epochs are burn's (from 1) in the trainer state, and
/// Lightning's (from 0) in waypoint's checkpoint names (`epoch=0` is burn's epoch 1).
#[derive(Clone)]
pub struct LearnerRun {
    shared: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LearnerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.shared);
        f.debug_struct("LearnerRun")
            .field("step", &state.step)
            .field("resume", &state.resume)
            .field("completed", &state.completed)
            .finish_non_exhaustive()
    }
}

/// One epoch's records as they arrive (public only as the type of
/// [`RecordPart`]'s hidden accessor: its fields are the crate's).
#[doc(hidden)]
#[derive(Default)]
pub struct Parts {
    pub(crate) model: Option<ModuleRecord>,
    pub(crate) optimizer: Option<OptimizerRecord>,
    pub(crate) scheduler: Option<LrSchedulerRecord>,
}

impl Parts {
    fn complete(&self) -> bool {
        self.model.is_some() && self.optimizer.is_some() && self.scheduler.is_some()
    }
}

/// What owns the run: a bare [`Run`], or an [`Experiment`] (NeMoLogger's set-up directory, which
/// also holds the run's lock, log files and preemption handlers until it finishes).
pub(crate) enum Owner {
    Run(Box<Run>),
    Experiment(Box<Experiment>),
}

impl Owner {
    pub(crate) fn run_mut(&mut self) -> &mut Run {
        match self {
            Owner::Run(run) => run,
            Owner::Experiment(exp) => exp.run_mut(),
        }
    }

    fn finish(
        self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> waypoint::Result<Vec<SavedCheckpoint>> {
        match self {
            Owner::Run(run) => run.finish(step, epoch, state),
            Owner::Experiment(exp) => exp.finish(step, epoch, state),
        }
    }
}

/// What the three checkpointers, the strategy and the metric logger share.
pub(crate) struct State {
    /// `None` once finished.
    pub run: Option<Owner>,
    /// Training iterations so far (the waypoint step).
    pub step: u64,
    /// The step at each epoch's end, as the strategy saw it (after the epoch's metrics).
    pub epoch_steps: BTreeMap<usize, u64>,
    /// Records waiting for the rest of their epoch.
    pub parts: BTreeMap<usize, Parts>,
    /// The records of the checkpoint resumed from, by epoch, until burn asks for them.
    pub restored: Option<(usize, Parts)>,
    /// The burn epoch and step resumed from.
    pub resume: Option<(usize, u64)>,
    /// The Learner's epochs ([`LearnerRun::attach`]): the last one's save ends the run.
    pub num_epochs: Option<usize>,
    /// The run resumed from had completed.
    pub completed: bool,
    /// The newest epoch saved (burn epoch, step, its state), for `finish`.
    pub last: Option<(usize, u64, Snapshot)>,
    /// What was committed so far.
    pub saved: Vec<SavedCheckpoint>,
    /// The first save error (burn stops the Learner on it; `finish` returns it).
    pub failed: Option<String>,
    /// The metric logger's records.
    pub metrics: metrics::Values,
}

/// The shared state, even after a panic on another thread (its data stays consistent: every
/// update is a single insert).
pub(crate) fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LearnerRun {
    /// Takes `run` over and restores the checkpoint its AutoResume chose (if any) into burn's
    /// three records, which the Learner asks for when [`LearnerRun::attach`] set
    /// `checkpoint(epoch)`. A checkpoint without the optimizer's or the scheduler's state (a
    /// weights-only save) cannot resume a Learner: that is an error naming the missing part.
    pub fn new(run: Run) -> Result<Self> {
        Self::owning(Owner::Run(Box::new(run)))
    }

    /// [`LearnerRun::new`] for the run of an [`Experiment`] (`ExperimentLogger::setup`: the
    /// experiment's directory, loggers and preemption handlers); [`LearnerRun::finish`] finishes
    /// the experiment.
    pub fn from_experiment(experiment: Experiment) -> Result<Self> {
        Self::owning(Owner::Experiment(Box::new(experiment)))
    }

    fn owning(mut owner: Owner) -> Result<Self> {
        let run = owner.run_mut();
        let completed = run.resume_point().is_some_and(|p| p.completed);
        let mut records = Records::new(run)?;
        let mut resume = None;
        let mut restored = None;
        if run.resume_point().is_some() && !completed {
            run.restore(&mut records)?;
            let user = records.user.take().unwrap_or(Value::Null);
            let epoch = user["epoch"].as_u64().and_then(|e| usize::try_from(e).ok());
            let step = user["step"].as_u64();
            let (Some(epoch), Some(step)) = (epoch, step) else {
                return Err(Error::state(
                    USER_STATE_KEY,
                    format!("{user} has no burn epoch and step: not saved by LearnerRun"),
                ));
            };
            resume = Some((epoch, step));
            restored = records.parts.take().map(|parts| (epoch, parts));
        }
        let state = State {
            run: Some(owner),
            step: resume.map_or(0, |(_, step)| step),
            epoch_steps: BTreeMap::new(),
            parts: BTreeMap::new(),
            restored,
            resume,
            num_epochs: None,
            completed,
            last: None,
            saved: Vec::new(),
            failed: None,
            metrics: metrics::Values::default(),
        };
        Ok(LearnerRun {
            shared: Arc::new(Mutex::new(state)),
        })
    }

    /// The burn epoch to resume from (`SupervisedTraining::checkpoint(epoch)`: training goes on
    /// with the next one); `None` when starting from scratch.
    pub fn resume_epoch(&self) -> Option<usize> {
        lock(&self.shared).resume.map(|(epoch, _)| epoch)
    }

    /// Whether the run resumed from had completed ([`LearnerRun::finish`]): nothing to train.
    pub fn completed(&self) -> bool {
        lock(&self.shared).completed
    }

    /// The training iterations counted so far (the step of waypoint's metrics and checkpoints).
    pub fn step(&self) -> u64 {
        lock(&self.shared).step
    }

    /// The checkpoints committed so far.
    pub fn saved(&self) -> Vec<SavedCheckpoint> {
        lock(&self.shared).saved.clone()
    }

    /// The checkpointer of one of burn's three records (`ModuleRecord`, `OptimizerRecord`,
    /// `LrSchedulerRecord`), for `SupervisedTraining::with_custom_checkpointers`.
    pub fn checkpointer<R: RecordPart>(&self) -> Part<R> {
        Part::new(self.shared.clone())
    }

    /// The checkpointing strategy: a save at every epoch end, waypoint's policy deciding what
    /// is kept.
    pub fn checkpointing_strategy(&self) -> EveryEpoch {
        EveryEpoch::new(self.shared.clone())
    }

    /// The metric logger forwarding the Learner's metrics to the run's loggers (it replaces
    /// burn's default file logger and answers burn's strategies and early stopping).
    pub fn metric_logger(&self) -> WaypointMetricLogger {
        WaypointMetricLogger::new(self.shared.clone())
    }

    /// `training` with waypoint's checkpointers, strategy and metric logger, resuming from the
    /// restored epoch when there is one, for `num_epochs` epochs in all (set here, in place of
    /// `SupervisedTraining::num_epochs`): the last epoch's checkpoints are marked as the end of
    /// a completed run, so that running the program again finds it complete
    /// ([`LearnerRun::completed`]) instead of resuming. A Learner stopped before (early
    /// stopping, an interruption) is not marked, and resumes.
    pub fn attach<M: LearnerModel>(
        &self,
        training: SupervisedTraining<M>,
        num_epochs: usize,
    ) -> SupervisedTraining<M> {
        lock(&self.shared).num_epochs = Some(num_epochs);
        let training = training
            .num_epochs(num_epochs)
            .with_custom_checkpointers(
                self.checkpointer::<ModuleRecord>(),
                self.checkpointer::<OptimizerRecord>(),
                self.checkpointer::<LrSchedulerRecord>(),
            )
            .with_checkpointing_strategy(self.checkpointing_strategy())
            .with_metric_logger(self.metric_logger());
        match self.resume_epoch() {
            Some(epoch) => training.checkpoint(epoch),
            None => training,
        }
    }

    /// Call once the Learner returned (its checkpointer threads have then delivered every
    /// record): waits for saves in flight and saves the newest epoch's state as the end of a
    /// completed run (a rerun then finds it completed). A save that failed during training is
    /// returned here as an error.
    pub fn finish(self) -> Result<Vec<SavedCheckpoint>> {
        let mut state = lock(&self.shared);
        if let Some(reason) = state.failed.take() {
            return Err(Error::state("learner", reason));
        }
        let Some(run) = state.run.take() else {
            return Err(Error::state("learner", "finish was called twice"));
        };
        let mut saved = std::mem::take(&mut state.saved);
        match state.last.take() {
            Some((epoch, step, snapshot)) => {
                saved.extend(run.finish(step, waypoint_epoch(epoch), &snapshot)?);
            }
            None => {
                let empty = Snapshot::of_record(empty_module_record()?, Value::Null)?;
                saved.extend(run.finish(state.step, 0, &empty)?);
            }
        }
        Ok(saved)
    }
}

impl LearnerRun {
    /// Ends the run **without** marking it completed, as a stopped process would (for a Learner
    /// stopped early on purpose, to be resumed later): waits for the saves in flight, then
    /// releases the run (an experiment's lock and log files) even while burn's threads still
    /// hold this `LearnerRun`'s hooks. Returns the checkpoints committed by the run.
    pub fn close(self) -> Result<Vec<SavedCheckpoint>> {
        let mut state = lock(&self.shared);
        let Some(mut owner) = state.run.take() else {
            return Err(Error::state(
                "learner",
                "the run was already finished or closed",
            ));
        };
        let mut saved = std::mem::take(&mut state.saved);
        saved.extend(owner.run_mut().wait_for_saves()?);
        drop(owner);
        match state.failed.take() {
            Some(reason) => Err(Error::state("learner", reason)),
            None => Ok(saved),
        }
    }
}

/// burn's epochs count from 1, Lightning's (waypoint's names) from 0.
pub(crate) fn waypoint_epoch(epoch: usize) -> u64 {
    epoch.saturating_sub(1) as u64
}

/// A module record with no tensors (the state of a run that trained nothing).
fn empty_module_record() -> Result<ModuleRecord> {
    let bytes = Record::default().write("model")?;
    ModuleRecord::from_bytes(bytes).map_err(|e| Error::burn("model", e))
}

/// Saves epoch `epoch`'s three records as one checkpoint (the last part has arrived).
pub(crate) fn commit(state: &mut State, epoch: usize, parts: Parts) -> Result<()> {
    let (Some(model), Some(optimizer), Some(scheduler)) =
        (parts.model, parts.optimizer, parts.scheduler)
    else {
        return Ok(());
    };
    let step = state.epoch_steps.remove(&epoch).unwrap_or(state.step);
    let snapshot = Snapshot::of_record(model, json!({ "epoch": epoch, "step": step }))?
        .with_optimizer_record(optimizer)?
        .with_scheduler_record(scheduler)?;
    let last_epoch = state.num_epochs == Some(epoch);
    let run = state
        .run
        .as_mut()
        .ok_or_else(|| Error::state("learner", "a record arrived after finish"))?
        .run_mut();
    if last_epoch {
        // Its saves end the run: `finish` at this step saves nothing new.
        run.set_max_steps(step);
    }
    let mut saved = run.validation_end(step, waypoint_epoch(epoch), &snapshot)?;
    saved.extend(run.epoch_end(step, waypoint_epoch(epoch), &snapshot)?);
    tracing::debug!(epoch, step, saved = saved.len(), "burn epoch checkpointed");
    state.saved.extend(saved);
    state.last = Some((epoch, step, snapshot));
    // Older epochs still waiting lost a part for good (its thread failed): nothing of them is
    // visible, and nothing more will come.
    let stale: Vec<usize> = state.parts.range(..epoch).map(|(e, _)| *e).collect();
    for e in stale {
        tracing::warn!(
            epoch = e,
            "burn epoch never received all three records: not saved"
        );
        state.parts.remove(&e);
    }
    Ok(())
}

/// The target of `Run::restore` for a Learner: every tensor of the checkpoint staged, then put
/// back together into burn's three records.
struct Records {
    slots: Vec<Slot>,
    parts: Option<Parts>,
    user: Option<Value>,
}

impl Records {
    fn new(run: &Run) -> Result<Self> {
        let mut slots = Vec::new();
        for (name, dtype, shape) in saved_tensors(run, |_| true)? {
            let burn = crate::dtype::to_burn(dtype).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.clone(),
                dtype: dtype.name().to_owned(),
            })?;
            slots.push(Slot::new(name, dtype, burn, shape)?);
        }
        Ok(Records {
            slots,
            parts: None,
            user: None,
        })
    }

    fn assemble(&mut self, burn: &Value) -> Result<Parts> {
        let (optim, model): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|s| s.name.starts_with(OPTIM_PREFIX));
        let ids = &burn["param_ids"];
        let tensors = model
            .into_iter()
            .map(|slot| {
                let id = ids.get(&slot.name).and_then(Value::as_u64);
                let name = slot.name.clone();
                slot.into_owned(name, id)
            })
            .collect();
        let bytes = Record {
            tensors,
            ..Record::default()
        }
        .write("model")?;
        let model = ModuleRecord::from_bytes(bytes).map_err(|e| Error::burn("model", e))?;
        for part in ["optimizer", "scheduler"] {
            if burn.get(part).is_none() {
                return Err(Error::state(
                    BURN_STATE_KEY,
                    format!("no {part} state: a Learner resumes only from its own checkpoints"),
                ));
            }
        }
        Ok(Parts {
            model: Some(model),
            optimizer: Some(optimizer_record(optim, &burn["optimizer"])?),
            scheduler: Some(scheduler_record(&burn["scheduler"])?),
        })
    }
}

impl Checkpointable for Records {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        Vec::new()
    }

    fn trainer_state(&self) -> Value {
        Value::Null
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        self.slots.iter_mut().map(Slot::sink).collect()
    }

    fn restore_trainer_state(&mut self, mut state: Value) -> waypoint::Result<()> {
        let burn = state
            .get_mut(BURN_STATE_KEY)
            .map(Value::take)
            .ok_or_else(|| Error::state(BURN_STATE_KEY, "missing"))?;
        self.parts = Some(self.assemble(&burn)?);
        self.user = state.get_mut(USER_STATE_KEY).map(Value::take);
        Ok(())
    }
}
