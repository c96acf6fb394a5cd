//! # waypoint-train, the example trainer
//!
//! ```sh
//! cargo run --release --bin waypoint-train                  # train 600 steps; run it again: "already completed"
//! cargo run --release --bin waypoint-train -- --max-steps 900   # continue the same run to step 900
//! ```
//!
//! The project's main job: a training loop with no ML framework that waypoint checkpoints and
//! resumes, the way NeMo's `ModelCheckpoint` and `AutoResume` serve a PyTorch loop. Kill it at
//! any moment (even with `kill -9` in the middle of a save) and run the same command again: it
//! continues from the newest committed checkpoint and ends with exactly the same weights as a
//! run that was never interrupted.
//!
//! ## What it trains
//!
//! A two-layer perceptron `8 → --hidden (tanh) → 2`, in pure Rust `f32`, learns to imitate a
//! fixed random "teacher" MLP (`8 → 32 (tanh) → 2`, targets standardised) on 2048 training
//! inputs drawn uniformly from `[-1, 1)^8`; 512 more are held out for validation. Everything
//! derives from `--seed` (no downloads). Minibatches of 32 visit the training set in epochs of 64
//! steps, in an order shuffled by a xoshiro256** stream seeded through SplitMix64. The optimizer
//! is Adam (learning rate 1e-2, betas 0.9/0.999, eps 1e-8) on the mean squared error.
//!
//! Validation loss with the defaults (seed 0, hidden 64) falls **46.7×** from step 0 to step 600
//! (1.0863 → 0.0233); over seeds 0–4 the factor is between 32× and 115×, so "at least 10×" holds
//! with a wide margin. The tests' short run (hidden 16, 120 steps) falls 7.5× (0.897 → 0.119).
//! A default run takes about 0.05 s in a release build and 0.07 s in a debug build (the crate
//! is built with `opt-level = 2` in debug too).
//!
//! The math is single-threaded with a fixed summation order, so the same flags give
//! bit-identical weights in every process, interrupted or not.
//!
//! ## What a checkpoint holds
//!
//! - model: `model.layer1.weight [hidden, 8]`, `model.layer1.bias [hidden]`,
//!   `model.layer2.weight [2, hidden]`, `model.layer2.bias [2]` (F32);
//! - optimizer: Adam's moments `optim.m.<tensor>` and `optim.v.<tensor>` (F32), and the
//!   `--extra-state-mib` buffers `extra.buffer.<i>` (U8, 4 MiB each at most, filled from the seed
//!   and changed in a few bytes every step);
//! - trainer state (JSON): the shaping flags (seed, hidden, extra MiB), the step, Adam's update
//!   count, the epoch, the minibatch within it, and the shuffling stream's state now and at the
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
//! | `--max-steps N` | 600 | optimizer steps in total |
//! | `--ckpt-every N` | 50 | save every N steps |
//! | `--val-every N` | 100 | validation loss every N steps |
//! | `--seed S` | 0 | seed of data, teacher, initial weights, data order, extra state |
//! | `--sync` | off | save synchronously (default: asynchronously, ModelCheckpoint's default) |
//! | `--extra-state-mib N` | 0 | MiB of extra state in every checkpoint |
//! | `--top-k K` | 2 | checkpoints kept by validation loss (-1 all, 0 none) |
//! | `--hidden H` | 64 | hidden units |
//! | `--max-shard-mib N` | 8 | largest shard file |
//! | `--checkpoint-dir D` | none | checkpoints in D or at an object-store URL (`s3://bucket/prefix`; docs/OBJECT_STORAGE.md); logs stay local |
//! | `--quiet` | off | print only errors and the `final_state_sha256=` line |
//!
//! ## Output
//!
//! Plain lines on stdout, each flushed: where the checkpoints are, whether the run resumed (from
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

mod cli;
mod data;
mod model;
mod rng;
mod state;

use anyhow::Context;
use clap::Parser;
use cli::Args;
use data::Dataset;
use state::{StateConfig, TrainState};
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;
use waypoint::{
    AutoResume, Experiment, ExperimentLogger, Mode, ModelCheckpoint, SaveLast, SaveOptions,
    SavedCheckpoint,
};

