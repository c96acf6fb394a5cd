//! `waypoint-train --mlflow <uri> --wandb-offline`: the example trainer's metrics, parameters and
//! status reach a real `mlflow server` (started here from the pinned venv), and the pinned wandb
//! reads its offline run.

use crate::common::BIN;
use crate::mlflow_server;

use std::process::Command;

#[test]
fn the_trainer_logs_to_mlflow_and_wandb() {
    let tmp = tempfile::tempdir().unwrap();
    let server =
        mlflow_server::Server::start(&tmp.path().join("server"), mlflow_server::free_port());
    let uri = server.uri();
    let logs = tmp.path().join("runs");
    let out = Command::new(BIN)
        .arg("--log-dir")
        .arg(&logs)
        .args([
            "--name",
            "mlp",
            "--max-steps",
            "30",
            "--ckpt-every",
            "10",
            "--val-every",
            "10",
        ])
        .args(["--mlflow", &uri, "--wandb-offline"])
        .env_remove("WAYPOINT_FAILPOINT")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the trainer printed: "step N train_loss X".
    let printed: Vec<(i64, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("step"), Some(n), Some("train_loss"), Some(x)) => {
                    Some((n.parse().ok()?, f64::from(x.parse::<f32>().ok()?)))
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(printed.len(), 30, "{stdout}");

    let experiment = mlflow_server::get(
        &uri,
        "experiments/get-by-name",
        &[("experiment_name", "mlp")],
    );
    let id = experiment["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let search = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(format!("{uri}/api/2.0/mlflow/runs/search"))
        .header("Content-Type", "application/json")
        .send(serde_json::json!({ "experiment_ids": [id] }).to_string())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_str(&search).unwrap();
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{search}");
    let run_id = runs[0]["info"]["run_id"].as_str().unwrap();
    let run = mlflow_server::run(&uri, run_id);
    assert_eq!(run["info"]["status"], "FINISHED");
    let params = mlflow_server::params(&run);
    // The default (candle) model trains with AdamW at 3e-3.
    assert_eq!(params.get("lr").map(String::as_str), Some("0.003"));
    assert_eq!(params.get("steps").map(String::as_str), Some("30"));
    let loss: Vec<(i64, f64)> = mlflow_server::history(&uri, run_id, "train_loss")
        .into_iter()
        .map(|(s, v, _)| (s, v))
        .collect();
    assert_eq!(
        loss, printed,
        "MLflow holds exactly what the trainer computed"
    );
    let val: Vec<i64> = mlflow_server::history(&uri, run_id, "val_loss")
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(val, vec![0, 10, 20, 30]);

    // The offline W&B run, read by the pinned wandb.
    let wandb_dir = logs.join("mlp/wandb");
    let run_dir = std::fs::read_dir(&wandb_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("offline-run-")
        })
        .expect("an offline W&B run");
    let wandb = test_python::python().with_file_name("wandb");
    let summary = Command::new(wandb)
        .args(["leet", "inspect", "--summary", "--json"])
        .arg(&run_dir)
        .env("WANDB_MODE", "offline")
        .env("WANDB_BASE_URL", "http://127.0.0.1:9")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(
        summary.status.success(),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(summary["state"], "finished");
    assert_eq!(summary["project"], "mlp");
    assert_eq!(summary["summary"]["_step"], 30);
    assert_eq!(
        summary["summary"]["train_loss"].as_f64().unwrap(),
        printed[29].1
    );
}
