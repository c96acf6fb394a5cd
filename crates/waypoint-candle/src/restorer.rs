//! [`Restorer`]: a candle model (and its [`AdamW`]) as the target of waypoint's
//! [`waypoint::Run::restore`], loaded in place: checkpoint bytes go into staging buffers typed
//! like the vars, then into the vars themselves, and AdamW's step count comes back from
//! [`STEP_COUNT_TENSOR`].
//!
//! It owns the load side only: saving goes through [`crate::Snapshot`]; choosing the checkpoint
//! is waypoint's AutoResume.

use crate::adamw::AdamW;
use crate::error::Result;
use crate::snapshot::STEP_COUNT_TENSOR;
use crate::vars::{NamedVars, VarStaging};
use waypoint::{Checkpointable, Dtype, SinkSlot, TensorRef};

/// What the step-count slot holds until a checkpoint fills it: a step count is never negative,
/// so this value still there after a load means the checkpoint had no optimizer state.
const NOT_LOADED: [u8; 8] = (-1i64).to_le_bytes();

/// Restores a candle model's vars, and optionally an [`AdamW`]'s moments and step count, from
/// the checkpoint a [`waypoint::Run`] resumes from. Pass it to [`waypoint::Run::restore`]; then
/// [`Restorer::trainer_state`] holds the JSON the checkpoint was saved with.
///
/// Every var is checked by name, dtype and shape before anything is written into the model (an
/// error names the tensor). A weights-only checkpoint restores the model and leaves the
/// optimizer as it is. It is for restoring only: its save side is empty.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use waypoint::{AutoResume, ModelCheckpoint, Run};
/// use waypoint_candle::{AdamW, AdamWParams, NamedVars, Restorer, Snapshot};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let varmap = VarMap::new();
/// let _layer = candle_nn::linear(4, 1, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("fc"))?;
/// let model = NamedVars::from_varmap(&varmap, "model.")?;
/// let mut opt = AdamW::new(&model, AdamWParams::default())?;
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build()?;
/// let run = || Run::builder().log_dir(dir.path()).name("demo").resume(resume.clone()).build();
///
/// let mut first = run()?;
/// first.step_end_with(1, 0, || Snapshot::of(&model, &opt, serde_json::json!({ "step": 1 })))?;
/// first.finish(1, 0, &Snapshot::of(&model, &opt, serde_json::json!({ "step": 1 }))?)?;
///
/// let mut again = run()?;
/// let mut restorer = Restorer::new(&model, &mut opt)?;
/// let point = again.restore(&mut restorer)?;
/// assert_eq!(point.map(|p| p.step), Some(1));
/// assert_eq!(restorer.trainer_state(), Some(&serde_json::json!({ "step": 1 })));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Restorer<'a> {
    model: Option<VarStaging>,
    optimizer: Option<(VarStaging, &'a mut AdamW)>,
    step_count: [u8; 8],
    trainer_state: Option<serde_json::Value>,
}

impl<'a> Restorer<'a> {
    /// Restores `model`'s vars and `optimizer`'s moments and step count (saved by
    /// [`crate::Snapshot::of`]). Allocates one staging buffer per var now, so that a load never
    /// fails for want of one half-way.
    pub fn new(model: &NamedVars, optimizer: &'a mut AdamW) -> Result<Self> {
        let staging = optimizer.state_vars().staging()?;
        Ok(Restorer {
            model: Some(model.staging()?),
            optimizer: Some((staging, optimizer)),
            step_count: NOT_LOADED,
            trainer_state: None,
        })
    }

    /// Restores `model`'s vars only (inference, evaluation, or a new optimizer): the
    /// checkpoint's optimizer tensors are not read.
    pub fn model_only(model: &NamedVars) -> Result<Self> {
        Ok(Restorer {
            model: Some(model.staging()?),
            optimizer: None,
            step_count: NOT_LOADED,
            trainer_state: None,
        })
    }

    /// The trainer state the checkpoint was saved with, once restored (`None` before, or when
    /// the run started from scratch).
    pub fn trainer_state(&self) -> Option<&serde_json::Value> {
        self.trainer_state.as_ref()
    }
}

impl Checkpointable for Restorer<'_> {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        Vec::new()
    }

    fn trainer_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        let mut slots = Vec::new();
        if let Some(model) = &mut self.model {
            slots.extend(model.slots());
        }
        if let Some((staging, _)) = &mut self.optimizer {
            slots.extend(staging.slots());
            slots.push(SinkSlot {
                name: STEP_COUNT_TENSOR,
                dtype: Dtype::I64,
                shape: &[],
                data: &mut self.step_count,
            });
        }
        slots
    }

    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        if let Some(model) = self.model.take() {
            model.apply()?;
        }
        // Untouched step count: a weights-only checkpoint, whose optimizer tensors were skipped.
        if self.step_count != NOT_LOADED
            && let Some((staging, optimizer)) = self.optimizer.take()
        {
            let count = i64::from_le_bytes(self.step_count);
            let count = usize::try_from(count).map_err(|_| waypoint::Error::InvalidTensor {
                tensor: STEP_COUNT_TENSOR.to_owned(),
                reason: format!("AdamW's step count is {count}, not a count"),
            })?;
            staging.apply()?;
            optimizer.set_step_count(count);
        }
        self.trainer_state = Some(state);
        Ok(())
    }
}
