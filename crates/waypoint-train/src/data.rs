//! The data: a fixed random "teacher" MLP labels inputs drawn uniformly from `[-1, 1)^D_IN`; the
//! student learns to imitate it. Everything derives from `--seed` (no downloads). The training
//! set is visited in epochs, each in an order shuffled by a seeded [`Xoshiro256`] stream; the
//! [`Batcher`]'s position and stream state are what a checkpoint saves to continue exactly.

use crate::model::{D_IN, D_OUT, Layout, forward, init_params};
use crate::rng::Xoshiro256;

/// Training samples.
pub const N_TRAIN: usize = 2048;
/// Held-out validation samples.
pub const N_VAL: usize = 512;
/// Samples per minibatch.
pub const BATCH: usize = 32;
/// Minibatches per epoch.
pub const BATCHES_PER_EPOCH: u64 = (N_TRAIN / BATCH) as u64;
/// Hidden units of the teacher.
const TEACHER_HIDDEN: usize = 32;
/// The teacher's first-layer weights are scaled up so that its tanh units saturate a little and
/// the function is not nearly linear.
const TEACHER_GAIN: f32 = 2.5;

/// Stream constants: one independent random stream per purpose.
pub mod stream {
    /// The teacher's weights.
    pub const TEACHER: u64 = 1;
    /// Training inputs.
    pub const TRAIN_INPUTS: u64 = 2;
    /// Validation inputs.
    pub const VAL_INPUTS: u64 = 3;
    /// The student's initial weights.
    pub const INIT: u64 = 4;
    /// The order in which minibatches visit the training set.
    pub const DATA_ORDER: u64 = 5;
    /// The extra state buffers (`--extra-state-mib`).
    pub const EXTRA: u64 = 6;
}

/// The training and validation sets, standardised so each output has mean 0 and variance 1 on
/// the training set.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `N_TRAIN × D_IN` inputs.
    pub train_x: Vec<f32>,
    /// `N_TRAIN × D_OUT` targets.
    pub train_y: Vec<f32>,
    /// `N_VAL × D_IN` inputs.
    pub val_x: Vec<f32>,
    /// `N_VAL × D_OUT` targets.
    pub val_y: Vec<f32>,
}

impl Dataset {
    /// The data for `seed`.
    pub fn generate(seed: u64) -> Self {
        let layout = Layout::new(TEACHER_HIDDEN);
        let mut teacher = init_params(&layout, &mut Xoshiro256::new(seed, stream::TEACHER));
        let mut bias_rng = Xoshiro256::new(seed, stream::TEACHER ^ 0xB1A5);
        for s in &layout.segments {
            let params = &mut teacher[s.offset..s.offset + s.len];
            match s.name {
                "layer1.weight" => params.iter_mut().for_each(|p| *p *= TEACHER_GAIN),
                "layer1.bias" => params
                    .iter_mut()
                    .for_each(|p| *p = bias_rng.symmetric_f32()),
                _ => {}
            }
        }
        let inputs = |n: usize, which: u64| {
            let mut rng = Xoshiro256::new(seed, which);
            (0..n * D_IN)
                .map(|_| rng.symmetric_f32())
                .collect::<Vec<f32>>()
        };
        let label = |x: &[f32]| {
            let n = x.len() / D_IN;
            let mut hidden = vec![0.0; n * TEACHER_HIDDEN];
            let mut y = vec![0.0; n * D_OUT];
            forward(&layout, &teacher, x, &mut hidden, &mut y);
            y
        };
        let train_x = inputs(N_TRAIN, stream::TRAIN_INPUTS);
        let val_x = inputs(N_VAL, stream::VAL_INPUTS);
        let mut train_y = label(&train_x);
        let mut val_y = label(&val_x);
        for o in 0..D_OUT {
            let column = || train_y.iter().skip(o).step_by(D_OUT);
            let mean = column().sum::<f32>() / N_TRAIN as f32;
            let var = column().map(|y| (y - mean) * (y - mean)).sum::<f32>() / N_TRAIN as f32;
            let std = var.sqrt().max(1e-6);
            for y in train_y
                .iter_mut()
                .skip(o)
                .step_by(D_OUT)
                .chain(val_y.iter_mut().skip(o).step_by(D_OUT))
            {
                *y = (*y - mean) / std;
            }
        }
        Dataset {
            train_x,
            train_y,
            val_x,
            val_y,
        }
    }

    /// Copies the samples `indices` into `x` and `y` (cleared first).
    pub fn gather(&self, indices: &[u32], x: &mut Vec<f32>, y: &mut Vec<f32>) {
        x.clear();
        y.clear();
        for &i in indices {
            let i = i as usize;
            x.extend_from_slice(&self.train_x[i * D_IN..(i + 1) * D_IN]);
            y.extend_from_slice(&self.train_y[i * D_OUT..(i + 1) * D_OUT]);
        }
    }
}

