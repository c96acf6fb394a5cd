//! The trainer with `--checkpoint-dir az://…` on Azurite, the Azure Storage emulator: the run
//! ends with the digest of the same run on the local disk, its checkpoints are in the container
//! (its logs stay local), and the same command then finds the run completed. Then the server is
//! stopped while the trainer saves: the trainer stops with an error naming the container, and
//! once the server is back the same command resumes from the last committed checkpoint and ends
//! with the digest of an uninterrupted run. (The S3 twins are in `train_object_store`.) With
//! `gs://…`, the end-to-end run against a real bucket, `#[ignore]`d: no GCS emulator serves
//! object_store's XML API (docs/OBJECT_STORAGE.md).
//!
//! The server comes from scripts/test.sh (`WAYPOINT_TEST_AZURITE_URL`; the `AZURE_*` variables
//! it exports reach the trainer); the stop test runs its own Azurite (`WAYPOINT_TEST_AZURITE`).
//! Without them the tests fail, saying how to start the server: they never pass without having
//! run.

use crate::azurite::{self, CONTAINER, Endpoint, Server, unique_prefix};
use crate::common::{
    SHORT, digest, fail_fast_on_dead_server, long_args, run_stopping_at_third_save, trainer,
};
use std::path::Path;
use std::process::Command;
use waypoint::storage::StoragePath;

/// The trainer under `log_dir` with `args`, reaching Azurite at `endpoint` (not through the
/// variables of this process, which name the shared server).
fn trainer_on(log_dir: &Path, args: &[&str], endpoint: &Endpoint) -> Command {
    let mut cmd = trainer(log_dir, args);
    cmd.envs(endpoint.env());
    fail_fast_on_dead_server(&mut cmd);
    cmd
}

/// The committed checkpoints under `prefix` of the container at `endpoint`, through the library
/// (as AutoResume sees them).
fn committed(endpoint: &Endpoint, prefix: &str) -> Vec<String> {
    let storage = endpoint.storage_at(prefix, Default::default());
    let found = waypoint::resume::discover(&storage, &StoragePath::root()).unwrap();
    let mut names: Vec<String> = found.committed.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[test]
fn trains_end_to_end_with_checkpoints_on_azurite() {
    let endpoint = azurite::shared(); // fails, saying how to start it, without the server
    let prefix = unique_prefix("train");
    let url = format!("az://{CONTAINER}/{prefix}");
    let local = tempfile::tempdir().unwrap();
    let remote_logs = tempfile::tempdir().unwrap();
    let expected = digest(
        &trainer(local.path(), SHORT).output().unwrap(),
        "the local run",
    );

    let mut args = SHORT.to_vec();
    args.extend(["--checkpoint-dir", url.as_str()]);
    let output = trainer_on(remote_logs.path(), &args, &endpoint)
        .output()
        .unwrap();
    assert_eq!(digest(&output, "the azure run"), expected);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("checkpoints: {url}")), "{stdout}");

    let names = committed(&endpoint, &prefix);
    assert_eq!(names.len(), 3, "two ranked and one -last: {names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("step=120-last")),
        "{names:?}"
    );
    assert!(
        !remote_logs.path().join("default/checkpoints").exists(),
        "no local checkpoints directory"
    );

    let again = trainer_on(remote_logs.path(), &args, &endpoint)
        .output()
        .unwrap();
    assert_eq!(digest(&again, "the rerun"), expected);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already completed"),
        "the same command finds the run completed"
    );
}

#[test]
fn resumes_once_the_stopped_azurite_is_back() {
    let binary = azurite::binary();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&binary, data.path());
    let endpoint = server.endpoint();
    let url = format!("az://{CONTAINER}/killed");
    let logs = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let long = long_args();
    let expected = digest(
        &trainer(local.path(), &long).output().unwrap(),
        "the local run",
    );

    let mut args = long.clone();
    args.extend(["--checkpoint-dir", url.as_str()]);
    run_stopping_at_third_save(trainer_on(logs.path(), &args, &endpoint), || server.kill())
        .assert_failed_naming("az://waypoint-test/killed");

    server.restart();
    // The library sees only committed checkpoints, whatever the stop left behind.
    let found = committed(&endpoint, "killed");
    assert!(!found.is_empty(), "a checkpoint committed before the stop");
    let resumed = trainer_on(logs.path(), &args, &endpoint).output().unwrap();
    let resumed_stdout = String::from_utf8_lossy(&resumed.stdout).to_string();
    assert_eq!(digest(&resumed, "the resumed run"), expected);
    assert!(
        resumed_stdout.contains("resum"),
        "it resumed instead of starting fresh: {resumed_stdout}"
    );
}

/// `gs://` end to end: `WAYPOINT_TEST_GCS_URL=gs://bucket/prefix` and the `GOOGLE_*` credentials
/// object_store reads, passed on to the trainer.
#[test]
#[ignore = "needs a real GCS bucket (WAYPOINT_TEST_GCS_URL): no GCS emulator serves object_store's XML API (docs/OBJECT_STORAGE.md)"]
fn trains_end_to_end_with_checkpoints_on_gcs() {
    let Ok(root) = std::env::var("WAYPOINT_TEST_GCS_URL") else {
        panic!(
            "WAYPOINT_TEST_GCS_URL is not set to gs://bucket/prefix (see docs/OBJECT_STORAGE.md)"
        );
    };
    let url = format!("{}/{}", root.trim_end_matches('/'), unique_prefix("train"));
    let local = tempfile::tempdir().unwrap();
    let remote_logs = tempfile::tempdir().unwrap();
    let expected = digest(
        &trainer(local.path(), SHORT).output().unwrap(),
        "the local run",
    );
    let mut args = SHORT.to_vec();
    args.extend(["--checkpoint-dir", url.as_str()]);
    let output = trainer(remote_logs.path(), &args).output().unwrap();
    assert_eq!(digest(&output, "the gcs run"), expected);
    let storage = waypoint::storage::open_location(&url).unwrap();
    let found = waypoint::resume::discover(storage.as_ref(), &StoragePath::root()).unwrap();
    assert_eq!(found.committed.len(), 3, "two ranked and one -last");
    let again = trainer(remote_logs.path(), &args).output().unwrap();
    assert_eq!(digest(&again, "the rerun"), expected);
}
