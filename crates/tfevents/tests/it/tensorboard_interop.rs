//! The real TensorBoard reads our files: `tests/python/check_tensorboard.py` loads a log dir
//! written here with `EventAccumulator` and through a `tensorboard --logdir` server's HTTP API,
//! and compares every scalar, histogram, text and the hparams with `expected.json`.
//!
//! The log dir holds one run (the directory itself, which TensorBoard names `.`) written by two
//! writers: a first run logs steps 1..=50, then a "resumed" run starts a new file in the same
//! second, writes a `SessionLog` `START` at step 30 and logs steps 30..=60 with other values.
//! TensorBoard must show steps 1..=29 of the first run and 30..=60 of the second, never going
//! back. (Each reader purges differently: `EventAccumulator` on any `START`; the server's Python
//! loader on every `START` but a run's first, hence one at the start of the first run too; the
//! Rust data server ignores `SessionLog` and drops a series' points at or after a step that
//! series logs again. Logging the same tags at the same cadence after the resume satisfies all.)
//!
//! The interpreter comes from `WAYPOINT_PYTHON`, which `scripts/test.sh` sets to its virtual
//! environment (with the pinned `tensorboard` of `tests/python/requirements.txt`). Without it,
//! the single `venv-*` in `${WAYPOINT_CACHE:-$HOME/.cache/waypoint}` is used; otherwise the test
//! fails (it never skips silently): run `scripts/test.sh`.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;
use test_python::python;
use tfevents::proto::HistogramProto;
use tfevents::proto::hparams::SessionStatus;
use tfevents::{EventWriter, HParamValue, WriterOptions, histogram, hparams};

const SCALAR_TAGS: [&str; 3] = ["train/loss", "train/acc", "lr"];

/// The value of a scalar series at a step, in the first run (0) or the resumed one (1).
fn scalar_value(tag_index: usize, step: i64, run: u32) -> f32 {
    let base = 1.0 / (step as f32 + 1.0) + tag_index as f32 * 0.37;
    if run == 0 {
        base
    } else {
        base + 0.125 + 1e-7 * step as f32
    }
}

fn histogram_values(step: i64, run: u32) -> Vec<f64> {
    let scale = 0.013 * step as f64 + f64::from(run);
    (0..200)
        .map(|i| ((i as f64) - 80.0) * scale + 1e-3)
        .collect()
}

fn histogram_json(step: i64, h: &HistogramProto) -> Value {
    json!({
        "step": step, "min": h.min, "max": h.max, "num": h.num, "sum": h.sum,
        "sum_squares": h.sum_squares, "bucket_limit": h.bucket_limit, "bucket": h.bucket,
    })
}

/// Writes the log dir and returns what TensorBoard must show.
fn write_log_dir(dir: &Path) -> Value {
    let hp: BTreeMap<String, HParamValue> = [
        ("lr".to_owned(), HParamValue::Number(0.01)),
        ("optimizer".to_owned(), "adamw".into()),
        ("warmup".to_owned(), true.into()),
        ("layers".to_owned(), 12.into()),
    ]
    .into();
    let metrics = ["train/loss", "train/acc"];
    let mut scalars: BTreeMap<&str, Vec<(i64, f32)>> = BTreeMap::new();
    let mut histograms = Vec::new();
    let mut texts = Vec::new();
    let options = WriterOptions::default();
    let t0 = 1_700_000_000.0;

    // The first run: steps 1..=50.
    let mut w = EventWriter::create(dir, &options).unwrap();
    // A fresh run starts with a START too: TensorBoard's Python loader ignores a run's first
    // START and purges only on later ones.
    w.add_session_log_start(0, t0).unwrap();
    w.add_hparams_experiment(hparams::experiment(&hp, &metrics, t0), t0)
        .unwrap();
    w.add_session_start(&hp, 0, t0).unwrap();
    w.add_text("notes", "first run: **markdown** é", 1, t0)
        .unwrap();
    texts.push(json!([1, "first run: **markdown** é"]));
    for step in 1..=50i64 {
        let values: Vec<(&str, f32)> = SCALAR_TAGS
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, scalar_value(i, step, 0)))
            .collect();
        w.add_scalars(step, t0 + step as f64, &values).unwrap();
        if step < 30 {
            for (tag, value) in &values {
                scalars.entry(tag).or_default().push((step, *value));
            }
        }
        if step % 10 == 0 {
            let values = histogram_values(step, 0);
            w.add_histogram("weights", &values, step, t0 + step as f64)
                .unwrap();
            if step < 30 {
                histograms.push(histogram_json(step, &histogram::histogram(&values)));
            }
        }
    }
    w.add_text("notes", "purged by the resume", 40, t0 + 40.0)
        .unwrap();
    let first = w.path().to_path_buf();
    w.flush().unwrap();
    drop(w);

    // The resumed run, in a new file created in the same second: steps 30..=60.
    let mut w = EventWriter::create(dir, &options).unwrap();
    assert!(
        w.path() > first.as_path(),
        "{:?} must sort after {first:?}",
        w.path()
    );
    w.add_session_log_start(30, t0 + 100.0).unwrap();
    for step in 30..=60i64 {
        let values: Vec<(&str, f32)> = SCALAR_TAGS
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, scalar_value(i, step, 1)))
            .collect();
        w.add_scalars(step, t0 + 100.0 + step as f64, &values)
            .unwrap();
        for (tag, value) in &values {
            scalars.entry(tag).or_default().push((step, *value));
        }
        if step % 10 == 0 {
            let values = histogram_values(step, 1);
            w.add_histogram("weights", &values, step, t0 + 100.0 + step as f64)
                .unwrap();
            histograms.push(histogram_json(step, &histogram::histogram(&values)));
        }
    }
    w.add_text("notes", "resumed", 35, t0 + 135.0).unwrap();
    texts.push(json!([35, "resumed"]));
    w.add_session_end(SessionStatus::Success, 60, t0 + 200.0)
        .unwrap();
    w.sync().unwrap();

    let scalars: BTreeMap<&str, Vec<Value>> = scalars
        .into_iter()
        .map(|(tag, points)| {
            (
                tag,
                points
                    .into_iter()
                    .map(|(s, v)| json!([s, f64::from(v)]))
                    .collect(),
            )
        })
        .collect();
    json!({
        "run": ".",
        "scalars": scalars,
        "histograms": {"weights": histograms},
        "texts": {"notes": texts},
        "hparams": {
            "values": {"lr": 0.01, "optimizer": "adamw", "warmup": true, "layers": 12.0},
            "metrics": metrics,
            "status": "STATUS_SUCCESS",
        },
    })
}

#[test]
fn tensorboard_reads_scalars_histograms_text_and_hparams() {
    let dir = TempDir::new().unwrap();
    let logdir = dir.path().join("logs");
    std::fs::create_dir(&logdir).unwrap();
    let expected = write_log_dir(&logdir);
    let expected_path = dir.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();

    let script = test_python::scripts_dir().join("check_tensorboard.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(&logdir)
        .arg(&expected_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_tensorboard.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
    assert!(
        stdout.contains("tensorboard checks passed"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
