//! Many ranks: who this process is ([`RankInfo`], read from the launcher's environment) and how
//! ranks talk ([`Coordinator`]: barrier, all-gather and broadcast of small byte messages).
//!
//! Three coordinators: [`SingleProcess`] (world size 1, every operation immediate),
//! [`ThreadGroup`] (ranks as threads of one process, for tests and single-process multi-device
//! training) and, behind the `mpi` cargo feature, `MpiCoordinator` (processes started by
//! `mpirun`/`srun`). The engine's distributed save ([`crate::engine`]) and the [`crate::Run`]
//! handle use nothing but this trait, so every rank protocol is tested in-process.

mod coordinator;
mod group;
#[cfg(feature = "mpi")]
mod mpi;
mod rank;

pub use coordinator::{Coordinator, SharedCoordinator, SingleProcess};
pub use group::ThreadGroup;
#[cfg(feature = "mpi")]
pub use mpi::MpiCoordinator;
pub use rank::{RankInfo, RankSource};
