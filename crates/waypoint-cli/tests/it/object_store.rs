//! `waypoint show`, `verify`, `bench`, `ls`, `diff` and `prune` on `s3://` URLs, against the
//! s3s-fs server that scripts/test.sh starts (its AWS_* variables reach the binary), and all but
//! `bench` on `az://`, against its Azurite. Without the servers the tests fail, saying how to start
//! them: they never pass without having run.

use crate::waypoint;
use serde_json::Value;
use waypoint::storage::{StoragePath, open_location};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, TensorRef};

const BUCKET: &str = "waypoint-test";

/// Fails, saying how to get one, unless scripts/test.sh's S3 server is there.
fn require_server() {
    match std::env::var("WAYPOINT_TEST_S3_ENDPOINT") {
        Ok(v) if !v.is_empty() => {}
        _ => panic!(
            "WAYPOINT_TEST_S3_ENDPOINT is not set: run through scripts/test.sh, which builds and \
             starts the s3s-fs test server"
        ),
    }
}

/// A prefix in a bucket of this test's own on the shared server: s3s-fs 0.14 lists a prefix by
/// walking its whole bucket and answers 500 when an entry vanishes during the walk, so another
/// test's deletions could fail this test's listing. Its buckets are directories under its data
/// directory (`WAYPOINT_TEST_S3_DATA`).
fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bucket = format!("c{}-{n}-{nanos}", std::process::id());
    let data = std::env::var_os("WAYPOINT_TEST_S3_DATA")
        .filter(|d| !d.is_empty())
        .expect("WAYPOINT_TEST_S3_DATA is not set: run through scripts/test.sh");
    std::fs::create_dir_all(std::path::Path::new(&data).join(&bucket)).unwrap();
    format!("s3://{bucket}/{name}")
}

#[test]
fn show_and_verify_a_checkpoint_in_a_bucket() {
    require_server();
    let root = unique("cli");
    let storage = open_location(&root).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let tensors = vec![TensorRef::whole(
        "w",
        Dtype::U8,
        vec![4096],
        data.as_slice(),
    )];
    Checkpointer::new(storage)
        .save(
            &StoragePath::new("step=7").unwrap(),
            &CheckpointMeta::at_step(7),
            &tensors,
            &(),
        )
        .unwrap();
    let ckpt = format!("{root}/step=7");

    let shown = waypoint(&["show", &ckpt, "--json"]);
    assert!(shown.status.success(), "{shown:?}");
    let json: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(json["step"], 7, "{json}");
    assert_eq!(json["path"], ckpt.as_str());

    let verified = waypoint(&["verify", &ckpt]);
    assert!(verified.status.success(), "{verified:?}");

    let missing = waypoint(&["show", &format!("{root}/step=8")]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not a committed checkpoint"),
        "{missing:?}"
    );
    let bucket_only = waypoint(&["show", &format!("s3://{BUCKET}")]);
    assert_eq!(bucket_only.status.code(), Some(2), "{bucket_only:?}");
}

#[test]
fn bench_compares_the_bucket_with_local_files() {
    require_server();
    let root = unique("bench");
    let out = waypoint(&[
        "bench",
        "--dir",
        &root,
        "--size",
        "8MiB",
        "--tensors",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "local_save_s",
        "object_save_s",
        "save_ratio",
        "local_load_s",
        "object_load_s",
        "load_ratio",
    ] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {json}");
    }
    assert_eq!(json["bytes"], 8 * 1024 * 1024);
    // Nothing left behind in the bucket.
    assert_removed_its_checkpoints(&root);
}

