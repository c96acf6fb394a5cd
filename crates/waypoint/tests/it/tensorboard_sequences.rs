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

use crate::common::training::{Tiny, resume};
use crate::loggers::support::{event_files, run_python, start_steps};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use waypoint::{AutoResume, ExperimentLogger, ModelCheckpoint, SavedCheckpoint};

/// The scalar tags a checkpoint adds at its step.
const CHECKPOINT_TAGS: [&str; 3] = [
    "checkpoint/blocked_ms",
    "checkpoint/write_ms",
    "checkpoint/size_mib",
];

/// Per tag, the steps the final state went through and the value logged last (`None`: a
/// measured value, any is right).
#[derive(Debug, Default, Clone)]
struct Curves(BTreeMap<String, BTreeMap<u64, Option<f64>>>);

impl Curves {
    /// A resume from a checkpoint at `step`: what followed it is rewound.
    fn rewind(&mut self, step: u64) {
        for points in self.0.values_mut() {
            points.retain(|s, _| *s <= step);
        }
    }

    fn log(&mut self, tag: &str, step: u64, value: Option<f64>) {
        self.0
            .entry(tag.to_owned())
            .or_default()
            .insert(step, value);
    }

    /// As TensorBoard shows it: 32-bit values.
    fn to_json(&self) -> serde_json::Value {
        let tags: serde_json::Map<String, serde_json::Value> = self
            .0
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
}

/// How a session (one process's run) ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// Dropped without `finish` after this step (its saves committed): a kill.
    KilledAfter(u64),
    /// Trains to `max_steps` and finishes.
    Finish,
}

/// One run directory and what it went through.
struct Sequence {
    root: PathBuf,
    name: &'static str,
    max_steps: u64,
    curves: Curves,
    /// The `START` step each event file must hold, in file order.
    starts: Vec<i64>,
    /// Sessions so far (each logs values of its own).
    sessions: u32,
    /// Every checkpoint committed, in order.
    saved: Vec<SavedCheckpoint>,
}

fn train_loss(step: u64, session: u32) -> f64 {
    1.0 / (step as f64 + 1.0) + f64::from(session) * 0.125
}

fn val_loss(step: u64, session: u32) -> f64 {
    2.0 / (step as f64 + 1.0) + f64::from(session) * 0.25
}

impl Sequence {
    fn new(root: &Path, name: &'static str, max_steps: u64) -> Self {
        Sequence {
            root: root.to_path_buf(),
            name,
            max_steps,
            curves: Curves::default(),
            starts: Vec::new(),
            sessions: 0,
            saved: Vec::new(),
        }
    }

    fn version_dir(&self) -> PathBuf {
        self.root.join(self.name).join("v1")
    }

    /// The run directory TensorBoard shows (relative to the log dir).
    fn tb_run(&self) -> String {
        format!("{}/v1/tensorboard", self.name)
    }

    /// One process: set up (the production order), restore, train, end as told.
    fn session(&mut self, end: End, resume: &AutoResume, dirpath: Option<&Path>) {
        let session = self.sessions;
        self.sessions += 1;
        let mut policy = ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(-1)
            .every_n_train_steps(5)
            .async_save(false);
        if let Some(dir) = dirpath {
            policy = policy.dirpath(dir.to_str().unwrap());
        }
        let logger = ExperimentLogger::builder()
            .log_dir(&self.root)
            .name(self.name)
            .version("v1")
            .max_steps(self.max_steps)
            .hparams(
                json!({"lr": 0.01, "session": session})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .checkpoint(policy.build().unwrap())
            .build()
            .unwrap();
        let mut experiment = logger.setup(resume).unwrap();
        let mut tiny = Tiny::new();
        let point = experiment.run_mut().restore(&mut tiny).unwrap();
        if let Some(p) = point.as_ref().filter(|p| p.completed) {
            // As waypoint-train does: the end of training is told again; nothing is logged.
            let step = p.step;
            experiment
                .run_mut()
                .log_metrics(step, &[("val_loss", val_loss(step, session))]);
            let saved = experiment.finish(step, 0, &tiny).unwrap();
            assert!(saved.is_empty(), "{saved:?}");
            return;
        }
        let from = point.as_ref().map_or(0, |p| p.step);
        self.curves.rewind(from);
        self.starts
            .push(point.as_ref().map_or(0, |p| p.step as i64 + 1));
        let until = match end {
            End::KilledAfter(step) => step,
            End::Finish => self.max_steps,
        };
        let run = experiment.run_mut();
        while tiny.step < until {
            tiny.train_step();
            let step = tiny.step;
            let mut metrics = vec![("train_loss", train_loss(step, session))];
            if step.is_multiple_of(5) {
                metrics.push(("val_loss", val_loss(step, session)));
            }
            run.log_metrics(step, &metrics);
            for (tag, value) in &metrics {
                self.curves.log(tag, step, Some(*value));
            }
            let saved = run.step_end(step, 0, &tiny).unwrap();
            self.record(saved);
        }
        match end {
            End::KilledAfter(_) => drop(experiment),
            End::Finish => {
                let saved = experiment.finish(tiny.step, 0, &tiny).unwrap();
                self.record(saved);
            }
        }
    }

    fn record(&mut self, saved: Vec<SavedCheckpoint>) {
        for s in &saved {
            for tag in CHECKPOINT_TAGS {
                self.curves.log(tag, s.step, None);
            }
        }
        self.saved.extend(saved);
    }

    /// The committed checkpoint of `step` (not the -last).
    fn checkpoint_at(&self, step: u64) -> PathBuf {
        self.saved
            .iter()
            .find(|s| s.step == step && !s.name.ends_with("-last") && !s.link)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| panic!("no checkpoint at step {step}: {:?}", self.saved))
    }

