//! The training state of the checkpoint modes: rows of a sharded weight and its optimizer moment,
//! and a replicated bias, updated deterministically from their global positions, so that any
//! rank can compute what any step's state must be, whatever the number of ranks.
//!
//! It owns the state and how it goes into and comes back from a checkpoint (`Checkpointable`). It
//! must not run, save or load anything itself: the modes in `checkpoint.rs` do, through waypoint.

use waypoint::{Checkpointable, Dtype, RegionSlot, SinkSlot, TensorRef};

/// Rows of the sharded tensors.
pub const ROWS: u64 = 96;
/// Columns of every tensor.
pub const COLS: u64 = 512;

/// One rank's state.
pub struct Shard {
    pub global: [u64; 2],
    pub offsets: [u64; 2],
    pub local: [u64; 2],
    pub w: Vec<u8>,
    pub m: Vec<u8>,
    pub b: Vec<u8>,
    pub step: u64,
}

/// The value of element `i` (global, row-major) of tensor `which` after `step` steps.
pub fn value(which: u8, i: u64, step: u64) -> f32 {
    let x = (i.wrapping_mul(2654435761) ^ u64::from(which) << 40) % 10007;
    (x as f32) * 0.001 + step as f32 * (1.0 + f32::from(which))
}

fn fill(buf: &mut [u8], which: u8, first: u64, step: u64) {
    for (k, out) in buf.chunks_exact_mut(4).enumerate() {
        out.copy_from_slice(&value(which, first + k as u64, step).to_le_bytes());
    }
}

impl Shard {
    /// Rank `rank` of `world`'s rows, at step 0.
    pub fn new(rank: u64, world: u64) -> Shard {
        let first = ROWS * rank / world;
        let rows = ROWS * (rank + 1) / world - first;
        let mut s = Shard {
            global: [ROWS, COLS],
            offsets: [first, 0],
            local: [rows, COLS],
            w: vec![0; (rows * COLS * 4) as usize],
            m: vec![0; (rows * COLS * 4) as usize],
            b: vec![0; (COLS * 4) as usize],
            step: 0,
        };
        s.set(0);
        s
    }

    /// The state every rank must have after `step` steps.
    pub fn set(&mut self, step: u64) {
        let first = self.offsets[0] * COLS;
        fill(&mut self.w, 0, first, step);
        fill(&mut self.m, 1, first, step);
        fill(&mut self.b, 2, 0, step);
        self.step = step;
    }

    /// One training step.
    pub fn train_step(&mut self) {
        let next = self.step + 1;
        self.set(next);
    }

    /// Whether the state is exactly that of its step.
    pub fn is_consistent(&self) -> bool {
        let mut expected = Shard {
            global: self.global,
            offsets: self.offsets,
            local: self.local,
            w: vec![0; self.w.len()],
            m: vec![0; self.m.len()],
            b: vec![0; self.b.len()],
            step: 0,
        };
        expected.set(self.step);
        expected.w == self.w && expected.m == self.m && expected.b == self.b
    }

    fn sharded<'a>(&self, name: &'a str, data: &'a [u8]) -> TensorRef<'a> {
        let mut t = TensorRef::whole(name, Dtype::F32, self.local.to_vec(), data);
        t.global_shape = self.global.to_vec();
        t.offsets = self.offsets.to_vec();
        t
    }
}

impl Checkpointable for Shard {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![
            self.sharded("w", &self.w),
            TensorRef::whole("b", Dtype::F32, vec![COLS], self.b.as_slice()),
        ]
    }
    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![self.sharded("m", &self.m)]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![SinkSlot {
            name: "b",
            dtype: Dtype::F32,
            shape: &[COLS],
            data: &mut self.b,
        }]
    }
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        let Shard {
            global,
            offsets,
            local,
            w,
            m,
            ..
        } = self;
        vec![
            RegionSlot {
                name: "w",
                dtype: Dtype::F32,
                global_shape: global,
                offsets,
                shape: local,
                data: w,
            },
            RegionSlot {
                name: "m",
                dtype: Dtype::F32,
                global_shape: global,
                offsets,
                shape: local,
                data: m,
            },
        ]
    }
    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        self.step = state["step"].as_u64().unwrap_or(0);
        Ok(())
    }
}
