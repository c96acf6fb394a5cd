//! The `waypoint` binary's integration tests, as one test binary: `show`, `verify` and damaged
//! checkpoints (`cli`), `bench`, `tail`, `diff`, `ls` and `prune` (`ls_prune`), and the commands on
//! `s3://` URLs (`object_store`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

mod bench;
mod cli;
mod diff;
mod ls_prune;
#[cfg(feature = "object-store")]
mod object_store;
mod tail;
