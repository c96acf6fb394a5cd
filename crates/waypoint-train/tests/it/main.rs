//! The example trainer's integration tests, as one test binary: the real binary on the local disk
//! (`train`), on S3 (`train_object_store`) and logging to MLflow and W&B (`trackers`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

#[path = "../../../waypoint/tests/it/trackers/mlflow_server.rs"]
mod mlflow_server;
mod trackers;
mod train;
#[cfg(feature = "object-store")]
mod train_object_store;
