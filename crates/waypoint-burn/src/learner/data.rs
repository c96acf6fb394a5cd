//! [`ResumedOrder`]: a training data loader whose shuffled order continues where the resumed run
//! left it, at an epoch boundary.
//!
//! burn's `DataLoaderBuilder::shuffle(seed)` seeds one generator when the loader is built; the
//! Learner forks it (`to_device`) when training starts, and every epoch's `iter()` draws that
//! epoch's permutation from the fork. A process resumed at epoch `n + 1` would draw epoch 1's
//! order again. This wrapper replays the `n` earlier draws on the fork, so the resumed epochs see
//! the permutations of an uninterrupted run. It owns that replay only; it cannot restore a
//! position inside an epoch (burn's loaders have no saveable state).

use super::LearnerRun;
use burn::data::dataloader::{DataLoader, DataLoaderIterator};
use burn::tensor::Device;
use std::sync::Arc;

/// A loader whose fork skips `epochs` epochs' permutations (see the module documentation).
pub struct ResumedOrder<O> {
    inner: Arc<dyn DataLoader<O>>,
    epochs: usize,
}

impl<O> std::fmt::Debug for ResumedOrder<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumedOrder")
            .field("epochs", &self.epochs)
            .finish_non_exhaustive()
    }
}

impl<O: Send + 'static> DataLoader<O> for ResumedOrder<O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        self.inner.iter()
    }

    fn num_items(&self) -> usize {
        self.inner.num_items()
    }

    /// The Learner's fork, with the earlier epochs' permutations drawn (one iterator created and
    /// dropped per epoch: no batch is loaded by a single-threaded loader).
    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        let fork = self.inner.to_device(device);
        for _ in 0..self.epochs {
            drop(fork.iter());
        }
        fork
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        Arc::new(ResumedOrder {
            inner: self.inner.slice(start, end),
            epochs: self.epochs,
        })
    }
}

impl LearnerRun {
    /// The training loader for `SupervisedTraining::new`, continuing a shuffled order where the
    /// resumed run left it (`loader` itself when starting from scratch). Only for loaders that
    /// draw one permutation per `iter()`, as `DataLoaderBuilder::shuffle` builds them.
    pub fn resumed_order<O: Send + 'static>(
        &self,
        loader: Arc<dyn DataLoader<O>>,
    ) -> Arc<dyn DataLoader<O>> {
        match self.resume_epoch() {
            Some(epochs) if epochs > 0 => Arc::new(ResumedOrder {
                inner: loader,
                epochs,
            }),
            _ => loader,
        }
    }
}
