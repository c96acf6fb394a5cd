//! # burn-train's Learner with waypoint: `cargo run --release -p waypoint-burn --features learner --example learner`
//!
//! One linear layer learns `y = 2·x0 − x1 + 0.5` from `--points` points (32: 8 shuffled batches of 4 per epoch)
//! with Adam and a linear learning-rate schedule, trained by burn-train's `Learner`. waypoint
//! saves each epoch as one checkpoint (model, Adam's moments, the scheduler's position), keeps
//! the best two by `valid_loss` and a `-last`, logs `train_loss` / `valid_loss` to TensorBoard
//! and CSV, and, when the same command runs again after a crash, resumes from the newest epoch
//! it committed, the shuffled batches in the order an uninterrupted run would have seen them.
//!
//! Flags: `--log-dir`, `--name`, `--epochs`, `--points`, `--seed`, `--sync` (saves in the Learner's
//! checkpointer thread instead of waypoint's background writer). Output: `starting fresh` or
//! `resumed from epoch N`, or `run already completed` for a finished run (nothing is trained);
//! otherwise the last line is `final_state_sha256=<hex>` (SHA-256 over the model's tensors sorted
//! by name: its name, its dtype's name, each dimension as a little-endian `u64`, its bytes).
//! With `RUST_LOG=waypoint_burn=debug`, each epoch's save is announced on stderr as it starts
//! (`burn epoch checkpointed`), which the kill test uses.
//!
//! What burn's hooks cannot carry (mid-epoch resume, SIGTERM), and what a user gets instead, is in
//! docs/BURN.md.

use anyhow::Context;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use burn::train::metric::LossMetric;
use burn::train::{Learner, SupervisedTraining};
use clap::Parser;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::ExitCode;
use waypoint::{AutoResume, ExperimentLogger, Mode, ModelCheckpoint, SaveLast};
use waypoint_burn::LearnerRun;

mod model;
use model::{Regression, loaders};

/// The example's flags.
#[derive(Parser, Debug)]
#[command(about = "burn-train's Learner checkpointed, resumed and logged by waypoint")]
struct Args {
    /// Root of experiments; run files in DIR/NAME, checkpoints in its checkpoints/.
    #[arg(long, default_value = "./waypoint_runs")]
    log_dir: PathBuf,
    /// Experiment name.
    #[arg(long, default_value = "learner")]
    name: String,
    /// Epochs in total.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Training points (batches of 4).
    #[arg(long, default_value_t = 32)]
    points: usize,
    /// Seed of the initial weights and of the shuffling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Save synchronously (default: asynchronously).
    #[arg(long)]
    sync: bool,
}

/// The experiment: top 2 by `valid_loss`, `-last`, a save at every epoch, TensorBoard and CSV.
fn experiment(args: &Args) -> anyhow::Result<LearnerRun> {
    let policy = ModelCheckpoint::builder()
        .monitor("valid_loss")
        .mode(Mode::Min)
        .save_top_k(2)
        .save_last(SaveLast::Yes)
        .every_n_epochs(1)
        .async_save(!args.sync)
        .build()?;
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()?;
    let experiment = ExperimentLogger::builder()
        .log_dir(&args.log_dir)
        .name(&args.name)
        .checkpoint(policy)
        .build()?
        .setup(&resume)?;
    Ok(LearnerRun::from_experiment(experiment)?)
}

/// SHA-256 over `model`'s tensors sorted by name (see the module comment).
fn digest<M: Module>(model: &M) -> anyhow::Result<String> {
    let mut tensors = Vec::new();
    for t in model.collect(None, None, false) {
        let (name, dtype, shape, _, bytes) = t.into_parts().context("reading a tensor")?;
        tensors.push((name, format!("{dtype:?}"), shape.to_vec(), bytes.to_vec()));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Sha256::new();
    for (name, dtype, shape, bytes) in &tensors {
        hash.update(name.as_bytes());
        hash.update(dtype.as_bytes());
        for d in shape {
            hash.update((*d as u64).to_le_bytes());
        }
        hash.update(bytes);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn train(args: &Args) -> anyhow::Result<()> {
    let waypoint = experiment(args)?;
    if waypoint.completed() {
        println!("run already completed at step {}", waypoint.step());
        return Ok(());
    }
    match waypoint.resume_epoch() {
        Some(epoch) => println!("resumed from epoch {epoch} (step {})", waypoint.step()),
        None => println!("starting fresh"),
    }
    #[allow(deprecated)] // ndarray: single-threaded, bit-identical in every process (docs/BURN.md)
    let device = Device::ndarray().autodiff();
    device.seed(args.seed);
    let model = Regression::new(&device);
    let optim = AdamConfig::new().init();
    let scheduler = LinearLrSchedulerConfig::new(5e-2, 5e-3, args.points.div_ceil(4) * args.epochs)
        .init()
        .map_err(|e| anyhow::anyhow!("the learning-rate schedule: {e}"))?;
    let (train, valid) = loaders(args.seed, args.points);
    // burn's own artifacts (none are written with waypoint's hooks) go to a directory of their own.
    let burn_dir = args.log_dir.join(&args.name).join("burn");
    let training = SupervisedTraining::new(&burn_dir, waypoint.resumed_order(train), valid)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_application_logger(None);
    let result = waypoint
        .attach(training, args.epochs)
        .launch(Learner::new(model, optim, scheduler));
    if let Some(error) = result.error {
        anyhow::bail!("the Learner stopped: {error:?}");
    }
    let hash = digest(&result.model)?;
    let saved = waypoint.finish()?;
    for s in &saved {
        println!("saved {}", s.name);
    }
    println!("final_state_sha256={hash}");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    match train(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
