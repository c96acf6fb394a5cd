//! The W&B offline logger read by the pinned wandb (tests/python/requirements.txt): `wandb leet
//! inspect --json` decodes our `.wandb` file with the history, summary and config we logged,
//! and `wandb sync --dry-run` accepts the run directory. Nothing touches the network: wandb runs
//! offline, with its base URL pointed at a closed local port.

use crate::common::training::{tiny_experiment, tracker_experiment};
use std::path::{Path, PathBuf};
use std::process::Command;
use waypoint::loggers::wandb::{WandbLogger, WandbOptions};
use waypoint::{LoggerOptions, Loggers, MetricLogger, RunStatus};

/// The pinned `wandb` command, offline, its state in `home`.
pub(crate) fn wandb(home: &Path) -> Command {
    let python = test_python::python();
    let mut command = Command::new(python.with_file_name("wandb"));
    command
        .env("WANDB_MODE", "offline")
        .env("WANDB_SILENT", "true")
        .env("WANDB_BASE_URL", "http://127.0.0.1:9")
        .env("WANDB_API_KEY", "")
        .env("WANDB_CONFIG_DIR", home.join("config"))
        .env("WANDB_CACHE_DIR", home.join("cache"))
        .env("WANDB_DATA_DIR", home.join("data"))
        .env("HOME", home);
    command
}

/// Runs `command`; its standard output, failing with both outputs when it fails.
pub(crate) fn output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The records of `file` as `wandb leet inspect --json` prints them.
pub(crate) fn records(home: &Path, file: &Path) -> Vec<serde_json::Value> {
    output(wandb(home).args(["leet", "inspect", "--json"]).arg(file))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `wandb leet inspect --summary --json`.
fn summary(home: &Path, file: &Path) -> serde_json::Value {
    serde_json::from_str(&output(
        wandb(home)
            .args(["leet", "inspect", "--summary", "--json"])
            .arg(file),
    ))
    .unwrap()
}

/// What `wandb sync --dry-run` says of the offline run directories `dirs` (it must succeed).
pub(crate) fn sync_dry_run(home: &Path, dirs: &[&Path]) -> String {
    let out = wandb(home)
        .args(["sync", "--dry-run"])
        .args(dirs)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// The `.wandb` files below `dir/wandb`, oldest first.
pub(crate) fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("wandb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wandb"))
        .collect();
    files.sort();
    files
}

