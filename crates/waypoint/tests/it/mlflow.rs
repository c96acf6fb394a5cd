//! The MLflow logger against a real `mlflow server` (SQLite store, started by the tests from the
//! pinned venv): every parameter, metric and status read back through the REST API, across a
//! resume (the same MLflow run continues) and across a server restart in mid-run (nothing lost,
//! nothing sent twice); requests left on disk by a run that could not reach the server are sent
//! by the next one.

#[path = "trackers/lossy_proxy.rs"]
mod lossy_proxy;
#[path = "trackers/mlflow_server.rs"]
mod mlflow_server;

use crate::common::training::{tiny_experiment, tracker_experiment};
use mlflow_server::{Server, free_port, get, history, params, run, tags};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use waypoint::loggers::mlflow::{MlflowLogger, MlflowOptions, SPOOL_FILE};
use waypoint::{LoggerOptions, Loggers, MetricLogger, RunStatus};

/// One server for the tests that do not stop it, started on first use.
fn shared() -> &'static Server {
    static SERVER: OnceLock<(tempfile::TempDir, Server)> = OnceLock::new();
    let (_, server) = SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), free_port());
        (dir, server)
    });
    server
}

fn logger(uri: &str, experiment: &str, spool: &Path) -> (Loggers, MlflowOptions) {
    let mut options = MlflowOptions::new(uri, experiment, spool);
    options.run_name = Some("run-a".into());
    options.tags.insert("team".into(), "waypoint".into());
    options.finalize_timeout = Duration::from_secs(300);
    let mlflow: Vec<Box<dyn MetricLogger>> =
        vec![Box::new(MlflowLogger::new(options.clone()).unwrap())];
    (
        Loggers::spawn(mlflow, LoggerOptions::default()).unwrap(),
        options,
    )
}

/// The run id the logger saved as its resume state.
fn run_id(loggers: &mut Loggers) -> String {
    loggers.flush().unwrap();
    loggers.resume_state()["mlflow"]["run_id"]
        .as_str()
        .expect("the mlflow logger's resume state has its run id")
        .to_owned()
}

