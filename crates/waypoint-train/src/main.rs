//! # waypoint-train, the example trainer
//!
//! ```sh
//! cargo run --release --bin waypoint-train                  # train; run it again: "already completed"
//! cargo run --release --bin waypoint-train -- --max-steps 12000  # continue the same run further
//! ```
//!
//! The project's main job: a real candle training loop that waypoint logs, checkpoints and
//! resumes, the way NeMo's `ModelCheckpoint`, `NeMoLogger` and `AutoResume` serve a PyTorch
//! loop. Kill it at any moment (even with `kill -9` in the middle of a save) and run the same
//! command again: it continues from the newest committed checkpoint and ends with exactly the same
//! weights as a run that was never interrupted. See docs/CANDLE.md.
//!
//! ## What it trains
//!
//! The data: a fixed random "teacher" MLP (`8 → 32 (tanh) → 2`, targets standardised) labels
//! 2048 training inputs drawn uniformly from `[-1, 1)^8`; 512 more are held out for validation.
//! Everything derives from `--seed` (no downloads). Minibatches of 32 visit the training set in
//! epochs of 64 steps, in an order shuffled by a xoshiro256** stream seeded through SplitMix64.
//!
//! `--model candle` (the default): a candle MLP `8 → H → H → 2` (two tanh hidden layers of
//! `--hidden` units) on the CPU, trained with waypoint-candle's AdamW (learning rate 3e-3, betas
//! 0.9/0.999, eps 1e-8, weight decay 1e-4) on the mean squared error. Its weights are drawn from
//! the trainer's own seeded stream (candle's initialisers use a thread RNG that cannot be seeded;
//! the model uses no dropout), and candle's CPU threads are fixed by `--threads` (set as
//! `RAYON_NUM_THREADS` before candle starts, and recorded in `context/`).
//!
//! `--model mlp-rust`: the original two-layer perceptron `8 → H (tanh) → 2` in pure Rust `f32`,
//! single-threaded with a fixed summation order, trained with Adam (learning rate 1e-2); fast,
//! for tests.
//!
//! Validation loss with the defaults (candle, seed 0, hidden 256, 10000 steps) falls **377×** from
//! step 0 to step 10000 (0.98267 → 0.00260); the best checkpoint kept (step 9500, 0.00127) is
//! 773× below the start (seed 1: 902×, seed 2: 450×). The learning rate is constant, so the
//! curve is noisy near its floor. The tests' tiny configuration (hidden 16, 120 steps) falls 8.1×
//! (1.0172 → 0.1262). A default run took 61 s of wall time (20.6 s of CPU) on the development
//! machine, 2 cores shared with three other builds (dev profile, dependencies at opt-level 2).
//! `--model mlp-rust` with the defaults falls 1068× (0.91895 → 0.00086) in 7 s.
//!
//! The same flags give bit-identical weights in every process, interrupted or not.
//!
//! ## What a checkpoint holds
//!
//! - model (candle): `model.layer{1,2,3}.{weight,bias}` (F32; weights `[out, in]`);
//!   (mlp-rust): `model.layer1.weight [hidden, 8]`, `model.layer1.bias [hidden]`,
//!   `model.layer2.weight [2, hidden]`, `model.layer2.bias [2]` (F32);
//! - optimizer: the moments, `optim.m.<tensor>` and `optim.v.<tensor>` (F32; for candle,
//!   `<tensor>` is the full var name, `optim.m.model.layer1.weight`), and the
//!   `--extra-state-mib` buffers `extra.buffer.<i>` (U8, 4 MiB each at most, filled from the seed
//!   and changed in a few bytes every step);
//! - trainer state (JSON): the model, the shaping flags (seed, hidden, extra MiB), the step, the
//!   optimizer's update count, the epoch, the minibatch within it, and the shuffling stream's state now and at the
//!   epoch's start.
//!
//! ## Checkpointing
//!
//! `ModelCheckpoint`: monitor `val_loss` (min), `save_top_k = --top-k`, `save_last = true`,
//! `every_n_train_steps = --ckpt-every`, `save_optim_on_train_end = true` (so that the save at
//! the end of training, made when `--max-steps` is not a multiple of `--ckpt-every`, holds the
//! whole state and the run can be extended bit for bit), and asynchronous saves unless `--sync`
//! (the library's defaults: at most one save in flight, the next one waits for it, so no save is
//! ever skipped and every run keeps the same checkpoints). A save at a step where the validation
//! loss was computed is ranked into the top-k; other saves only refresh the `-last` checkpoint.
//! The run is told `--max-steps`, so checkpoints saved at that step end a completed run.
//! `AutoResume`: `resume_if_exists`, `resume_ignore_no_checkpoint`. A run whose newest
//! checkpoint ends a completed run continues when `--max-steps` is larger, and otherwise says
//! there is nothing to do, after telling the policy again that training ended (so that it can
//! save what the last step still lacks if the previous process died between that step's saves).
//! Shards are capped at `--max-shard-mib`.
//!
//! ## Flags
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--log-dir DIR` | `./waypoint_runs` | root of experiments; run files in `DIR/NAME[/VERSION]`, checkpoints in its `checkpoints/` |
//! | `--name NAME` | `default` | experiment name |
//! | `--version V` | none | version directory under the experiment |
//! | `--max-steps N` | 10000 | optimizer steps in total |
//! | `--ckpt-every N` | 250 | save every N steps |
//! | `--val-every N` | 250 | validation loss every N steps |
//! | `--seed S` | 0 | seed of data, teacher, initial weights, data order, extra state |
//! | `--sync` | off | save synchronously (default: asynchronously, ModelCheckpoint's default) |
//! | `--extra-state-mib N` | 0 | MiB of extra state in every checkpoint |
//! | `--top-k K` | 2 | checkpoints kept by validation loss (-1 all, 0 none) |
//! | `--model M` | `candle` | `candle` (the candle MLP) or `mlp-rust` (the pure-Rust MLP) |
//! | `--threads N` | 1 | candle's CPU threads (`RAYON_NUM_THREADS`) |
//! | `--hidden H` | 256 | hidden units (of each hidden layer) |
//! | `--max-shard-mib N` | 8 | largest shard file |
//! | `--checkpoint-dir D` | none | checkpoints in D or at an object-store URL (`s3://bucket/prefix`; docs/OBJECT_STORAGE.md); logs stay local |
//! | `--restore-from P` | none | a fresh run starts from the model weights of P: another run's checkpoint (or `s3://` URL), a `.safetensors` file or a Hugging Face directory (AutoResume's restore_config); this run's own checkpoint wins once it has one |
//! | `--data-parallel` | off | one rank of an `mpirun`/`srun` job: its slice of each minibatch, gradients averaged in rank order, Adam's moments sharded (ZeRO-1); `--model mlp-rust`, built `--features mpi` (docs/MPI.md) |
//! | `--quiet` | off | print only errors and the `final_state_sha256=` line |
//!
//! ## Output
//!
//! On a terminal: the same informative lines (where the run files, checkpoints and TensorBoard
//! curves are, resumption, validation losses, saves) above a progress bar showing the step, the
//! loss, steps/s, the ETA and the last checkpoint saved. Otherwise (a pipe, a file, the tests):
//! plain lines on stdout, each flushed: where the run files and checkpoints are, the command that
//! opens TensorBoard on the curves (`curves: tensorboard --logdir …`), whether the run resumed (from
//! which checkpoint and step) or started fresh, `step N train_loss X` after every step,
//! `step N val_loss X` at step 0 of a fresh run and every `--val-every` steps, and for saves:
//! `save-begin step=N` just before a call that may save (the step ends at multiples of
//! `--ckpt-every`, and the end of training), `save-end step=N` once that call returned, and
//! `saved <name> step=N bytes=B ms=T blocked_ms=U` for each checkpoint once it is committed
//! (`linked <name> step=N` for a link); `ms` is the whole write, `blocked_ms` the part the
//! training thread waited for. With `--sync` a save is committed between its `save-begin` and
//! `save-end`; asynchronously, `save-end` only means the state was staged, and the `saved` line
//! comes from a later call, once the background write committed. The last line of a run that
//! reached `--max-steps` (or found it already reached) is
//! `final_state_sha256=<64 hex digits>`: SHA-256 over every checkpointed tensor (model,
//! optimizer and extra) sorted by name (byte order); for each tensor, its name's UTF-8 bytes,
//! then its dtype's safetensors name (`F32`, `U8`), then each dimension of its shape as a `u64`
//! little-endian, then its little-endian data bytes. Nothing separates the parts.
//! Library logs (`RUST_LOG`, default `warn`) go to stderr. A closed stdout does not stop training.
//!
//! ## Run files
//!
//! The run's directory is set up by waypoint's `ExperimentLogger` (NeMo's `NeMoLogger`): with
//! no `--version` it is `LOG_DIR/NAME` (resuming needs no version directory, so the same command
//! finds its checkpoints again), with one `LOG_DIR/NAME/VERSION`. It holds `cmd-args.log` (the
//! command line), `git-info.log` (the commit and diff of the working directory's git work tree,
//! if any), `hparams.yaml` (`lr`, `hidden`, `seed`, `steps`), the library's log lines in
//! `log_globalrank-0_localrank-0.txt` (INFO and above) and `….err.txt` (warnings and errors),
//! the lock `.waypoint.lock` (a second live run of the same directory fails, naming the first),
//! and `checkpoints/`. The files of earlier runs move into `run_0/`, `run_1/`, … Every
//! checkpoint holds `context/io.json` (all the flags, as JSON: the configuration that made it)
//! and `context/model.yaml` (`hidden`, `seed`, `extra_state_mib`).
//!
//! ## Preemption
//!
//! On SIGTERM (what schedulers send before killing a job) the trainer finishes the step it is
//! in, saves a `-last` checkpoint of it (waiting for any save in flight and for this one), prints
//! `preempted at step N: the -last checkpoint is saved; run the same command again to resume`
//! and exits with status **75** (`EX_TEMPFAIL`: try again). Running the same command again
//! resumes from that checkpoint and ends with the digest of an uninterrupted run. A second
//! SIGTERM while the first is being handled terminates the process at once (a save in progress
//! then never commits, and the previous checkpoint stays the resume point).
//!
//! Exit codes: 0 success (also "already completed"), 1 an error (the message on stderr),
//! 2 a usage error (clap), 75 preempted (see above).

