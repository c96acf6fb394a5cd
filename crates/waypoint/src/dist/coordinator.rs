//! The [`Coordinator`] contract and its trivial implementation, [`SingleProcess`].
//!
//! It owns the contract (every rank calls each operation in the same order; `duplicate` gives an
//! independent channel) and the world of one. It must not know what the messages mean, which is the
//! callers' (the run's `ranks.rs`, the engine's distributed save), and the transports of several
//! ranks live in `group.rs` and `mpi.rs`.

use crate::error::Result;
use std::fmt;
use std::sync::Arc;

/// How the ranks of one job exchange small messages (rank records, statuses, decisions).
///
/// # Contract
/// - Every operation is *collective*: every rank of the group calls the same operations in the
///   same order. A rank that skips one makes the others wait (MPI) or fail once it is gone
///   ([`ThreadGroup`](super::ThreadGroup)).
/// - Messages are small: checkpoint records and statuses, never tensor bytes.
/// - [`Coordinator::duplicate`] makes an independent channel (MPI: a duplicated communicator),
///   so that a background save's collectives never interleave with the training thread's.
/// - An error means the group is broken (a rank died or left): the caller must not commit.
/// - A coordinator that wraps another forwards [`Coordinator::gather`] and
///   [`Coordinator::scatter`] too: every rank of a group must carry them the same way (the
///   defaults and a transport's own are different messages).
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// This rank, in `0..world_size`.
    fn rank(&self) -> u64;

    /// The number of ranks in the group.
    fn world_size(&self) -> u64;

    /// Waits until every rank has called it.
    fn barrier(&self) -> Result<()> {
        self.all_gather(&[]).map(|_| ())
    }

    /// Every rank's `data`, indexed by rank.
    fn all_gather(&self, data: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// `root`'s `data` on every rank (the other ranks' `data` is ignored).
    fn broadcast(&self, root: u64, data: &[u8]) -> Result<Vec<u8>>;

    /// Every rank's `data` on `root`, indexed by rank; the other ranks get an empty list. What a
    /// rank receives grows with the world only on `root`, unlike [`Coordinator::all_gather`].
    ///
    /// The default gathers to everyone and keeps the result on `root`; transports override it
    /// so that only `root` receives.
    fn gather(&self, root: u64, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        let all = self.all_gather(data)?;
        Ok(if self.rank() == root { all } else { Vec::new() })
    }

    /// `root`'s `parts[r]` on each rank `r` (`parts` has one entry per rank on `root` and is
    /// ignored elsewhere). Each rank receives only its own part, unlike a broadcast.
    ///
    /// The default broadcasts every part (length-prefixed) and keeps this rank's; transports
    /// override it so that each rank receives only its own.
    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        if self.rank() == root {
            for part in parts {
                message.extend_from_slice(&(part.len() as u64).to_le_bytes());
                message.extend_from_slice(part);
            }
        }
        let told = self.broadcast(root, &message)?;
        nth_part(&told, self.rank()).ok_or_else(|| crate::Error::Collective {
            op: "scatter",
            rank: self.rank(),
            reason: format!(
                "rank {root}'s message of {} bytes has no part for this rank",
                told.len()
            ),
        })
    }

    /// An independent channel over the same ranks (collective: every rank calls it, in the
    /// same order relative to its other operations).
    fn duplicate(&self) -> Result<Box<dyn Coordinator>>;

    /// Whether this rank is rank 0, the one that commits and decides.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// Part `n` of a message of length-prefixed parts (the default [`Coordinator::scatter`]'s), or
/// `None` when the message is too short.
fn nth_part(message: &[u8], n: u64) -> Option<Vec<u8>> {
    let mut rest = message;
    for i in 0..=n {
        let len = usize::try_from(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
        let part = rest.get(8..8usize.checked_add(len)?)?;
        if i == n {
            return Some(part.to_vec());
        }
        rest = &rest[8 + len..];
    }
    None
}

/// A coordinator shared between the threads of one rank.
pub type SharedCoordinator = Arc<dyn Coordinator>;

/// One process alone: rank 0 of 1, every operation returns at once.
///
/// ```
/// use waypoint::dist::{Coordinator, SingleProcess};
/// let single = SingleProcess;
/// assert_eq!(single.all_gather(b"hello").unwrap(), vec![b"hello".to_vec()]);
/// assert_eq!(single.broadcast(0, b"x").unwrap(), b"x");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Coordinator for SingleProcess {
    fn rank(&self) -> u64 {
        0
    }

    fn world_size(&self) -> u64 {
        1
    }

    fn all_gather(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![data.to_vec()])
    }

    fn broadcast(&self, root: u64, data: &[u8]) -> Result<Vec<u8>> {
        if root != 0 {
            return Err(crate::Error::InvalidArgument {
                name: "root",
                reason: format!("rank {root} does not exist in a group of 1"),
            });
        }
        Ok(data.to_vec())
    }

    fn duplicate(&self) -> Result<Box<dyn Coordinator>> {
        Ok(Box::new(SingleProcess))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_scatter_message_yields_each_part_or_none() {
        let parts: Vec<Vec<u8>> = vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()];
        let mut message = Vec::new();
        for p in &parts {
            message.extend_from_slice(&(p.len() as u64).to_le_bytes());
            message.extend_from_slice(p);
        }
        for (n, want) in parts.iter().enumerate() {
            assert_eq!(nth_part(&message, n as u64).as_ref(), Some(want));
        }
        assert_eq!(nth_part(&message, 3), None);
        assert_eq!(nth_part(&message[..5], 0), None);
        assert_eq!(nth_part(&[], 0), None);
    }

    #[test]
    fn a_single_process_gathers_and_scatters_to_itself() {
        assert_eq!(SingleProcess.gather(0, b"x").unwrap(), vec![b"x".to_vec()]);
        assert_eq!(SingleProcess.scatter(0, &[b"y".to_vec()]).unwrap(), b"y");
    }
}