fn experiment_runs(uri: &str, experiment: &str) -> Vec<serde_json::Value> {
    let id = get(
        uri,
        "experiments/get-by-name",
        &[("experiment_name", experiment)],
    )["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut request = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(format!("{uri}/api/2.0/mlflow/runs/search"));
    request = request.header("Content-Type", "application/json");
    let mut response = request
        .send(serde_json::json!({ "experiment_ids": [id] }).to_string())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    v["runs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn every_param_metric_and_status_reaches_the_server() {
    let server = shared();
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = logger(&server.uri(), "every-value", &tmp.path().join("mlflow"));
    let hparams = serde_json::json!({
        "lr": 0.001, "name": "mlp", "layers": [64, 64], "optim": {"beta1": 0.9, "eps": 1e-8}
    });
    log.log_hyperparams(hparams.as_object().unwrap());
    log.resumed(0);
    for step in 1..=40u64 {
        log.log_metrics(step, &[("train_loss", 1.0 / step as f64), ("lr", 1e-3)]);
        if step.is_multiple_of(10) {
            log.log_metrics(step, &[("val/loss", 2.0 / step as f64)]);
        }
    }
    // One call with 1500 metrics: more than one log-batch request may carry.
    let wide: Vec<(String, f64)> = (0..1500)
        .map(|i| (format!("wide/m{i:04}"), i as f64))
        .collect();
    let wide_refs: Vec<(&str, f64)> = wide.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    log.log_metrics(41, &wide_refs);
    let id = run_id(&mut log);
    log.finalize(RunStatus::Success).unwrap();

    let uri = server.uri();
    let r = run(&uri, &id);
    assert_eq!(r["info"]["status"], "FINISHED", "{r}");
    assert!(
        r["info"]["end_time"].as_i64().is_some_and(|t| t > 0)
            || r["info"]["end_time"].as_str().is_some()
    );
    assert_eq!(r["info"]["run_name"], "run-a");
    let p = params(&r);
    let want: std::collections::BTreeMap<String, String> = [
        ("lr", "0.001"),
        ("name", "mlp"),
        ("layers", "[64,64]"),
        ("optim/beta1", "0.9"),
        ("optim/eps", "1e-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(p, want);
    let t = tags(&r);
    assert_eq!(t.get("team").map(String::as_str), Some("waypoint"));
    assert_eq!(t.get("mlflow.runName").map(String::as_str), Some("run-a"));

    let loss = history(&uri, &id, "train_loss");
    let steps: Vec<i64> = loss.iter().map(|m| m.0).collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
    for (step, value, ts) in &loss {
        assert_eq!(*value, 1.0 / *step as f64, "step {step}");
        assert!(*ts > 1_700_000_000_000, "millisecond timestamps: {ts}");
    }
    let val = history(&uri, &id, "val/loss");
    assert_eq!(
        val.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
        vec![(10, 0.2), (20, 0.1), (30, 2.0 / 30.0), (40, 0.05)]
    );
    assert_eq!(history(&uri, &id, "lr").len(), 40);
    for i in [0usize, 999, 1000, 1499] {
        let h = history(&uri, &id, &format!("wide/m{i:04}"));
        assert_eq!(
            h.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            vec![(41, i as f64)]
        );
    }
    let latest = r["data"]["metrics"].as_array().unwrap().len();
    assert_eq!(latest, 3 + 1500, "every metric key is on the run");
    assert!(!tmp.path().join("mlflow").join(SPOOL_FILE).exists());
}

/// An ExperimentLogger run with MLflow, to step `until`: finished, or "killed" (dropped after
/// its saves) when `finish` is false. The second run logs other values (x.5).
fn experiment_run(dir: &Path, uri: &str, until: u64, finish: bool) {
    let logger = tracker_experiment(dir, "resumed")
        .max_steps(20)
        .mlflow(uri)
        .hparams(serde_json::Map::from_iter([("lr".to_owned(), 0.5.into())]))
        .build()
        .unwrap();
    let value = |step: u64| step as f64 + if finish { 0.5 } else { 0.0 };
    tiny_experiment(logger, until, finish, "train_loss", value);
}

#[test]
fn a_resumed_run_continues_the_same_mlflow_run() {
    let server = shared();
    let uri = server.uri();
    let tmp = tempfile::tempdir().unwrap();
    experiment_run(tmp.path(), &uri, 13, false); // checkpoint at 10; 11..13 logged, then "killed"
    experiment_run(tmp.path(), &uri, 20, true); // resumes from 10, logs 11..20 again

    let runs = experiment_runs(&uri, "resumed");
    assert_eq!(runs.len(), 1, "one MLflow run for both processes: {runs:?}");
    let id = runs[0]["info"]["run_id"].as_str().unwrap();
    // Every checkpoint's commit record names the MLflow run (that is how the second run found it).
    let records: Vec<String> = std::fs::read_dir(tmp.path().join("resumed/v1/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path().join("weights/metadata.json"))
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(!records.is_empty());
    for record in &records {
        let record: serde_json::Value = serde_json::from_str(record).unwrap();
        assert_eq!(
            record["trainer_state"]["waypoint"]["loggers"]["mlflow"]["run_id"], id,
            "{record}"
        );
    }
    let r = run(&uri, id);
    assert_eq!(r["info"]["status"], "FINISHED");
    assert_eq!(r["info"]["run_name"], "v1");
    assert_eq!(params(&r).get("lr").map(String::as_str), Some("0.5"));
    let t = tags(&r);
    assert!(t["waypoint.version_dir"].ends_with("resumed/v1"), "{t:?}");
    // The tests run inside the repository: the commit is known.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    if head.status.success() {
        let head = String::from_utf8(head.stdout).unwrap();
        assert_eq!(
            t.get("mlflow.source.git.commit").map(String::as_str),
            Some(head.trim())
        );
    }

    // Each step once, except 11..13: the killed run sent them before it died and MLflow cannot
    // delete metric values; the resumed run's (x.5) come later.
    let loss = history(&uri, id, "train_loss");
    let mut want: Vec<(i64, f64)> = (1..=13).map(|s| (s, s as f64)).collect();
    want.extend((11..=20).map(|s| (s, s as f64 + 0.5)));
    assert_eq!(loss.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(), want);
    // One value per step of each checkpoint metric, though a top-k checkpoint and the -last
    // (and at 20 the train-end save) are saved at one step.
    for key in [
        "checkpoint/blocked_ms",
        "checkpoint/write_ms",
        "checkpoint/size_mib",
    ] {
        let steps: Vec<i64> = history(&uri, id, key).iter().map(|m| m.0).collect();
        assert_eq!(steps, [5, 10, 15, 20], "{key}");
    }

    // The completed run started again logs nothing: no new run, value or status change.
    let end_time = r["info"]["end_time"].clone();
    experiment_run(tmp.path(), &uri, 20, true);
    assert_eq!(experiment_runs(&uri, "resumed").len(), 1);
    let again = run(&uri, id);
    assert_eq!(again["info"]["status"], "FINISHED");
    assert_eq!(
        again["info"]["end_time"], end_time,
        "the rerun touched the run"
    );
    assert_eq!(history(&uri, id, "train_loss").len(), want.len());
}

/// A disk that fills up while the MLflow logger spools (a real 64 KiB tmpfs, the server
/// unreachable): a failed append is cut back, so no request is glued to a fragment, and a run
/// started on the same directory once there is room again starts and finds every whole request.
/// A line an older version glued together is set aside, not fatal.
#[test]
fn a_full_disk_while_spooling_never_keeps_the_next_run_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("disk");
    std::fs::create_dir(&dir).unwrap();
    let _mount = crate::loggers::support::small_tmpfs(&dir, 64 << 10);
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();
    // Nothing listens on port 9 (discard): every request fails and is spooled.
    let mut options = MlflowOptions::new("http://127.0.0.1:9", "full", dir.join("mlflow"));
    options.finalize_timeout = Duration::ZERO;
    let mut mlflow = MlflowLogger::new(options.clone()).unwrap();
    mlflow.resumed(0).unwrap();
    let mut full = None;
    for step in 1..10_000u64 {
        mlflow
            .log_metrics(step, 1.7e9, &[("loss", step as f64)])
            .unwrap();
        if let Err(e) = mlflow.flush()
            && e.to_string().to_lowercase().contains("no space left")
        {
            full = Some(step);
            break;
        }
    }
    let full = full.expect("the disk never filled up");
    // Room again: the next appends go after the last whole request.
    std::fs::remove_file(&filler).unwrap();
    for step in full + 1..full + 5 {
        mlflow
            .log_metrics(step, 1.7e9, &[("loss", step as f64)])
            .unwrap();
        let _ = mlflow.flush();
    }
    drop(mlflow);
    let spool = std::fs::read_to_string(dir.join("mlflow").join(SPOOL_FILE)).unwrap();
    for line in spool.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a spooled request is not JSON ({e}): {line:?}"));
    }
    let again = MlflowLogger::new(options.clone()).unwrap();
    assert_eq!(again.queued(), spool.lines().count());
    drop(again);

    // A glued line, as older versions left them: set aside, the rest still queued.
    let mut glued = spool.clone();
    glued.insert_str(0, "{\"run_id\":nu");
    std::fs::write(dir.join("mlflow").join(SPOOL_FILE), &glued).unwrap();
    let again = MlflowLogger::new(options).unwrap();
    assert_eq!(again.queued(), spool.lines().count() - 1);
    assert!(dir.join("mlflow/spool.jsonl.corrupt").is_file());
}

#[test]
fn a_server_restart_mid_run_loses_nothing_and_sends_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("server"), free_port());
    let uri = server.uri();
    let spool_dir = tmp.path().join("mlflow");
    let (mut log, _) = logger(&uri, "outage", &spool_dir);
    log.resumed(0);
    let mut step = 0u64;
    let mut log_steps = |log: &mut Loggers, n: u64| {
        for _ in 0..n {
            step += 1;
            log.log_metrics(
                step,
                &[
                    ("loss", step as f64 * 0.25),
                    ("acc", 1.0 - 1.0 / step as f64),
                ],
            );
        }
        log.flush().unwrap();
    };
    log_steps(&mut log, 20);
    let id = run_id(&mut log);
    assert_eq!(history(&uri, &id, "loss").len(), 20);

    server.stop();
    for _ in 0..4 {
        log_steps(&mut log, 5); // each flush finds the server gone
    }
    let spool = std::fs::read_to_string(spool_dir.join(SPOOL_FILE)).unwrap();
    assert!(
        spool.contains("\"loss\""),
        "the outage's metrics are queued on disk: {spool}"
    );

    server.restart();
    log_steps(&mut log, 20);
    log.finalize(RunStatus::Success).unwrap(); // retries until everything is acknowledged

    let r = run(&uri, &id);
    assert_eq!(r["info"]["status"], "FINISHED");
    for key in ["loss", "acc"] {
        let h = history(&uri, &id, key);
        let mut steps: Vec<i64> = h.iter().map(|m| m.0).collect();
        steps.sort_unstable();
        assert_eq!(
            steps,
            (1..=60).collect::<Vec<_>>(),
            "{key}: every step exactly once"
        );
    }
    for (s, v, _) in history(&uri, &id, "loss") {
        assert_eq!(v, s as f64 * 0.25);
    }
    assert!(
        !spool_dir.join(SPOOL_FILE).exists(),
        "the queue is gone once delivered"
    );
}

#[test]
fn a_request_applied_without_an_answer_is_not_sent_again() {
    let server = shared();
    let (port, seen) = lossy_proxy::start(server.port, 2);
    let tmp = tempfile::tempdir().unwrap();
    let uri = format!("http://127.0.0.1:{port}");
    let (mut log, _) = logger(&uri, "no-answer", &tmp.path().join("mlflow"));
    log.resumed(0);
    for step in 1..=30u64 {
        log.log_metrics(step, &[("loss", step as f64), ("acc", step as f64 / 30.0)]);
        if step.is_multiple_of(10) {
            log.flush().unwrap(); // log-batch 2 (steps 11..20) is applied, its answer lost
        }
    }
    let id = run_id(&mut log);
    log.finalize(RunStatus::Success).unwrap();

    // Nothing reached the server twice: every (key, step) is in exactly one forwarded request.
    let seen = seen.lock().unwrap();
    assert!(seen.log_batches.len() >= 3, "{}", seen.log_batches.len());
    let mut sent: Vec<(String, i64)> = seen
        .log_batches
        .iter()
        .flat_map(|b| b["metrics"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_owned(),
                m["step"].as_i64().unwrap(),
            )
        })
        .collect();
    sent.sort();
    let before = sent.len();
    sent.dedup();
    assert_eq!(sent.len(), before, "a metric was sent twice");
    assert_eq!(sent.len(), 60);
    for key in ["loss", "acc"] {
        let steps: Vec<i64> = history(&server.uri(), &id, key)
            .iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(steps, (1..=30).collect::<Vec<_>>(), "{key}");
    }
    assert_eq!(run(&server.uri(), &id)["info"]["status"], "FINISHED");
}