/// Exit status of a preempted run (`EX_TEMPFAIL` of sysexits.h: run the same command again).
const EXIT_PREEMPTED: u8 = 75;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let mut out = Out { quiet: args.quiet };
    match train(&args, &mut out) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Preempted) => ExitCode::from(EXIT_PREEMPTED),
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "waypoint-train: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a run ended, when it did not fail.
enum Outcome {
    /// `--max-steps` reached (now or by an earlier run).
    Done,
    /// A preemption signal: the `-last` checkpoint is saved, the same command resumes.
    Preempted,
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

/// Stdout, one flushed line at a time. Write errors are ignored: a closed stdout must not stop
/// (or fail) a training run.
struct Out {
    quiet: bool,
}

impl Out {
    /// A progress line, left out with `--quiet`.
    fn info(&mut self, line: fmt::Arguments<'_>) {
        if !self.quiet {
            self.result(line);
        }
    }

    /// A line printed even with `--quiet`.
    fn result(&mut self, line: fmt::Arguments<'_>) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_fmt(line)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
    }

    fn saved(&mut self, saved: &[SavedCheckpoint], totals: &mut (u64, u64)) {
        for s in saved {
            totals.0 += 1;
            totals.1 += s.bytes;
            if s.link {
                self.info(format_args!("linked {} step={}", s.name, s.step));
            } else {
                self.info(format_args!(
                    "saved {} step={} bytes={} ms={} blocked_ms={}",
                    s.name,
                    s.step,
                    s.bytes,
                    s.elapsed.as_millis(),
                    s.blocked.as_millis()
                ));
            }
        }
    }
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
    hidden: u64,
    seed: u64,
    extra_state_mib: u64,
}

/// The experiment of the flags: directory, run files, configuration, policy, preemption.
fn experiment_logger(args: &Args) -> anyhow::Result<ExperimentLogger> {
    let hparams = serde_json::json!({
        // The f32's shortest decimal (0.01), not its f64 widening (0.009999999776…).
        "lr": model::LEARNING_RATE.to_string().parse::<f64>().unwrap_or(f64::NAN),
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
            hidden: args.hidden,
            seed: args.seed,
            extra_state_mib: args.extra_state_mib,
        })
        .hparams(hparams.as_object().cloned().unwrap_or_default())
        .preemption_signals(vec![waypoint::preemption::SIGTERM]);
    if let Some(version) = &args.version {
        builder = builder.version(version);
    }
    builder.build().context("invalid experiment configuration")
}

/// AutoResume: continue from the newest committed checkpoint, if any; `past_end` also from one
/// that ended a completed run.
fn resume_rules(past_end: bool) -> anyhow::Result<AutoResume> {
    Ok(AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .resume_past_end(past_end)
        .build()?)
}

/// Sets up the experiment: its directory and run files, the lock, leftovers of interrupted saves
/// removed, the resume point chosen.
fn open_experiment(args: &Args) -> anyhow::Result<Experiment> {
    experiment_logger(args)?
        .setup(&resume_rules(false)?)
        .with_context(|| format!("could not open the run under {}", args.log_dir.display()))
}

/// The whole job: resume or start, train to `--max-steps` (or until preempted), print the digest.
fn train(args: &Args, out: &mut Out) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut experiment = open_experiment(args)?;
    if let Some(point) = experiment
        .run()
        .resume_point()
        .filter(|p| p.completed && p.step < args.max_steps)
    {
        out.info(format_args!(
            "the run completed at step {} (checkpoint {}); --max-steps {} continues it",
            point.step, point.name, args.max_steps
        ));
        experiment
            .reopen(&resume_rules(true)?)
            .context("could not reopen the run past its end")?;
    }
    out.info(format_args!(
        "run files: {}",
        experiment.version_dir().display()
    ));
    out.info(format_args!(
        "checkpoints: {}",
        experiment.checkpoint_dir().display()
    ));
    let run = experiment.run_mut();
    let config = StateConfig {
        seed: args.seed,
        hidden: args.hidden,
        extra_state_mib: args.extra_state_mib,
    };
    let data = Dataset::generate(args.seed);
    let mut state = TrainState::new(config)?;
    out.info(format_args!(
        "model: mlp {}-{}-{} tanh, {} parameters; checkpointed tensors: {} bytes",
        model::D_IN,
        args.hidden,
        model::D_OUT,
        state.parameter_count(),
        state.tensor_bytes()
    ));
    let point = run
        .restore(&mut state)
        .context("could not restore the checkpoint to resume from")?;
    match &point {
        Some(p) => {
            anyhow::ensure!(
                state.step() == p.step,
                "checkpoint {} records step {} but its trainer state says step {}",
                p.path.display(),
                p.step,
                state.step()
            );
            out.info(format_args!(
                "resumed from {} at step {} ({})",
                p.name, p.step, p.reason
            ));
        }
        None => out.info(format_args!("starting fresh: no checkpoint to resume from")),
    }
    if let Some(p) = point
        .as_ref()
        .filter(|p| p.completed || state.step() >= args.max_steps)
    {
        // Training is done, but the previous process may have stopped before every save of its
        // last step committed. The end of training is told again, so the policy can save what is
        // missing (usually nothing) under the names an uninterrupted run gives: hence the
        // validation loss of that step is reported again when it had one.
        let step = state.step();
        if step % args.val_every == 0 {
            run.log_metrics(step, &[("val_loss", f64::from(state.val_loss(&data)))]);
        }
        out.info(format_args!("save-begin step={step}"));
        let saved = experiment
            .finish(step, state.epoch(), &state)
            .context("saving at the end of training")?;
        out.saved(&saved, &mut (0, 0));
        out.info(format_args!("save-end step={step}"));
        out.info(format_args!(
            "run already completed at step {} (checkpoint {}); nothing to do",
            p.step, p.name
        ));
        out.result(format_args!("final_state_sha256={}", state.sha256()));
        return Ok(Outcome::Done);
    }
    if point.is_none() {
        let val = state.val_loss(&data);
        run.log_metrics(0, &[("val_loss", f64::from(val))]);
        out.info(format_args!("step 0 val_loss {val}"));
    }
    let first = state.step() + 1;
    let mut totals = (0u64, 0u64);
    for step in first..=args.max_steps {
        let loss = state.train_step(&data);
        anyhow::ensure!(
            state.step() == step,
            "internal error: step {} after step {step}",
            state.step()
        );
        let epoch = state.epoch();
        run.log_metrics(
            step,
            &[
                ("train_loss", f64::from(loss)),
                ("lr", f64::from(model::LEARNING_RATE)),
            ],
        );
        out.info(format_args!("step {step} train_loss {loss}"));
        if step % args.val_every == 0 {
            let val = state.val_loss(&data);
            run.log_metrics(step, &[("val_loss", f64::from(val))]);
            out.info(format_args!("step {step} val_loss {val}"));
            // With a step trigger, validation ends never save; any save would still be listed.
            let saved = run
                .validation_end(step, epoch, &state)
                .with_context(|| format!("saving at step {step}"))?;
            out.saved(&saved, &mut totals);
        }
        let may_save = step % args.ckpt_every == 0;
        if may_save {
            out.info(format_args!("save-begin step={step}"));
        }
        let saved = run
            .step_end(step, epoch, &state)
            .with_context(|| format!("saving at step {step}"))?;
        out.saved(&saved, &mut totals);
        if may_save {
            out.info(format_args!("save-end step={step}"));
        }
        if run.should_stop() {
            // The run saved the -last checkpoint of this step and waited for it.
            out.result(format_args!(
                "preempted at step {step}: the -last checkpoint is saved; run the same command again to resume"
            ));
            return Ok(Outcome::Preempted);
        }
    }
    let step = state.step();
    // The step end just saved (at least the -last) when the step is a multiple of --ckpt-every;
    // otherwise the end of training saves a -last checkpoint.
    let may_save = step % args.ckpt_every != 0;
    if may_save {
        out.info(format_args!("save-begin step={step}"));
    }
    let saved = experiment
        .finish(step, state.epoch(), &state)
        .context("saving at the end of training")?;
    out.saved(&saved, &mut totals);
    if may_save {
        out.info(format_args!("save-end step={step}"));
    }
    out.info(format_args!(
        "trained steps {first}..={step} in {:.2} s; {} checkpoints, {} bytes written",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1
    ));
    out.result(format_args!("final_state_sha256={}", state.sha256()));
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_the_configuration_in_io_json_and_read_back() {
        let args = Args::parse_from(["waypoint-train", "--max-steps", "7", "--version", "v2"]);
        let logger = experiment_logger(&args).unwrap();
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
            logger.model_yaml().unwrap(),
            b"extra_state_mib: 0\nhidden: 64\nseed: 0\n"
        );
        assert_eq!(logger.version(), Some("v2"));
        assert_eq!(logger.preemption_signals(), [waypoint::preemption::SIGTERM]);
    }

    #[test]
    fn help_documents_the_preemption_exit_status() {
        let help = Args::command().render_help().to_string();
        assert!(help.contains("75 preempted (EX_TEMPFAIL)"), "{help}");
        assert_eq!(EXIT_PREEMPTED, 75);
    }
}
