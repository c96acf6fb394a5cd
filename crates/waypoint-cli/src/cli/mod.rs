//! The command line: clap's raw arguments ([`Cli`]) and their resolution into a validated
//! [`Config`] (canonical paths, checked ranges). Nothing here reads a checkpoint's content; the
//! commands do, on a [`Config`] only. Resolution failures are [`UsageError`]s (exit code 2),
//! except a directory that exists but holds no commit record (exit code 1: a problem found;
//! `waypoint diff` makes every error 2, as `diff(1)` keeps 1 for "different").
//! `location.rs` resolves checkpoint locations, `size.rs` parses byte sizes.

mod listing;
mod location;
mod size;

pub use listing::{DirLocation, LsArgs, LsConfig, PruneArgs, PruneConfig, Rules};

use clap::{Args, Parser, Subcommand};
pub(crate) use size::parse_size;
use std::fmt;
use std::path::PathBuf;
use waypoint::storage::{ObjectUrl, StoragePath, is_url};

/// Exit code: a problem was found (damaged, invalid or missing checkpoint content).
pub const EXIT_PROBLEM: u8 = 1;
/// The exit code of a check: success when `ok`, [`EXIT_PROBLEM`] otherwise.
pub fn problem_exit(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(EXIT_PROBLEM)
    }
}
/// Exit code: the command line is wrong (bad flag or value, a path that does not exist).
pub const EXIT_USAGE: u8 = 2;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (also when stdout is closed early, as by `| head`)
  1  a problem was found: verify found damage, or the checkpoint is invalid or not committed;
     tail found a damaged event record, or no event file
  2  usage error: bad flag or value, or a path that does not exist; prune while a live run
     holds the directory's lock";

/// Each benchmark tensor holds at least this many bytes (`--tensors` ≤ `--size` / 4).
const MIN_BENCH_TENSOR_BYTES: u64 = 4;
/// The smallest benchmark size accepted.
const MIN_BENCH_SIZE: u64 = 1 << 20;

/// The raw command line.
#[derive(Debug, Parser)]
#[command(
    name = "waypoint",
    version,
    about = "Inspect, verify, list, prune and benchmark waypoint checkpoints; follow a run's metrics",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe a checkpoint: step, files, trainer state and tensors (reads only the record).
    #[command(after_help = EXIT_CODES_HELP)]
    Show(ShowArgs),
    /// Check every file, header and checksum of a checkpoint; list each problem found.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify(VerifyArgs),
    /// Measure save and load throughput on a synthetic checkpoint.
    #[command(after_help = EXIT_CODES_HELP)]
    Bench(BenchArgs),
    /// Show the latest value of each scalar in a run's TensorBoard event files; -f follows.
    #[command(after_help = EXIT_CODES_HELP)]
    Tail(TailArgs),
    /// Compare two checkpoints: tensors added, removed, retyped, reshaped or changed in value,
    /// and trainer-state differences. Exit 0 when equal, 1 when they differ, 2 on error.
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// List a run's checkpoints: step, monitored value, top-k rank, size, age; what is not
    /// committed; the run's lock and the checkpoint AutoResume would pick (reads only records).
    #[command(after_help = listing::LS_EXAMPLES)]
    Ls(LsArgs),
    /// Delete the checkpoints that retention rules do not keep (a dry run unless --yes).
    #[command(after_help = listing::PRUNE_EXAMPLES)]
    Prune(PruneArgs),
    /// Convert a checkpoint between waypoint's format and torch DCP (what NeMo 2.0 saves).
    #[command(after_help = EXIT_CODES_HELP)]
    Convert(crate::convert::ConvertArgs),
    /// Write a checkpoint's weights as Hugging Face safetensors (model.safetensors or shards).
    #[command(after_help = EXIT_CODES_HELP)]
    Export(crate::export::ExportArgs),
}

/// `waypoint diff --help`'s epilogue: examples, the tolerance rule and its own exit codes.
pub const DIFF_HELP: &str = "\
Examples:
  waypoint diff ckpts/step=100 ckpts/step=200
  waypoint diff run-a/step=100 run-b/step=100 --tolerance 1e-6,1e-5
  waypoint diff s3://bucket/run/step=100 ./step=100 --json

