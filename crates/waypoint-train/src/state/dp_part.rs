//! `--data-parallel`'s part of [`TrainState`]: the step of one rank, the digest of the whole
//! (sharded) state, and the moments' rows as regions to save and restore (ZeRO-1; the rules are
//! `dp.rs`'s). It must not hold state of its own: everything lives in `TrainState`.

use super::{Staged, Target, TrainState, f32_bytes, tensors_sha256};
use crate::data::Dataset;
use crate::dp::DataParallel;
use waypoint::{Checkpointable, Dtype, RegionSlot, TensorRef};

impl TrainState {
    /// The state of one rank of a `--data-parallel` job (ZeRO-1; see `dp.rs`).
    pub fn with_data_parallel(mut self, dp: DataParallel) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.config.extra_state_mib == 0,
            "--data-parallel does not take --extra-state-mib (the extra buffers are not sharded)"
        );
        self.dp = Some(dp);
        Ok(self)
    }

    /// [`TrainState::train_step`], or under `--data-parallel` this rank's part of the step: its
    /// slice of the minibatch, the gradients averaged over the ranks, its rows updated, the
    /// weights gathered. Returns the loss averaged over the ranks.
    pub fn try_train_step(&mut self, data: &Dataset) -> anyhow::Result<f32> {
        let Some(dp) = &self.dp else {
            return Ok(self.train_step(data));
        };
        let batch = dp.batch_slice(self.batcher.next_batch());
        data.gather(batch, &mut self.batch_x, &mut self.batch_y);
        let loss = crate::model::loss_and_grad(
            &self.layout,
            &self.params,
            &self.batch_x,
            &self.batch_y,
            &mut self.scratch,
        );
        let loss = dp.average(self.scratch.grad_mut(), loss)?;
        let ranges: Vec<_> = dp
            .ownership(&self.layout)
            .into_iter()
            .map(|o| o.flat)
            .collect();
        self.adam
            .apply(&mut self.params, self.scratch.grad_mut(), &ranges);
        dp.gather_owned(&self.layout, &mut self.params)?;
        self.step += 1;
        self.extra.touch(self.step);
        Ok(loss)
    }

    /// [`TrainState::sha256`]; under `--data-parallel` a collective: the moments' rows are
    /// gathered first, so every rank prints the digest of the whole state.
    pub fn try_sha256(&self) -> anyhow::Result<String> {
        let Some(dp) = &self.dp else {
            return Ok(self.sha256());
        };
        let (mut m, mut v) = (self.adam.m.clone(), self.adam.v.clone());
        dp.gather_owned(&self.layout, &mut m)?;
        dp.gather_owned(&self.layout, &mut v)?;
        let mut tensors = self.model_tensors();
        for (s, (_, mn, vn)) in self.layout.segments.iter().zip(&self.names) {
            for (name, values) in [(mn, &m), (vn, &v)] {
                let bytes = f32_bytes(&values[s.offset..s.offset + s.len]);
                tensors.push(TensorRef::whole(
                    name.as_str(),
                    Dtype::F32,
                    s.shape.clone(),
                    bytes,
                ));
            }
        }
        Ok(tensors_sha256(tensors))
    }

    /// This rank's rows of the moments, as regions of the whole tensors.
    /// This rank's rows of the moments, as regions of the whole tensors.
    pub(super) fn owned_moments(&self, dp: &DataParallel) -> Vec<TensorRef<'_>> {
        let mut tensors = Vec::new();
        for o in dp.ownership(&self.layout) {
            let s = &self.layout.segments[o.segment];
            let (_, m, v) = &self.names[o.segment];
            let mut shape = s.shape.clone();
            shape[0] = o.rows.end - o.rows.start;
            for (name, values) in [(m, &self.adam.m), (v, &self.adam.v)] {
                let bytes = f32_bytes(&values[o.flat.clone()]);
                let mut t = TensorRef::whole(name.as_str(), Dtype::F32, shape.clone(), bytes);
                t.global_shape = s.shape.clone();
                t.offsets = vec![0; s.shape.len()];
                t.offsets[0] = o.rows.start;
                tensors.push(t);
            }
        }
        tensors
    }

    /// Under `--data-parallel`, this rank's rows of the moments to load into (staged, decoded by
    /// `restore_trainer_state`); nothing otherwise.
    pub(super) fn dp_regions(&mut self) -> Vec<RegionSlot<'_>> {
        let Some(dp) = &self.dp else {
            return Vec::new();
        };
        let first = self.staging.len();
        for o in dp.ownership(&self.layout) {
            let s = &self.layout.segments[o.segment];
            let (_, m, v) = &self.names[o.segment];
            let mut shape = s.shape.clone();
            shape[0] = o.rows.end - o.rows.start;
            let mut offsets = vec![0; s.shape.len()];
            offsets[0] = o.rows.start;
            for (name, target, values) in
                [(m, Target::M, &self.adam.m), (v, Target::V, &self.adam.v)]
            {
                self.staging.push(Staged {
                    name: name.clone(),
                    shape: shape.clone(),
                    bytes: f32_bytes(&values[o.flat.clone()]),
                    target,
                    offset: o.flat.start,
                    region: Some((s.shape.clone(), offsets.clone())),
                });
            }
        }
        self.staging[first..]
            .iter_mut()
            .filter_map(|staged| {
                let Staged {
                    name,
                    shape,
                    bytes,
                    region,
                    ..
                } = staged;
                let (global_shape, offsets) = region.as_ref()?;
                Some(RegionSlot {
                    name: name.as_str(),
                    dtype: Dtype::F32,
                    global_shape,
                    offsets,
                    shape,
                    data: bytes.as_mut_slice(),
                })
            })
            .collect()
    }
}
