//! The example Learner's model and data, shared with the Learner test (`tests/it/learner.rs`):
//! one linear layer learning `y = 2·x0 − x1 + 0.5` from `n` points in shuffled batches of 4,
//! validated on 8 other points.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::{InferenceStep, RegressionOutput, TrainOutput, TrainStep};
use std::sync::Arc;

/// One linear layer.
#[derive(Module, Debug)]
pub struct Regression {
    fc: Linear,
}

/// A batch of inputs and targets.
#[derive(Clone, Debug)]
pub struct Batch {
    x: Tensor<2>,
    y: Tensor<2>,
}

/// Makes [`Batch`]es of points.
pub struct Batches;

impl Batcher<[f32; 2], Batch> for Batches {
    fn batch(&self, items: Vec<[f32; 2]>, device: &Device) -> Batch {
        let n = items.len();
        let x: Vec<f32> = items.iter().flatten().copied().collect();
        let y: Vec<f32> = items.iter().map(|[a, b]| 2.0 * a - b + 0.5).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, 2]), device),
            y: Tensor::from_data(TensorData::new(y, [n, 1]), device),
        }
    }
}

impl Regression {
    /// Initialised from the device's generator (seed it first).
    pub fn new(device: &Device) -> Self {
        Regression {
            fc: LinearConfig::new(2, 1).init(device),
        }
    }

    fn output(&self, batch: Batch) -> RegressionOutput {
        let output = self.fc.forward(batch.x);
        let loss = (output.clone() - batch.y.clone()).powi_scalar(2).mean();
        RegressionOutput::new(loss, output, batch.y)
    }
}

impl TrainStep for Regression {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
        let out = self.output(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Regression {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> RegressionOutput {
        self.output(batch)
    }
}

/// `n` training points (batches of 4, shuffled from `seed` at every epoch) and 8 validation
/// points.
pub fn loaders(seed: u64, n: usize) -> (Arc<dyn DataLoader<Batch>>, Arc<dyn DataLoader<Batch>>) {
    let points = |n: usize, k: f32| -> Vec<[f32; 2]> {
        (0..n)
            .map(|i| [(i as f32 * k).sin(), (i as f32 * 0.37 + k).cos()])
            .collect()
    };
    let train = DataLoaderBuilder::new(Batches)
        .batch_size(4)
        .shuffle(seed)
        .build(InMemDataset::new(points(n, 0.5)));
    let valid = DataLoaderBuilder::new(Batches)
        .batch_size(4)
        .build(InMemDataset::new(points(8, 1.3)));
    (train, valid)
}
