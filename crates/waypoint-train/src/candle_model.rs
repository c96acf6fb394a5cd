//! The default model: a candle MLP `D_IN → hidden (tanh) → hidden (tanh) → D_OUT` on CPU,
//! trained with waypoint-candle's [`AdamW`] on the teacher data of [`crate::data`], and
//! [`CandleState`], everything a checkpoint of it holds.
//!
//! - Model vars (`F32`): `model.layer{1,2,3}.{weight,bias}`, initialised from the trainer's own
//!   seeded stream (uniform `±1/sqrt(fan_in)` weights, zero biases; candle's initialisers draw
//!   from a thread RNG that cannot be seeded, so none is used).
//! - Optimizer vars (`F32`): AdamW's moments `optim.m.model.<…>` and `optim.v.model.<…>`, and
//!   the `--extra-state-mib` buffers.
//! - Trainer state (JSON, [`SavedCandleState`]): the shaping flags, the step, AdamW's step count
//!   and the data position (epoch, minibatch, shuffling stream).
//!
//! Saves lend the vars' memory through [`waypoint_candle::Snapshot`] ([`CandleState::snapshot`]);
//! loads fill staging buffers and write them into the same vars in place.

use crate::data::{BATCH, Batcher, BatcherState, Dataset, N_VAL, stream};
use crate::extra::ExtraState;
use crate::model::{D_IN, D_OUT};
use crate::rng::Xoshiro256;
use crate::state::{StateConfig, check_saved_position, tensors_sha256};
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use waypoint::{Checkpointable, SinkSlot, TensorData, TensorRef};
use waypoint_candle::{AdamW, AdamWParams, NamedVars, Snapshot, VarStaging};

/// AdamW's hyper-parameters for the candle model (constant learning rate).
pub const ADAMW: AdamWParams = AdamWParams {
    lr: 3e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 1e-4,
};
/// Version of [`SavedCandleState`].
const FORMAT: u32 = 1;
/// What [`SavedCandleState::model`] says.
const MODEL_NAME: &str = "candle-mlp";

/// The trainer state of the candle model, as saved in the commit record (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedCandleState {
    /// Version of this layout (1).
    pub format: u32,
    /// `candle-mlp`.
    pub model: String,
    /// The flags the state was made with.
    pub config: StateConfig,
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's step count.
    pub adamw_step: u64,
    /// The epoch of the latest minibatch.
    pub epoch: u64,
    /// Minibatches of that epoch already drawn.
    pub batch_in_epoch: u64,
    /// The shuffling stream's xoshiro256** state now.
    pub data_rng: [u64; 4],
    /// The shuffling stream's state when the epoch began.
    pub epoch_rng: [u64; 4],
}

/// The three layers, sharing their tensors with the vars (updated in place by the optimizer).
#[derive(Debug)]
struct Mlp {
    layers: [Linear; 3],
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.layers[0].forward(x)?.tanh()?;
        let h = self.layers[1].forward(&h)?.tanh()?;
        self.layers[2].forward(&h)
    }
}

/// The candle model's whole training state.
#[derive(Debug)]
pub struct CandleState {
    config: StateConfig,
    mlp: Mlp,
    vars: NamedVars,
    opt: AdamW,
    batcher: Batcher,
    step: u64,
    extra: ExtraState,
    staging: Option<(VarStaging, VarStaging)>,
    val_x: Tensor,
    val_y: Tensor,
    batch_x: Vec<f32>,
    batch_y: Vec<f32>,
}

/// A `[rows, cols]` var, uniform in `±bound`, drawn from `rng` row by row.
fn uniform(rng: &mut Xoshiro256, rows: usize, cols: usize, bound: f32) -> anyhow::Result<Var> {
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| bound * rng.symmetric_f32())
        .collect();
    Ok(Var::from_vec(values, (rows, cols), &Device::Cpu)?)
}

