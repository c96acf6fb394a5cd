//! The command line: clap's raw arguments ([`Args`]), checked when parsed (ranges) and turned
//! into the library's configuration by `main`. The whole of it is the run's configuration,
//! saved as `context/io.json` in every checkpoint.
//!
//! It owns the flags, their ranges and their help. It must not build the library's configuration,
//! which `main` does; a resumed run's flags are checked against the checkpoint's in `state.rs`, not
//! here.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What `--help` says after the flags.
const AFTER_HELP: &str = "\
Exit status: 0 done (also when the run had already completed), 1 an error, 2 a usage error,
75 preempted (EX_TEMPFAIL): a SIGTERM arrived, the -last checkpoint of the step reached is saved;
run the same command again to resume. A second SIGTERM during that save terminates at once.";

/// The model `--model` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A candle MLP (two tanh hidden layers) trained with AdamW on the CPU.
    Candle,
    /// The pure-Rust single-hidden-layer MLP trained with Adam (fast; for tests).
    MlpRust,
}

impl ModelKind {
    /// The name on the command line and in the run's files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Candle => "candle",
            ModelKind::MlpRust => "mlp-rust",
        }
    }
}

/// Trains a small MLP (candle, AdamW, CPU), checkpointing with waypoint and resuming
/// automatically.
#[derive(Debug, Clone, PartialEq, Parser, Serialize, Deserialize)]
#[command(name = "waypoint-train", about, long_about = None, after_help = AFTER_HELP)]
pub struct Args {
    /// Root directory of experiments: run files and logs in LOG_DIR/NAME[/VERSION], checkpoints
    /// in LOG_DIR/NAME[/VERSION]/checkpoints.
    #[arg(long, default_value = "./waypoint_runs")]
    pub log_dir: PathBuf,

    /// The experiment's name.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// A version directory under the experiment (none by default, so that the same command resumes).
    #[arg(long)]
    pub version: Option<String>,

    /// Optimizer steps to train in total (a resumed run continues up to this step).
    #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_steps: u64,

    /// Save every N optimizer steps (ModelCheckpoint's every_n_train_steps).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub ckpt_every: u64,

    /// Compute the validation loss every N optimizer steps.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub val_every: u64,

    /// Seed of the data, the teacher, the initial weights, the data order and the extra state.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Save synchronously: the training thread waits for each save to commit. By default saves
    /// are asynchronous (the training thread only stages the state; at most one save is written
    /// in the background, and the next one waits for it).
    #[arg(long)]
    pub sync: bool,

    /// MiB of deterministic extra state (U8 tensors `extra.buffer.<i>`, changed every step) to
    /// make checkpoints large.
    #[arg(long, default_value_t = 0)]
    pub extra_state_mib: u64,

    /// Checkpoints kept by validation loss (ModelCheckpoint's save_top_k).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(-1..))]
    pub top_k: i64,

    /// The model: a candle MLP (the default), or the pure-Rust MLP.
    #[arg(long, value_enum, default_value = "candle")]
    pub model: ModelKind,

    /// Threads of candle's CPU backend (RAYON_NUM_THREADS), fixed so that the arithmetic, and
    /// thus the final state, is the same on every machine. One is the fastest on a busy 2-core
    /// machine and leaves a core to the background checkpoint writer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: u64,

    /// Hidden units of the MLP (of each hidden layer).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub hidden: u64,

    /// Largest shard file in MiB (a bigger state spans several files).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_shard_mib: u64,

    /// Also send the run to the MLflow tracking server at this URI (`http://host:port`):
    /// parameters, metrics and status; a resumed run continues the same MLflow run, and what
    /// an outage keeps from the server is queued in LOG_DIR/NAME[/VERSION]/mlflow/.
    #[arg(long, value_name = "TRACKING_URI")]
    #[serde(default)]
    pub mlflow: Option<String>,

    /// Also write an offline W&B run into LOG_DIR/NAME[/VERSION]/wandb/ (upload it later with
    /// `wandb sync`).
    #[arg(long)]
    #[serde(default)]
    pub wandb_offline: bool,

    /// Checkpoints in this directory or object-store URL (`s3://bucket/prefix`, `gs://…`,
    /// `az://…`; credentials and endpoint from the standard environment variables) instead of
    /// LOG_DIR/NAME[/VERSION]/checkpoints. Run files, logs and metrics stay under LOG_DIR.
    #[arg(long)]
    pub checkpoint_dir: Option<String>,

    /// Start a fresh run from another run's model weights (AutoResume's restore_config, NeMo's
    /// fine-tuning path): a waypoint checkpoint directory (or `s3://…` URL), a `.safetensors`
    /// file, or a Hugging Face directory. The optimizer, step and data position start fresh;
    /// the source's `context/` files are copied into this run's checkpoints. Ignored once this
    /// run has a checkpoint of its own to resume.
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub restore_from: Option<PathBuf>,

    /// One rank of a data-parallel job started by `mpirun` (or `srun`): each rank trains on its
    /// slice of every minibatch, gradients are averaged over the ranks, Adam's moments are
    /// sharded (ZeRO-1) and every checkpoint is saved by all ranks together. `--model mlp-rust`
    /// only; needs a binary built with the `mpi` feature (docs/MPI.md).
    #[arg(long)]
    #[serde(default)]
    pub data_parallel: bool,

    /// Print only errors and the final `final_state_sha256=` line.
    #[arg(long)]
    pub quiet: bool,
}
