//! The example trainer's integration tests, as one test binary: the real binary on the local disk
//! (`train`), data-parallel under mpirun (`data_parallel`), its curves in the real TensorBoard
//! (`curves`), on S3 (`train_object_store`), Azure and GCS (`train_clouds`), and logging to MLflow
//! and W&B (`trackers`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

/// The Azure test peer of the library's tests: the shared Azurite and private ones.
#[cfg(feature = "object-store")]
#[allow(dead_code)] // the library's tests use more of it
#[path = "../../../waypoint/tests/it/common/azurite.rs"]
mod azurite;
mod common;
mod curves;
mod data_parallel;
#[path = "../../../waypoint/tests/it/trackers/mlflow_server.rs"]
mod mlflow_server;
/// What the object-store test peers share.
#[cfg(feature = "object-store")]
#[allow(dead_code)] // the library's tests use more of it
#[path = "../../../waypoint/tests/it/common/peer.rs"]
mod peer;
mod readme_layout;
mod restore_from;
/// The S3 test peer of the library's tests: the shared s3s-fs and private ones.
#[cfg(feature = "object-store")]
#[allow(dead_code)] // the library's tests use more of it
#[path = "../../../waypoint/tests/it/common/s3.rs"]
mod s3;
mod trackers;
mod train;
#[cfg(feature = "object-store")]
mod train_clouds;
#[cfg(feature = "object-store")]
mod train_object_store;
