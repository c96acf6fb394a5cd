//! [`LoggerSpec`]: which metric loggers an experiment's run gets and where they write, as plain
//! data, and [`LoggerSpec::spawn`], which constructs them (TensorBoard, CSV, MLflow, W&B) behind
//! one [`Loggers`] fan-out. Owns the loggers' directory names below the logger directory.
//!
//! It must not decide the experiment layout (the experiment hands in the directories, names and
//! the git commit), run processes, or start loggers anywhere but global rank 0.

use super::{CsvLogger, LoggerObjects, LoggerOptions, Loggers, MetricLogger, TensorBoardLogger};
use crate::error::Result;
use std::path::PathBuf;

/// Where the TensorBoard logger writes, below the logger directory (`tensorboard --logdir
/// <log_dir>/<name>` then shows one run per version).
pub const TENSORBOARD_DIR: &str = "tensorboard";
/// Where the CSV logger writes `metrics.csv` (and its own `hparams.yaml`), below the logger
/// directory.
pub const CSV_DIR: &str = "csv";

/// Which metric loggers a run gets, and where.
#[derive(Debug, Clone, Default)]
// The MLflow and W&B fields are read only when their features are built.
#[cfg_attr(not(all(feature = "mlflow", feature = "wandb")), allow(dead_code))]
pub(crate) struct LoggerSpec {
    /// `tensorboard/` and `csv/` go below this directory.
    pub dir: PathBuf,
    pub tensorboard: bool,
    pub csv: bool,
    /// The MLflow tracking server, if any (queue in `<dir>/mlflow`).
    pub mlflow: Option<String>,
    /// Write an offline W&B run into `<dir>/wandb`.
    pub wandb_offline: bool,
    /// The MLflow experiment and W&B project.
    pub experiment: String,
    /// The MLflow and W&B run name.
    pub run_name: String,
    /// The version directory, for the MLflow run's tags.
    pub version_dir: PathBuf,
    /// The work tree's commit, for the MLflow run's `mlflow.source.git.commit` tag.
    pub git_commit: Option<String>,
    pub hparams: Option<serde_json::Map<String, serde_json::Value>>,
    pub global_rank: u64,
    /// TensorBoard's place, W&B's run, the caller's loggers.
    pub objects: LoggerObjects,
}

impl LoggerSpec {
    /// Whether any logger is wanted.
    fn any(&self) -> bool {
        self.tensorboard
            || self.csv
            || self.mlflow.is_some()
            || self.wandb_offline
            || !self.objects.extra.is_empty()
    }

    /// The loggers, started (a no-op fan-out on ranks other than 0), or `None` when all are off.
    pub fn spawn(&self) -> Result<Option<Loggers>> {
        if !self.any() {
            return Ok(None);
        }
        let options = LoggerOptions {
            global_rank: self.global_rank,
            ..LoggerOptions::default()
        };
        let loggers = match options.is_active() {
            true => self.destinations(),
            false => Vec::new(),
        };
        let mut fanout = Loggers::spawn(loggers, options)?;
        if let Some(hparams) = &self.hparams {
            fanout.log_hyperparams(hparams);
        }
        Ok(Some(fanout))
    }

    /// Each wanted logger, constructed (its directory created). A logger that cannot start (its
    /// directory unwritable, a full disk) is left out with a warning: loggers never keep a run
    /// from starting.
    fn destinations(&self) -> Vec<Box<dyn MetricLogger>> {
        let mut loggers: Vec<Box<dyn MetricLogger>> = Vec::new();
        let mut add = |name: &str, logger: Result<Box<dyn MetricLogger>>| match logger {
            Ok(logger) => loggers.push(logger),
            Err(e) => {
                tracing::warn!(logger = name, error = %e, "this metric logger could not start: the run goes on without it");
            }
        };
        if self.tensorboard {
            let spec = self.objects.tensorboard.clone().unwrap_or_default();
            let dir = spec.dir(&self.dir);
            add(
                "tensorboard",
                TensorBoardLogger::new(&dir, None).map(|l| Box::new(l) as Box<dyn MetricLogger>),
            );
        }
        if self.csv {
            add(
                "csv",
                CsvLogger::new(&self.dir.join(CSV_DIR), None)
                    .map(|l| Box::new(l) as Box<dyn MetricLogger>),
            );
        }
        #[cfg(feature = "mlflow")]
        if let Some(uri) = &self.mlflow {
            add(
                "mlflow",
                self.mlflow_logger(uri)
                    .map(|l| Box::new(l) as Box<dyn MetricLogger>),
            );
        }
        #[cfg(feature = "wandb")]
        if self.wandb_offline {
            use super::wandb::{WandbLogger, WandbOptions};
            let spec = self.objects.wandb.clone().unwrap_or_default();
            let project = spec.project.as_deref().unwrap_or(&self.experiment);
            let mut options = WandbOptions::new(&self.dir, project);
            options.run_name = Some(spec.name.clone().unwrap_or(self.run_name.clone()));
            options.entity = spec.entity.clone().unwrap_or_default();
            let logger = WandbLogger::new(options).and_then(|mut l| {
                // The run's configuration; the hyperparameters are merged over it later.
                if !spec.config.is_empty() {
                    l.log_hyperparams(&spec.config)?;
                }
                Ok(Box::new(l) as Box<dyn MetricLogger>)
            });
            add("wandb", logger);
        }
        for factory in &self.objects.extra {
            add("extra", factory.build(&self.dir));
        }
        loggers
    }

    /// The MLflow logger: experiment = the experiment's name, tags for the version directory
    /// and the git commit, its on-disk queue in `<dir>/mlflow`.
    #[cfg(feature = "mlflow")]
    fn mlflow_logger(&self, uri: &str) -> Result<super::MlflowLogger> {
        use super::mlflow::{MLFLOW_DIR, MlflowLogger, MlflowOptions};
        let mut options = MlflowOptions::new(uri, &self.experiment, self.dir.join(MLFLOW_DIR));
        options.run_name = Some(self.run_name.clone());
        options.tags.insert(
            "waypoint.version_dir".into(),
            self.version_dir.display().to_string(),
        );
        if let Some(sha) = &self.git_commit {
            options
                .tags
                .insert("mlflow.source.git.commit".into(), sha.clone());
        }
        MlflowLogger::new(options)
    }
}
