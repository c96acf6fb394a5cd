//! Data parallelism (`--data-parallel`, `--model mlp-rust`): which part of the global minibatch a
//! rank trains on, which rows of each tensor it owns (ZeRO-1), and the two exchanges of a step
//! (gradients averaged, updated rows gathered), over waypoint's [`Coordinator`].
//!
//! - **Batch**: every rank draws the same global minibatch (same seed, same shuffling stream) and
//!   trains on the contiguous slice `[B·r/n, B·(r+1)/n)` of it.
//! - **Gradient average, in a fixed order**: each rank all-gathers its whole gradient (and its
//!   loss); every rank then adds the `n` gradients in rank order `0, 1, …, n−1` (`f32`, one
//!   running sum per element, starting from rank 0's) and divides by `n`. Every rank computes the
//!   same bits, and a run is reproducible for a given world size. Another world size cuts the
//!   minibatch differently and adds in another order, so its bits differ (rounding), not its
//!   maths.
//! - **Ownership (ZeRO-1)**: rank `r` owns rows `[R·r/n, R·(r+1)/n)` of each tensor of `R` rows
//!   (a vector's elements are its rows): it keeps and saves Adam's moments of those rows only, and
//!   updates those rows of the weights; the updated rows are then all-gathered, so the weights
//!   stay replicated (and waypoint writes them once, spread over the replicas).
//!
//! It owns these rules and the exchanges. It must not hold training state (`state.rs` does) nor
//! decide anything about checkpoints (waypoint's `Run` does).

use crate::model::Layout;
use std::ops::Range;
use waypoint::dist::SharedCoordinator;

/// One rank's view of the data-parallel job: the communicator of its gradient traffic.
#[derive(Debug, Clone)]
pub struct DataParallel {
    coordinator: SharedCoordinator,
}

/// The rows `[first, end)` of a tensor of `rows` rows that rank `rank` of `world` owns.
pub fn owned_rows(rows: u64, rank: u64, world: u64) -> Range<u64> {
    rows * rank / world..rows * (rank + 1) / world
}

/// A rank's rows of one tensor (a layout segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRows {
    /// Index of the segment in the layout.
    pub segment: usize,
    /// The rows owned.
    pub rows: Range<u64>,
    /// The same rows as a range of the flat parameter vector.
    pub flat: Range<usize>,
}

/// Rank `rank` of `world`'s rows of every tensor of `layout` (tensors where it owns none are left
/// out).
pub fn ownership(layout: &Layout, rank: u64, world: u64) -> Vec<OwnedRows> {
    let mut owned = Vec::new();
    for (i, s) in layout.segments.iter().enumerate() {
        let rows = s.shape[0];
        let per_row = s.len / rows as usize;
        let r = owned_rows(rows, rank, world);
        if r.is_empty() {
            continue;
        }
        let flat = s.offset + r.start as usize * per_row..s.offset + r.end as usize * per_row;
        owned.push(OwnedRows {
            segment: i,
            rows: r,
            flat,
        });
    }
    owned
}

