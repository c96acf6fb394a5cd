//! The trainer with `--checkpoint-dir s3://…` on s3s-fs, a real S3 protocol server: the run ends
//! with the digest of the same run on the local disk, its checkpoints are in the bucket (and its
//! logs stay local), and the same command then finds the run completed. Then the server is killed
//! while the trainer saves: the trainer stops with an error naming the bucket, and once the server
//! is back the same command resumes from the last committed checkpoint and ends with the digest of
//! an uninterrupted run.
//!
//! The server comes from scripts/test.sh (`WAYPOINT_TEST_S3_ENDPOINT`; the AWS_* variables it
//! exports reach the trainer); the kill test runs its own s3s-fs (`WAYPOINT_TEST_S3S_FS`). Without
//! them the tests fail, saying how to start the server: they never pass without having run.

use crate::common::{
    SHORT, digest, fail_fast_on_dead_server, long_args, run_stopping_at_third_save, trainer,
};
use crate::s3::{self, BUCKET, Endpoint, Server, unique_prefix};
use std::path::Path;
use std::process::Command;
use waypoint::storage::{StoragePath, open_location};

/// The trainer under `log_dir` with `args`, reaching S3 at `endpoint` (not through the AWS_*
/// variables of this process, which name the shared server).
fn trainer_on(log_dir: &Path, args: &[&str], endpoint: &Endpoint) -> Command {
    let mut cmd = trainer(log_dir, args);
    cmd.envs(endpoint.env());
    fail_fast_on_dead_server(&mut cmd);
    cmd
}

/// The committed checkpoints under `url`, through the library (as AutoResume sees them).
fn committed(url: &str) -> Vec<String> {
    let storage = open_location(url).unwrap();
    let found = waypoint::resume::discover(storage.as_ref(), &StoragePath::root()).unwrap();
    let mut names: Vec<String> = found.committed.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[test]
fn trains_end_to_end_with_checkpoints_on_s3() {
    let bucket = s3::shared().bucket; // fails, saying how to start it, without the server
    let url = format!("s3://{bucket}/{}", unique_prefix("train"));
    let local = tempfile::tempdir().unwrap();
    let remote_logs = tempfile::tempdir().unwrap();
    let expected = digest(
        &trainer(local.path(), SHORT).output().unwrap(),
        "the local run",
    );

    let mut args = SHORT.to_vec();
    args.extend(["--checkpoint-dir", url.as_str()]);
    let output = trainer(remote_logs.path(), &args).output().unwrap();
    assert_eq!(digest(&output, "the s3 run"), expected);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("checkpoints: {url}")), "{stdout}");

    let names = committed(&url);
    assert_eq!(names.len(), 3, "two ranked and one -last: {names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("step=120-last")),
        "{names:?}"
    );
    assert!(
        !remote_logs.path().join("default/checkpoints").exists(),
        "no local checkpoints directory"
    );
    assert!(
        remote_logs
            .path()
            .join("default")
            .read_dir()
            .unwrap()
            .count()
            > 0,
        "run files and logs stay local"
    );

    let again = trainer(remote_logs.path(), &args).output().unwrap();
    assert_eq!(digest(&again, "the rerun"), expected);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already completed"),
        "the same command finds the run completed"
    );
}

#[test]
fn resumes_once_the_killed_server_is_back() {
    let binary = s3::binary();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&binary, data.path());
    let endpoint = server.endpoint();
    let url = format!("s3://{BUCKET}/killed");
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
        .assert_failed_naming("s3://waypoint-test/killed");

    server.restart();
    // The library sees only committed checkpoints, whatever the kill left behind.
    let found = committed_with(&endpoint, &url);
    assert!(!found.is_empty(), "a checkpoint committed before the kill");
    let resumed = trainer_on(logs.path(), &args, &endpoint).output().unwrap();
    let resumed_stdout = String::from_utf8_lossy(&resumed.stdout).to_string();
    assert_eq!(digest(&resumed, "the resumed run"), expected);
    assert!(
        resumed_stdout.contains("resum"),
        "it resumed instead of starting fresh: {resumed_stdout}"
    );
}

/// The committed checkpoints under `url` on the private server at `endpoint` (a client built for
/// it: this process's AWS_* variables name the shared server).
fn committed_with(endpoint: &Endpoint, url: &str) -> Vec<String> {
    let prefix = url.trim_start_matches(&format!("s3://{BUCKET}/"));
    let storage = endpoint.storage_at(prefix, Default::default());
    let found = waypoint::resume::discover(&storage, &StoragePath::root()).unwrap();
    found.committed.into_iter().map(|c| c.name).collect()
}