#[test]
fn bench_incremental_copies_the_frozen_base_server_side() {
    require_server();
    let root = unique("bench-incremental");
    let out = waypoint(&[
        "bench",
        "--incremental",
        "--dir",
        &root,
        "--size",
        "8MiB",
        "--tensors",
        "4",
        "--trainable",
        "256KiB",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["storage"].as_str().unwrap().starts_with(&root),
        "{json}"
    );
    // The trainable part is sent (with a header and the record); the base is copied in the
    // store, not sent again.
    let written = json["bytes_written_per_save"].as_u64().unwrap();
    assert!(written < (256 << 10) + (32 << 10), "{json}");
    assert!(json["bytes_carried_per_save"].as_u64().unwrap() >= (8 << 20) - (256 << 10));
    assert_removed_its_checkpoints(&root);
}

/// A benchmark under `root` removed its checkpoints: nothing is left there (or it is gone).
fn assert_removed_its_checkpoints(root: &str) {
    let storage = open_location(root).unwrap();
    assert!(
        storage
            .list(&StoragePath::root())
            .map(|entries| entries.is_empty())
            .unwrap_or(true),
        "the benchmark removed its checkpoints"
    );
}

/// Saves a one-tensor checkpoint named `step=<step>` under `root`, its bytes depending on `seed`.
fn save_in_bucket(root: &str, step: u64, seed: u8) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_add(seed)).collect();
    let tensors = vec![TensorRef::whole(
        "w",
        Dtype::U8,
        vec![4096],
        data.as_slice(),
    )];
    Checkpointer::new(open_location(root).unwrap())
        .save(
            &StoragePath::new(&format!("step={step}")).unwrap(),
            &CheckpointMeta::at_step(step),
            &tensors,
            &(),
        )
        .unwrap();
}

/// The names `waypoint ls --json` lists under `root`, newest first.
fn listed(root: &str) -> Vec<String> {
    let out = waypoint(&["ls", root, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ls_diff_and_prune_on_a_bucket() {
    require_server();
    let root = unique("cli-ls");
    save_in_bucket(&root, 7, 0);
    save_in_bucket(&root, 9, 1);
    assert_eq!(listed(&root), ["step=9", "step=7"]);

    let same = waypoint(&["diff", &format!("{root}/step=7"), &format!("{root}/step=7")]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    let differ = waypoint(&["diff", &format!("{root}/step=7"), &format!("{root}/step=9")]);
    assert_eq!(differ.status.code(), Some(1), "{differ:?}");
    assert!(
        String::from_utf8_lossy(&differ.stdout).contains("w U8"),
        "{differ:?}"
    );

    // No monitor: top-k ranks by step, so step=9 stays (it is also AutoResume's pick).
    let pruned = waypoint(&["prune", &root, "--keep-top-k", "1", "--yes", "--json"]);
    assert!(pruned.status.success(), "{pruned:?}");
    let json: Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert_eq!(json["deleted"], serde_json::json!(["step=7"]), "{json}");
    assert_eq!(listed(&root), ["step=9"]);
}

/// `show`, `verify`, `ls`, `diff` and `prune` on an `az://` container of the Azurite server that
/// scripts/test.sh starts (its `AZURE_STORAGE_USE_EMULATOR` and `AZURITE_BLOB_STORAGE_URL` reach
/// the binary). Without the server the test fails, saying how to start it.
#[test]
fn show_verify_ls_diff_and_prune_on_an_azure_container() {
    match std::env::var("WAYPOINT_TEST_AZURITE_URL") {
        Ok(v) if !v.is_empty() => {}
        _ => panic!(
            "WAYPOINT_TEST_AZURITE_URL is not set: run through scripts/test.sh, which installs \
             and starts Azurite, the Azure Storage emulator (docs/OBJECT_STORAGE.md)"
        ),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = format!("az://{BUCKET}/cli-az-{}-{nanos}", std::process::id());
    save_in_bucket(&root, 7, 0);
    save_in_bucket(&root, 9, 1);

    let ckpt = format!("{root}/step=7");
    let shown = waypoint(&["show", &ckpt, "--json"]);
    assert!(shown.status.success(), "{shown:?}");
    let json: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (json["step"].as_u64(), json["path"].as_str()),
        (Some(7), Some(ckpt.as_str()))
    );
    let verified = waypoint(&["verify", &ckpt]);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(listed(&root), ["step=9", "step=7"]);

    let differ = waypoint(&["diff", &ckpt, &format!("{root}/step=9")]);
    assert_eq!(differ.status.code(), Some(1), "{differ:?}");
    let pruned = waypoint(&["prune", &root, "--keep-top-k", "1", "--yes", "--json"]);
    assert!(pruned.status.success(), "{pruned:?}");
    assert_eq!(listed(&root), ["step=9"]);
}