fn to_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn from_bytes(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl DataParallel {
    /// Data parallelism over `coordinator` (one of its own: the gradients' collectives must not
    /// mix with the run's).
    // Without the `mpi` feature only the tests make one (job.rs refuses --data-parallel).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub fn new(coordinator: SharedCoordinator) -> Self {
        DataParallel { coordinator }
    }

    /// This process's rank.
    pub fn rank(&self) -> u64 {
        self.coordinator.rank()
    }

    /// Ranks in the job.
    pub fn world(&self) -> u64 {
        self.coordinator.world_size()
    }

    /// This rank's slice of the global minibatch.
    pub fn batch_slice<'a>(&self, batch: &'a [u32]) -> &'a [u32] {
        let n = batch.len() as u64;
        let r = owned_rows(n, self.rank(), self.world());
        &batch[r.start as usize..r.end as usize]
    }

    /// This rank's rows of every tensor.
    pub fn ownership(&self, layout: &Layout) -> Vec<OwnedRows> {
        ownership(layout, self.rank(), self.world())
    }

    /// Replaces `grad` with the average of every rank's, and returns the average loss: summed in
    /// rank order (see the module's comment), then divided by the world size.
    pub fn average(&self, grad: &mut [f32], loss: f32) -> anyhow::Result<f32> {
        let mut message = to_bytes(grad.iter().copied());
        message.extend(loss.to_le_bytes());
        let all = self.coordinator.all_gather(&message)?;
        let mut sum_loss = 0.0f32;
        for (rank, part) in all.iter().enumerate() {
            anyhow::ensure!(
                part.len() == message.len(),
                "rank {rank} sent a gradient of {} bytes, this rank {}: the ranks train different models",
                part.len(),
                message.len()
            );
            let mut values = from_bytes(part);
            if rank == 0 {
                grad.iter_mut().zip(&mut values).for_each(|(g, v)| *g = v);
            } else {
                grad.iter_mut().zip(&mut values).for_each(|(g, v)| *g += v);
            }
            sum_loss += values.next().unwrap_or(f32::NAN);
        }
        let n = all.len() as f32;
        grad.iter_mut().for_each(|g| *g /= n);
        Ok(sum_loss / n)
    }

    /// Makes `values` whole on every rank from each rank's own rows of it.
    pub fn gather_owned(&self, layout: &Layout, values: &mut [f32]) -> anyhow::Result<()> {
        let mine = self.ownership(layout);
        let message = to_bytes(
            mine.iter()
                .flat_map(|o| values[o.flat.clone()].iter().copied()),
        );
        let all = self.coordinator.all_gather(&message)?;
        for (rank, part) in all.iter().enumerate() {
            let theirs = ownership(layout, rank as u64, self.world());
            let expected: usize = theirs.iter().map(|o| o.flat.len() * 4).sum();
            anyhow::ensure!(
                part.len() == expected,
                "rank {rank} sent {} bytes of its rows, {expected} expected",
                part.len()
            );
            let mut incoming = from_bytes(part);
            for o in theirs {
                values[o.flat]
                    .iter_mut()
                    .zip(&mut incoming)
                    .for_each(|(x, v)| *x = v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_split_without_overlap_or_hole() {
        for (rows, world, expected) in [
            (16u64, 4u64, vec![0..4, 4..8, 8..12, 12..16]),
            (2, 4, vec![0..0, 0..1, 1..1, 1..2]),
            (5, 2, vec![0..2, 2..5]),
            (7, 1, std::iter::once(0..7).collect()),
        ] {
            let got: Vec<_> = (0..world).map(|r| owned_rows(rows, r, world)).collect();
            assert_eq!(got, expected, "{rows} rows over {world}");
        }
    }

    #[test]
    fn gradients_are_averaged_in_rank_order_on_every_rank() {
        use waypoint::dist::ThreadGroup;
        // Values whose f32 sum depends on the order: ((1e8 + 1) + -1e8) = 0, not 1.
        let parts = [1e8f32, 1.0, -1e8];
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .enumerate()
            .map(|(r, g)| {
                std::thread::spawn(move || {
                    let dp = DataParallel::new(std::sync::Arc::new(g));
                    let mut grad = vec![parts[r], r as f32];
                    let loss = dp.average(&mut grad, r as f32 * 3.0).unwrap();
                    (grad, loss)
                })
            })
            .collect();
        for h in handles {
            let (grad, loss) = h.join().unwrap();
            assert_eq!(grad, vec![((1e8f32 + 1.0) - 1e8) / 3.0, 1.0]);
            assert_eq!(loss, 3.0);
        }
    }

    #[test]
    fn ownership_tiles_every_tensor() {
        let layout = Layout::new(6);
        for world in [1, 2, 3, 4, 8] {
            let mut covered = vec![0u32; layout.len()];
            for rank in 0..world {
                for o in ownership(&layout, rank, world) {
                    covered[o.flat].iter_mut().for_each(|c| *c += 1);
                }
            }
            assert!(covered.iter().all(|&c| c == 1), "world {world}");
        }
    }
}