impl CandleState {
    /// The state before the first step, for the flags `config` and the data `data`.
    pub fn new(config: StateConfig, data: &Dataset) -> anyhow::Result<Self> {
        let hidden = usize::try_from(config.hidden)?;
        let mut rng = Xoshiro256::new(config.seed, stream::INIT);
        let mut vars = NamedVars::new();
        let mut layers = Vec::new();
        for (i, (fan_in, fan_out)) in [(D_IN, hidden), (hidden, hidden), (hidden, D_OUT)]
            .into_iter()
            .enumerate()
        {
            let weight = uniform(&mut rng, fan_out, fan_in, 1.0 / (fan_in as f32).sqrt())?;
            let bias = Var::zeros(fan_out, candle_core::DType::F32, &Device::Cpu)?;
            layers.push(Linear::new(
                weight.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
            ));
            vars.insert(format!("model.layer{}.weight", i + 1), weight)?;
            vars.insert(format!("model.layer{}.bias", i + 1), bias)?;
        }
        let layers: [Linear; 3] = layers
            .try_into()
            .map_err(|_| anyhow::anyhow!("internal error: not three layers"))?;
        let opt = AdamW::new(&vars, ADAMW)?;
        let cpu = &Device::Cpu;
        Ok(CandleState {
            config,
            mlp: Mlp { layers },
            vars,
            opt,
            batcher: Batcher::new(config.seed),
            step: 0,
            extra: ExtraState::new(config.seed, config.extra_state_mib)?,
            staging: None,
            val_x: Tensor::from_slice(&data.val_x, (N_VAL, D_IN), cpu)?,
            val_y: Tensor::from_slice(&data.val_y, (N_VAL, D_OUT), cpu)?,
            batch_x: Vec::new(),
            batch_y: Vec::new(),
        })
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The epoch of the latest minibatch (0-based).
    pub fn epoch(&self) -> u64 {
        self.batcher.epoch()
    }

    /// Model parameters in total.
    pub fn parameter_count(&self) -> usize {
        self.vars.elem_count()
    }

    /// Bytes of all checkpointed tensors (model, optimizer, extra).
    pub fn tensor_bytes(&self) -> u64 {
        (self.vars.elem_count() + self.opt.state_vars().elem_count()) as u64 * 4
            + self.extra.bytes()
    }

    /// One AdamW step on the next minibatch; returns its loss (before the update).
    pub fn train_step(&mut self, data: &Dataset) -> anyhow::Result<f32> {
        let batch = self.batcher.next_batch();
        data.gather(batch, &mut self.batch_x, &mut self.batch_y);
        let cpu = &Device::Cpu;
        let x = Tensor::from_slice(&self.batch_x, (BATCH, D_IN), cpu)?;
        let y = Tensor::from_slice(&self.batch_y, (BATCH, D_OUT), cpu)?;
        let loss = candle_nn::loss::mse(&self.mlp.forward(&x)?, &y)?;
        let value = loss.to_scalar::<f32>()?;
        self.opt.backward_step(&loss)?;
        self.step += 1;
        self.extra.touch(self.step);
        Ok(value)
    }

    /// Mean squared error on the whole validation set.
    pub fn val_loss(&self) -> anyhow::Result<f32> {
        let out = self.mlp.forward(&self.val_x)?;
        Ok(candle_nn::loss::mse(&out, &self.val_y)?.to_scalar::<f32>()?)
    }

    fn saved_state(&self) -> SavedCandleState {
        let BatcherState {
            epoch,
            batch_in_epoch,
            rng,
            epoch_rng,
        } = self.batcher.state();
        SavedCandleState {
            format: FORMAT,
            model: MODEL_NAME.to_owned(),
            config: self.config,
            step: self.step,
            adamw_step: self.opt.step_count() as u64,
            epoch,
            batch_in_epoch,
            data_rng: rng,
            epoch_rng,
        }
    }

    /// Calls `f` with the state as a [`Checkpointable`] that lends the vars' memory (read-locked
    /// for the call) and the extra buffers without a copy: what every save of the trainer uses.
    pub fn snapshot<R>(&self, f: impl FnOnce(&dyn Checkpointable) -> R) -> anyhow::Result<R> {
        let model = self.vars.lock()?;
        let optim = self.opt.state_vars().lock()?;
        let state = serde_json::to_value(self.saved_state())?;
        let snapshot = Snapshot::new(&model, &optim, state).with_extra(self.extra.tensor_refs());
        Ok(f(&snapshot))
    }

    /// The digest `final_state_sha256` over model, optimizer and extra tensors.
    pub fn sha256(&self) -> anyhow::Result<String> {
        let model = self.vars.lock()?;
        let optim = self.opt.state_vars().lock()?;
        let mut tensors = model.tensor_refs();
        tensors.extend(optim.tensor_refs());
        tensors.extend(self.extra.tensor_refs());
        Ok(tensors_sha256(tensors))
    }

    fn apply_saved(&mut self, saved: SavedCandleState) -> Result<(), String> {
        if saved.format != FORMAT || saved.model != MODEL_NAME {
            return Err(format!(
                "model {:?} format {} (this trainer reads {MODEL_NAME:?} format {FORMAT})",
                saved.model, saved.format
            ));
        }
        self.config.check_saved(&saved.config)?;
        check_saved_position(
            "AdamW",
            saved.step,
            saved.adamw_step,
            saved.epoch,
            saved.batch_in_epoch,
        )?;
        let adamw_step = usize::try_from(saved.adamw_step).map_err(|e| e.to_string())?;
        self.batcher = Batcher::restore(BatcherState {
            epoch: saved.epoch,
            batch_in_epoch: saved.batch_in_epoch,
            rng: saved.data_rng,
            epoch_rng: saved.epoch_rng,
        })?;
        self.step = saved.step;
        self.opt.set_step_count(adamw_step);
        Ok(())
    }
}

/// Owned copies of lent tensors, for the trait's save side (see [`CandleState`]'s impl).
fn owned(tensors: Vec<TensorRef<'_>>) -> Vec<TensorRef<'static>> {
    tensors
        .into_iter()
        .map(|t| TensorRef {
            name: Cow::Owned(t.name.into_owned()),
            data: TensorData::Owned(t.data.to_vec()),
            dtype: t.dtype,
            global_shape: t.global_shape,
            offsets: t.offsets,
            shape: t.shape,
        })
        .collect()
}

/// The load side is what [`waypoint::Run::restore`] uses: staging buffers typed like the vars,
/// written into them by [`Checkpointable::restore_trainer_state`]. The save side copies (the
/// vars' read locks cannot outlive a `&self` call); the trainer saves through
/// [`CandleState::snapshot`] instead, which lends the memory.
impl Checkpointable for CandleState {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        self.vars
            .lock()
            .map(|l| owned(l.tensor_refs()))
            .unwrap_or_default()
    }

    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        let mut tensors = self
            .opt
            .state_vars()
            .lock()
            .map(|l| owned(l.tensor_refs()))
            .unwrap_or_default();
        tensors.extend(self.extra.tensor_refs());
        tensors
    }