Tolerance: --tolerance ATOL[,RTOL] (RTOL defaults to 0) treats two float elements a (first
checkpoint) and b (second) as equal when |a - b| <= ATOL + RTOL * |b|, as numpy.isclose does;
NaN equals NaN, an infinity only itself. Integer and other dtypes compare exactly.

Exit codes (like diff):
  0  the checkpoints are equal (every tensor bit-identical or within the tolerance, same
     trainer state)
  1  they differ
  2  error: a bad flag, a missing or invalid checkpoint, a damaged block";

/// Arguments of `waypoint diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first checkpoint directory (or `s3://…` URL).
    pub a: PathBuf,
    /// The second checkpoint directory (or `s3://…` URL).
    pub b: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Float elements within |a - b| <= ATOL + RTOL * |b| count as equal (RTOL defaults to 0).
    #[arg(long, value_name = "ATOL[,RTOL]", value_parser = parse_tolerance)]
    pub tolerance: Option<Tolerance>,
}

/// How far apart two float elements may be and still count as equal: `|a - b| <= atol + rtol *
/// |b|`. Both are finite and non-negative; the default (0, 0) asks for numerical equality.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance, relative to the second checkpoint's element.
    pub rtol: f64,
}

/// Parses `ATOL[,RTOL]`: finite, non-negative numbers.
fn parse_tolerance(given: &str) -> Result<Tolerance, String> {
    let (atol, rtol) = match given.split_once(',') {
        Some((atol, rtol)) => (atol, Some(rtol)),
        None => (given, None),
    };
    let number = |text: &str, what: &str| -> Result<f64, String> {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{what} {text:?} is not a number"))?;
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(format!("{what} {text:?} must be finite and at least 0"))
        }
    };
    Ok(Tolerance {
        atol: number(atol, "ATOL")?,
        rtol: rtol.map_or(Ok(0.0), |r| number(r, "RTOL"))?,
    })
}

/// Arguments of `waypoint show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The checkpoint directory (the one holding `weights/metadata.json`), or a torch DCP
    /// directory (holding `.metadata`, or `weights/.metadata` for NeMo 2.0).
    pub checkpoint: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `waypoint verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The checkpoint directory (the one holding `weights/metadata.json`), or a torch DCP
    /// directory (holding `.metadata`, or `weights/.metadata` for NeMo 2.0).
    pub checkpoint: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `waypoint tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// A run directory (searched recursively for `events.out.tfevents.*`) or one event file.
    pub run: PathBuf,
    /// Keep following: print each value that arrives until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print JSON: one object (or, with -f, one object per line and value).
    #[arg(long)]
    pub json: bool,
    /// With -f: milliseconds between two looks at the files.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub poll_ms: u64,
}

/// Arguments of `waypoint bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directory (created if missing) in which a temporary benchmark directory is created; or an
    /// object-store URL (`s3://bucket/prefix`, `gs://…`, `az://…`): then the save and load
    /// throughput there is measured against the local file backend (in the system's temporary
    /// directory) on the same bytes.
    #[arg(long, value_name = "DIR|URL", default_value = ".")]
    pub dir: PathBuf,
    /// Total tensor bytes to save and load (B, KiB, MiB, GiB, KB, MB, GB; e.g. 512MiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Number of tensors the size is divided into.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub tensors: u64,
    /// Keep the benchmark checkpoint instead of removing it, and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Measure asynchronous saves inside a training-like loop instead: the time a save blocks
    /// the loop, and the loop's slowdown against the same loop without saves.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: steps of the loop.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub steps: u64,
    /// With --async: save every N steps.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub every: u64,
    /// With --async: compute time of one step, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub step_ms: u64,
    /// Save from N ranks (threads of this process, sharded by rows) against 1 rank, and load the
    /// result resharded onto N - 1 ranks, counting the bytes read.
    #[arg(long, value_name = "N", conflicts_with = "asynchronous", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub ranks: Option<u64>,
    /// With --ranks: the checksum block size of the saved checkpoint (default 1 MiB); smaller
    /// blocks make a verified partial load read less beyond what it needs.
    #[arg(long, value_name = "SIZE", requires = "ranks", value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Measure incremental saves instead: a frozen base and a trainable part (--trainable)
    /// saved again and again, against full saves; bytes sent per save and save time. Works on
    /// a directory or an object-store URL.
    #[arg(long, conflicts_with_all = ["asynchronous", "ranks"])]
    pub incremental: bool,
    /// With --incremental: bytes of the trainable part (the rest of --size is the frozen base).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub trainable: u64,
}

