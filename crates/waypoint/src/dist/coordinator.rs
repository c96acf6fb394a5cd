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

    /// An independent channel over the same ranks (collective: every rank calls it, in the
    /// same order relative to its other operations).
    fn duplicate(&self) -> Result<Box<dyn Coordinator>>;

    /// Whether this rank is rank 0, the one that commits and decides.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
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
