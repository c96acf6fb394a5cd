//! [`ExperimentLoggerBuilder`]: NeMoLogger's knobs, checked together at `build()`. Every refusal
//! is an [`Error::InvalidArgument`] naming the knob (and, for a conflict, the other one). The
//! settings the run needs go straight into the logger's [`RunConfig`].
//!
//! It must not touch the file system or the environment: it only records and checks values.

use super::context::{io_json, yaml};
use super::files::{CMD_ARGS_FILE, GIT_INFO_FILE, HPARAMS_FILE, LOG_FILE_PREFIX, RUN_DIR_PREFIX};
use super::lock::LOCK_FILE;
use super::version::check_component;
use super::{DEFAULT_LOG_DIR, ExperimentLogger, IO_JSON, MODEL_YAML, signals};
use crate::dist::RankInfo;
use crate::engine::SaveOptions;
use crate::error::{Error, Result};
use crate::loggers::{LoggerFactory, TensorBoardSpec, WandbSpec};
use crate::policy::ModelCheckpoint;
use crate::run::RunConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Builds an [`ExperimentLogger`]; see [`ExperimentLogger::builder`].
#[derive(Debug, Clone)]
pub struct ExperimentLoggerBuilder {
    inner: ExperimentLogger,
    log_dir_set: bool,
    /// The first knob whose value could not be turned into bytes (JSON, YAML), reported by build.
    deferred: Option<(&'static str, String)>,
}

impl Default for ExperimentLoggerBuilder {
    fn default() -> Self {
        ExperimentLoggerBuilder {
            inner: ExperimentLogger {
                config: RunConfig {
                    log_dir: PathBuf::from(DEFAULT_LOG_DIR),
                    name: "default".to_owned(),
                    ..RunConfig::default()
                },
                use_datetime_version: true,
                explicit_log_dir: None,
                files_to_copy: Vec::new(),
                update_logger_directory: true,
                log_local_rank_0_only: false,
                log_global_rank_0_only: false,
                tensorboard: true,
                csv: true,
                mlflow: None,
                wandb_offline: false,
                loggers: crate::loggers::LoggerObjects::default(),
                hparams: None,
                preemption_signals: vec![crate::preemption::SIGTERM],
                ranks: None,
                coordinator: None,
            },
            log_dir_set: false,
            deferred: None,
        }
    }
}

impl ExperimentLoggerBuilder {
    fn defer(&mut self, error: Error) {
        if self.deferred.is_none() {
            let (name, reason) = match error {
                Error::InvalidArgument { name, reason } => (name, reason),
                other => ("config", other.to_string()),
            };
            self.deferred = Some((name, reason));
        }
    }

    /// Sets the `context/` file `name` (kept in name order, so the order of the calls does not
    /// matter).
    fn context_file(&mut self, name: &str, bytes: Vec<u8>) {
        let context = &mut self.inner.config.context;
        context.retain(|(n, _)| n != name);
        context.push((name.to_owned(), bytes));
        context.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// The root of all experiments (default `./waypoint_runs`); excludes `explicit_log_dir`.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.inner.config.log_dir = dir.into();
        self.log_dir_set = true;
        self
    }

    /// The experiment's name (default `"default"`): one path component.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.inner.config.name = name.into();
        self
    }

