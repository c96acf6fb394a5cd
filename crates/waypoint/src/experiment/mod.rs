//! The experiment directory: NeMo's `NeMoLogger` for Rust. [`ExperimentLogger`] owns where a
//! run's files go and what a run leaves behind for the people who look at it later; its
//! [`ExperimentLogger::setup`] returns an [`Experiment`], which holds the [`Run`] the loop talks
//! to, and, for as long as it lives, the directory's lock, the per-rank log files and the
//! preemption signal handlers.
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
mod signals;
mod version;

pub use builder::ExperimentLoggerBuilder;
pub use context::{CONTEXT_DIR, IO_JSON, MODEL_YAML, load_config};
pub use files::{CMD_ARGS_FILE, GIT_INFO_FILE, HPARAMS_FILE, LOG_FILE_PREFIX, RUN_DIR_PREFIX};
pub use handle::Experiment;
pub use lock::LOCK_FILE;
pub use logs::log_files_layer;
pub use version::{DATETIME_FORMAT, LOCAL_RANK_ENV, RANK_ENV, Ranks, VERSION_ENV};

use crate::engine::SaveOptions;
use crate::error::{Error, Result};
use crate::policy::ModelCheckpoint;
use crate::resume::AutoResume;
use crate::run::Run;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use version::{VersionInputs, VersionSource, resolve_version};

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
    log_dir: PathBuf,
    name: String,
    version: Option<String>,
    use_datetime_version: bool,
    explicit_log_dir: Option<PathBuf>,
    files_to_copy: Vec<PathBuf>,
    update_logger_directory: bool,
    log_local_rank_0_only: bool,
    log_global_rank_0_only: bool,
    checkpoint: Option<ModelCheckpoint>,
    tensorboard: bool,
    csv: bool,
    mlflow: Option<String>,
    wandb_offline: bool,
    io_json: Option<Vec<u8>>,
    model_yaml: Option<Vec<u8>>,
    hparams: Option<serde_json::Map<String, serde_json::Value>>,
    preemption_signals: Vec<i32>,
    ranks: Option<Ranks>,
    save_options: SaveOptions,
    max_steps: Option<u64>,
    coordinator: Option<crate::dist::SharedCoordinator>,
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

    /// The root of experiments.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
    /// The experiment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The version asked for, if any (the one used is [`Experiment::version`]).
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
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
        self.checkpoint.as_ref()
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
        self.io_json.as_deref()
    }
    /// `context/model.yaml`'s bytes, if a model configuration was given.
    pub fn model_yaml(&self) -> Option<&[u8]> {
        self.model_yaml.as_deref()
    }
    /// The hyper-parameters, if given.
    pub fn hparams(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.hparams.as_ref()
    }
    /// The signals that request preemption.
    pub fn preemption_signals(&self) -> &[i32] {
        &self.preemption_signals
    }
    /// The ranks given to the builder (otherwise read from the environment at setup).
    pub fn ranks(&self) -> Option<Ranks> {
        self.ranks
    }
    /// The step training ends at, if given.
    pub fn max_steps(&self) -> Option<u64> {
        self.max_steps
    }

    /// Makes the version directory and the run, in this order: the version (see the module
    /// documentation; `resume` says whether the run resumes), the directory, its lock (global
    /// rank 0; a live holder → [`Error::RunLocked`], a dead one's lock is taken over with a
    /// warning), the loose files of an earlier run moved into `run_<N>/`, this rank's log files,
    /// the run files (rank 0), the preemption handlers, and the [`Run`] (which chooses the
    /// checkpoint to resume from).
    pub fn setup(&self, resume: &AutoResume) -> Result<Experiment> {
        let ranks = match (self.ranks, &self.coordinator) {
            (Some(r), _) => r,
            (None, Some(c)) => Ranks {
                global: c.rank(),
                local: Ranks::from_env().map_or(0, |r| r.local),
            },
            (None, None) => Ranks::from_env()?,
        };
        // With several ranks in a group, rank 0 chooses the version and tells the others.
        let group = self.coordinator.as_ref().filter(|c| c.world_size() > 1);
        let env_version = std::env::var(VERSION_ENV).ok();
        let inputs = VersionInputs {
            explicit_log_dir: self.explicit_log_dir.is_some(),
            knob: self.version.as_deref(),
            env: env_version.as_deref(),
            resume_if_exists: resume.resume_if_exists(),
            use_datetime_version: self.use_datetime_version,
            global_rank: if group.is_some() { 0 } else { ranks.global },
        };
        let (version, source) = match group {
            Some(c) if c.is_root() => {
                let chosen = resolve_version(inputs, version::datetime_version);
                let shared = crate::run::share(
                    c.as_ref(),
                    "choosing the version directory",
                    Some(chosen.as_ref().map(|(v, _)| v.clone()).map_err(clone_error)),
                );
                let (version, source) = chosen?;
                shared?;
                (version, source)
            }
            Some(c) => (
                crate::run::share::<Option<String>>(
                    c.as_ref(),
                    "choosing the version directory",
                    None,
                )?,
                VersionSource::Rank0,
            ),
            None => resolve_version(inputs, version::datetime_version)?,
        };
        let dir = match &self.explicit_log_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.log_dir.join(&self.name);
                version.as_ref().map_or(d.clone(), |v| d.join(v))
            }
        };
        let existed = dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let version_dir = std::fs::canonicalize(&dir).map_err(|e| Error::io("resolve", &dir, e))?;
        let rank0 = ranks.global == 0;
        let (lock, stale_lock) = match rank0 {
            true => {
                let (lock, stale) = lock::RunLock::acquire(&version_dir)?;
                (Some(lock), stale)
            }
            false => (None, None),
        };
        let copied: Vec<String> = self
            .files_to_copy
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
            .collect();
        let previous_run = match rank0 {
            true => files::move_earlier_run(&version_dir, &copied),
            false => Ok(None),
        };
        if let Some(c) = group {
            // No rank opens its log files before rank 0 has moved an earlier run's away.
            c.barrier()?;
        }
        let previous_run = previous_run?;
        let silenced = (self.log_global_rank_0_only && ranks.global != 0)
            || (self.log_local_rank_0_only && ranks.local != 0);
        let writes_logs = !silenced;
        let logs = if writes_logs && logs::ensure_subscriber() {
            Some(logs::LogFiles::open(&version_dir, ranks)?)
        } else {
            if writes_logs {
                tracing::info!(
                    "a global tracing subscriber without waypoint::experiment::log_files_layer() is set: no per-rank log files are written"
                );
            }
            None
        };
        // From here on, events reach this rank's log files.
        if let Some(holder) = &stale_lock {
            tracing::warn!(dir = %version_dir.display(), "took over the stale lock of a run that died ({holder})");
        }
        if self.explicit_log_dir.is_some() && existed {
            tracing::info!(dir = %version_dir.display(), "explicit_log_dir exists already: reusing it");
        }
        tracing::info!(
            dir = %version_dir.display(),
            version = version.as_deref().unwrap_or(""),
            from = source_text(source),
            global_rank = ranks.global,
            local_rank = ranks.local,
            "experiment directory"
        );
        if let Some(p) = &previous_run {
            tracing::info!(dir = %p.display(), "moved the files of an earlier run here");
        }
        if rank0 {
            self.write_run_files(&version_dir)?;
        }
        let preemption = match self.preemption_signals.is_empty() {
            true => None,
            false => Some(signals::Preemption::register(&self.preemption_signals)?),
        };
        let mut spec = self.run_spec(&version_dir, version.clone(), preemption.as_ref())?;
        spec.loggers = LoggerSpec {
            dir: if self.update_logger_directory {
                version_dir.clone()
            } else {
                self.log_dir.clone()
            },
            tensorboard: self.tensorboard,
            csv: self.csv,
            mlflow: self.mlflow.clone(),
            wandb_offline: self.wandb_offline,
            experiment: self.name.clone(),
            run_name: version.clone().unwrap_or_else(|| self.name.clone()),
            version_dir: version_dir.clone(),
            hparams: self.hparams.clone(),
            global_rank: ranks.global,
        };
        let run = spec.build(resume)?;
        Ok(Experiment {
            run,
            spec,
            name: self.name.clone(),
            version,
            logger_dir: self.update_logger_directory.then(|| version_dir.clone()),
            version_dir,
            ranks,
            tensorboard: self.tensorboard,
            csv: self.csv,
            hparams: self.hparams.clone(),
            previous_run,
            stale_lock,
            preemption,
            logs,
            lock,
        })
    }

    /// `cmd-args.log`, `git-info.log`, `hparams.yaml` and the copies.
    fn write_run_files(&self, dir: &Path) -> Result<()> {
        let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
        files::write(dir, CMD_ARGS_FILE, files::cmd_args(args).as_bytes())?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        files::write(dir, GIT_INFO_FILE, files::git_info(&cwd).as_bytes())?;
        if let Some(hparams) = &self.hparams {
            let text = context::yaml("hparams", hparams)?;
            files::write(dir, HPARAMS_FILE, text.as_bytes())?;
        }
        files::copy_files(dir, &self.files_to_copy)?;
        Ok(())
    }

    /// What the run is built from (kept to build it again: [`Experiment::reopen`]).
    fn run_spec(
        &self,
        version_dir: &Path,
        version: Option<String>,
        preemption: Option<&signals::Preemption>,
    ) -> Result<RunSpec> {
        let mut checkpoint = match &self.checkpoint {
            Some(c) => c.clone(),
            None => ModelCheckpoint::builder().build()?,
        };
        let (log_dir, version) = match &self.explicit_log_dir {
            Some(_) => {
                if checkpoint.dirpath().is_none() {
                    let dirpath = version_dir.join("checkpoints");
                    let dirpath = dirpath.to_str().ok_or_else(|| Error::InvalidArgument {
                        name: "explicit_log_dir",
                        reason: format!("{} is not valid UTF-8", dirpath.display()),
                    })?;
                    checkpoint = checkpoint.with_dirpath(dirpath.to_owned());
                }
                (version_dir.to_path_buf(), None)
            }
            None => (self.log_dir.clone(), version),
        };
        let mut context = Vec::new();
        if let Some(bytes) = &self.io_json {
            context.push((IO_JSON.to_owned(), bytes.clone()));
        }
        if let Some(bytes) = &self.model_yaml {
            context.push((MODEL_YAML.to_owned(), bytes.clone()));
        }
        Ok(RunSpec {
            log_dir,
            name: self.name.clone(),
            version,
            checkpoint,
            save_options: self.save_options.clone(),
            max_steps: self.max_steps,
            context,
            preemption: preemption.map(|p| p.flag().clone()),
            loggers: LoggerSpec::default(),
            coordinator: self.coordinator.clone(),
        })
    }
}

