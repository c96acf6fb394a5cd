//! The waypoint library's integration tests, as one test binary (linking one binary instead of
//! one per file is most of what a test build costs). Each module is one concern; its first lines
//! say what it covers. Shared fixtures are in `common/`.
//!
//! Tests that must run in a process of their own (real crashes, their own environment or log
//! routing) run this binary again with `<module>::<test> --exact`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

#[macro_use]
mod common;

mod bad_input;
mod crash_points;
mod dcp;
mod engine_crash;
mod engine_parts;
mod engine_roundtrip;
mod experiment;
mod first_contact;
mod hunter;
mod incremental;
mod logger_objects;
mod loggers;
#[cfg(feature = "mlflow")]
mod mlflow;
mod nothing_lost;
#[cfg(feature = "object-store")]
mod object_storage;
mod parsers_prop;
mod python_interop;
mod ranks;
mod record_limits;
mod restore_config;
mod run_async;
mod run_collective;
mod run_loggers;
mod run_ranks;
mod run_resume;
mod run_retention;
mod storage_conformance;
mod storage_faults;
mod storage_links;
mod tensorboard_sequences;
mod torch_interop;
mod train_end_context;
#[cfg(feature = "wandb")]
mod wandb;
#[cfg(feature = "wandb")]
mod wandb_sequences;
