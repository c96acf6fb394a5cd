//! The Run forwards to its metric loggers: metrics, checkpoint events, where a resume starts, and
//! the final status. A bare Run (no ExperimentLogger) that logs its hyperparameters before
//! `restore`, killed after a checkpoint and resumed, leaves one CSV row per step, and the real
//! TensorBoard shows each step once with the surviving values.

use crate::common::training::{Tiny, every_5_keep_1, resume, train_tiny};
use crate::loggers::support::{event_files, run_python, start_steps};
use serde_json::json;
use std::path::Path;
use waypoint::{CsvLogger, LoggerOptions, Loggers, MetricLogger, Run, TensorBoardLogger};

fn run(dir: &Path, until: u64, finish: bool) {
    let logs = dir.join("logs");
    let loggers: Vec<Box<dyn MetricLogger>> = vec![
        Box::new(CsvLogger::new(&logs, None).unwrap()),
        Box::new(TensorBoardLogger::new(&logs, None).unwrap()),
    ];
    let loggers = Loggers::spawn(loggers, LoggerOptions::default()).unwrap();
    let mut run = Run::builder()
        .log_dir(dir)
        .checkpoint(every_5_keep_1())
        .resume(resume())
        .loggers(loggers)
        .build()
        .unwrap();
    // As a user's loop may: hyperparameters first, before `restore` tells where it resumes.
    run.log_hyperparams(json!({"lr": 0.01, "finish": finish}).as_object().unwrap());
    let mut toy = Tiny::new();
    // The second run logs different values, so the test can tell whose row it sees.
    let value = |step: u64| step as f64 + if finish { 0.5 } else { 0.0 };
    train_tiny(&mut run, &mut toy, until, "train_loss", value);
    if finish {
        run.finish(toy.step, 0, &toy).unwrap();
    } else {
        run.wait_for_saves().unwrap();
        drop(run); // "killed" after step `until`: its steps after the checkpoint at 10 are lost
    }
}

#[test]
fn a_resumed_run_logs_each_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), 13, false); // checkpoint at 10, then 11..13 logged but not checkpointed
    run(tmp.path(), 20, true); // resumes at 10, logs 11..20 again
    let csv = std::fs::read_to_string(tmp.path().join("logs/metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let steps: Vec<u64> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>(), "{csv}");
    assert!(
        rows[10].ends_with("11.5"),
        "step 11 comes from the resumed run: {csv}"
    );
    assert!(rows[9].ends_with(",10"), "step 10 from the first: {csv}");
    // TensorBoard, judged by the real one (EventAccumulator and both server loaders): each step
    // once, the resumed run's values from 11 on; one START per event file, at 0 and at 11,
    // although each run logged its hyperparameters before it knew where it resumes.
    let logs = tmp.path().join("logs");
    let starts: Vec<Vec<i64>> = event_files(&logs).iter().map(|f| start_steps(f)).collect();
    assert_eq!(
        starts,
        vec![vec![0], vec![11]],
        "START steps per event file"
    );
    let curve: Vec<serde_json::Value> = (1..=20u64)
        .map(|s| json!([s, s as f64 + if s > 10 { 0.5 } else { 0.0 }]))
        .collect();
    let saves = json!({ "within": [5, 10, 15, 20] });
    let expected = json!({ "runs": { "logs": {
        "train_loss": curve,
        "checkpoint/blocked_ms": saves,
        "checkpoint/write_ms": saves,
        "checkpoint/size_mib": saves,
    }}});
    let expected_path = tmp.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    let stdout = run_python("check_curves.py", &[tmp.path(), &expected_path]);
    assert!(stdout.contains("curve checks passed"), "{stdout}");
}