    /// The version directory, over everything else (excludes `explicit_log_dir`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.inner.config.version = Some(version.into());
        self
    }

    /// Without a given version and without `resume_if_exists`, name the version after the start
    /// time, `%Y-%m-%d_%H-%M-%S` in local time (default true, as NeMo).
    pub fn use_datetime_version(mut self, on: bool) -> Self {
        self.inner.use_datetime_version = on;
        self
    }

    /// Use this directory as it is for the run's files and checkpoints: no name or version
    /// directories below it. Setting `log_dir` or `version` too is an error.
    pub fn explicit_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.inner.explicit_log_dir = Some(dir.into());
        self
    }

    /// Files that global rank 0 copies into the version directory under their file names
    /// (unless a file of that name is there already).
    pub fn files_to_copy(mut self, files: Vec<PathBuf>) -> Self {
        self.inner.files_to_copy = files;
        self
    }

    /// Point the loggers at the version directory (default true): see
    /// [`crate::Experiment::logger_dir`].
    pub fn update_logger_directory(mut self, on: bool) -> Self {
        self.inner.update_logger_directory = on;
        self
    }

    /// Only local rank 0 of each node writes text logs (excludes `log_global_rank_0_only`).
    pub fn log_local_rank_0_only(mut self, on: bool) -> Self {
        self.inner.log_local_rank_0_only = on;
        self
    }

    /// Only global rank 0 writes text logs (excludes `log_local_rank_0_only`).
    pub fn log_global_rank_0_only(mut self, on: bool) -> Self {
        self.inner.log_global_rank_0_only = on;
        self
    }

    /// The checkpoint policy (default: `ModelCheckpoint::builder().build()`, NeMo's defaults);
    /// its checkpoints go to `<version dir>/checkpoints` unless it sets `dirpath`.
    pub fn checkpoint(mut self, checkpoint: ModelCheckpoint) -> Self {
        self.inner.config.checkpoint = Some(checkpoint);
        self
    }

    /// Whether the lead's TensorBoard logger is configured (default true).
    pub fn tensorboard(mut self, on: bool) -> Self {
        self.inner.tensorboard = on;
        self
    }

    /// Whether the CSV logger is configured (default true).
    pub fn csv(mut self, on: bool) -> Self {
        self.inner.csv = on;
        self
    }

    /// Send the run to the MLflow tracking server at `tracking_uri` (`http://host:port`), as
    /// NeMoLogger's `mlflow=`: experiment = this experiment's name, run name = the version (or
    /// the name), tags for the git commit and the version directory; its on-disk queue for
    /// outages is `<version dir>/mlflow/`. Needs waypoint's `mlflow` feature; a URI that is not
    /// http(s), or `update_logger_directory(false)` (the queue must be the run's own), fail at
    /// `build()` naming `mlflow`.
    pub fn mlflow(mut self, tracking_uri: impl Into<String>) -> Self {
        self.inner.mlflow = Some(tracking_uri.into());
        self
    }

    /// The TensorBoard logger as an object (NeMoLogger's `tensorboard=`): on, writing into
    /// `<save_dir>/<name>[/<version>]` (see [`TensorBoardSpec`]).
    pub fn tensorboard_logger(mut self, spec: TensorBoardSpec) -> Self {
        self.inner.tensorboard = true;
        self.inner.loggers.tensorboard = Some(spec);
        self
    }

    /// The offline W&B run as an object (NeMoLogger's `wandb=`): on, with its `entity`,
    /// `project`, `name` and `config` (see [`WandbSpec`]). Needs the `wandb` feature.
    pub fn wandb_logger(mut self, spec: WandbSpec) -> Self {
        self.inner.wandb_offline = true;
        self.inner.loggers.wandb = Some(spec);
        self
    }

    /// More metric loggers of any kind (NeMoLogger's `extra_loggers`), each built on global rank
    /// 0 once the logger directory is known and fed like the built-in ones (the same fan-out,
    /// resume rules and checkpoint events).
    pub fn extra_loggers(mut self, loggers: impl IntoIterator<Item = LoggerFactory>) -> Self {
        self.inner.loggers.extra.extend(loggers);
        self
    }

    /// Write an offline W&B run into `<logger dir>/wandb/` for `wandb sync` to upload later, as
    /// NeMoLogger's `wandb=` (project = this experiment's name, run name = the version). Needs
    /// waypoint's `wandb` feature (`build()` fails naming `wandb` without it).
    pub fn wandb_offline(mut self, on: bool) -> Self {
        self.inner.wandb_offline = on;
        self
    }

    /// The whole configuration of the run, written as `context/io.json` (pretty JSON) into
    /// checkpoints; [`crate::experiment::load_config`] reads it back. A value serde cannot write
    /// as JSON makes `build()` fail naming `config`.
    pub fn config<T: serde::Serialize + ?Sized>(mut self, config: &T) -> Self {
        match io_json(config) {
            Ok(bytes) => self.context_file(IO_JSON, bytes),
            Err(e) => self.defer(e),
        }
        self
    }

    /// The model's part of the configuration, written as `context/model.yaml` for people to
    /// read (io.json stays the source of truth).
    pub fn model_config<T: serde::Serialize + ?Sized>(mut self, model: &T) -> Self {
        match yaml("model_config", model) {
            Ok(text) => self.context_file(MODEL_YAML, text.into_bytes()),
            Err(e) => self.defer(e),
        }
        self
    }

    /// Hyper-parameters, written by global rank 0 as `hparams.yaml` in the version directory.
    pub fn hparams(mut self, hparams: serde_json::Map<String, serde_json::Value>) -> Self {
        self.inner.hparams = Some(hparams);
        self
    }

    /// Signals that request preemption (default `[SIGTERM]`; SIGUSR1 where the cluster warns
    /// with it); empty disables preemption handling.
    pub fn preemption_signals(mut self, signals: Vec<i32>) -> Self {
        self.inner.preemption_signals = signals;
        self
    }

    /// This process's ranks, instead of the coordinator's or the environment's (see
    /// [`RankInfo::from_env`]); the local rank is `local_rank.unwrap_or(0)`.
    pub fn ranks(mut self, ranks: RankInfo) -> Self {
        self.inner.ranks = Some(ranks);
        self
    }

    /// How checkpoints are written (passed to the run).
    pub fn save_options(mut self, options: SaveOptions) -> Self {
        self.inner.config.save_options = options;
        self
    }

    /// The ranks this run trains with ([`crate::RunBuilder::coordinator`]). Rank 0 chooses the
    /// version directory and tells the others, takes the lock and writes the run files; every
    /// rank writes its own log files; the ranks default to the coordinator's.
    pub fn coordinator(mut self, coordinator: crate::dist::SharedCoordinator) -> Self {
        self.inner.coordinator = Some(coordinator);
        self
    }

    /// The step training ends at (passed to the run: checkpoints at it end a completed run).
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.inner.config.max_steps = Some(steps);
        self
    }

    /// Checks the knobs together.
    pub fn build(self) -> Result<ExperimentLogger> {
        let invalid = |name: &'static str, reason: String| Error::InvalidArgument { name, reason };
        if let Some((name, reason)) = self.deferred {
            return Err(invalid(name, reason));
        }
        let e = &self.inner;
        let c = &e.config;
        if c.log_dir.as_os_str().is_empty() {
            return Err(invalid("log_dir", "must not be empty".into()));
        }
        check_component("name", &c.name)?;
        c.save_options.check()?;
        if let Some(v) = &c.version {
            check_component("version", v)?;
        }
        if let Some(dir) = &e.explicit_log_dir {
            check_explicit_log_dir(
                dir,
                self.log_dir_set.then_some(c.log_dir.as_path()),
                c.version.as_deref(),
            )?;
        }
        if e.log_local_rank_0_only && e.log_global_rank_0_only {
            return Err(invalid(
                "log_global_rank_0_only",
                "log_global_rank_0_only and log_local_rank_0_only exclude each other: choose one"
                    .into(),
            ));
        }
        check_files_to_copy(&e.files_to_copy)?;
        if let Some(spec) = &e.loggers.tensorboard {
            spec.check()?;
        }
        if let Some(uri) = &e.mlflow {
            check_mlflow(uri, e.update_logger_directory)?;
        }
        if e.wandb_offline && !cfg!(feature = "wandb") {
            return Err(invalid(
                "wandb",
                "this build of waypoint has no `wandb` feature: enable it to write W&B runs".into(),
            ));
        }
        signals::check(&e.preemption_signals)?;
        Ok(self.inner)
    }
}

