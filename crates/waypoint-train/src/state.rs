//! Everything a checkpoint holds, and how it goes in and comes back: [`TrainState`] implements
//! waypoint's [`Checkpointable`].
//!
//! - Model tensors (`F32`): `model.layer1.weight [hidden, 8]`, `model.layer1.bias [hidden]`,
//!   `model.layer2.weight [2, hidden]`, `model.layer2.bias [2]`.
//! - Optimizer tensors: Adam's moments `optim.m.<tensor>` and `optim.v.<tensor>` (`F32`, shaped
//!   like the parameter), and the `--extra-state-mib` buffers `extra.buffer.<i>` (`U8 [len]`,
//!   at most 4 MiB each), which stand in for the bulk of a real model's state.
//! - Trainer state (JSON): the flags that shape the state (seed, hidden, extra MiB), the step,
//!   Adam's update count, and the data position: epoch, minibatch within it, and the shuffling
//!   stream now and at the epoch's start ([`SavedTrainerState`]).
//!
//! [`TrainState::sha256`] is the digest the trainer prints as `final_state_sha256`.
//!
//! It owns the checkpoint's layout and refuses a checkpoint whose flags or data position do not
//! match this run. It must not decide when to save or restore, which is the training loop's and
//! waypoint's; and it never trusts a loaded trainer state: it is checked before it is applied.

use crate::data::{BATCHES_PER_EPOCH, Batcher, BatcherState, Dataset, N_VAL, stream};
use crate::dp::DataParallel;
use crate::extra::ExtraState;
use crate::model::{Adam, D_OUT, Layout, Scratch, forward, init_params, mse};
use crate::rng::Xoshiro256;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use waypoint::{Checkpointable, Dtype, RegionSlot, SinkSlot, TensorRef};

/// `--data-parallel`'s methods.
mod dp_part;

/// Version of [`SavedTrainerState`].
const TRAINER_STATE_FORMAT: u32 = 1;

/// The flags that determine the shape and the starting point of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateConfig {
    /// `--seed`.
    pub seed: u64,
    /// `--hidden`.
    pub hidden: u64,
    /// `--extra-state-mib`.
    pub extra_state_mib: u64,
}

impl StateConfig {
    /// Refuses a saved state made with other flags, naming both sets.
    pub fn check_saved(&self, saved: &StateConfig) -> Result<(), String> {
        if saved == self {
            return Ok(());
        }
        Err(format!(
            "it was made with --seed {} --hidden {} --extra-state-mib {}, this run has --seed {} --hidden {} --extra-state-mib {}: use the same flags, or another --log-dir/--name",
            saved.seed,
            saved.hidden,
            saved.extra_state_mib,
            self.seed,
            self.hidden,
            self.extra_state_mib
        ))
    }
}

/// Refuses a saved position whose counters disagree: the optimizer's step must be the step, and
/// the step must be `epoch` epochs plus `batch_in_epoch` minibatches.
pub fn check_saved_position(
    optimizer: &str,
    step: u64,
    optimizer_step: u64,
    epoch: u64,
    batch_in_epoch: u64,
) -> Result<(), String> {
    let expected_step = epoch
        .checked_mul(BATCHES_PER_EPOCH)
        .and_then(|s| s.checked_add(batch_in_epoch));
    if optimizer_step != step || expected_step != Some(step) {
        return Err(format!(
            "step {step}, {optimizer} step {optimizer_step}, epoch {epoch} and minibatch {batch_in_epoch} do not agree"
        ));
    }
    Ok(())
}

/// The trainer state as saved in the commit record (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTrainerState {
    /// Version of this layout (1).
    pub format: u32,
    /// The flags the state was made with.
    pub config: StateConfig,
    /// Optimizer steps completed.
    pub step: u64,
    /// Adam's update count `t`.
    pub adam_step: u64,
    /// The epoch of the latest minibatch.
    pub epoch: u64,
    /// Minibatches of that epoch already drawn.
    pub batch_in_epoch: u64,
    /// The shuffling stream's xoshiro256** state now.
    pub data_rng: [u64; 4],
    /// The shuffling stream's state when the epoch began (its order is re-derived from it).
    pub epoch_rng: [u64; 4],
}

