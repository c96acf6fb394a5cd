//! [`Snapshot`]: a training state, read-locked, as waypoint's [`Checkpointable`] for one save
//! call, lending the vars' memory instead of copying it.
//!
//! It must not copy, restore or save anything itself: the locks are `NamedVars`'s, the saving is
//! waypoint's, and restoring into it is refused (loading goes through [`crate::Restorer`]).

use crate::adamw::AdamW;
use crate::error::Result;
use crate::vars::{LockedVars, NamedVars};
use waypoint::{Checkpointable, Dtype, SinkSlot, TensorRef};

/// The name of the scalar `I64` tensor holding AdamW's step count in a [`Snapshot::of`] save,
/// beside the moments (`optim.m.…`, `optim.v.…`); [`crate::Restorer`] reads it back.
pub const STEP_COUNT_TENSOR: &str = "optim.step";

/// Read locks, held by the snapshot or lent to it.
#[derive(Debug)]
enum Held<'a> {
    Lent(&'a LockedVars<'a>),
    Own(LockedVars<'a>),
}

impl<'a> Held<'a> {
    fn vars(&self) -> &LockedVars<'a> {
        match self {
            Held::Lent(vars) => vars,
            Held::Own(vars) => vars,
        }
    }
}

/// What one save call writes: model and optimizer vars (read-locked, lent without a copy), any
/// other tensors the caller lends, and the trainer state (step, RNG, data position…).
///
/// Build it with [`Snapshot::of`] (the model and the [`AdamW`], whose step count it saves
/// as [`STEP_COUNT_TENSOR`]), inside [`waypoint::Run::step_end_with`] so that it is built only
/// when a save is due. It is for saving only: restore with [`crate::Restorer`].
///
/// ```no_run
/// # fn demo(run: &mut waypoint::Run, model: &waypoint_candle::NamedVars,
/// #         opt: &waypoint_candle::AdamW, step: u64) -> Result<(), Box<dyn std::error::Error>> {
/// use waypoint_candle::Snapshot;
/// run.step_end_with(step, 0, || Snapshot::of(model, opt, serde_json::json!({ "step": step })))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Snapshot<'a> {
    model: Held<'a>,
    optimizer: Held<'a>,
    step_count: Option<[u8; 8]>,
    extra: Vec<TensorRef<'a>>,
    trainer_state: serde_json::Value,
}

impl<'a> Snapshot<'a> {
    /// A snapshot of `model`, `optimizer` (its moments and, as [`STEP_COUNT_TENSOR`], its step
    /// count) and `trainer_state`, read-locking the vars until it is dropped.
    pub fn of(
        model: &'a NamedVars,
        optimizer: &'a AdamW,
        trainer_state: serde_json::Value,
    ) -> Result<Self> {
        let step_count = i64::try_from(optimizer.step_count()).unwrap_or(i64::MAX);
        Ok(Snapshot {
            model: Held::Own(model.lock()?),
            optimizer: Held::Own(optimizer.state_vars().lock()?),
            step_count: Some(step_count.to_le_bytes()),
            extra: Vec::new(),
            trainer_state,
        })
    }

    /// A snapshot of vars the caller has locked (`model.lock()`, `opt.state_vars().lock()`)
    /// and `trainer_state`. The optimizer's step count is not saved: keep it in the trainer
    /// state (or use [`Snapshot::of`]).
    pub fn new(
        model: &'a LockedVars<'a>,
        optimizer: &'a LockedVars<'a>,
        trainer_state: serde_json::Value,
    ) -> Self {
        Snapshot {
            model: Held::Lent(model),
            optimizer: Held::Lent(optimizer),
            step_count: None,
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
        self.model.vars().tensor_refs()
    }

    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        let mut tensors = self.optimizer.vars().tensor_refs();
        if let Some(bytes) = &self.step_count {
            tensors.push(TensorRef::whole(
                STEP_COUNT_TENSOR,
                Dtype::I64,
                Vec::new(),
                bytes.as_slice(),
            ));
        }
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
            reason: "a snapshot is for saving; restore with waypoint_candle::Restorer".into(),
        })
    }
}