#[test]
fn requests_left_on_disk_are_sent_by_the_next_run() {
    let server = shared();
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("mlflow");
    // A run whose server never answers: its end gives up at once and keeps its requests.
    let mut options = MlflowOptions::new(
        format!("http://127.0.0.1:{}", free_port()),
        "left",
        &spool_dir,
    );
    options.finalize_timeout = Duration::ZERO;
    let mut dead = MlflowLogger::new(options).unwrap();
    dead.resumed(0).unwrap();
    for step in 1..=30u64 {
        dead.log_metrics(step, 1.7e9 + step as f64, &[("loss", step as f64)])
            .unwrap();
    }
    dead.flush().unwrap();
    let err = dead.finalize(RunStatus::Killed).unwrap_err().to_string();
    assert!(err.contains(SPOOL_FILE), "{err}");
    assert!(spool_dir.join(SPOOL_FILE).exists());
    drop(dead);

    // The next run in the same directory, with a server: sends them first, into its run.
    let (mut log, _) = logger(&server.uri(), "left", &spool_dir);
    log.resumed(31);
    log.log_metrics(31, &[("loss", 31.0)]);
    let id = run_id(&mut log);
    log.finalize(RunStatus::Success).unwrap();
    let h = history(&server.uri(), &id, "loss");
    let mut steps: Vec<i64> = h.iter().map(|m| m.0).collect();
    steps.sort_unstable();
    assert_eq!(steps, (1..=31).collect::<Vec<_>>());
    assert!(!spool_dir.join(SPOOL_FILE).exists());
}

#[test]
fn a_checkpoint_naming_a_run_the_server_lacks_starts_a_new_one() {
    let server = shared();
    let tmp = tempfile::tempdir().unwrap();
    let options = MlflowOptions::new(server.uri(), "gone", tmp.path().join("mlflow"));
    let mut logger = MlflowLogger::new(options).unwrap();
    let gone = "0123456789abcdef0123456789abcdef";
    logger
        .restore_state(&serde_json::json!({ "run_id": gone, "tracking_uri": server.uri() }))
        .unwrap();
    logger.resumed(6).unwrap();
    for step in 6..=9u64 {
        logger
            .log_metrics(step, 1.7e9 + step as f64, &[("loss", step as f64)])
            .unwrap();
    }
    logger.flush().unwrap();
    logger.finalize(RunStatus::Success).unwrap();
    let id = logger.run_id().unwrap().to_owned();
    assert_ne!(id, gone);
    let steps: Vec<i64> = history(&server.uri(), &id, "loss")
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(steps, vec![6, 7, 8, 9]);
    assert_eq!(run(&server.uri(), &id)["info"]["status"], "FINISHED");
}