/// Where a loaded tensor's bytes go once the load is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Param,
    M,
    V,
}

/// A buffer a load fills, decoded into `f32`s afterwards.
#[derive(Debug)]
struct Staged {
    name: String,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    target: Target,
    offset: usize,
    /// A region's place in the whole tensor (`--data-parallel`'s moments): its global shape and
    /// first row; empty for a whole tensor.
    region: Option<(Vec<u64>, Vec<u64>)>,
}

/// The whole training state: model, Adam, data position, extra buffers.
#[derive(Debug)]
pub struct TrainState {
    config: StateConfig,
    layout: Layout,
    /// Tensor names per layout segment: (model, m, v).
    names: Vec<(String, String, String)>,
    /// Parameters, laid out as `layout` says.
    params: Vec<f32>,
    adam: Adam,
    batcher: Batcher,
    step: u64,
    extra: ExtraState,
    staging: Vec<Staged>,
    scratch: Scratch,
    batch_x: Vec<f32>,
    batch_y: Vec<f32>,
    /// `--data-parallel`: this rank's part of the job (batch slice, owned rows).
    dp: Option<DataParallel>,
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl TrainState {
    /// The state before the first step: initial weights, zero moments, epoch 0, extra buffers
    /// filled from the seed.
    pub fn new(config: StateConfig) -> anyhow::Result<Self> {
        let hidden = usize::try_from(config.hidden)?;
        let layout = Layout::new(hidden);
        let params = init_params(&layout, &mut Xoshiro256::new(config.seed, stream::INIT));
        let names = layout
            .segments
            .iter()
            .map(|s| {
                (
                    format!("model.{}", s.name),
                    format!("optim.m.{}", s.name),
                    format!("optim.v.{}", s.name),
                )
            })
            .collect();
        let extra = ExtraState::new(config.seed, config.extra_state_mib)?;
        Ok(TrainState {
            config,
            adam: Adam::new(layout.len()),
            layout,
            names,
            params,
            batcher: Batcher::new(config.seed),
            step: 0,
            extra,
            staging: Vec::new(),
            scratch: Scratch::default(),
            batch_x: Vec::new(),
            batch_y: Vec::new(),
            dp: None,
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
        self.layout.len()
    }

    /// Bytes of all checkpointed tensors (model, optimizer, extra).
    pub fn tensor_bytes(&self) -> u64 {
        let floats = 3 * self.layout.len() as u64 * 4;
        floats + self.extra.bytes()
    }

    /// One optimizer step on the next minibatch; returns its loss (before the update).
    pub fn train_step(&mut self, data: &Dataset) -> f32 {
        let batch = self.batcher.next_batch();
        data.gather(batch, &mut self.batch_x, &mut self.batch_y);
        let loss = self.adam.step(
            &self.layout,
            &mut self.params,
            &self.batch_x,
            &self.batch_y,
            &mut self.scratch,
        );
        self.step += 1;
        self.extra.touch(self.step);
        loss
    }

    /// Mean squared error on the whole validation set.
    pub fn val_loss(&self, data: &Dataset) -> f32 {
        let mut hidden = vec![0.0; N_VAL * self.layout.hidden];
        let mut outputs = vec![0.0; N_VAL * D_OUT];
        forward(
            &self.layout,
            &self.params,
            &data.val_x,
            &mut hidden,
            &mut outputs,
        );
        mse(&outputs, &data.val_y)
    }

    /// SHA-256 over every checkpointed tensor in name order (byte-wise): for each, the name's
    /// UTF-8 bytes, the dtype's name (`F32`, `U8`), each dimension of the shape as a `u64`
    /// little-endian, then the tensor's little-endian bytes. Lower-case hex.
    pub fn sha256(&self) -> String {
        let mut tensors = self.model_tensors();
        tensors.extend(self.optimizer_tensors());
        tensors_sha256(tensors)
    }

    fn saved_trainer_state(&self) -> SavedTrainerState {
        let BatcherState {
            epoch,
            batch_in_epoch,
            rng,
            epoch_rng,
        } = self.batcher.state();
        SavedTrainerState {
            format: TRAINER_STATE_FORMAT,
            config: self.config,
            step: self.step,
            adam_step: self.adam.step,
            epoch,
            batch_in_epoch,
            data_rng: rng,
            epoch_rng,
        }
    }

    fn apply_trainer_state(&mut self, saved: SavedTrainerState) -> Result<(), String> {
        if saved.format != TRAINER_STATE_FORMAT {
            return Err(format!(
                "format {} (this trainer reads {TRAINER_STATE_FORMAT})",
                saved.format
            ));
        }
        self.config.check_saved(&saved.config)?;
        check_saved_position(
            "Adam",
            saved.step,
            saved.adam_step,
            saved.epoch,
            saved.batch_in_epoch,
        )?;
        self.batcher = Batcher::restore(BatcherState {
            epoch: saved.epoch,
            batch_in_epoch: saved.batch_in_epoch,
            rng: saved.data_rng,
            epoch_rng: saved.epoch_rng,
        })?;
        self.step = saved.step;
        self.adam.step = saved.adam_step;
        Ok(())
    }

    /// Decodes the buffers a load filled into the parameters and moments.
    fn unstage(&mut self) {
        for staged in std::mem::take(&mut self.staging) {
            let dest = match staged.target {
                Target::Param => &mut self.params,
                Target::M => &mut self.adam.m,
                Target::V => &mut self.adam.v,
            };
            for (value, bytes) in dest[staged.offset..]
                .iter_mut()
                .zip(staged.bytes.chunks_exact(4))
            {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
    }
}

impl Checkpointable for TrainState {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        self.layout
            .segments
            .iter()
            .zip(&self.names)
            .map(|(s, (name, _, _))| {
                let bytes = f32_bytes(&self.params[s.offset..s.offset + s.len]);
                TensorRef::whole(name.as_str(), Dtype::F32, s.shape.clone(), bytes)
            })
            .collect()
    }

    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        if let Some(dp) = &self.dp {
            return self.owned_moments(dp);
        }
        let mut tensors = Vec::new();
        for (s, (_, m, v)) in self.layout.segments.iter().zip(&self.names) {
            for (name, values) in [(m, &self.adam.m), (v, &self.adam.v)] {
                let bytes = f32_bytes(&values[s.offset..s.offset + s.len]);
                tensors.push(TensorRef::whole(
                    name.as_str(),
                    Dtype::F32,
                    s.shape.clone(),
                    bytes,
                ));
            }
        }
        tensors.extend(self.extra.tensor_refs());
        tensors
    }

    fn trainer_state(&self) -> serde_json::Value {
        // A struct of integers always serialises.
        serde_json::to_value(self.saved_trainer_state()).unwrap_or(serde_json::Value::Null)
    }

    /// The load fills staging buffers (holding the current values, so a tensor the checkpoint
    /// lacks keeps them); [`Checkpointable::restore_trainer_state`], which `Run::restore` calls
    /// after the load, decodes them. Extra buffers are filled in place.
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        let mut staging = Vec::new();
        // Under --data-parallel the moments are regions (restore_regions).
        let whole = if self.dp.is_some() { 1 } else { 3 };
        for (s, (name, m, v)) in self.layout.segments.iter().zip(&self.names) {
            for (name, target, values) in [
                (name, Target::Param, &self.params),
                (m, Target::M, &self.adam.m),
                (v, Target::V, &self.adam.v),
            ]
            .into_iter()
            .take(whole)
            {
                staging.push(Staged {
                    name: name.clone(),
                    shape: s.shape.clone(),
                    bytes: f32_bytes(&values[s.offset..s.offset + s.len]),
                    target,
                    offset: s.offset,
                    region: None,
                });
            }
        }
        self.staging = staging;
        let mut slots = Vec::new();
        for staged in &mut self.staging {
            let Staged {
                name, shape, bytes, ..
            } = staged;
            slots.push(SinkSlot {
                name: name.as_str(),
                dtype: Dtype::F32,
                shape: shape.as_slice(),
                data: bytes.as_mut_slice(),
            });
        }
        slots.extend(self.extra.slots());
        slots
    }

    /// Under `--data-parallel`: this rank's rows of the moments, whatever number of ranks saved
    /// them (waypoint reads the rows from the saved shards that hold them).
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        self.dp_regions()
    }

    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        self.unstage();
        let invalid = |reason: String| waypoint::Error::InvalidArgument {
            name: "trainer state",
            reason,
        };
        let saved: SavedTrainerState = serde_json::from_value(state)
            .map_err(|e| invalid(format!("not this trainer's state: {e}")))?;
        self.apply_trainer_state(saved)
            .map_err(|reason| invalid(format!("the checkpoint's trainer state: {reason}")))
    }
}

