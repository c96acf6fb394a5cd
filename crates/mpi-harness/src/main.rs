//! `mpi-harness`: one MPI program with many modes, run under `mpirun` by this crate's tests
//! (tests/it/mpirun.rs). Every rank runs `mpi-harness <mode> [args…]`, does the mode's work
//! through [`waypoint::dist::MpiCoordinator`] and prints what it saw as `rank=R key=value …`
//! lines, which the tests compare across ranks.
//!
//! Adding a mode: a module in `src/modes/` with `pub fn run(ctx: &Ctx) -> anyhow::Result<()>`,
//! and one line in [`MODES`].
//!
//! This file owns the mode table, the command line and the end of a failed rank (an abort, so that
//! no other rank waits in a collective for it). It must not check results itself: each mode checks
//! what it received, and the tests compare the printed lines across ranks.

mod modes;
mod report;

use anyhow::{Context, bail};
use report::Ctx;
use std::process::ExitCode;
use waypoint::dist::MpiCoordinator;

/// A mode: what every rank does, given the coordinator and the arguments after the mode's name.
type Mode = fn(&Ctx) -> anyhow::Result<()>;

/// Every mode, by the name given on the command line.
const MODES: &[(&str, Mode, &str)] = &[
    (
        "ckpt-train",
        modes::checkpoint::train,
        "<dir> <until> [fail|abort <rank> | fail-at <rank> <step>]: train and checkpoint every 2 steps with all ranks (resuming); fail and abort hit the last save, fail-at the save of <step> while training goes on",
    ),
    (
        "ckpt-load",
        modes::checkpoint::load,
        "<dir> <name>: every rank loads its rows of checkpoint <name>, whatever number of ranks saved it",
    ),
    (
        "hello",
        modes::hello::run,
        "print rank and world size (the environment cross-check runs first)",
    ),
    (
        "collectives",
        modes::collectives::run,
        "<dir>: all-gather, broadcast from every root, barriers checked through files in <dir>",
    ),
    (
        "repeat",
        modes::repeat::run,
        "[rounds]: many small collectives in a loop (default 200 rounds)",
    ),
    (
        "large",
        modes::large::run,
        "[bytes]: all-gather and broadcast of large messages (default 8 MiB)",
    ),
    (
        "duplicates",
        modes::duplicates::run,
        "[rounds]: three communicators driven by three threads at once",
    ),
    (
        "beside-program",
        modes::beside_program::run,
        "[rounds]: the coordinator and the program's own MPI_COMM_WORLD traffic at once",
    ),
    (
        "killed-rank",
        modes::killed_rank::run,
        "<victim> <round> [crash|error]: rank <victim> crashes (or fails) at <round> while the others keep gathering",
    ),
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(mode) = args.next() else {
        eprintln!("usage: mpi-harness <mode> [args…]\n{}", usage());
        return ExitCode::from(2);
    };
    let args: Vec<String> = args.collect();
    match run(&mode, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpi-harness {mode}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mode: &str, args: Vec<String>) -> anyhow::Result<()> {
    let Some((_, mode_fn, _)) = MODES.iter().find(|(name, _, _)| *name == mode) else {
        bail!("unknown mode {mode:?}; the modes are:\n{}", usage());
    };
    let coordinator = MpiCoordinator::world().context("joining the MPI job")?;
    let ctx = Ctx::new(coordinator, args);
    if let Err(e) = mode_fn(&ctx) {
        // The other ranks may be waiting in a collective this rank will not join: end the job
        // rather than finalise (which would wait for them).
        eprintln!("mpi-harness {mode}: rank {}: {e:#}", ctx.rank());
        ctx.coordinator.abort(1);
    }
    Ok(())
    // The coordinator is dropped here, on the main thread: MPI is finalised before exit.
}

fn usage() -> String {
    MODES
        .iter()
        .map(|(name, _, help)| format!("  {name} {help}"))
        .collect::<Vec<_>>()
        .join("\n")
}