fn source_text(source: VersionSource) -> &'static str {
    match source {
        VersionSource::ExplicitLogDir => "explicit_log_dir",
        VersionSource::Knob => "version",
        VersionSource::Env => VERSION_ENV,
        VersionSource::Resume => "resume_if_exists (no version directory)",
        VersionSource::Datetime => "use_datetime_version",
        VersionSource::None => "none",
        VersionSource::Rank0 => "rank 0",
    }
}

/// Everything a [`Run`] of the experiment is built from.
#[derive(Debug, Clone)]
struct RunSpec {
    log_dir: PathBuf,
    name: String,
    version: Option<String>,
    checkpoint: ModelCheckpoint,
    save_options: SaveOptions,
    max_steps: Option<u64>,
    context: Vec<(String, Vec<u8>)>,
    preemption: Option<Arc<AtomicBool>>,
    loggers: LoggerSpec,
    coordinator: Option<crate::dist::SharedCoordinator>,
}

/// Which metric loggers a run gets, and where.
#[derive(Debug, Clone, Default)]
// The MLflow and W&B fields are read only when their features are built.
#[cfg_attr(not(all(feature = "mlflow", feature = "wandb")), allow(dead_code))]
struct LoggerSpec {
    /// `tensorboard/` and `csv/` go below this directory.
    dir: PathBuf,
    tensorboard: bool,
    csv: bool,
    /// The MLflow tracking server, if any (queue in `<dir>/mlflow`).
    mlflow: Option<String>,
    /// Write an offline W&B run into `<dir>/wandb`.
    wandb_offline: bool,
    /// The MLflow experiment and W&B project.
    experiment: String,
    /// The MLflow and W&B run name.
    run_name: String,
    /// The version directory, for the MLflow run's tags.
    version_dir: PathBuf,
    hparams: Option<serde_json::Map<String, serde_json::Value>>,
    global_rank: u64,
}

