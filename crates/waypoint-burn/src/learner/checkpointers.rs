//! burn-train's checkpoint hooks: [`Part`], the `Checkpointer<R>` of one of the three records
//! (burn runs each on its own `AsyncCheckpointer` thread), and [`EveryEpoch`], the
//! `CheckpointingStrategy` that asks for a save at every epoch end.
//!
//! It owns the meeting of the three parts only: the last part of an epoch to arrive makes the one
//! save (`super::commit`); what is kept is waypoint's policy's, so burn's `delete` removes nothing.

use super::{Parts, State, commit, lock};
use burn::lr_scheduler::LrSchedulerRecord;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, EventStoreClient, Split};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

mod sealed {
    pub trait Sealed {}
}

/// One of the three records burn-train checkpoints at an epoch end: `ModuleRecord`,
/// `OptimizerRecord`, `LrSchedulerRecord` (sealed: there are no others).
pub trait RecordPart: Checkpoint + sealed::Sealed {
    /// Its name in errors.
    const NAME: &'static str;
    /// Its place among an epoch's parts.
    #[doc(hidden)]
    fn slot(parts: &mut Parts) -> &mut Option<Self>;
}

impl sealed::Sealed for ModuleRecord {}
impl RecordPart for ModuleRecord {
    const NAME: &'static str = "model";
    fn slot(parts: &mut Parts) -> &mut Option<Self> {
        &mut parts.model
    }
}

impl sealed::Sealed for OptimizerRecord {}
impl RecordPart for OptimizerRecord {
    const NAME: &'static str = "optimizer";
    fn slot(parts: &mut Parts) -> &mut Option<Self> {
        &mut parts.optimizer
    }
}

impl sealed::Sealed for LrSchedulerRecord {}
impl RecordPart for LrSchedulerRecord {
    const NAME: &'static str = "scheduler";
    fn slot(parts: &mut Parts) -> &mut Option<Self> {
        &mut parts.scheduler
    }
}

/// The checkpointer of one record kind `R`, sharing its run with the other two
/// ([`LearnerRun::checkpointer`](super::LearnerRun::checkpointer)).
pub struct Part<R> {
    shared: Arc<Mutex<State>>,
    kind: PhantomData<fn() -> R>,
}

impl<R: RecordPart> std::fmt::Debug for Part<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Part<{}>", R::NAME)
    }
}

impl<R> Part<R> {
    pub(super) fn new(shared: Arc<Mutex<State>>) -> Self {
        Part {
            shared,
            kind: PhantomData,
        }
    }
}

fn failed(state: &mut State, reason: String) -> CheckpointerError {
    tracing::error!(%reason, "waypoint could not checkpoint the Learner");
    state.failed.get_or_insert_with(|| reason.clone());
    CheckpointerError::Unknown(reason)
}

impl<R: RecordPart> Checkpointer<R> for Part<R> {
    /// Parks the record; the last of an epoch's three makes the save.
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let mut state = lock(&self.shared);
        let parts = state.parts.entry(epoch).or_default();
        *R::slot(parts) = Some(record);
        if !parts.complete() {
            return Ok(());
        }
        let parts = state.parts.remove(&epoch).unwrap_or_default();
        commit(&mut state, epoch, parts)
            .map_err(|e| failed(&mut state, format!("epoch {epoch}: {e}")))
    }

    /// Drops what is parked for `epoch`; a saved checkpoint stays (waypoint's `save_top_k`
    /// decides what is kept), and an epoch never saved is fine.
    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        let mut state = lock(&self.shared);
        if let Some(parts) = state.parts.get_mut(&epoch) {
            *R::slot(parts) = None;
        }
        Ok(())
    }

    /// The record of the checkpoint [`LearnerRun::new`](super::LearnerRun::new) restored, which must be of `epoch`.
    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let mut state = lock(&self.shared);
        let resumed = state.restored.as_ref().map(|(e, _)| *e);
        let record = match &mut state.restored {
            Some((e, parts)) if *e == epoch => R::slot(parts).take(),
            _ => None,
        };
        record.ok_or_else(|| {
            let reason = match resumed {
                Some(e) => format!(
                    "burn asked for the {} of epoch {epoch}; waypoint resumed from epoch {e} \
                     (let LearnerRun::attach set SupervisedTraining::checkpoint)",
                    R::NAME
                ),
                None => format!(
                    "burn asked for the {} of epoch {epoch}, but AutoResume found no \
                     checkpoint to resume from",
                    R::NAME
                ),
            };
            failed(&mut state, reason)
        })
    }
}

/// The checkpointing strategy of a [`LearnerRun`](super::LearnerRun): a save at every epoch end, never a deletion
/// (waypoint's `ModelCheckpoint` ranks and rotates). Before answering it waits for the metric
/// logger to have received the epoch's metrics (a query through burn's event store, which
/// handles its messages in order), and notes the epoch's last step for the save.
pub struct EveryEpoch {
    shared: Arc<Mutex<State>>,
}

impl std::fmt::Debug for EveryEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EveryEpoch")
    }
}

impl EveryEpoch {
    pub(super) fn new(shared: Arc<Mutex<State>>) -> Self {
        EveryEpoch { shared }
    }
}

/// A metric name no metric has: the query only waits for the event store to catch up.
const SYNC_QUERY: &str = "\u{0}waypoint: wait for the event store";

impl CheckpointingStrategy for EveryEpoch {
    fn checkpointing(
        &mut self,
        epoch: usize,
        collector: &EventStoreClient,
    ) -> Vec<CheckpointingAction> {
        let _ = collector.find_metric(SYNC_QUERY, epoch, Aggregate::Mean, &Split::Valid);
        let mut state = lock(&self.shared);
        let step = state.step;
        state.epoch_steps.insert(epoch, step);
        vec![CheckpointingAction::Save]
    }
}