mod candle_model;
mod cli;
mod data;
mod dp;
mod extra;
mod job;
mod model;
mod out;
mod rng;
mod state;
mod train_loop;
mod trainer;

use anyhow::Context;
use clap::Parser;
use cli::{Args, ModelKind};
use out::Out;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use train_loop::{Outcome, train};
use waypoint::{
    AutoResume, Experiment, ExperimentLogger, Mode, ModelCheckpoint, SaveLast, SaveOptions,
};

/// Exit status of a preempted run (`EX_TEMPFAIL` of sysexits.h: run the same command again).
const EXIT_PREEMPTED: u8 = 75;

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: no other thread exists yet: clap spawns none, and tracing, candle and rayon start
    // later. candle's CPU backend reads this variable for its thread count, and rayon sizes its
    // pool by it: one fixed count keeps the arithmetic (and the final digest) the same everywhere.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    init_tracing();
    let job = match job::Job::join(&args) {
        Ok(job) => job,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "waypoint-train: error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    // Under --data-parallel rank 0 prints plain lines (mpirun gives every rank a pty); the
    // others print only errors and the digest.
    let rank0 = job.as_ref().is_none_or(|j| j.rank() == 0);
    let terminal = job.is_none() && std::io::stdout().is_terminal();
    let mut out = Out::new(args.quiet || !rank0, terminal);
    match train(&args, &mut out, job.as_ref()) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Preempted) => ExitCode::from(EXIT_PREEMPTED),
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "waypoint-train: error: {err:#}");
            if let Some(job) = &job {
                job.abort(1);
            }
            ExitCode::FAILURE
        }
    }
    // The job's handles drop here, on the main thread, after every save thread ended.
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`; invalid directives are ignored), and
/// to the experiment's per-rank log files (waypoint's layer, routed once the experiment is set up).
fn init_tracing() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::WARN.into())
        .from_env_lossy();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(waypoint::experiment::log_files_layer())
        .try_init();
}

/// The checkpoint policy of the flags.
fn checkpoint_policy(args: &Args) -> anyhow::Result<ModelCheckpoint> {
    let mut builder = ModelCheckpoint::builder();
    if let Some(dir) = &args.checkpoint_dir {
        builder = builder.dirpath(dir);
    }
    builder
        .monitor("val_loss")
        .mode(Mode::Min)
        .save_top_k(args.top_k)
        .save_last(SaveLast::Yes)
        .every_n_train_steps(args.ckpt_every)
        .save_optim_on_train_end(true)
        .async_save(!args.sync)
        .build()
        .context("invalid checkpoint configuration")
}

/// The model's part of the configuration (`context/model.yaml`).
#[derive(serde::Serialize)]
struct ModelConfig {
    model: &'static str,
    hidden: u64,
    seed: u64,
    extra_state_mib: u64,
    /// candle's CPU threads (`RAYON_NUM_THREADS`).
    threads: u64,
}

/// The learning rate of `model`, as the shortest decimal of its value (0.01, not the f32's f64
/// widening 0.009999999776…).
fn learning_rate(model: ModelKind) -> f64 {
    match model {
        ModelKind::Candle => candle_model::ADAMW.lr,
        ModelKind::MlpRust => model::LEARNING_RATE
            .to_string()
            .parse::<f64>()
            .unwrap_or(f64::NAN),
    }
}

/// The experiment of the flags: directory, run files, configuration, policy, preemption.
/// With `coordinator`, every rank of a `--data-parallel` job builds it (rank 0 writes the run
/// files and metrics).
fn experiment_logger(
    args: &Args,
    coordinator: Option<waypoint::dist::SharedCoordinator>,
) -> anyhow::Result<ExperimentLogger> {
    let hparams = serde_json::json!({
        "model": args.model.name(),
        "lr": learning_rate(args.model),
        "hidden": args.hidden,
        "seed": args.seed,
        "steps": args.max_steps,
    });
    let mut builder = ExperimentLogger::builder()
        .log_dir(&args.log_dir)
        .name(&args.name)
        .checkpoint(checkpoint_policy(args)?)
        .save_options(SaveOptions {
            max_shard_bytes: args.max_shard_mib << 20,
            ..Default::default()
        })
        .max_steps(args.max_steps)
        .config(args)
        .model_config(&ModelConfig {
            model: args.model.name(),
            hidden: args.hidden,
            seed: args.seed,
            extra_state_mib: args.extra_state_mib,
            threads: args.threads,
        })
        .hparams(hparams.as_object().cloned().unwrap_or_default())
        .preemption_signals(vec![waypoint::preemption::SIGTERM]);
    if let Some(coordinator) = coordinator {
        builder = builder.coordinator(coordinator);
    }
    if let Some(version) = &args.version {
        builder = builder.version(version);
    }
    if let Some(uri) = &args.mlflow {
        builder = builder.mlflow(uri);
    }
    builder = builder.wandb_offline(args.wandb_offline);
    builder.build().context("invalid experiment configuration")
}

/// AutoResume: continue from the newest committed checkpoint, if any; `past_end` also from one
/// that ended a completed run; with nothing to resume, start from `--restore-from`'s weights.
fn resume_rules(args: &Args, past_end: bool) -> anyhow::Result<AutoResume> {
    let mut builder = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .resume_past_end(past_end);
    if let Some(path) = &args.restore_from {
        builder = builder.restore_config(waypoint::restore::RestoreConfig::new(path));
    }
    Ok(builder.build()?)
}

/// Sets up the experiment: its directory and run files, the lock, leftovers of interrupted saves
/// removed, the resume point chosen.
fn open_experiment(
    args: &Args,
    coordinator: Option<waypoint::dist::SharedCoordinator>,
) -> anyhow::Result<Experiment> {
    experiment_logger(args, coordinator)?
        .setup(&resume_rules(args, false)?)
        .with_context(|| format!("could not open the run under {}", args.log_dir.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_the_configuration_in_io_json_and_read_back() {
        let args = Args::parse_from(["waypoint-train", "--max-steps", "7", "--version", "v2"]);
        let logger = experiment_logger(&args, None).unwrap();
        let ckpt = tempfile::tempdir().unwrap();
        std::fs::create_dir(ckpt.path().join("context")).unwrap();
        std::fs::write(
            ckpt.path().join("context/io.json"),
            logger.io_json().unwrap(),
        )
        .unwrap();
        let back: Args = waypoint::experiment::load_config(ckpt.path()).unwrap();
        assert_eq!(back, args);
        assert_eq!(
            String::from_utf8(logger.model_yaml().unwrap().to_vec()).unwrap(),
            format!(
                "extra_state_mib: 0\nhidden: {}\nmodel: \"candle\"\nseed: 0\nthreads: 1\n",
                args.hidden
            )
        );
        assert_eq!(logger.version(), Some("v2"));
        assert_eq!(logger.preemption_signals(), [waypoint::preemption::SIGTERM]);
    }

    #[test]
    fn mlflow_and_wandb_flags_reach_the_experiment_logger() {
        let args = Args::parse_from([
            "waypoint-train",
            "--mlflow",
            "http://127.0.0.1:5000",
            "--wandb-offline",
        ]);
        let logger = experiment_logger(&args, None).unwrap();
        assert_eq!(logger.mlflow(), Some("http://127.0.0.1:5000"));
        assert!(logger.wandb_offline());
        let bad = Args::parse_from(["waypoint-train", "--mlflow", "file:///tmp/mlruns"]);
        let err = format!("{:#}", experiment_logger(&bad, None).unwrap_err());
        assert!(err.contains("mlflow") && err.contains("http"), "{err}");
    }

    #[test]
    fn help_documents_the_preemption_exit_status() {
        let help = Args::command().render_help().to_string();
        assert!(help.contains("75 preempted (EX_TEMPFAIL)"), "{help}");
        assert_eq!(EXIT_PREEMPTED, 75);
    }
}
