//! waypoint-burn's integration tests, one binary: save/load round trips of every burn dtype and
//! of training state (`roundtrip`), burn's own loaders reading a checkpoint (`burn_loaders`),
//! the example trainer killed and resumed (`train_example`), and burn-train's Learner through
//! `LearnerRun` (`learner`, feature `learner`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod burn_loaders;
mod common;
#[cfg(feature = "learner")]
mod learner;
mod roundtrip;
mod train_example;
