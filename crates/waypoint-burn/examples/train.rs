//! # A plain burn training loop with waypoint: `cargo run --release -p waypoint-burn --example train`
//!
//! A burn MLP `4 → H (tanh) → 1` on the ndarray backend (single-threaded: bit-identical in every
//! process), trained with AdamW (weight decay 1e-4) and a cosine learning rate from 1e-2 over
//! `--max-steps`, on minibatches of 16 drawn from `--seed` and the step (so the step is the
//! whole data position), to fit `sin(3 x0) + x1 x2 - x3²`. waypoint saves it (model, AdamW's
//! moments and step counts, the scheduler's position, the trainer state), keeps the best two
//! checkpoints by `val_loss` and a `-last`, logs to TensorBoard and CSV, and resumes it.
//!
//! The flags and output are the example trainer's (`waypoint-train`, docs/CANDLE.md): `--log-dir`,
//! `--name`, `--max-steps`, `--ckpt-every`, `--val-every`, `--seed`, `--sync`, `--top-k`,
//! `--hidden`, `--quiet`; lines `step N train_loss X` (the progress line) and `step N val_loss X`,
//! `save-begin step=N` / `save-end step=N` around calls that may save, `saved <name> step=N
//! bytes=B ms=T blocked_ms=U` once a checkpoint is committed; SIGTERM finishes the step, saves
//! `-last` and exits with status 75; a rerun of a completed run says so; the last line is
//! `final_state_sha256=<hex>` (SHA-256 over every checkpointed tensor sorted by name: its name,
//! its dtype's name, each dimension as a little-endian `u64`, its bytes).

use anyhow::Context;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use waypoint::serde_json::json;
use waypoint::{
    AutoResume, Checkpointable, Experiment, ExperimentLogger, Mode, ModelCheckpoint, Run, SaveLast,
    SavedCheckpoint,
};
use waypoint_burn::{Restorer, Snapshot};

/// The example trainer's flags.
#[derive(Parser, Debug)]
#[command(about = "A burn MLP trained with waypoint: resumable, logged (exit 75: preempted)")]
struct Args {
    /// Root of experiments; run files in DIR/NAME, checkpoints in its checkpoints/.
    #[arg(long, default_value = "./waypoint_runs")]
    log_dir: PathBuf,
    /// Experiment name.
    #[arg(long, default_value = "burn")]
    name: String,
    /// Optimizer steps in total.
    #[arg(long, default_value_t = 1000)]
    max_steps: u64,
    /// Save every N steps.
    #[arg(long, default_value_t = 100)]
    ckpt_every: u64,
    /// Validation loss every N steps.
    #[arg(long, default_value_t = 100)]
    val_every: u64,
    /// Seed of the initial weights and the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save synchronously (default: asynchronously).
    #[arg(long)]
    sync: bool,
    /// Checkpoints kept by validation loss (-1 all, 0 none).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    top_k: i64,
    /// Hidden units.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Print only errors and the final_state_sha256= line.
    #[arg(long)]
    quiet: bool,
}

/// Exit status of a preempted run (`EX_TEMPFAIL`: run the same command again).
const EXIT_PREEMPTED: u8 = 75;
const BATCH: usize = 16;
const LR: f64 = 1e-2;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.fc1.forward(x).tanh())
    }
}

/// SplitMix64 at `(seed, stream, index)`: the data, without a generator to save.
fn uniform(seed: u64, stream: u64, index: u64) -> f32 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Minibatch `stream` (the step; `u64::MAX` for validation): inputs and targets.
fn batch(seed: u64, stream: u64, rows: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..rows * 4)
        .map(|i| uniform(seed, stream, i as u64))
        .collect();
    let y: Vec<f32> = x
        .chunks(4)
        .map(|r| (3.0 * r[0]).sin() + r[1] * r[2] - r[3] * r[3])
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [rows, 4]), device),
        Tensor::from_data(TensorData::new(y, [rows, 1]), device),
    )
}