    /// Checks what waypoint's own files say: one START per event file at the right step, and
    /// `metrics.csv` holding each step once with the surviving values.
    fn check_files(&self) {
        let files = event_files(&self.version_dir().join("tensorboard"));
        let starts: Vec<Vec<i64>> = files.iter().map(|f| start_steps(f)).collect();
        let want: Vec<Vec<i64>> = self.starts.iter().map(|s| vec![*s]).collect();
        assert_eq!(starts, want, "{}: START steps per event file", self.name);
        let csv = std::fs::read_to_string(self.version_dir().join("csv/metrics.csv")).unwrap();
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
        let want: Vec<(u64, f64)> = self.curves.0["train_loss"]
            .iter()
            .map(|(s, v)| (*s, v.unwrap()))
            .collect();
        assert_eq!(rows, want, "{}: metrics.csv\n{csv}", self.name);
    }
}

#[test]
fn tensorboard_shows_every_sequence_once_with_the_surviving_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut sequences = Vec::new();

    let mut fresh = Sequence::new(root, "fresh", 20);
    fresh.session(End::Finish, &resume(), None);
    sequences.push(fresh);

    let mut killed = Sequence::new(root, "killed_resumed", 20);
    killed.session(End::KilledAfter(13), &resume(), None);
    killed.session(End::Finish, &resume(), None);
    sequences.push(killed);

    let mut twice = Sequence::new(root, "resumed_twice", 25);
    twice.session(End::KilledAfter(13), &resume(), None);
    twice.session(End::KilledAfter(18), &resume(), None);
    twice.session(End::Finish, &resume(), None);
    sequences.push(twice);

    // Killed at 18 (checkpoints at 5, 10, 15), then resumed from the one at 5 by
    // resume_from_path: steps 6..18 are rewound and logged again with new values (the
    // resumed run saves into a directory of its own, beside the older run's checkpoints).
    let mut rewound = Sequence::new(root, "rewound", 20);
    rewound.session(End::KilledAfter(18), &resume(), None);
    let older = rewound.checkpoint_at(5);
    let from_path = AutoResume::builder()
        .resume_from_path(&older)
        .build()
        .unwrap();
    let elsewhere = root.join("rewound-checkpoints");
    rewound.session(End::Finish, &from_path, Some(&elsewhere));
    sequences.push(rewound);

    let mut rerun = Sequence::new(root, "completed_rerun", 20);
    rerun.session(End::Finish, &resume(), None);
    rerun.session(End::Finish, &resume(), None); // already complete: logs nothing
    rerun.session(End::Finish, &resume(), None);
    sequences.push(rerun);

    // Six short runs, each killed three steps after its checkpoint, the last one finishing.
    let mut short = Sequence::new(root, "many_short", 33);
    for k in 0..5 {
        short.session(End::KilledAfter(5 * k + 8), &resume(), None);
    }
    short.session(End::Finish, &resume(), None);
    sequences.push(short);

    for s in &sequences {
        s.check_files();
    }
    let runs: serde_json::Map<String, serde_json::Value> = sequences
        .iter()
        .map(|s| (s.tb_run(), s.curves.to_json()))
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
