//! The ranks of a `--data-parallel` job: joining the MPI job `mpirun` (or `srun`) started, the
//! communicators of the run and of the gradients, and ending the whole job when a rank fails.
//!
//! MPI is behind the crate's non-default `mpi` feature, so that the README's plain
//! `cargo run --release --bin waypoint-train` never needs a system MPI; without it
//! `--data-parallel` is refused with the command that builds it. This module must not train or
//! save: `dp.rs` and waypoint's `Run` do.

use crate::cli::Args;
use crate::dp::DataParallel;
use waypoint::dist::SharedCoordinator;

/// This process's place in a data-parallel job.
#[derive(Debug)]
pub struct Job {
    /// The communicator waypoint's `Run` and experiment use (they duplicate it for saves).
    pub run: SharedCoordinator,
    /// The gradients' exchanges, on a communicator of their own.
    pub dp: DataParallel,
    #[cfg(feature = "mpi")]
    mpi: std::sync::Arc<waypoint::dist::MpiCoordinator>,
}

impl Job {
    /// Joins the job when `--data-parallel` asks for it (a collective over every rank).
    pub fn join(args: &Args) -> anyhow::Result<Option<Job>> {
        if !args.data_parallel {
            return Ok(None);
        }
        Self::join_mpi().map(Some)
    }

    #[cfg(feature = "mpi")]
    fn join_mpi() -> anyhow::Result<Job> {
        use anyhow::Context;
        use std::sync::Arc;
        use waypoint::dist::{Coordinator, MpiCoordinator};
        let world = Arc::new(MpiCoordinator::world().context("joining the MPI job")?);
        let grads: SharedCoordinator = Arc::from(world.duplicate()?);
        Ok(Job {
            run: world.clone(),
            dp: DataParallel::new(grads),
            mpi: world,
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn join_mpi() -> anyhow::Result<Job> {
        anyhow::bail!(
            "--data-parallel needs a waypoint-train built with MPI: cargo build --release -p waypoint-train --features mpi (docs/MPI.md), then start it with mpirun"
        )
    }

    /// This process's rank.
    pub fn rank(&self) -> u64 {
        self.dp.rank()
    }

    /// Ends every rank of the job (the others may be waiting in a collective this rank will
    /// never join; returning would hang them). Without MPI there is no job to end.
    pub fn abort(&self, code: i32) {
        #[cfg(feature = "mpi")]
        self.mpi.abort(code);
        #[cfg(not(feature = "mpi"))]
        let _ = code;
    }
}
