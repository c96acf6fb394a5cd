//! waypoint-burn's integration tests, one binary: save/load round trips of every burn dtype and
//! of training state (`roundtrip`), burn's own loaders reading a checkpoint (`burn_loaders`),
//! and the example trainer killed and resumed (`train_example`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod burn_loaders;
mod common;
mod roundtrip;
mod train_example;
