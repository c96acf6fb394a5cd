//! The experiment directory: NeMo's `NeMoLogger` for Rust. [`ExperimentLogger`] owns where a
//! run's files go and what a run leaves behind for the people who look at it later; its
//! [`ExperimentLogger::setup`] returns an [`Experiment`], which holds the [`Run`](crate::Run)
//! the loop talks to, and, for as long as it lives, the directory's lock, the per-rank log files
//! and the preemption signal handlers.
//!
//! # Layout
//!
//! ```text
//! <log_dir>/<name>/[<version>/]        the version directory (or explicit_log_dir, as it is)
//!   .waypoint.lock                     held by the live run (global rank 0): pid, host, start
//!   cmd-args.log                       rank 0: the command line, arguments joined by spaces
//!   git-info.log                       rank 0: "commit hash: <sha>" and `git diff HEAD`
//!   hparams.yaml                       rank 0: the hyper-parameters (loggers reuse it)
//!   log_globalrank-G_localrank-L.txt   each rank: tracing events at INFO and above
//!   log_globalrank-G_localrank-L.err.txt  each rank: WARN and above
//!   <files_to_copy>                    rank 0: copies
//!   run_<N>/                           the loose files above of earlier runs in this directory
//!   checkpoints/                       the run's checkpoints (ModelCheckpoint's dirpath wins)
//!   <logger output>                    with update_logger_directory: Experiment::logger_dir()
//! ```
//!
//! # Versions
//!
//! The first that applies: `explicit_log_dir` (no version) > `version` > `WAYPOINT_VERSION` >
//! no version directory when resuming (`resume_if_exists`), so that running the same command
//! again finds the same checkpoints > the start time (`%Y-%m-%d_%H-%M-%S`, local time, as NeMo)
//! with `use_datetime_version` (default) > none. Only global rank 0 may choose a datetime: the
//! processes a run starts get its choice through [`Experiment::child_env`]. (NeMo writes it into
//! its own environment; in Rust, `std::env::set_var` is unsound while other threads may read the
//! environment, which a library cannot rule out.)
//!
//! # Ranks
//!
//! A process's ranks are a [`RankInfo`]: given to the builder, else the coordinator's rank with
//! the local rank from the environment, else [`RankInfo::from_env`] (its rule: the first
//! launcher with a complete rank and world size wins, a half-set is an error naming what is
//! missing). The global rank is `rank`, the local rank `local_rank.unwrap_or(0)`.
//!
//! # Where things are
//!
//! This file holds the knobs ([`ExperimentLogger`], its settings for the run kept as one
//! [`RunConfig`]); `builder.rs` checks them; `setup.rs` is [`ExperimentLogger::setup`] as its
//! named steps; `handle.rs` is the [`Experiment`] it returns. The version rules are in
//! `version.rs`, the lock in `lock.rs`, the run files in `files.rs`, the log files in
//! `logs.rs`, the signals in `signals.rs`, `context/` in `context.rs`; the metric loggers are
//! built by `crate::loggers` from a plain description.
//!
//! # What it must not do
//!
//! It writes nothing into `checkpoints/` itself (the run does), never moves or deletes a
//! directory, and a failure to describe the work tree (no git) never fails a setup.

mod builder;
mod context;
mod files;
mod handle;
mod lock;
mod logs;
mod setup;
mod signals;
mod version;

pub use crate::loggers::{CSV_DIR, TENSORBOARD_DIR};
pub use builder::ExperimentLoggerBuilder;
pub use context::{CONTEXT_DIR, IO_JSON, MODEL_YAML, load_config};
pub use files::{CMD_ARGS_FILE, GIT_INFO_FILE, HPARAMS_FILE, LOG_FILE_PREFIX, RUN_DIR_PREFIX};
pub use handle::Experiment;
pub use lock::{LOCK_FILE, lock_holder};
pub use logs::log_files_layer;
pub use version::{DATETIME_FORMAT, VERSION_ENV};

use crate::dist::{RankInfo, SharedCoordinator};
use crate::policy::ModelCheckpoint;
use crate::run::RunConfig;
use std::path::{Path, PathBuf};

/// The default root of experiments, NeMo's `nemo_experiments` renamed.
pub const DEFAULT_LOG_DIR: &str = "./waypoint_runs";

/// NeMoLogger's knobs, validated; [`ExperimentLogger::setup`] makes the directory and the run.
///
/// ```
/// use waypoint::{AutoResume, ExperimentLogger, ModelCheckpoint};
/// # fn main() -> waypoint::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Config { lr: f64, hidden: usize }
/// let config = Config { lr: 1e-2, hidden: 64 };
///
/// let logger = ExperimentLogger::builder()
///     .log_dir(tmp.path())
///     .name("mlp")
///     .checkpoint(ModelCheckpoint::builder().monitor("val_loss").save_top_k(2).every_n_train_steps(50).build()?)
///     .config(&config)                                   // context/io.json in every checkpoint
///     .model_config(&serde_json::json!({ "hidden": config.hidden }))   // context/model.yaml
///     .hparams(serde_json::Map::from_iter([("lr".to_owned(), config.lr.into())]))
///     .max_steps(600)
///     .build()?;
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build()?;
/// let experiment = logger.setup(&resume)?;
/// // Resuming and no version given: no version directory, so the same command resumes.
/// assert_eq!(experiment.version(), None);
/// assert!(experiment.version_dir().join("cmd-args.log").is_file());
/// assert!(experiment.version_dir().join("hparams.yaml").is_file());
/// assert_eq!(experiment.checkpoint_dir(), experiment.version_dir().join("checkpoints"));
/// // A second live run of the same directory is refused, naming this one.
/// assert!(matches!(logger.setup(&resume), Err(waypoint::Error::RunLocked { .. })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ExperimentLogger {
    /// What the run needs: log_dir, name, version (the knob), checkpoint, save_options,
    /// max_steps, and `context/`'s files (io.json, model.yaml).
    config: RunConfig,
    use_datetime_version: bool,
    explicit_log_dir: Option<PathBuf>,
    files_to_copy: Vec<PathBuf>,
    update_logger_directory: bool,
    log_local_rank_0_only: bool,
    log_global_rank_0_only: bool,
    tensorboard: bool,
    csv: bool,
    mlflow: Option<String>,
    wandb_offline: bool,
    /// TensorBoard's place, W&B's run and the caller's loggers.
    loggers: crate::loggers::LoggerObjects,
    hparams: Option<serde_json::Map<String, serde_json::Value>>,
    preemption_signals: Vec<i32>,
    ranks: Option<RankInfo>,
    coordinator: Option<SharedCoordinator>,
}

