//! [`Snapshot`]: a training state, read-locked, as waypoint's [`Checkpointable`] for one save
//! call, lending the vars' memory instead of copying it.
//!
//! It must not copy, restore or save anything itself: the locks are `NamedVars`'s, the saving is
//! waypoint's, and restoring into it is refused (loading goes through `NamedVars::staging`).

use crate::vars::LockedVars;
use waypoint::{Checkpointable, SinkSlot, TensorRef};

/// What one save call writes: model and optimizer vars (read-locked, lent without a copy), any
/// other tensors the caller lends, and the trainer state (step, RNG, data position…).
///
/// It is for saving only: [`Checkpointable::restore_slots`] offers nothing and
/// [`Checkpointable::restore_trainer_state`] refuses. Load into your own state with
/// [`NamedVars::staging`](crate::NamedVars::staging).
///
/// ```no_run
/// # fn demo(run: &mut waypoint::Run, model: &waypoint_candle::NamedVars,
/// #         opt: &waypoint_candle::AdamW, step: u64) -> Result<(), Box<dyn std::error::Error>> {
/// let state = serde_json::json!({ "step": step, "adamw_t": opt.step_count() });
/// let locked_model = model.lock()?;
/// let locked_optim = opt.state_vars().lock()?;
/// let snapshot = waypoint_candle::Snapshot::new(&locked_model, &locked_optim, state);
/// run.step_end(step, 0, &snapshot)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Snapshot<'a> {
    model: &'a LockedVars<'a>,
    optimizer: &'a LockedVars<'a>,
    extra: Vec<TensorRef<'a>>,
    trainer_state: serde_json::Value,
}

impl<'a> Snapshot<'a> {
    /// A snapshot of `model` and `optimizer` vars and `trainer_state`.
    pub fn new(
        model: &'a LockedVars<'a>,
        optimizer: &'a LockedVars<'a>,
        trainer_state: serde_json::Value,
    ) -> Self {
        Snapshot {
            model,
            optimizer,
            extra: Vec::new(),
            trainer_state,
        }
    }

    /// Adds tensors saved with the optimizer's (buffers that are not candle vars).
    pub fn with_extra(mut self, extra: Vec<TensorRef<'a>>) -> Self {
        self.extra = extra;
        self
    }
}

impl Checkpointable for Snapshot<'_> {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        self.model.tensor_refs()
    }

    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        let mut tensors = self.optimizer.tensor_refs();
        tensors.extend(self.extra.iter().map(|t| TensorRef {
            data: t.data.borrowed(),
            name: std::borrow::Cow::Borrowed(t.name.as_ref()),
            ..t.clone()
        }));
        tensors
    }

    fn trainer_state(&self) -> serde_json::Value {
        self.trainer_state.clone()
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        Vec::new()
    }

    fn restore_trainer_state(&mut self, _state: serde_json::Value) -> waypoint::Result<()> {
        Err(waypoint::Error::InvalidArgument {
            name: "waypoint_candle::Snapshot",
            reason: "a snapshot is for saving; load into NamedVars::staging() instead".into(),
        })
    }
}