#[test]
fn wandb_decodes_our_history_summary_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = WandbOptions::new(tmp.path(), "waypoint-test");
    options.run_name = Some("v1".into());
    let logger = WandbLogger::new(options).unwrap();
    let run_id = logger.run_id().to_owned();
    let boxed: Vec<Box<dyn MetricLogger>> = vec![Box::new(logger)];
    let mut log = Loggers::spawn(boxed, LoggerOptions::default()).unwrap();
    let hparams =
        serde_json::json!({"lr": 0.01, "name": "mlp", "model": {"hidden": 64, "layers": [2, 3]}});
    log.log_hyperparams(hparams.as_object().unwrap());
    log.resumed(0);
    for step in 1..=25u64 {
        log.log_metrics(
            step,
            &[("loss", 1.0 / step as f64), ("acc", step as f64 / 25.0)],
        );
        if step.is_multiple_of(5) {
            log.log_metrics(step, &[("val/loss", 2.0 / step as f64)]); // the same row
        }
    }
    // A row of 3000 metrics (over 32 KiB): spread over several chunks of the log's blocks.
    let wide: Vec<(String, f64)> = (0..3000)
        .map(|i| (format!("wide/m{i:04}"), i as f64 * 0.5))
        .collect();
    let refs: Vec<(&str, f64)> = wide.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    log.log_metrics(26, &refs);
    log.finalize(RunStatus::Success).unwrap();

    let files = run_files(tmp.path());
    assert_eq!(files.len(), 1);
    let file = &files[0];
    let dir_name = file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        dir_name.starts_with("offline-run-") && dir_name.ends_with(&format!("-{run_id}")),
        "{dir_name}"
    );
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        format!("run-{run_id}.wandb")
    );

    let home = tmp.path().join("home");
    let records = records(&home, file);
    assert_eq!(records[0]["type"], "header");
    assert_eq!(records[1]["type"], "run");
    assert_eq!(records[1]["run"]["run_id"], run_id.as_str());
    assert_eq!(records.last().unwrap()["type"], "exit");
    let rows: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "history")
        .map(|r| &r["history"])
        .collect();
    assert_eq!(rows.len(), 26, "one row per step");
    for (i, row) in rows.iter().take(25).enumerate() {
        let step = i as u64 + 1;
        assert_eq!(row["step"]["num"], step, "{row}");
        let item = &row["item"];
        assert_eq!(item["_step"], step);
        assert_eq!(item["loss"].as_f64().unwrap(), 1.0 / step as f64);
        assert_eq!(item["acc"].as_f64().unwrap(), step as f64 / 25.0);
        if step.is_multiple_of(5) {
            assert_eq!(
                item["val/loss"].as_f64().unwrap(),
                2.0 / step as f64,
                "{item}"
            );
        } else {
            assert!(item.get("val/loss").is_none());
        }
    }
    let wide_row = &rows[25]["item"];
    for i in [0usize, 1234, 2999] {
        assert_eq!(
            wide_row[format!("wide/m{i:04}")].as_f64().unwrap(),
            i as f64 * 0.5
        );
    }

    let s = summary(&home, file);
    assert_eq!(s["run_id"], run_id.as_str());
    assert_eq!(s["project"], "waypoint-test");
    assert_eq!(s["name"], "v1");
    assert_eq!(s["state"], "finished");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["config"], hparams);
    assert_eq!(s["summary"]["loss"].as_f64().unwrap(), 1.0 / 25.0);
    assert_eq!(s["summary"]["val/loss"].as_f64().unwrap(), 2.0 / 25.0);
    assert_eq!(s["summary"]["wide/m2999"].as_f64().unwrap(), 1499.5);
    assert_eq!(s["summary"]["_step"], 26);
    assert_eq!(s["step"], 26);

    // `wandb sync --dry-run` accepts the run directory (and would upload it).
    let run_dir = file.parent().unwrap();
    let text = sync_dry_run(&home, &[run_dir]);
    assert!(text.contains("Would sync 1 run(s)"), "{text}");
    assert!(text.contains(&format!("run-{run_id}.wandb")), "{text}");
}

fn experiment_run(dir: &Path, until: u64, finish: bool) {
    let logger = tracker_experiment(dir, "wb")
        .wandb_offline(true)
        .build()
        .unwrap();
    tiny_experiment(logger, until, finish, "loss", |step| step as f64);
}

#[test]
fn a_resumed_run_writes_the_same_wandb_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    experiment_run(tmp.path(), 12, false); // checkpoint at 10
    experiment_run(tmp.path(), 20, true); // resumes from 10
    let version_dir = tmp.path().join("wb/v1");
    let files = run_files(&version_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let home = tmp.path().join("home");
    let first = records(&home, &files[0]);
    let second = records(&home, &files[1]);
    let (a, b) = (&first[1]["run"], &second[1]["run"]);
    assert_eq!(
        a["run_id"], b["run_id"],
        "one W&B run id for both processes"
    );
    assert_eq!(a["project"], "wb");
    assert_eq!(a["display_name"], "v1");
    assert_eq!(b["resumed"], true);
    assert_eq!(b["starting_step"], "11"); // an int64: a string in protobuf JSON
    let steps: Vec<u64> = second
        .iter()
        .filter(|r| r["type"] == "history")
        .map(|r| r["history"]["step"]["num"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (11..=20).collect::<Vec<_>>());
}