/// The digest `final_state_sha256` of whole tensors: sorted by name (byte order), for each its
/// name's UTF-8 bytes, its dtype's name (`F32`, `U8`), each dimension of its shape as a `u64`
/// little-endian, then its little-endian bytes. Lower-case hex.
pub fn tensors_sha256(mut tensors: Vec<TensorRef<'_>>) -> String {
    tensors.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut hasher = Sha256::new();
    for t in &tensors {
        hasher.update(t.name.as_bytes());
        hasher.update(t.dtype.name().as_bytes());
        for d in &t.global_shape {
            hasher.update(d.to_le_bytes());
        }
        hasher.update(t.data.as_ref());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(extra_state_mib: u64) -> StateConfig {
        StateConfig {
            seed: 5,
            hidden: 6,
            extra_state_mib,
        }
    }

    /// Copies `from`'s tensors and trainer state into `to` as a load would.
    fn transfer(from: &TrainState, to: &mut TrainState) {
        let mut tensors = from.model_tensors();
        tensors.extend(from.optimizer_tensors());
        let owned: Vec<(String, Vec<u8>)> = tensors
            .iter()
            .map(|t| (t.name.to_string(), t.data.to_vec()))
            .collect();
        for slot in to.restore_slots() {
            let (_, data) = owned.iter().find(|(n, _)| n == slot.name).unwrap();
            slot.data.copy_from_slice(data);
        }
        to.restore_trainer_state(from.trainer_state()).unwrap();
    }

    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let data = Dataset::generate(5);
        let mut a = TrainState::new(config(1)).unwrap();
        for _ in 0..70 {
            a.train_step(&data);
        }
        let mut b = TrainState::new(config(1)).unwrap();
        transfer(&a, &mut b);
        assert_eq!(a.sha256(), b.sha256());
        for _ in 0..30 {
            assert_eq!(a.train_step(&data).to_bits(), b.train_step(&data).to_bits());
        }
        assert_eq!(a.sha256(), b.sha256());
        assert_eq!((a.step(), a.epoch()), (100, 1));
    }

    #[test]
    fn one_data_parallel_rank_trains_bit_for_bit_like_one_process() {
        let data = Dataset::generate(5);
        let mut plain = TrainState::new(config(0)).unwrap();
        let dp = DataParallel::new(std::sync::Arc::new(waypoint::dist::SingleProcess));
        let mut one = TrainState::new(config(0))
            .unwrap()
            .with_data_parallel(dp)
            .unwrap();
        for _ in 0..10 {
            let a = plain.train_step(&data);
            assert_eq!(a.to_bits(), one.try_train_step(&data).unwrap().to_bits());
        }
        assert_eq!(plain.sha256(), one.try_sha256().unwrap());
    }

    #[test]
    fn restore_refuses_other_flags() {
        let a = TrainState::new(config(0)).unwrap();
        let mut b = TrainState::new(StateConfig {
            seed: 6,
            ..config(0)
        })
        .unwrap();
        let _ = b.restore_slots();
        let err = b
            .restore_trainer_state(a.trainer_state())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--seed 5"), "{err}");
    }

    #[test]
    fn extra_buffers_split_and_change_every_step() {
        let data = Dataset::generate(5);
        let mut s = TrainState::new(config(9)).unwrap();
        assert_eq!(s.extra.lengths(), vec![4 << 20, 4 << 20, 1 << 20]);
        let before = s.sha256();
        s.train_step(&data);
        assert_ne!(before, s.sha256());
    }
}
