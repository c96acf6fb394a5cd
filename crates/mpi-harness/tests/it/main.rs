//! mpi-harness's integration tests, as one test binary: the MPI coordinator (`mpirun`) and
//! checkpoints written by every rank of a real MPI job (`checkpoint`), both through `support`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

mod checkpoint;
mod mpirun;
mod support;
