//! `TensorBoardLogger`: what it writes, read back with `tfevents`, and a resumed run read by the
//! real TensorBoard (its three readers) with no step doubling back.

use super::support::{event_files, run_python, start_steps, tmp};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use tfevents::proto::event::What;
use tfevents::proto::hparams::SessionStatus;
use tfevents::proto::summary::value;
use waypoint::{LoggerOptions, Loggers, MetricLogger, RunStatus, TensorBoardLogger};

const TAGS: [&str; 2] = ["train/loss", "lr"];

fn value_of(tag: usize, step: u64, run: u32) -> f64 {
    1.0 / (step as f64 + 1.0) + tag as f64 * 0.37 + f64::from(run) * 0.125
}

fn values(step: u64, run: u32) -> Vec<(&'static str, f64)> {
    TAGS.iter()
        .enumerate()
        .map(|(i, t)| (*t, value_of(i, step, run)))
        .collect()
}

/// A first run logging steps 1..=40 and killed (dropped without finalize), then a run resumed
/// at 25 through `Loggers`, logging 25..=60 and finishing.
fn write_resumed_run(dir: &Path) {
    let params = json!({"lr": 0.01, "layers": 4, "optimizer": {"name": "adamw"}});
    let mut first = TensorBoardLogger::new(dir, None).unwrap();
    first.log_hyperparams(params.as_object().unwrap()).unwrap();
    for step in 1..=40 {
        first.log_metrics(step, 1.7e9, &values(step, 0)).unwrap();
        if step == 20 {
            first.checkpoint_saved(&super::checkpoint(step)).unwrap();
        }
    }
    first
        .log_text(30, 1.7e9, "notes", "lost with the kill")
        .unwrap();
    first.flush().unwrap();
    drop(first);

    let second = TensorBoardLogger::new(dir, Some(25)).unwrap();
    let mut log = Loggers::spawn(vec![Box::new(second)], LoggerOptions::default()).unwrap();
    log.log_hyperparams(params.as_object().unwrap());
    for step in 25..=60 {
        log.log_metrics(step, &values(step, 1));
    }
    log.finalize(RunStatus::Success).unwrap();
}

#[test]
fn records_read_back_with_tfevents() {
    let dir = tmp();
    write_resumed_run(dir.path());
    let files = event_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(start_steps(&files[0]), [0]);
    assert_eq!(start_steps(&files[1]), [25]);

    // The START is each file's first record after the file version.
    for (file, step) in files.iter().zip([0, 25]) {
        let events = tfevents::read_events(file).unwrap();
        assert!(matches!(events[0].what, Some(What::FileVersion(_))));
        assert!(matches!(events[1].what, Some(What::SessionLog(_))));
        assert_eq!(events[1].step, step);
    }

    let mut first: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for p in tfevents::read_scalars(&files[0]).unwrap() {
        first.entry(p.tag).or_default().push((p.step, p.value));
    }
    for (i, tag) in TAGS.iter().enumerate() {
        let want: Vec<(i64, f32)> = (1..=40)
            .map(|s| (s as i64, value_of(i, s, 0) as f32))
            .collect();
        assert_eq!(first[*tag], want, "{tag}");
    }
    assert_eq!(first["checkpoint/blocked_ms"], [(20, 1.5)]);
    assert_eq!(first["checkpoint/write_ms"], [(20, 20.25)]);
    assert_eq!(first["checkpoint/size_mib"], [(20, 3.0)]);

    let second = tfevents::read_scalars(&files[1]).unwrap();
    assert_eq!(second.len(), 2 * 36);
    assert_eq!((second[0].step, second.last().unwrap().step), (25, 60));

    // Text and the hparams session start and end.
    let events = tfevents::read_events(&files[0]).unwrap();
    let texts: Vec<(i64, String)> = events
        .iter()
        .flat_map(|e| {
            let step = e.step;
            e.summary()
                .into_iter()
                .flat_map(|s| s.value.iter())
                .filter(|v| v.tag == "checkpoint" || v.tag == "notes")
                .map(move |v| (step, v.tag.clone()))
        })
        .collect();
    assert_eq!(texts, [(20, "checkpoint".into()), (30, "notes".into())]);
    let tags: Vec<String> = tfevents::read_events(&files[1])
        .unwrap()
        .iter()
        .flat_map(|e| e.summary().into_iter().flat_map(|s| s.value.iter()))
        .filter(|v| !matches!(v.value, Some(value::Value::SimpleValue(_))))
        .map(|v| v.tag.clone())
        .collect();
    assert_eq!(
        tags,
        ["_hparams_/session_start_info", "_hparams_/session_end_info"]
    );
    assert_eq!(
        waypoint::loggers::session_status(RunStatus::Success),
        SessionStatus::Success
    );
}

#[test]
fn a_resume_told_before_anything_else_replaces_the_first_start() {
    let dir = tmp();
    let mut tb = TensorBoardLogger::new(dir.path(), None).unwrap();
    tb.resumed(17).unwrap();
    tb.log_metrics(17, 0.0, &[("x", 1.0)]).unwrap();
    tb.resumed(12).unwrap();
    tb.log_metrics(12, 0.0, &[("x", 2.0)]).unwrap();
    tb.finalize(RunStatus::Killed).unwrap();
    // A START at 0 would have purged every earlier run's point.
    assert_eq!(start_steps(tb.path().unwrap()), [17, 12]);
}

#[test]
fn tensorboard_reads_a_resumed_run() {
    let dir = tmp();
    let logdir = dir.path().join("logs");
    // The run in a directory below the log dir, as in an experiment's layout (TensorBoard
    // infers no hparams metric values for a session at the log dir's root, named ".").
    write_resumed_run(&logdir.join("run"));
    let scalars: BTreeMap<&str, Vec<Value>> = TAGS
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            let points = (1..25)
                .map(|s| (s, value_of(i, s, 0)))
                .chain((25..=60).map(|s| (s, value_of(i, s, 1))))
                .map(|(s, v)| json!([s, f64::from(v as f32)]))
                .collect();
            (*tag, points)
        })
        .collect();
    let expected = json!({
        "run": "run",
        "scalars": scalars,
        "hparams": {
            "values": {"lr": 0.01, "layers": 4.0, "optimizer/name": "adamw"},
            "status": "STATUS_SUCCESS",
            "metrics": TAGS,
        },
    });
    let expected_path = dir.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    let stdout = run_python("check_logger_resume.py", &[&logdir, &expected_path]);
    print!("{stdout}");
    assert!(stdout.contains("resumed run checks passed"), "{stdout}");
}