/// Where training is in the data: the epoch, the next minibatch of it, the order of this epoch,
/// and the random stream that shuffles. Epoch `e`'s order is the identity shuffled by the stream
/// as it stood when `e` began (`epoch_rng`), so the order need not be saved: it is re-derived.
#[derive(Debug, Clone, PartialEq)]
pub struct Batcher {
    order: Vec<u32>,
    rng: Xoshiro256,
    epoch_rng: [u64; 4],
    epoch: u64,
    batch_in_epoch: u64,
}

/// What a checkpoint saves of a [`Batcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherState {
    /// The current epoch (0-based).
    pub epoch: u64,
    /// Minibatches of this epoch already drawn.
    pub batch_in_epoch: u64,
    /// The shuffling stream now.
    pub rng: [u64; 4],
    /// The shuffling stream when this epoch began.
    pub epoch_rng: [u64; 4],
}

impl Batcher {
    /// Epoch 0, before its first minibatch.
    pub fn new(seed: u64) -> Self {
        let rng = Xoshiro256::new(seed, stream::DATA_ORDER);
        Self::at_epoch_start(rng, 0)
    }

    fn at_epoch_start(mut rng: Xoshiro256, epoch: u64) -> Self {
        let epoch_rng = rng.state();
        let mut order: Vec<u32> = (0..N_TRAIN as u32).collect();
        rng.shuffle(&mut order);
        Batcher {
            order,
            rng,
            epoch_rng,
            epoch,
            batch_in_epoch: 0,
        }
    }

    /// Continues from a saved position; refuses a state that could not have been saved (an
    /// invalid stream, a position past the epoch, a stream that does not follow from the epoch's).
    pub fn restore(state: BatcherState) -> Result<Self, String> {
        let start =
            Xoshiro256::from_state(state.epoch_rng).ok_or("epoch_rng is the all-zero state")?;
        if state.batch_in_epoch > BATCHES_PER_EPOCH {
            return Err(format!(
                "batch_in_epoch {} is past the {BATCHES_PER_EPOCH} minibatches of an epoch",
                state.batch_in_epoch
            ));
        }
        let mut batcher = Self::at_epoch_start(start, state.epoch);
        if batcher.rng.state() != state.rng {
            return Err("the shuffling stream does not follow from the epoch's start: the state is not one this trainer saved".into());
        }
        batcher.batch_in_epoch = state.batch_in_epoch;
        Ok(batcher)
    }

    /// The position to save.
    pub fn state(&self) -> BatcherState {
        BatcherState {
            epoch: self.epoch,
            batch_in_epoch: self.batch_in_epoch,
            rng: self.rng.state(),
            epoch_rng: self.epoch_rng,
        }
    }

    /// The epoch of the latest minibatch drawn.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The indices of the next minibatch, starting a new (reshuffled) epoch when this one is done.
    pub fn next_batch(&mut self) -> &[u32] {
        if self.batch_in_epoch == BATCHES_PER_EPOCH {
            let rng = self.rng.clone();
            *self = Self::at_epoch_start(rng, self.epoch + 1);
        }
        let start = self.batch_in_epoch as usize * BATCH;
        self.batch_in_epoch += 1;
        &self.order[start..start + BATCH]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn restore_continues_with_the_same_minibatches() {
        let mut a = Batcher::new(9);
        for _ in 0..BATCHES_PER_EPOCH + 3 {
            a.next_batch();
        }
        let mut b = Batcher::restore(a.state()).unwrap();
        for _ in 0..2 * BATCHES_PER_EPOCH {
            assert_eq!(a.next_batch(), b.next_batch());
            assert_eq!(a.epoch(), b.epoch());
        }
        assert_eq!(a.epoch(), 3);
    }

    #[test]
    fn restore_refuses_inconsistent_states() {
        let mut state = Batcher::new(1).state();
        state.rng[0] ^= 1;
        assert!(
            Batcher::restore(state)
                .unwrap_err()
                .contains("does not follow")
        );
        let mut state = Batcher::new(1).state();
        state.batch_in_epoch = BATCHES_PER_EPOCH + 1;
        assert!(Batcher::restore(state).is_err());
    }

    #[test]
    fn an_epoch_visits_every_sample_once() {
        let mut b = Batcher::new(2);
        let mut seen: Vec<u32> = (0..BATCHES_PER_EPOCH)
            .flat_map(|_| b.next_batch().to_vec())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..N_TRAIN as u32).collect::<Vec<_>>());
    }

    #[test]
    fn targets_are_standardised() {
        let d = Dataset::generate(0);
        let mean: f32 = d.train_y.iter().step_by(D_OUT).sum::<f32>() / N_TRAIN as f32;
        assert!(mean.abs() < 1e-4, "{mean}");
    }
}
