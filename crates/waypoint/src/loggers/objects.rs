//! Loggers as objects on an [`crate::ExperimentLogger`] (NeMoLogger's `tensorboard=`, `wandb=`
//! and `extra_loggers=`): where TensorBoard writes ([`TensorBoardSpec`]: Lightning's `save_dir`
//! / `name` / `version`), which W&B run an offline run is ([`WandbSpec`]: `entity`, `project`,
//! `name`, `config`), and any [`MetricLogger`] of the caller's ([`LoggerFactory`]), built once
//! the logger directory is known.
//!
//! Plain settings: it must not construct loggers (`setup.rs` does) nor decide the experiment's
//! layout.

use super::MetricLogger;
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the TensorBoard logger writes (Lightning's `TensorBoardLogger(save_dir, name,
/// version)`): `<save_dir>/<name>[/<version>]`. `save_dir` defaults to the experiment's logger
/// directory, `name` to `tensorboard`; no version directory unless given.
///
/// ```
/// use waypoint::loggers::TensorBoardSpec;
/// let spec = TensorBoardSpec::default().name("tb").version("run1");
/// assert_eq!(spec.dir(std::path::Path::new("/logs")), std::path::Path::new("/logs/tb/run1"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorBoardSpec {
    /// The root (default: the experiment's logger directory).
    pub save_dir: Option<PathBuf>,
    /// The directory below it (default `tensorboard`).
    pub name: Option<String>,
    /// A directory below that (default none).
    pub version: Option<String>,
}

impl TensorBoardSpec {
    /// See [`TensorBoardSpec::save_dir`].
    pub fn save_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.save_dir = Some(dir.into());
        self
    }

    /// See [`TensorBoardSpec::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// See [`TensorBoardSpec::version`].
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The event files' directory, for a logger directory `logger_dir`.
    pub fn dir(&self, logger_dir: &Path) -> PathBuf {
        let root = self.save_dir.as_deref().unwrap_or(logger_dir);
        let dir = root.join(self.name.as_deref().unwrap_or(super::TENSORBOARD_DIR));
        match &self.version {
            Some(v) => dir.join(v),
            None => dir,
        }
    }

    /// Names are single path components (the directory stays where it is said to be).
    pub(crate) fn check(&self) -> Result<()> {
        for (knob, value) in [("name", &self.name), ("version", &self.version)] {
            if let Some(v) = value
                && (v.is_empty() || v.contains('/') || v == "..")
            {
                return Err(crate::Error::InvalidArgument {
                    name: "tensorboard",
                    reason: format!("{knob} {v:?} must be one path component"),
                });
            }
        }
        Ok(())
    }
}

/// Which W&B run an offline run is (NeMoLogger's `wandb=WandbLogger(...)`): `project` (default:
/// the experiment's name), `name` (default: the version, else the experiment's name), `entity`
/// (default: `wandb sync`'s), and `config`, the run's configuration (with the hyperparameters
/// merged over it). Needs the `wandb` feature.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct WandbSpec {
    /// The W&B entity (team or user).
    pub entity: Option<String>,
    /// The W&B project.
    pub project: Option<String>,
    /// The run's display name.
    pub name: Option<String>,
    /// The run's configuration.
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl WandbSpec {
    /// See [`WandbSpec::entity`].
    pub fn entity(mut self, entity: impl Into<String>) -> Self {
        self.entity = Some(entity.into());
        self
    }

    /// See [`WandbSpec::project`].
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// See [`WandbSpec::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// See [`WandbSpec::config`].
    pub fn config(mut self, config: serde_json::Map<String, serde_json::Value>) -> Self {
        self.config = config;
        self
    }
}

/// Builds one of the caller's metric loggers once the experiment's logger directory (the
/// argument) is known: NeMoLogger's `extra_loggers`. Called on global rank 0 only; an error
/// leaves that logger out with a warning, as for the built-in ones.
#[derive(Clone)]
pub struct LoggerFactory(Arc<BuildLogger>);

/// The function a [`LoggerFactory`] wraps.
type BuildLogger = dyn Fn(&Path) -> Result<Box<dyn MetricLogger>> + Send + Sync;

impl LoggerFactory {
    /// Wraps the function that builds the logger.
    ///
    /// ```
    /// use waypoint::loggers::{CsvLogger, LoggerFactory, MetricLogger};
    /// let factory = LoggerFactory::new(|dir| {
    ///     Ok(Box::new(CsvLogger::new(&dir.join("more_csv"), None)?) as Box<dyn MetricLogger>)
    /// });
    /// # let _ = factory;
    /// ```
    pub fn new(
        build: impl Fn(&Path) -> Result<Box<dyn MetricLogger>> + Send + Sync + 'static,
    ) -> Self {
        LoggerFactory(Arc::new(build))
    }

    /// Builds the logger for `logger_dir`.
    pub fn build(&self, logger_dir: &Path) -> Result<Box<dyn MetricLogger>> {
        (self.0)(logger_dir)
    }
}

impl std::fmt::Debug for LoggerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoggerFactory(..)")
    }
}

/// The loggers-as-objects settings an experiment carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoggerObjects {
    pub tensorboard: Option<TensorBoardSpec>,
    pub wandb: Option<WandbSpec>,
    pub extra: Vec<LoggerFactory>,
}
