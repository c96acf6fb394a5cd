//! The Run forwards to its metric loggers: metrics, checkpoint events, where a resume starts, and
//! the final status. A run killed after a checkpoint and resumed leaves one CSV row per step and
//! TensorBoard scalars whose steps never double back.

use crate::common::training::{Tiny, every_5_keep_1, resume, train_tiny};
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
    // TensorBoard: the scalars read back (as TensorBoard's legacy loader purges on START) never
    // double back, and the checkpoint events are there.
    let mut files: Vec<_> = std::fs::read_dir(tmp.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events.out.tfevents")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let mut points: Vec<(u64, f64)> = Vec::new();
    let mut checkpoint_events = 0;
    for file in &files {
        for point in tfevents::read_scalars(file).unwrap() {
            let step = point.step as u64;
            if point.tag == "train_loss" {
                points.retain(|&(s, _)| s < step); // what a START-aware reader keeps
                points.push((step, point.value as f64));
            } else if point.tag.starts_with("checkpoint/") {
                checkpoint_events += 1;
            }
        }
    }
    let steps: Vec<u64> = points.iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());
    assert_eq!(points[10].1, 11.5);
    assert!(checkpoint_events >= 3, "{checkpoint_events}");
}
