//! The `waypoint` binary's integration tests, as one test binary: `show`, `verify` and damaged
//! checkpoints (`cli`), `bench`, `tail`, `diff`, `ls` and `prune` (`ls_prune`), and the commands on
//! `s3://` URLs (`object_store`), and torch DCP directories: show, verify, convert, export (`dcp`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

mod bench;
mod cli;
mod dcp;
mod diff;
mod ls_prune;
#[cfg(feature = "object-store")]
mod object_store;
mod tail;

use std::process::{Command, Output};

/// Runs the binary with `args`, without colour-related, logging or fault-injection variables
/// from the caller.
pub(crate) fn waypoint(args: &[&str]) -> Output {
    waypoint_with(args, &[])
}

/// [`waypoint`] with these environment variables set.
pub(crate) fn waypoint_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    command
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("WAYPOINT_FAILPOINT");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}
