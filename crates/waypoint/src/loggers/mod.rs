//! Metric logging: what NeMo's `NeMoLogger` and Lightning's loggers do, off the training thread.
//!
//! - [`MetricLogger`] is one destination: [`TensorBoardLogger`] (event files through the
//!   `tfevents` crate) and [`CsvLogger`] (`metrics.csv` + `hparams.yaml`, as Lightning's
//!   `CSVLogger` lays them out) are provided; with the `mlflow` feature, [`MlflowLogger`] (an
//!   MLflow tracking server, queued on disk through outages), and with the `wandb` feature,
//!   [`WandbLogger`] (offline W&B runs for `wandb sync`).
//! - [`Loggers`] fans calls out to several of them through a bounded queue and one background
//!   writer, so that a call costs the training loop well under a microsecond (see
//!   `examples/logger_throughput.rs`); it logs on global rank 0 only by default, flushes on
//!   demand (before a checkpoint commit) and finalizes on drop.
//!
//! - `setup.rs` builds the loggers an experiment asks for (its knobs as plain data) below the
//!   logger directory ([`TENSORBOARD_DIR`], [`CSV_DIR`]).
//!
//! This module owns the loggers and the queue. It must not decide where their directories go
//! (the experiment layout) nor when to flush or finalize: that is the run's business.
//!
//! ```
//! use waypoint::{CsvLogger, LoggerOptions, Loggers, MetricLogger, RunStatus, TensorBoardLogger};
//!
//! # fn main() -> waypoint::Result<()> {
//! # let tmp = tempfile::tempdir().unwrap();
//! let dir = tmp.path().join("run");
//! let loggers: Vec<Box<dyn MetricLogger>> = vec![
//!     Box::new(TensorBoardLogger::new(&dir, None)?),
//!     Box::new(CsvLogger::new(&dir, None)?),
//! ];
//! let mut log = Loggers::spawn(loggers, LoggerOptions::default())?;
//! for step in 1..=100 {
//!     log.log_metrics(step, &[("train_loss", 1.0 / step as f64), ("lr", 3e-4)]);
//! }
//! log.flush()?; // everything logged so far is in the files
//! log.finalize(RunStatus::Success)?;
//! assert!(std::fs::read_to_string(dir.join("metrics.csv")).unwrap().starts_with("step,lr,train_loss\n1,"));
//! # Ok(()) }
//! ```

mod checkpoint_scalars;
mod corrupt;
mod csv;
mod csv_format;
mod fanout;
mod logger;
#[cfg(feature = "mlflow")]
pub mod mlflow;
mod names;
mod objects;
mod setup;
mod tensorboard;
mod values;
#[cfg(feature = "wandb")]
pub mod wandb;
mod worker;
pub(crate) mod yaml;

pub use csv::{CHECKPOINTS_FILE, CsvLogger, HPARAMS_FILE, METRICS_FILE};
pub use fanout::{DEFAULT_DEPTH, LoggerOptions, Loggers, WhenFull};
pub use logger::{CheckpointEvent, MetricLogger, RunStatus};
#[cfg(feature = "mlflow")]
pub use mlflow::{MlflowLogger, MlflowOptions};
pub use names::MetricId;
pub(crate) use objects::LoggerObjects;
pub use objects::{LoggerFactory, TensorBoardSpec, WandbSpec};
pub(crate) use setup::LoggerSpec;
pub use setup::{CSV_DIR, TENSORBOARD_DIR};
pub use tensorboard::{TensorBoardLogger, session_status};
#[cfg(feature = "wandb")]
pub use wandb::{WandbLogger, WandbOptions};
pub use yaml::to_yaml;