impl LoggerSpec {
    /// The loggers, started (a no-op fan-out on ranks other than 0), or `None` when all are off.
    fn spawn(&self) -> Result<Option<crate::loggers::Loggers>> {
        use crate::loggers::{CsvLogger, LoggerOptions, Loggers, MetricLogger, TensorBoardLogger};
        let options = LoggerOptions {
            global_rank: self.global_rank,
            ..LoggerOptions::default()
        };
        if !(self.tensorboard || self.csv || self.mlflow.is_some() || self.wandb_offline) {
            return Ok(None);
        }
        let mut loggers: Vec<Box<dyn MetricLogger>> = Vec::new();
        if options.is_active() {
            if self.tensorboard {
                loggers.push(Box::new(TensorBoardLogger::new(
                    &self.dir.join(TENSORBOARD_DIR),
                    None,
                )?));
            }
            if self.csv {
                loggers.push(Box::new(CsvLogger::new(&self.dir.join(CSV_DIR), None)?));
            }
            #[cfg(feature = "mlflow")]
            if let Some(uri) = &self.mlflow {
                use crate::loggers::mlflow::{MLFLOW_DIR, MlflowLogger, MlflowOptions};
                let mut options =
                    MlflowOptions::new(uri, &self.experiment, self.dir.join(MLFLOW_DIR));
                options.run_name = Some(self.run_name.clone());
                options.tags.insert(
                    "waypoint.version_dir".into(),
                    self.version_dir.display().to_string(),
                );
                let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                if let Some(sha) = files::git_commit(&cwd) {
                    options.tags.insert("mlflow.source.git.commit".into(), sha);
                }
                loggers.push(Box::new(MlflowLogger::new(options)?));
            }
            #[cfg(feature = "wandb")]
            if self.wandb_offline {
                use crate::loggers::wandb::{WandbLogger, WandbOptions};
                let mut options = WandbOptions::new(&self.dir, &self.experiment);
                options.run_name = Some(self.run_name.clone());
                loggers.push(Box::new(WandbLogger::new(options)?));
            }
        }
        let mut fanout = Loggers::spawn(loggers, options)?;
        if let Some(hparams) = &self.hparams {
            fanout.log_hyperparams(hparams);
        }
        Ok(Some(fanout))
    }
}

