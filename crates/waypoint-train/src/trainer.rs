//! [`Trainer`]: the model `--model` chose, behind one interface for the training loop.
//!
//! It only dispatches to the chosen model's state (`TrainState` or the candle one): it must not
//! hold any training logic or state of its own.

use crate::candle_model::CandleState;
use crate::cli::ModelKind;
use crate::data::Dataset;
use crate::dp::DataParallel;
use crate::model::{D_IN, D_OUT};
use crate::state::{StateConfig, TrainState};
use waypoint::Checkpointable;

/// The candle MLP (default) or the pure-Rust MLP, with their optimizer and data position.
#[derive(Debug)]
pub enum Trainer {
    /// `--model candle`.
    Candle(Box<CandleState>),
    /// `--model mlp-rust`.
    Rust(Box<TrainState>),
}

impl Trainer {
    /// The state before the first step.
    /// With `dp`, one rank of a `--data-parallel` job (`--model mlp-rust` only).
    pub fn new(
        model: ModelKind,
        config: StateConfig,
        data: &Dataset,
        dp: Option<DataParallel>,
    ) -> anyhow::Result<Self> {
        Ok(match (model, dp) {
            (ModelKind::Candle, None) => Trainer::Candle(Box::new(CandleState::new(config, data)?)),
            (ModelKind::Candle, Some(_)) => anyhow::bail!(
                "--data-parallel trains --model mlp-rust only (the candle model's AdamW is not sharded yet)"
            ),
            (ModelKind::MlpRust, None) => Trainer::Rust(Box::new(TrainState::new(config)?)),
            (ModelKind::MlpRust, Some(dp)) => {
                Trainer::Rust(Box::new(TrainState::new(config)?.with_data_parallel(dp)?))
            }
        })
    }

    /// What the model is, in words.
    pub fn describe(&self, hidden: u64) -> String {
        match self {
            Trainer::Candle(_) => format!(
                "candle mlp {D_IN}-{hidden}-{hidden}-{D_OUT} tanh, AdamW (lr {}), CPU",
                crate::candle_model::ADAMW.lr
            ),
            Trainer::Rust(_) => format!(
                "pure-Rust mlp {D_IN}-{hidden}-{D_OUT} tanh, Adam (lr {})",
                crate::model::LEARNING_RATE
            ),
        }
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        match self {
            Trainer::Candle(s) => s.step(),
            Trainer::Rust(s) => s.step(),
        }
    }

    /// The epoch of the latest minibatch.
    pub fn epoch(&self) -> u64 {
        match self {
            Trainer::Candle(s) => s.epoch(),
            Trainer::Rust(s) => s.epoch(),
        }
    }

    /// Model parameters in total.
    pub fn parameter_count(&self) -> usize {
        match self {
            Trainer::Candle(s) => s.parameter_count(),
            Trainer::Rust(s) => s.parameter_count(),
        }
    }

    /// Bytes of all checkpointed tensors.
    pub fn tensor_bytes(&self) -> u64 {
        match self {
            Trainer::Candle(s) => s.tensor_bytes(),
            Trainer::Rust(s) => s.tensor_bytes(),
        }
    }

    /// One optimizer step; the minibatch loss before the update.
    pub fn train_step(&mut self, data: &Dataset) -> anyhow::Result<f32> {
        match self {
            Trainer::Candle(s) => s.train_step(data),
            Trainer::Rust(s) => s.try_train_step(data),
        }
    }

    /// The validation loss.
    pub fn val_loss(&self, data: &Dataset) -> anyhow::Result<f32> {
        match self {
            Trainer::Candle(s) => s.val_loss(),
            Trainer::Rust(s) => Ok(s.val_loss(data)),
        }
    }

    /// The digest printed as `final_state_sha256`.
    pub fn sha256(&self) -> anyhow::Result<String> {
        match self {
            Trainer::Candle(s) => s.sha256(),
            Trainer::Rust(s) => s.try_sha256(),
        }
    }

    /// Calls `f` with the state to save (the candle model's lent without a copy).
    pub fn with_state<R>(&self, f: impl FnOnce(&dyn Checkpointable) -> R) -> anyhow::Result<R> {
        match self {
            Trainer::Candle(s) => s.snapshot(f),
            Trainer::Rust(s) => Ok(f(s.as_ref())),
        }
    }

    /// The state to load a checkpoint into.
    pub fn restore_target(&mut self) -> &mut dyn Checkpointable {
        match self {
            Trainer::Candle(s) => s.as_mut(),
            Trainer::Rust(s) => s.as_mut(),
        }
    }
}
