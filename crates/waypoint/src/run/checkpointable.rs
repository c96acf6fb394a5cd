//! What the run and the training loop exchange: [`Checkpointable`], the state a loop hands over
//! to be saved and restored into, and [`SavedCheckpoint`], what the run reports it saved. Only
//! types: the run owns what is done with them.
//!
//! It must not save, load or decide anything: the engine moves the bytes, the policy decides, and
//! `Run` calls the trait's methods.

use crate::engine::{RegionSlot, SinkSlot, TensorRef};
use crate::error::Result;
use std::path::PathBuf;
use std::time::Duration;

/// What a training loop hands over to be checkpointed, and restored into on resume.
///
/// Model and optimizer tensors are kept apart so that weights-only saves (`save_weights_only`,
/// or the train-end save without `save_optim_on_train_end`) can leave the optimizer out. The
/// trainer state is any JSON value: step counters, the RNG state, the data position.
pub trait Checkpointable {
    /// The model's tensors, borrowed without copying.
    fn model_tensors(&self) -> Vec<TensorRef<'_>>;
    /// The optimizer's tensors (moments, …); left out of weights-only saves.
    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        Vec::new()
    }
    /// Everything else needed to continue bit for bit (counters, RNG, data position).
    fn trainer_state(&self) -> serde_json::Value;
    /// Buffers to load model and optimizer tensors into, in place.
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>>;
    /// Buffers for the tensors this rank holds only a region of (sharded state; with several
    /// ranks, each restores its own shards, whatever partition the checkpoint was saved with).
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        Vec::new()
    }
    /// Takes the trainer state back.
    fn restore_trainer_state(&mut self, state: serde_json::Value) -> Result<()>;
}

/// A checkpoint the run saved (or linked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// Its name in the checkpoints directory.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// The step.
    pub step: u64,
    /// Bytes written (0 for a link).
    pub bytes: u64,
    /// Wall time of the write (commit included).
    pub elapsed: Duration,
    /// How long the training thread was blocked by it (staging for an asynchronous save, the
    /// whole save for a synchronous one).
    pub blocked: Duration,
    /// Whether it is a link to another checkpoint saved at this step.
    pub link: bool,
}
