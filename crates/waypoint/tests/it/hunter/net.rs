//! The trainer state the hunter checkpoints: one rank's shard of a weight `w` (rows of a global
//! tensor split over the ranks) and a replicated bias `b`, both a pure function of the step, so
//! that a restored state can be compared with the state any step must have; and a frozen `base`
//! that never changes (marked frozen in the run's save options, so that a single-rank save
//! carries its file over from the previous save: hard links under faults and power cuts).

use waypoint::{Checkpointable, Dtype, RegionSlot, SinkSlot, TensorRef};

/// Bytes of `w` each rank holds.
pub const SHARD: u64 = 32;
/// Bytes of the replicated `b`.
pub const BIAS: u64 = 16;
/// Bytes of the frozen, replicated `base`.
pub const BASE: u64 = 24;

/// The frozen `base`: the same at every step.
pub fn base() -> Vec<u8> {
    (0..BASE).map(|i| (i * 11 + 5) as u8).collect()
}

/// One rank's state at `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub step: u64,
    global_shape: [u64; 1],
    offsets: [u64; 1],
    local_shape: [u64; 1],
    pub w: Vec<u8>,
    pub b: Vec<u8>,
    pub base: Vec<u8>,
}

impl Net {
    /// The state of rank `rank` of `world` after `step` steps.
    pub fn at(step: u64, rank: u64, world: u64) -> Net {
        let first = rank * SHARD;
        Net {
            step,
            global_shape: [world * SHARD],
            offsets: [first],
            local_shape: [SHARD],
            w: (first..first + SHARD).map(|i| weight(step, i)).collect(),
            b: (0..BIAS)
                .map(|i| (step.wrapping_mul(7) ^ i) as u8)
                .collect(),
            base: base(),
        }
    }

    /// A state that no step has (what a rank holds before restoring).
    pub fn blank(rank: u64, world: u64) -> Net {
        let mut net = Net::at(0, rank, world);
        net.w.fill(0xEE);
        net.b.fill(0xEE);
        net.base.fill(0xEE);
        net.step = u64::MAX;
        net
    }

    /// One training step.
    pub fn train_step(&mut self) {
        let rank = self.offsets[0] / SHARD;
        let world = self.global_shape[0] / SHARD;
        *self = Net::at(self.step + 1, rank, world);
    }
}

fn weight(step: u64, i: u64) -> u8 {
    (step.wrapping_mul(31).wrapping_add(i.wrapping_mul(13))) as u8
}

/// The whole `w` of `world` ranks at `step` (what one process saves for all of them).
pub fn global_w(step: u64, world: u64) -> Vec<u8> {
    (0..world * SHARD).map(|i| weight(step, i)).collect()
}

impl Checkpointable for Net {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        let mut w = TensorRef::whole("w", Dtype::U8, self.local_shape.to_vec(), self.w.as_slice());
        w.global_shape = self.global_shape.to_vec();
        w.offsets = self.offsets.to_vec();
        vec![
            w,
            TensorRef::whole("b", Dtype::U8, vec![BIAS], self.b.as_slice()),
            TensorRef::whole("base", Dtype::U8, vec![BASE], self.base.as_slice()),
        ]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![
            SinkSlot {
                name: "b",
                dtype: Dtype::U8,
                shape: &[BIAS],
                data: &mut self.b,
            },
            SinkSlot {
                name: "base",
                dtype: Dtype::U8,
                shape: &[BASE],
                data: &mut self.base,
            },
        ]
    }
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        let Net {
            global_shape,
            offsets,
            local_shape,
            w,
            ..
        } = self;
        vec![RegionSlot {
            name: "w",
            dtype: Dtype::U8,
            global_shape: &global_shape[..],
            offsets: &offsets[..],
            shape: &local_shape[..],
            data: w,
        }]
    }
    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        self.step = state["step"].as_u64().unwrap_or(u64::MAX);
        Ok(())
    }
}