/// The training state: model, optimizer, scheduler, step.
struct Trainer {
    device: Device,
    model: Mlp,
    optim: ModuleOptimizer,
    sched: ModuleLrScheduler,
    step: u64,
    seed: u64,
}

impl Trainer {
    fn new(args: &Args) -> anyhow::Result<Self> {
        // ndarray is deprecated in burn 0.22 (for `flex`), but without burn's `rayon` feature it
        // runs on this thread alone: bit-identical in every process (docs/BURN.md).
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        device.seed(args.seed);
        let model = Mlp {
            fc1: LinearConfig::new(4, args.hidden).init(&device),
            fc2: LinearConfig::new(args.hidden, 1).init(&device),
        };
        let iters = usize::try_from(args.max_steps.max(1))?;
        let sched = CosineAnnealingLrSchedulerConfig::new(LR, iters)
            .init()
            .map_err(anyhow::Error::msg)?;
        let optim = AdamWConfig::new().with_weight_decay(1e-4).init();
        Ok(Trainer {
            device,
            model,
            optim,
            sched,
            step: 0,
            seed: args.seed,
        })
    }

    fn train_step(&mut self) -> f64 {
        self.step += 1;
        let (x, y) = batch(self.seed, self.step, BATCH, &self.device);
        let loss = (self.model.forward(x) - y).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let lr = self.sched.step();
        let model = self.model.clone();
        self.model = self.optim.step(lr, model, grads);
        loss.into_scalar::<f64>()
    }

    fn val_loss(&self) -> f64 {
        let device = self.device.clone().without_autodiff();
        let model = self.model.valid();
        let (x, y) = batch(self.seed, u64::MAX, 256, &device);
        (model.forward(x) - y)
            .powf_scalar(2.0)
            .mean()
            .into_scalar::<f64>()
    }

    fn snapshot(&self) -> waypoint_burn::Result<Snapshot> {
        Snapshot::of(&self.model, json!({ "step": self.step }))?
            .with_optimizer(&self.optim)?
            .with_scheduler(&self.sched)
    }