/// Where the TensorBoard logger writes, below the logger directory (`tensorboard --logdir
/// <log_dir>/<name>` then shows one run per version).
pub const TENSORBOARD_DIR: &str = "tensorboard";
/// Where the CSV logger writes `metrics.csv` (and its own `hparams.yaml`), below the logger
/// directory.
pub const CSV_DIR: &str = "csv";

impl RunSpec {
    fn build(&self, resume: &AutoResume) -> Result<Run> {
        let mut b = Run::builder()
            .log_dir(&self.log_dir)
            .name(&self.name)
            .checkpoint(self.checkpoint.clone())
            .resume(resume.clone())
            .save_options(self.save_options.clone())
            .context_files(self.context.clone());
        if let Some(v) = &self.version {
            b = b.version(v);
        }
        if let Some(m) = self.max_steps {
            b = b.max_steps(m);
        }
        if let Some(flag) = &self.preemption {
            b = b.preemption(flag.clone());
        }
        if let Some(loggers) = self.loggers.spawn()? {
            b = b.loggers(loggers);
        }
        if let Some(c) = &self.coordinator {
            b = b.coordinator(c.clone());
        }
        b.build()
    }
}

/// The message of an error, for telling the other ranks.
fn clone_error(e: &Error) -> Error {
    Error::InvalidArgument {
        name: "version",
        reason: e.to_string(),
    }
}
