//! `waypoint bench` runs the real binary on a small state: the report has every figure, the
//! scratch directory is removed (or kept with `--keep`, and then verifies), a missing `--dir` is
//! created.

use std::process::Command;

fn waypoint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
}

/// Runs `waypoint bench ARGS --json --dir DIR`, which must succeed, and returns its report.
fn bench_json(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let out = waypoint()
        .arg("bench")
        .args(args)
        .args(["--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_reports_every_figure_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_json(&["--size", "4MiB", "--tensors", "16"], tmp.path());
    assert_eq!(report["bytes"], 4 << 20);
    assert_eq!(report["tensors"], 16);
    for key in [
        "save_s",
        "baseline_write_s",
        "load_s",
        "load_verified_s",
        "baseline_memcpy_s",
        "save_ratio",
        "load_ratio",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(report["file_system"].as_str().unwrap().len() > 2);
    // The baseline is the fastest of the plain writes tried: one thread and several, buffered
    // and (where the file system allows) O_DIRECT.
    let baselines = report["baselines"].as_array().unwrap();
    assert!(baselines.len() >= 2, "{report}");
    let fastest = baselines
        .iter()
        .filter_map(|b| b[1].as_f64())
        .fold(f64::MAX, f64::min);
    assert_eq!(report["baseline_write_s"].as_f64().unwrap(), fastest);
    assert!(report["baseline"].as_str().unwrap().contains("thread"));
    assert!(report["kept"].is_null());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "scratch directory left behind"
    );
}

#[test]
fn bench_keep_leaves_a_checkpoint_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let out = waypoint()
        .args([
            "bench",
            "--size",
            "2MiB",
            "--tensors",
            "300",
            "--keep",
            "--dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "file system",
        "save + fsync",
        "hot load",
        "peak extra memory",
        "checkpoint kept at",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let kept = text
        .lines()
        .find_map(|l| l.strip_prefix("checkpoint kept at "))
        .unwrap();
    let verify = waypoint().args(["verify", kept]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn bench_async_reports_blocked_time_slowdown_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_json(
        &[
            "--async",
            "--size",
            "8MiB",
            "--tensors",
            "8",
            "--steps",
            "6",
            "--every",
            "3",
            "--step-ms",
            "5",
        ],
        tmp.path(),
    );
    assert_eq!(report["bytes"], 8 << 20);
    assert_eq!(report["saves"], 2);
    // Five repetitions of the pair of loops: the median and the worst slowdown.
    let slowdowns: Vec<f64> = report["slowdowns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(slowdowns.len(), 5, "{report}");
    let worst = slowdowns.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(report["slowdown_worst"].as_f64().unwrap(), worst);
    for key in [
        "blocked_s",
        "memcpy_s",
        "loop_plain_s",
        "loop_saving_s",
        "write_s",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(
        report["staging_bytes"].as_u64().unwrap() >= 8 << 20,
        "{report}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "scratch directory left behind"
    );
}

#[test]
fn bench_ranks_reports_save_and_resharded_load_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_json(
        &["--ranks", "4", "--size", "8MiB", "--tensors", "2"],
        tmp.path(),
    );
    assert_eq!(report["bytes"], 8 << 20);
    assert_eq!(
        (report["ranks"].as_u64(), report["load_ranks"].as_u64()),
        (Some(4), Some(3))
    );
    for key in [
        "baseline_write_s",
        "save_1_s",
        "save_n_s",
        "plain_load_s",
        "resharded_load_s",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    // Bytes counted by the storage wrapper: without checksums the ranks read what they need
    // (plus shard headers); with checksums, whole blocks.
    let plain = report["resharded_read_amplification"].as_f64().unwrap();
    let verified = report["resharded_read_amplification_verified"]
        .as_f64()
        .unwrap();
    assert!((1.0..=1.05).contains(&plain), "{report}");
    assert!(verified >= plain, "{report}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    // Fewer rows than ranks is refused with what to change.
    let out = waypoint()
        .args([
            "bench",
            "--ranks",
            "8",
            "--size",
            "1MiB",
            "--tensors",
            "256",
            "--dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fewer than --ranks 8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 20: `--dir` that does not exist yet is created (as `mkdir -p`), not refused.
#[test]
fn bench_creates_a_missing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not/yet");
    let report = bench_json(&["--size", "1MiB", "--tensors", "4"], &dir);
    assert_eq!(report["bytes"], 1 << 20);
    assert!(dir.is_dir());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "scratch directory left behind"
    );
}

/// Issue 20: `--ranks N --keep` keeps the N-rank checkpoint and says where it is.
#[test]
fn bench_ranks_keep_leaves_a_checkpoint_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_json(
        &["--ranks", "2", "--size", "1MiB", "--tensors", "2", "--keep"],
        tmp.path(),
    );
    let kept = report["kept"]
        .as_str()
        .unwrap_or_else(|| panic!("no kept: {report}"));
    assert!(kept.starts_with(tmp.path().to_str().unwrap()), "{kept}");
    let verify = waypoint()
        .args(["verify", "--json", kept])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let verified: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verified["bytes_checked"], 1 << 20);

    let out = waypoint()
        .args([
            "bench",
            "--ranks",
            "2",
            "--size",
            "1MiB",
            "--tensors",
            "2",
            "--keep",
            "--dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let kept = text
        .lines()
        .find_map(|l| l.strip_prefix("checkpoint kept at "))
        .unwrap_or_else(|| panic!("no 'checkpoint kept at' in:\n{text}"));
    assert!(
        std::path::Path::new(kept)
            .join("weights/metadata.json")
            .is_file()
    );
}

#[test]
fn bench_incremental_reports_bytes_written_per_save_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let report = bench_json(
        &[
            "--incremental",
            "--size",
            "8MiB",
            "--tensors",
            "8",
            "--trainable",
            "256KiB",
        ],
        tmp.path(),
    );
    let trainable = report["trainable_bytes"].as_u64().unwrap();
    assert_eq!(trainable, 256 << 10);
    let written = report["bytes_written_per_save"].as_u64().unwrap();
    let full = report["full_bytes_written"].as_u64().unwrap();
    // The trainable part, one header page and the commit record; a full save writes it all.
    assert!(
        written >= trainable && written < trainable + (32 << 10),
        "{report}"
    );
    assert!(full >= 8 << 20, "{report}");
    let detected = report["detected_bytes_written_per_save"].as_u64().unwrap();
    assert!(detected < trainable + (64 << 10), "{report}");
    assert!(report["bytes_carried_per_save"].as_u64().unwrap() >= (8 << 20) - trainable);
    for key in [
        "save_s",
        "full_save_s",
        "detected_save_s",
        "time_ratio",
        "bytes_ratio",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "scratch directory left behind"
    );
}