    /// SHA-256 over every checkpointed tensor, sorted by name.
    fn sha256(&self) -> anyhow::Result<String> {
        let snapshot = self.snapshot()?;
        let mut tensors = snapshot.model_tensors();
        tensors.extend(snapshot.optimizer_tensors());
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut hash = Sha256::new();
        for t in &tensors {
            hash.update(t.name.as_bytes());
            hash.update(t.dtype.name().as_bytes());
            for d in &t.shape {
                hash.update(d.to_le_bytes());
            }
            hash.update(t.data.as_slice());
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Prints a line and flushes it (unless `--quiet` and not `always`).
fn say(args: &Args, always: bool, line: std::fmt::Arguments<'_>) {
    if always || !args.quiet {
        let mut out = std::io::stdout().lock();
        let _ = out
            .write_fmt(line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
    }
}

fn report(args: &Args, saved: &[SavedCheckpoint]) {
    for s in saved {
        if s.link {
            say(
                args,
                false,
                format_args!("linked {} step={}", s.name, s.step),
            );
        } else {
            let (ms, blocked) = (s.elapsed.as_millis(), s.blocked.as_millis());
            say(
                args,
                false,
                format_args!(
                    "saved {} step={} bytes={} ms={ms} blocked_ms={blocked}",
                    s.name, s.step, s.bytes
                ),
            );
        }
    }
}

fn experiment(args: &Args) -> anyhow::Result<Experiment> {
    let policy = ModelCheckpoint::builder()
        .monitor("val_loss")
        .mode(Mode::Min)
        .save_top_k(args.top_k)
        .save_last(SaveLast::Yes)
        .every_n_train_steps(args.ckpt_every)
        .save_optim_on_train_end(true)
        .async_save(!args.sync)
        .build()?;
    let hparams =
        json!({ "lr": LR, "hidden": args.hidden, "seed": args.seed, "steps": args.max_steps });
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()?;
    Ok(ExperimentLogger::builder()
        .log_dir(&args.log_dir)
        .name(&args.name)
        .checkpoint(policy)
        .max_steps(args.max_steps)
        .hparams(hparams.as_object().cloned().unwrap_or_default())
        .preemption_signals(vec![waypoint::preemption::SIGTERM])
        .build()?
        .setup(&resume)?)
}

/// One step, its validation when due, and the step end (which may save).
fn step(args: &Args, run: &mut Run, t: &mut Trainer) -> anyhow::Result<()> {
    let loss = t.train_step();
    let step = t.step;
    run.log_metrics(step, &[("train_loss", loss)]);
    say(args, false, format_args!("step {step} train_loss {loss}"));
    if step.is_multiple_of(args.val_every) {
        let val = t.val_loss();
        run.log_metrics(step, &[("val_loss", val)]);
        say(args, false, format_args!("step {step} val_loss {val}"));
        report(args, &run.validation_end(step, 0, &t.snapshot()?)?);
    }
    let may_save = step.is_multiple_of(args.ckpt_every);
    if may_save {
        say(args, false, format_args!("save-begin step={step}"));
    }
    report(args, &run.step_end_with(step, 0, || t.snapshot())?);
    if may_save {
        say(args, false, format_args!("save-end step={step}"));
    }
    Ok(())
}

fn train(args: &Args) -> anyhow::Result<ExitCode> {
    let mut exp = experiment(args).context("could not open the run")?;
    say(
        args,
        false,
        format_args!("run files: {}", exp.version_dir().display()),
    );
    say(
        args,
        false,
        format_args!("checkpoints: {}", exp.checkpoint_dir().display()),
    );
    let mut t = Trainer::new(args)?;
    let run = exp.run_mut();
    let mut restorer = Restorer::new(run, &mut t.model)?
        .with_optimizer(&mut t.optim)?
        .with_scheduler(&mut t.sched);
    let point = run
        .restore(&mut restorer)
        .context("could not restore the checkpoint")?;
    let state = restorer.trainer_state().cloned();
    drop(restorer);
    t.step = state.as_ref().and_then(|s| s["step"].as_u64()).unwrap_or(0);
    match &point {
        Some(p) => say(
            args,
            false,
            format_args!("resumed from {} at step {} ({})", p.name, p.step, p.reason),
        ),
        None => {
            say(
                args,
                false,
                format_args!("starting fresh: no checkpoint to resume from"),
            );
            let val = t.val_loss();
            run.log_metrics(0, &[("val_loss", val)]);
            say(args, false, format_args!("step 0 val_loss {val}"));
        }
    }
    if let Some(p) = point.filter(|p| p.completed || t.step >= args.max_steps) {
        report(args, &exp.finish(t.step, 0, &t.snapshot()?)?);
        say(
            args,
            false,
            format_args!(
                "run already completed at step {} (checkpoint {}); nothing to do",
                p.step, p.name
            ),
        );
        say(
            args,
            true,
            format_args!("final_state_sha256={}", t.sha256()?),
        );
        return Ok(ExitCode::SUCCESS);
    }
    while t.step < args.max_steps {
        step(args, exp.run_mut(), &mut t)?;
        if exp.run().should_stop() {
            say(
                args,
                true,
                format_args!(
                    "preempted at step {}: the -last checkpoint is saved; run the same command again to resume",
                    t.step
                ),
            );
            return Ok(ExitCode::from(EXIT_PREEMPTED));
        }
    }
    let last = t.step;
    let may_save = !last.is_multiple_of(args.ckpt_every);
    if may_save {
        say(args, false, format_args!("save-begin step={last}"));
    }
    report(args, &exp.finish(last, 0, &t.snapshot()?)?);
    if may_save {
        say(args, false, format_args!("save-end step={last}"));
    }
    say(
        args,
        true,
        format_args!("final_state_sha256={}", t.sha256()?),
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match train(&args) {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "train: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