/// A validated command.
#[derive(Debug)]
pub enum Config {
    /// `waypoint show`.
    Show(ShowConfig),
    /// `waypoint verify`.
    Verify(VerifyConfig),
    /// `waypoint bench`.
    Bench(BenchConfig),
    /// `waypoint tail`.
    Tail(TailConfig),
    /// `waypoint diff`.
    Diff(DiffConfig),
    /// `waypoint ls`.
    Ls(LsConfig),
    /// `waypoint prune`.
    Prune(PruneConfig),
    /// `waypoint show` on a torch DCP directory.
    DcpShow(ShowArgs),
    /// `waypoint verify` on a torch DCP directory.
    DcpVerify(VerifyArgs),
    /// `waypoint convert`.
    Convert(crate::convert::ConvertArgs),
    /// `waypoint export`.
    Export(crate::export::ExportArgs),
}

/// What `waypoint diff` runs on.
#[derive(Debug)]
pub struct DiffConfig {
    /// The first checkpoint.
    pub a: CheckpointLocation,
    /// The second checkpoint.
    pub b: CheckpointLocation,
    /// JSON instead of text.
    pub json: bool,
    /// Float elements this close count as equal.
    pub tolerance: Tolerance,
}

/// What `waypoint tail` runs on.
#[derive(Debug)]
pub struct TailConfig {
    /// The run directory or event file (canonical).
    pub path: PathBuf,
    /// Keep following.
    pub follow: bool,
    /// JSON instead of text.
    pub json: bool,
    /// Time between two looks at the files when following (at least 10 ms).
    pub interval: std::time::Duration,
}

/// What `waypoint show` runs on.
#[derive(Debug)]
pub struct ShowConfig {
    /// The checkpoint.
    pub checkpoint: CheckpointLocation,
    /// JSON instead of text.
    pub json: bool,
}

/// The loop of `waypoint bench --async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncBench {
    /// Steps of the loop.
    pub steps: u64,
    /// Save every this many steps.
    pub every: u64,
    /// Compute time of one step, milliseconds.
    pub step_ms: u64,
}

/// What `waypoint verify` runs on.
#[derive(Debug)]
pub struct VerifyConfig {
    /// The checkpoint.
    pub checkpoint: CheckpointLocation,
    /// JSON instead of text.
    pub json: bool,
}

/// What `waypoint bench` runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// The directory (canonical; created if it was missing) in which the benchmark creates its
    /// temporary directory.
    pub dir: PathBuf,
    /// Total tensor bytes, at least 1 MiB.
    pub size: u64,
    /// Number of tensors, in `1..=size / 4`.
    pub tensors: u64,
    /// Keep the benchmark checkpoint afterwards.
    pub keep: bool,
    /// JSON instead of text.
    pub json: bool,
    /// `--async`: the training-loop benchmark instead of save/load throughput.
    pub asynchronous: Option<AsyncBench>,
    /// `--ranks N`: the many-ranks benchmark.
    pub ranks: Option<u64>,
    /// `--block-size`: the checksum block size for `--ranks`.
    pub block_size: Option<u64>,
    /// `--dir` as an object-store URL (normalised); `dir` is then the local temporary directory.
    pub url: Option<String>,
    /// `--incremental`: the incremental-save benchmark, with this many trainable bytes.
    pub incremental: Option<u64>,
}

/// A committed checkpoint on the local disk, as the library addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointLocation {
    /// The canonical path of the checkpoint directory (for messages).
    pub path: PathBuf,
    /// The storage root: the checkpoint's parent directory (or parent prefix, as a URL).
    pub root: PathBuf,
    /// The checkpoint inside the root: its directory name.
    pub dir: StoragePath,
}

