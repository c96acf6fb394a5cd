//! The `--extra-state-mib` buffers: deterministic bytes saved with the optimizer state
//! (`extra.buffer.<i>`, `U8`, at most [`EXTRA_BUFFER_BYTES`] each), which stand in for the bulk
//! of a real model's state so that saves take long enough to be interrupted. A few bytes of each
//! change every step, as a function of the step only.
//!
//! It owns the buffers' names, sizes and contents. It must not save, load or digest them itself:
//! `state.rs` lends them to a save and offers them as slots to a load through `tensor_refs` and
//! `slots`.

use crate::data::stream;
use crate::rng::{SplitMix64, Xoshiro256};
use waypoint::{Dtype, SinkSlot, TensorRef};

/// The largest extra buffer; `--extra-state-mib` is split into buffers of this size.
pub const EXTRA_BUFFER_BYTES: usize = 4 << 20;
/// Bytes of each extra buffer changed by every optimizer step.
const EXTRA_TOUCHES_PER_STEP: u64 = 4;

/// The extra buffers, their names and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraState {
    buffers: Vec<Vec<u8>>,
    names: Vec<String>,
    shapes: Vec<Vec<u64>>,
}

impl ExtraState {
    /// `mib` MiB of bytes drawn from `seed`'s extra stream.
    pub fn new(seed: u64, mib: u64) -> anyhow::Result<Self> {
        let bytes = usize::try_from(mib)
            .ok()
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| anyhow::anyhow!("--extra-state-mib {mib} is too large"))?;
        let mut rng = Xoshiro256::new(seed, stream::EXTRA);
        let mut buffers = Vec::new();
        let mut left = bytes;
        while left > 0 {
            let len = left.min(EXTRA_BUFFER_BYTES);
            let mut buffer = vec![0u8; len];
            rng.fill_bytes(&mut buffer);
            buffers.push(buffer);
            left -= len;
        }
        let names = (0..buffers.len())
            .map(|i| format!("extra.buffer.{i}"))
            .collect();
        let shapes = buffers.iter().map(|b| vec![b.len() as u64]).collect();
        Ok(ExtraState {
            buffers,
            names,
            shapes,
        })
    }

    /// Bytes in all buffers.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.len() as u64).sum()
    }

    /// The buffers' lengths.
    #[cfg(test)]
    pub fn lengths(&self) -> Vec<usize> {
        self.buffers.iter().map(Vec::len).collect()
    }

    /// Changes a few bytes of each buffer, as a function of `step` only, so that every
    /// checkpoint's extra state differs and the digest covers it.
    pub fn touch(&mut self, step: u64) {
        for (i, buffer) in self.buffers.iter_mut().enumerate() {
            let mut mix = SplitMix64::new(step ^ ((i as u64) << 40));
            for _ in 0..EXTRA_TOUCHES_PER_STEP {
                let r = mix.next_u64();
                let pos = (r % buffer.len() as u64) as usize;
                buffer[pos] = buffer[pos].wrapping_add((r >> 56) as u8 | 1);
            }
        }
    }

    /// The buffers, lent to a save.
    pub fn tensor_refs(&self) -> Vec<TensorRef<'_>> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&self.buffers)
            .map(|((name, shape), buffer)| {
                TensorRef::whole(name.as_str(), Dtype::U8, shape.clone(), buffer.as_slice())
            })
            .collect()
    }

    /// The buffers, filled in place by a load.
    pub fn slots(&mut self) -> Vec<SinkSlot<'_>> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&mut self.buffers)
            .map(|((name, shape), buffer)| SinkSlot {
                name: name.as_str(),
                dtype: Dtype::U8,
                shape: shape.as_slice(),
                data: buffer.as_mut_slice(),
            })
            .collect()
    }
}