    fn trainer_state(&self) -> serde_json::Value {
        serde_json::to_value(self.saved_state()).unwrap_or(serde_json::Value::Null)
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        let staging = match (self.vars.staging(), self.opt.state_vars().staging()) {
            (Ok(model), Ok(optim)) => Some((model, optim)),
            _ => None,
        };
        self.staging = staging;
        let mut slots = Vec::new();
        if let Some((model, optim)) = &mut self.staging {
            slots.extend(model.slots());
            slots.extend(optim.slots());
        }
        slots.extend(self.extra.slots());
        slots
    }

    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        let invalid = |reason: String| waypoint::Error::InvalidArgument {
            name: "trainer state",
            reason,
        };
        let (model, optim) = self
            .staging
            .take()
            .ok_or_else(|| invalid("the model's vars could not be staged for the load".into()))?;
        model
            .apply()
            .and_then(|()| optim.apply())
            .map_err(|e| invalid(format!("writing the loaded tensors into the model: {e}")))?;
        let saved: SavedCandleState = serde_json::from_value(state)
            .map_err(|e| invalid(format!("not this trainer's candle state: {e}")))?;
        self.apply_saved(saved)
            .map_err(|reason| invalid(format!("the checkpoint's trainer state: {reason}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> StateConfig {
        StateConfig {
            seed: 3,
            hidden: 8,
            extra_state_mib: 1,
        }
    }

    /// Copies `from`'s tensors and trainer state into `to` as a load would.
    fn transfer(from: &CandleState, to: &mut CandleState) {
        let mut tensors = from.model_tensors();
        tensors.extend(from.optimizer_tensors());
        for slot in to.restore_slots() {
            let t = tensors.iter().find(|t| t.name == slot.name).unwrap();
            slot.data.copy_from_slice(&t.data);
        }
        to.restore_trainer_state(from.trainer_state()).unwrap();
    }

    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let data = Dataset::generate(3);
        let mut a = CandleState::new(config(), &data).unwrap();
        let first = a.val_loss().unwrap();
        for _ in 0..70 {
            a.train_step(&data).unwrap();
        }
        assert!(a.val_loss().unwrap() < first);
        let mut b = CandleState::new(config(), &data).unwrap();
        assert_ne!(a.sha256().unwrap(), b.sha256().unwrap());
        transfer(&a, &mut b);
        assert_eq!(a.sha256().unwrap(), b.sha256().unwrap());
        for _ in 0..30 {
            assert_eq!(
                a.train_step(&data).unwrap().to_bits(),
                b.train_step(&data).unwrap().to_bits()
            );
        }
        assert_eq!(a.sha256().unwrap(), b.sha256().unwrap());
        assert_eq!((a.step(), a.epoch()), (100, 1));
    }

    #[test]
    fn the_snapshot_holds_what_the_digest_covers() {
        let data = Dataset::generate(3);
        let s = CandleState::new(config(), &data).unwrap();
        let names = s
            .snapshot(|c| {
                let mut t = c.model_tensors();
                t.extend(c.optimizer_tensors());
                t.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(names.len(), 6 + 12 + 1);
        assert!(names.contains(&"model.layer2.weight".to_owned()));
        assert!(names.contains(&"optim.v.model.layer3.bias".to_owned()));
        assert!(names.contains(&"extra.buffer.0".to_owned()));
    }

    #[test]
    fn restore_refuses_other_flags() {
        let data = Dataset::generate(3);
        let a = CandleState::new(config(), &data).unwrap();
        let mut b = CandleState::new(
            StateConfig {
                seed: 4,
                ..config()
            },
            &data,
        )
        .unwrap();
        let _ = b.restore_slots();
        let err = b
            .restore_trainer_state(a.trainer_state())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--seed 3"), "{err}");
    }
}
