//! What the real TensorBoard (and the CSV file) show for the sequences production writes, fed
//! through `ExperimentLogger` and its `Run` exactly as a training loop does (the loggers are
//! spawned and get the hyperparameters before the run knows whether it resumes): fresh; killed
//! mid-run then resumed; resumed twice; resumed from an older checkpoint than the newest
//! (`resume_from_path`); completed then started again; many short runs into one directory.
//!
//! For each tag, TensorBoard must show exactly the steps the final state went through, once
//! each, with the values of the run that logged them last (`check_curves.py`: EventAccumulator
//! with its defaults and `tensorboard --logdir` served over HTTP, both loaders, one server start
//! for all sequences). Each event file holds exactly one `SessionLog` `START`, at 0 for a fresh
//! run and at the resume step for a resumed one; a run that finds itself complete writes no file.

use crate::common::sequences::{Curves, End, Sequence};
use crate::common::training::resume;
use crate::loggers::support::{event_files, run_python, start_steps};
use serde_json::json;
use std::path::Path;
use waypoint::{AutoResume, ExperimentLoggerBuilder};

/// The scalar tags a checkpoint adds at its step.
const CHECKPOINT_TAGS: [&str; 3] = [
    "checkpoint/blocked_ms",
    "checkpoint/write_ms",
    "checkpoint/size_mib",
];

/// TensorBoard and CSV on (the builder's defaults), nothing else.
fn tensorboard(b: ExperimentLoggerBuilder) -> ExperimentLoggerBuilder {
    b
}

/// A sequence judged by TensorBoard: checkpoints add their scalars.
fn sequence(root: &Path, name: &'static str, max_steps: u64) -> Sequence {
    let mut seq = Sequence::new(root, name, max_steps, tensorboard);
    seq.checkpoint_tags = &CHECKPOINT_TAGS;
    seq
}

/// The run directory TensorBoard shows (relative to the log dir).
fn tb_run(seq: &Sequence) -> String {
    format!("{}/v1/tensorboard", seq.name)
}

/// As TensorBoard shows the curves: 32-bit values.
fn to_json(curves: &Curves) -> serde_json::Value {
    let tags: serde_json::Map<String, serde_json::Value> = curves
        .iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(tag, points)| {
            let points: Vec<serde_json::Value> = points
                .iter()
                .map(|(s, v)| json!([s, v.map(|v| f64::from(v as f32))]))
                .collect();
            (tag.clone(), json!(points))
        })
        .collect();
    json!(tags)
}

/// Checks what waypoint's own files say: one START per event file at the right step, and
/// `metrics.csv` holding each step once with the surviving values.
fn check_files(seq: &Sequence) {
    let files = event_files(&seq.version_dir().join("tensorboard"));
    let starts: Vec<Vec<i64>> = files.iter().map(|f| start_steps(f)).collect();
    let want: Vec<Vec<i64>> = seq.starts.iter().map(|s| vec![*s]).collect();
    assert_eq!(starts, want, "{}: START steps per event file", seq.name);
    let csv = std::fs::read_to_string(seq.version_dir().join("csv/metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (step_col, loss_col) = (column("step"), column("train_loss"));
    let rows: Vec<(u64, f64)> = lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (
                fields[step_col].parse().unwrap(),
                fields[loss_col].parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, f64)> = seq.curves["train_loss"]
        .iter()
        .map(|(s, v)| (*s, v.unwrap()))
        .collect();
    assert_eq!(rows, want, "{}: metrics.csv\n{csv}", seq.name);
}

#[test]
fn tensorboard_shows_every_sequence_once_with_the_surviving_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut sequences = Vec::new();

    let mut fresh = sequence(root, "fresh", 20);
    fresh.session(End::Finish, &resume(), None);
    sequences.push(fresh);

    let mut killed = sequence(root, "killed_resumed", 20);
    killed.session(End::KilledAfter(13), &resume(), None);
    killed.session(End::Finish, &resume(), None);
    sequences.push(killed);

    let mut twice = sequence(root, "resumed_twice", 25);
    twice.session(End::KilledAfter(13), &resume(), None);
    twice.session(End::KilledAfter(18), &resume(), None);
    twice.session(End::Finish, &resume(), None);
    sequences.push(twice);

    // Killed at 18 (checkpoints at 5, 10, 15), then resumed from the one at 5 by
    // resume_from_path: steps 6..18 are rewound and logged again with new values (the
    // resumed run saves into a directory of its own, beside the older run's checkpoints).
    let mut rewound = sequence(root, "rewound", 20);
    rewound.session(End::KilledAfter(18), &resume(), None);
    let older = rewound.checkpoint_at(5);
    let from_path = AutoResume::builder()
        .resume_from_path(&older)
        .build()
        .unwrap();
    let elsewhere = root.join("rewound-checkpoints");
    rewound.session(End::Finish, &from_path, Some(&elsewhere));
    sequences.push(rewound);

    let mut rerun = sequence(root, "completed_rerun", 20);
    rerun.session(End::Finish, &resume(), None);
    rerun.session(End::Finish, &resume(), None); // already complete: logs nothing
    rerun.session(End::Finish, &resume(), None);
    sequences.push(rerun);

    // Six short runs, each killed three steps after its checkpoint, the last one finishing.
    let mut short = sequence(root, "many_short", 33);
    for k in 0..5 {
        short.session(End::KilledAfter(5 * k + 8), &resume(), None);
    }
    short.session(End::Finish, &resume(), None);
    sequences.push(short);

    for s in &sequences {
        check_files(s);
    }
    let runs: serde_json::Map<String, serde_json::Value> = sequences
        .iter()
        .map(|s| (tb_run(s), to_json(&s.curves)))
        .collect();
    let expected = root.join("expected.json");
    std::fs::write(
        &expected,
        serde_json::to_vec_pretty(&json!({ "runs": runs })).unwrap(),
    )
    .unwrap();
    let stdout = run_python("check_curves.py", &[root, &expected]);
    print!("{stdout}");
    assert!(stdout.contains("curve checks passed"), "{stdout}");
}
