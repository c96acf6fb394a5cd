//! What a user gets in W&B from the offline runs production writes for the sequences of
//! `tensorboard_sequences.rs`, fed through `ExperimentLogger` and its `Run` as a training loop
//! does: killed mid-run then resumed; resumed twice; resumed from an older checkpoint than the
//! newest (`resume_from_path`); completed then started again.
//!
//! The files are decoded by the pinned wandb's own reader (`wandb leet inspect --json`) and
//! listed by `wandb sync --dry-run`; what `wandb sync` makes of them is W&B's rule, read in
//! wandb-core's source (`core/internal/runsync`, `runupserter`, `runbranch/rewind.go`): the
//! files of one run id are synced one after the other in order of their run record's
//! `start_time`; the first one starts the run's history; a later one whose run record has a
//! branch point on its own run at `_step` = *k* rewinds the run (W&B's `RewindRun`: history after
//! step *k* is dropped) and its rows follow; a later one without starts over at the history's
//! first line (no resume lookup is made, the history offset is 0). For each metric, the history
//! must hold exactly the steps the final state went through, once each, with the values of the
//! run that logged them last; a run that finds itself complete writes nothing.

use crate::common::sequences::{Curves, End, Sequence};
use crate::common::training::resume;
use crate::wandb::{records, run_files};
use serde_json::Value;
use std::path::{Path, PathBuf};
use waypoint::{AutoResume, ExperimentLoggerBuilder};

/// W&B offline on, TensorBoard and CSV off.
fn wandb_only(b: ExperimentLoggerBuilder) -> ExperimentLoggerBuilder {
    b.tensorboard(false).csv(false).wandb_offline(true)
}

/// wandb's own view of a sequence.
trait Decoded {
    /// The run's `.wandb` files, decoded by wandb.
    fn decoded(&self, home: &Path) -> Vec<Vec<Value>>;
}

impl Decoded for Sequence {
    fn decoded(&self, home: &Path) -> Vec<Vec<Value>> {
        run_files(&self.version_dir())
            .iter()
            .map(|f| records(home, f))
            .collect()
    }
}

/// A protobuf JSON timestamp (`2026-01-02T03:04:05.123Z`, 0 to 9 fraction digits) padded to
/// nanoseconds, so that timestamps compare as strings.
fn sortable_time(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{frac:0<9}")
}

/// The run's history after `wandb sync` of all its files (see the module documentation): per
/// metric, step → value. Fails where W&B would show a step twice.
fn synced_history(files: &[Vec<Value>]) -> Curves {
    let mut files: Vec<&Vec<Value>> = files.iter().collect();
    let run = |f: &Vec<Value>| -> Value {
        f.iter()
            .find(|r| r["type"] == "run")
            .map(|r| r["run"].clone())
            .expect("a run record")
    };
    files.sort_by_key(|f| sortable_time(run(f)["start_time"].as_str().unwrap()));
    let mut lines: Vec<&Value> = Vec::new(); // the history's rows, in line order
    for (i, file) in files.iter().enumerate() {
        let run = run(file);
        let rows: Vec<&Value> = file
            .iter()
            .filter(|r| r["type"] == "history")
            .map(|r| &r["history"])
            .collect();
        let branch = &run["branch_point"];
        if i == 0 {
            assert!(branch.is_null(), "the first file rewinds nothing: {run}");
        } else if branch["run"] == run["run_id"] && branch["metric"] == "_step" {
            let k = branch["value"].as_f64().unwrap();
            lines.retain(|row| row["item"]["_step"].as_f64().unwrap() <= k);
            let first = rows.first().map(|r| r["item"]["_step"].as_f64().unwrap());
            assert!(
                first.is_none_or(|s| s > k),
                "rows at or before the branch: {run}"
            );
        } else {
            // No resume lookup, history offset 0: the rows overwrite the first lines.
            let overwritten = rows.len().min(lines.len());
            lines.drain(..overwritten);
            let mut start = rows.clone();
            start.append(&mut lines);
            lines = start;
            continue;
        }
        lines.extend(rows);
    }
    let mut curves = Curves::new();
    let mut last_step = None;
    for row in lines {
        let step = row["item"]["_step"].as_u64().unwrap();
        assert!(
            last_step.is_none_or(|s| s < step),
            "history rows not in strictly increasing steps: {step} after {last_step:?}"
        );
        last_step = Some(step);
        for (key, value) in row["item"].as_object().unwrap() {
            if !key.starts_with('_') {
                curves
                    .entry(key.clone())
                    .or_default()
                    .insert(step, Some(value.as_f64().unwrap()));
            }
        }
    }
    curves
}

/// `wandb sync --dry-run` of the run's offline directories: it would sync each of them.
fn sync_dry_run(home: &Path, seq: &Sequence) {
    let files = run_files(&seq.version_dir());
    let dirs: Vec<&Path> = files.iter().map(|f| f.parent().unwrap()).collect();
    let text = crate::wandb::sync_dry_run(home, &dirs);
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            text.contains(name),
            "{}: {name} not listed:\n{text}",
            seq.name
        );
    }
}

fn check(home: &Path, seq: &Sequence, sessions_writing: usize) {
    let files = seq.decoded(home);
    assert_eq!(files.len(), sessions_writing, "{}: offline runs", seq.name);
    sync_dry_run(home, seq);
    assert_eq!(
        synced_history(&files),
        seq.curves,
        "{}: W&B history",
        seq.name
    );
}

#[test]
fn wandb_shows_every_sequence_once_with_the_surviving_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("home");

    let mut killed = Sequence::new(root, "killed_resumed", 20, wandb_only);
    killed.session(End::KilledAfter(13), &resume(), None);
    killed.session(End::Finish, &resume(), None);
    check(&home, &killed, 2);

    let mut twice = Sequence::new(root, "resumed_twice", 25, wandb_only);
    twice.session(End::KilledAfter(13), &resume(), None);
    twice.session(End::KilledAfter(18), &resume(), None);
    twice.session(End::Finish, &resume(), None);
    check(&home, &twice, 3);

    // Killed at 18 (checkpoints at 5, 10, 15), then resumed from the one at 5: steps 6..18 are
    // rewound and logged again with new values.
    let mut rewound = Sequence::new(root, "rewound", 20, wandb_only);
    rewound.session(End::KilledAfter(18), &resume(), None);
    let from_path = AutoResume::builder()
        .resume_from_path(rewound.checkpoint_at(5))
        .build()
        .unwrap();
    let elsewhere = root.join("rewound-checkpoints");
    rewound.session(End::Finish, &from_path, Some(&elsewhere));
    check(&home, &rewound, 2);

    // Started again once complete: no new offline run, the first one's bytes unchanged.
    let mut rerun = Sequence::new(root, "completed_rerun", 20, wandb_only);
    rerun.session(End::Finish, &resume(), None);
    let snapshot = |seq: &Sequence| -> Vec<(PathBuf, Vec<u8>)> {
        let wandb_dir = seq.version_dir().join("wandb");
        let mut all: Vec<(PathBuf, Vec<u8>)> = walk(&wandb_dir)
            .into_iter()
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        all.sort();
        all
    };
    let before = snapshot(&rerun);
    rerun.session(End::Finish, &resume(), None);
    rerun.session(End::Finish, &resume(), None);
    assert!(
        before == snapshot(&rerun),
        "a rerun of a complete run wrote W&B files"
    );
    check(&home, &rerun, 1);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