/// A command-line mistake: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Cli {
    /// Resolves the raw arguments into a validated [`Config`].
    pub fn resolve(self) -> anyhow::Result<Config> {
        Ok(match self.command {
            Command::Show(args) if crate::dcp_show::is_dcp(&args.checkpoint) => {
                Config::DcpShow(args)
            }
            Command::Verify(args) if crate::dcp_show::is_dcp(&args.checkpoint) => {
                Config::DcpVerify(args)
            }
            Command::Convert(args) => Config::Convert(args),
            Command::Export(args) => Config::Export(args),
            Command::Show(args) => Config::Show(ShowConfig {
                checkpoint: CheckpointLocation::resolve(&args.checkpoint)?,
                json: args.json,
            }),
            Command::Verify(args) => Config::Verify(VerifyConfig {
                checkpoint: CheckpointLocation::resolve(&args.checkpoint)?,
                json: args.json,
            }),
            Command::Bench(args) => Config::Bench(BenchConfig::resolve(args)?),
            Command::Tail(args) => Config::Tail(TailConfig {
                path: args.run.canonicalize().map_err(|e| {
                    UsageError(format!(
                        "run path {} cannot be used: {e}",
                        args.run.display()
                    ))
                })?,
                follow: args.follow,
                json: args.json,
                interval: std::time::Duration::from_millis(args.poll_ms.max(10)),
            }),
            Command::Diff(args) => Config::Diff(DiffConfig {
                a: CheckpointLocation::resolve(&args.a)?,
                b: CheckpointLocation::resolve(&args.b)?,
                json: args.json,
                tolerance: args.tolerance.unwrap_or_default(),
            }),
            Command::Ls(args) => Config::Ls(LsConfig {
                dir: DirLocation::resolve(&args.dir)?,
                json: args.json,
            }),
            Command::Prune(args) => Config::Prune(PruneConfig::resolve(args)?),
        })
    }
}