impl ExperimentLogger {
    /// Starts a builder with NeMo's defaults: `./waypoint_runs`, name `default`, a datetime
    /// version unless resuming, loggers pointed at the version directory, SIGTERM for preemption.
    ///
    /// ```
    /// use waypoint::{Error, ExperimentLogger};
    /// let logger = ExperimentLogger::builder().name("gpt").version("v1").build().unwrap();
    /// assert_eq!((logger.name(), logger.version()), ("gpt", Some("v1")));
    /// // Conflicts fail at build, naming the knobs.
    /// let err = ExperimentLogger::builder().explicit_log_dir("/runs/x").version("v1").build().unwrap_err();
    /// assert!(matches!(err, Error::InvalidArgument { name: "explicit_log_dir", .. }));
    /// assert!(err.to_string().contains("version"));
    /// ```
    pub fn builder() -> ExperimentLoggerBuilder {
        ExperimentLoggerBuilder::default()
    }

    /// The run's settings as given (the run gets them adjusted for the version chosen at setup
    /// and for `explicit_log_dir`).
    ///
    /// ```
    /// use waypoint::ExperimentLogger;
    /// let logger = ExperimentLogger::builder().name("gpt").max_steps(100).build().unwrap();
    /// assert_eq!((logger.run_config().name.as_str(), logger.run_config().max_steps), ("gpt", Some(100)));
    /// ```
    pub fn run_config(&self) -> &RunConfig {
        &self.config
    }
    /// The root of experiments.
    pub fn log_dir(&self) -> &Path {
        &self.config.log_dir
    }
    /// The experiment's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }
    /// The version asked for, if any (the one used is [`Experiment::version`]).
    pub fn version(&self) -> Option<&str> {
        self.config.version.as_deref()
    }
    /// Whether a datetime version is chosen when nothing else decides.
    pub fn use_datetime_version(&self) -> bool {
        self.use_datetime_version
    }
    /// The directory used as it is, if set.
    pub fn explicit_log_dir(&self) -> Option<&Path> {
        self.explicit_log_dir.as_deref()
    }
    /// Files copied into the version directory.
    pub fn files_to_copy(&self) -> &[PathBuf] {
        &self.files_to_copy
    }
    /// Whether loggers write into the version directory.
    pub fn update_logger_directory(&self) -> bool {
        self.update_logger_directory
    }
    /// Whether only local rank 0 writes text logs.
    pub fn log_local_rank_0_only(&self) -> bool {
        self.log_local_rank_0_only
    }
    /// Whether only global rank 0 writes text logs.
    pub fn log_global_rank_0_only(&self) -> bool {
        self.log_global_rank_0_only
    }
    /// The checkpoint policy, if given.
    pub fn checkpoint(&self) -> Option<&ModelCheckpoint> {
        self.config.checkpoint.as_ref()
    }
    /// Whether the TensorBoard logger is wanted.
    pub fn tensorboard(&self) -> bool {
        self.tensorboard
    }
    /// Whether the CSV logger is wanted.
    pub fn csv(&self) -> bool {
        self.csv
    }
    /// The MLflow tracking server the run is sent to, if any.
    pub fn mlflow(&self) -> Option<&str> {
        self.mlflow.as_deref()
    }
    /// Whether an offline W&B run is written.
    pub fn wandb_offline(&self) -> bool {
        self.wandb_offline
    }
    /// `context/io.json`'s bytes, if a configuration was given.
    pub fn io_json(&self) -> Option<&[u8]> {
        self.context_file(IO_JSON)
    }
    /// `context/model.yaml`'s bytes, if a model configuration was given.
    pub fn model_yaml(&self) -> Option<&[u8]> {
        self.context_file(MODEL_YAML)
    }
    /// The hyper-parameters, if given.
    pub fn hparams(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.hparams.as_ref()
    }
    /// The signals that request preemption.
    pub fn preemption_signals(&self) -> &[i32] {
        &self.preemption_signals
    }
    /// The ranks given to the builder (otherwise the coordinator's, or read from the
    /// environment at setup: see the module documentation).
    pub fn ranks(&self) -> Option<RankInfo> {
        self.ranks
    }
    /// The step training ends at, if given.
    pub fn max_steps(&self) -> Option<u64> {
        self.config.max_steps
    }

    /// The bytes of the `context/` file `name`, if set.
    fn context_file(&self, name: &str) -> Option<&[u8]> {
        let file = self.config.context.iter().find(|(n, _)| n == name);
        file.map(|(_, bytes)| bytes.as_slice())
    }
}
