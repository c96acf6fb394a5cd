//! # waypoint, the command
//!
//! A thin binary over the `waypoint` library: `waypoint show <ckpt>` describes a checkpoint,
//! `waypoint verify <ckpt>` checks every byte of it, `waypoint bench` measures save and load
//! speed, `waypoint tail <run dir> [-f]` shows (and follows) the latest value of each metric,
//! `waypoint diff <a> <b>` compares two checkpoints, `waypoint ls <dir>` lists a run's checkpoints
//! and `waypoint prune <dir>` deletes those that retention rules do not keep. `waypoint convert`
//! and `waypoint export` write a checkpoint as a torch DCP directory, a waypoint checkpoint or a
//! Hugging Face safetensors layout; `show` and `verify` also read torch DCP directories. docs/CLI.md
//! describes the commands, their flags and their JSON output.
//!
//! The command line is parsed by clap into raw arguments ([`cli::Cli`]), then resolved into a
//! validated [`cli::Config`]; each command runs on that configuration only.
//!
//! ## Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; also when stdout is closed early (`waypoint show ck \| head -1`) |
//! | 1 | a problem was found: `verify` found damage, or the checkpoint is invalid or not a committed checkpoint |
//! | 2 | usage error: a bad flag or value, or a path that does not exist; `prune` while a live run holds the lock |
//!
//! `waypoint diff` follows `diff(1)` instead: 0 equal, 1 different, 2 for any error.
//!
//! Logs (`RUST_LOG`, default `warn`) go to stderr; results go to stdout, coloured only when
//! stdout is a terminal and `NO_COLOR` is unset or empty.

mod bench;
mod cli;
mod convert;
mod dcp_show;
mod diff;
mod export;
mod inventory;
mod ls;
mod output;
mod prune;
mod show;
mod source;
mod tail;
mod verify;

use clap::Parser;
use cli::{Cli, Command, Config, EXIT_PROBLEM, EXIT_USAGE, UsageError};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version exit 0, usage errors 2; a closed stream is not worth a word.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    init_tracing();
    // `waypoint diff` keeps 1 for "they differ": every error of it is 2, as with diff(1).
    let errors_are_usage = matches!(cli.command, Command::Diff(_));
    match cli.resolve().and_then(run) {
        Ok(code) => code,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // eprintln! would panic if stderr is closed; a failed report has nowhere to go.
            let _ = writeln!(std::io::stderr(), "waypoint: error: {err:#}");
            if errors_are_usage || err.chain().any(|e| e.is::<UsageError>()) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_PROBLEM)
            }
        }
    }
}

/// Runs the resolved command.
fn run(config: Config) -> anyhow::Result<ExitCode> {
    match config {
        Config::Show(config) => {
            let mut out = output::Out::stdout();
            let code = show::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
        Config::Verify(config) => {
            let mut out = output::Out::stdout();
            let code = verify::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
        Config::Bench(config) => bench::run(&config),
        Config::Diff(config) => {
            let mut out = output::Out::stdout();
            let code = diff::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
        Config::Tail(config) => {
            let mut out = output::Out::stdout();
            let code = tail::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
        Config::Ls(config) => {
            let mut out = output::Out::stdout();
            let code = ls::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
        Config::DcpShow(args) => {
            with_stdout(|out| dcp_show::show(&args.checkpoint, args.json, out))
        }
        Config::DcpVerify(args) => {
            with_stdout(|out| dcp_show::verify(&args.checkpoint, args.json, out))
        }
        Config::Convert(args) => with_stdout(|out| convert::run(&args, out)),
        Config::Export(args) => with_stdout(|out| export::run(&args, out)),
        Config::Prune(config) => {
            let mut out = output::Out::stdout();
            let code = prune::run(&config, &mut out)?;
            out.flush()?;
            Ok(code)
        }
    }
}

/// Runs a command that prints to stdout, then flushes it.
fn with_stdout(
    command: impl FnOnce(&mut output::Out) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let mut out = output::Out::stdout();
    let code = command(&mut out)?;
    out.flush()?;
    Ok(code)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`; invalid directives are ignored).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
