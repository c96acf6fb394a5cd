//! # waypoint
//!
//! Crash-safe checkpointing, logging and resume for Rust training loops: what NVIDIA NeMo 2.0's
//! `ModelCheckpoint`, `NeMoLogger` and `AutoResume` give PyTorch users.
//!
//! This crate's foundation is the checkpoint format ([`mod@format`]), the storage layer
//! ([`storage`]) and the engine that saves and loads checkpoints ([`engine`]).
//!
//! Above them sit the checkpoint policy (`policy`, NeMo's `ModelCheckpoint`), resuming (`resume`,
//! `AutoResume`), metric logging (`loggers`), the experiment directory (`experiment`), preemption
//! signals (`preemption`), many ranks (`dist`), and `Run`, which ties them together for a training
//! loop. This file only declares the modules, re-exports the public names and compiles the README's
//! examples as doctests: it must hold no logic of its own.
//!
//! ```
//! use std::sync::Arc;
//! use waypoint::{Checkpointer, CheckpointMeta, Dtype, TensorRef};
//! use waypoint::storage::{MemoryFs, FsStorage, StoragePath};
//!
//! let storage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
//! let checkpointer = Checkpointer::new(storage);
//! let weights: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0];
//! let bytes: Vec<u8> = weights.iter().flat_map(|x| x.to_le_bytes()).collect();
//! let tensors = vec![TensorRef::whole("layer.weight", Dtype::F32, vec![2, 2], &bytes)];
//! let dir = StoragePath::new("step-10").unwrap();
//! checkpointer.save(&dir, &CheckpointMeta::at_step(10), &tensors, &"my trainer state").unwrap();
//!
//! let reader = checkpointer.open(&dir).unwrap();
//! assert_eq!(reader.record().step, 10);
//! let loaded = reader.load_tensor("layer.weight", &Default::default()).unwrap();
//! assert_eq!(loaded.data, bytes);
//! assert_eq!(reader.user_state::<String>().unwrap(), "my trainer state");
//! ```

pub mod dcp;
pub mod dist;
pub mod engine;
mod error;
pub mod experiment;
pub mod format;
pub mod loggers;
pub mod policy;
pub mod preemption;
pub mod restore;
pub mod resume;
mod run;
pub mod storage;

pub use engine::{
    CheckpointMeta, CheckpointReader, Checkpointer, LoadOptions, RegionSlot, SaveHistory,
    SaveOptions, SaveReport, SinkSlot, Tensor, TensorData, TensorRef, TensorSink, TensorSource,
    VerifyReport,
};
pub use error::{Error, MismatchedTensors, Result};
pub use experiment::{Experiment, ExperimentLogger, ExperimentLoggerBuilder};
pub use format::Dtype;
pub use loggers::{
    CheckpointEvent, CsvLogger, LoggerOptions, Loggers, MetricLogger, RunStatus, TensorBoardLogger,
    WhenFull,
};
pub use policy::{
    MissingMonitor, Mode, ModelCheckpoint, ModelCheckpointBuilder, PendingFull, SaveLast,
};
pub use resume::{AutoResume, ResumePoint};
pub use run::{Checkpointable, Run, RunBuilder, RunConfig, SavedCheckpoint};
/// The `serde_json` this crate's API takes and returns (`serde_json::Value` trainer states,
/// hyperparameters), so that a project need not pin the same version itself.
pub use serde_json;

// The README's examples run as doctests of `waypoint-candle`, whose dependencies (candle) its
// candle example needs.