/// `explicit_log_dir`: not empty, UTF-8, and neither `log_dir` (when one was set) nor `version`.
fn check_explicit_log_dir(dir: &Path, log_dir: Option<&Path>, version: Option<&str>) -> Result<()> {
    let invalid = |name: &'static str, reason: String| Error::InvalidArgument { name, reason };
    if dir.as_os_str().is_empty() {
        return Err(invalid("explicit_log_dir", "must not be empty".into()));
    }
    if let Some(log_dir) = log_dir {
        return Err(invalid(
            "explicit_log_dir",
            format!(
                "explicit_log_dir ({}) and log_dir ({}) exclude each other: explicit_log_dir is the whole directory of the run",
                dir.display(),
                log_dir.display()
            ),
        ));
    }
    if let Some(v) = version {
        return Err(invalid(
            "explicit_log_dir",
            format!(
                "explicit_log_dir ({}) and version ({v:?}) exclude each other: explicit_log_dir has no version directory",
                dir.display()
            ),
        ));
    }
    if dir.to_str().is_none() {
        return Err(invalid(
            "explicit_log_dir",
            format!("{} is not valid UTF-8", dir.display()),
        ));
    }
    Ok(())
}

/// `files_to_copy`: UTF-8 file names, none a run file's or another copy's.
fn check_files_to_copy(files: &[PathBuf]) -> Result<()> {
    let invalid = |name: &'static str, reason: String| Error::InvalidArgument { name, reason };
    let mut names = BTreeSet::new();
    for file in files {
        let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
            return Err(invalid(
                "files_to_copy",
                format!("{} has no UTF-8 file name", file.display()),
            ));
        };
        let reserved = [
            CMD_ARGS_FILE,
            GIT_INFO_FILE,
            HPARAMS_FILE,
            LOCK_FILE,
            "checkpoints",
        ]
        .contains(&name)
            || name.starts_with(LOG_FILE_PREFIX)
            || name.starts_with(RUN_DIR_PREFIX);
        if reserved {
            return Err(invalid(
                "files_to_copy",
                format!(
                    "{}: {name:?} is the name of a run file or directory",
                    file.display()
                ),
            ));
        }
        if !names.insert(name) {
            return Err(invalid(
                "files_to_copy",
                format!("two files are named {name:?}; copies would overwrite each other"),
            ));
        }
    }
    Ok(())
}

/// The `mlflow` knob: the URI is one, and the queue has a directory of its own.
#[cfg(feature = "mlflow")]
fn check_mlflow(uri: &str, update_logger_directory: bool) -> Result<()> {
    crate::loggers::mlflow::check_tracking_uri(uri)?;
    if !update_logger_directory {
        return Err(Error::InvalidArgument {
            name: "mlflow",
            reason: "mlflow and update_logger_directory(false) exclude each other: the MLflow \
                     logger's on-disk queue must live in the run's own version directory"
                .into(),
        });
    }
    Ok(())
}

/// The `mlflow` knob without the feature: refused.
#[cfg(not(feature = "mlflow"))]
fn check_mlflow(uri: &str, _update_logger_directory: bool) -> Result<()> {
    Err(Error::InvalidArgument {
        name: "mlflow",
        reason: format!(
            "{uri}: this build of waypoint has no `mlflow` feature: enable it to log to MLflow"
        ),
    })
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