impl BenchConfig {
    /// Validates `waypoint bench`'s arguments: a directory (created with its parents when
    /// missing), a size of at least 1 MiB, and between 1 and `size / 4` tensors.
    pub fn resolve(args: BenchArgs) -> Result<Self, UsageError> {
        let url = match args.dir.to_str().filter(|d| is_url(d)) {
            Some(given) => {
                let parsed = ObjectUrl::parse(given).map_err(|e| UsageError(e.to_string()))?;
                if args.asynchronous {
                    return Err(UsageError(format!(
                        "--async runs on a local directory, not on {given}"
                    )));
                }
                if args.ranks.is_some() {
                    return Err(UsageError(format!(
                        "--ranks runs on a local directory, not on {given}"
                    )));
                }
                parsed.map(|p| p.to_url())
            }
            None => None,
        };
        let local = if url.is_some() {
            std::env::temp_dir()
        } else {
            args.dir.clone()
        };
        // Created when missing, as `mkdir -p` would (issue 20); a file in the way is refused.
        std::fs::create_dir_all(&local)
            .map_err(|e| UsageError(format!("--dir {} cannot be created: {e}", local.display())))?;
        let dir = local
            .canonicalize()
            .map_err(|e| UsageError(format!("--dir {} cannot be used: {e}", local.display())))?;
        if !dir.is_dir() {
            return Err(UsageError(format!(
                "--dir {} is not a directory",
                args.dir.display()
            )));
        }
        if args.size < MIN_BENCH_SIZE {
            return Err(UsageError(format!(
                "--size {} bytes is less than the minimum of 1 MiB",
                args.size
            )));
        }
        if args.tensors == 0 {
            return Err(UsageError("--tensors must be at least 1".into()));
        }
        if args.tensors > args.size / MIN_BENCH_TENSOR_BYTES {
            return Err(UsageError(format!(
                "--tensors {} is more than --size / {MIN_BENCH_TENSOR_BYTES} = {}",
                args.tensors,
                args.size / MIN_BENCH_TENSOR_BYTES
            )));
        }
        if args.incremental && (args.trainable < 16 || args.trainable >= args.size) {
            return Err(UsageError(format!(
                "--trainable {} must be at least 16 bytes and less than --size {}",
                args.trainable, args.size
            )));
        }
        if args.asynchronous && (args.steps == 0 || args.every == 0 || args.every > args.steps) {
            return Err(UsageError(format!(
                "--steps {} and --every {} must be at least 1, with --every at most --steps",
                args.steps, args.every
            )));
        }
        Ok(BenchConfig {
            dir,
            size: args.size,
            tensors: args.tensors,
            keep: args.keep,
            json: args.json,
            asynchronous: args.asynchronous.then_some(AsyncBench {
                steps: args.steps,
                every: args.every,
                step_ms: args.step_ms,
            }),
            ranks: args.ranks,
            block_size: args.block_size,
            url,
            incremental: args.incremental.then_some(args.trainable),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn bench_args(size: u64, tensors: u64) -> BenchArgs {
        BenchArgs {
            dir: PathBuf::from("."),
            size,
            tensors,
            keep: false,
            json: false,
            asynchronous: false,
            steps: 60,
            every: 20,
            step_ms: 100,
            ranks: None,
            block_size: None,
            incremental: false,
            trainable: 16 << 20,
        }
    }

    #[test]
    fn async_bench_limits() {
        let table = [
            (60, 20, true),
            (60, 60, true),
            (60, 61, false),
            (0, 1, false),
            (10, 0, false),
        ];
        for (steps, every, ok) in table {
            let args = BenchArgs {
                asynchronous: true,
                steps,
                every,
                ..bench_args(1 << 20, 1)
            };
            let resolved = BenchConfig::resolve(args);
            assert_eq!(resolved.is_ok(), ok, "steps {steps} every {every}");
            if let Ok(config) = resolved {
                assert_eq!(
                    config.asynchronous,
                    Some(AsyncBench {
                        steps,
                        every,
                        step_ms: 100
                    })
                );
            }
        }
    }

    #[test]
    fn tolerances() {
        let cases = [
            ("1e-6", Some((1e-6, 0.0))),
            ("0.5,0.25", Some((0.5, 0.25))),
            ("0, 1e-3", Some((0.0, 1e-3))),
            ("-1", None),
            ("nan", None),
            ("inf", None),
            ("1,x", None),
            ("", None),
        ];
        for (given, want) in cases {
            let got = parse_tolerance(given).ok().map(|t| (t.atol, t.rtol));
            assert_eq!(got, want, "{given:?}");
        }
    }

    #[test]
    fn bench_limits() {
        let mib = 1 << 20;
        let cases = [
            (mib, 1, true),
            (mib, mib / 4, true),
            (mib, mib / 4 + 1, false),
            (mib - 1, 1, false),
            (mib, 0, false),
            (1 << 30, 128, true),
        ];
        for (size, tensors, ok) in cases {
            assert_eq!(
                BenchConfig::resolve(bench_args(size, tensors)).is_ok(),
                ok,
                "size {size}, tensors {tensors}"
            );
        }
    }

    #[test]
    fn bench_defaults() {
        let cli = Cli::try_parse_from(["waypoint", "bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(
            (
                args.dir.as_path(),
                args.size,
                args.tensors,
                args.keep,
                args.json
            ),
            (Path::new("."), 1 << 30, 128, false, false)
        );
    }

    #[test]
    fn a_missing_bench_dir_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = bench_args(1 << 20, 1);
        args.dir = tmp.path().join("new/deeper");
        let config = BenchConfig::resolve(args).unwrap();
        assert!(tmp.path().join("new/deeper").is_dir());
        assert_eq!(
            config.dir,
            tmp.path().canonicalize().unwrap().join("new/deeper")
        );
    }

    #[test]
    fn a_bench_dir_that_cannot_be_created_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        for dir in [tmp.path().join("file/sub"), tmp.path().join("file")] {
            let mut args = bench_args(1 << 20, 1);
            args.dir = dir.clone();
            let err = BenchConfig::resolve(args).unwrap_err();
            assert!(err.0.contains(&dir.display().to_string()), "{err}");
        }
    }
}
