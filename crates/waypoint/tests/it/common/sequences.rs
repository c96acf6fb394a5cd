//! A run directory driven through the sessions production writes (set up through
//! `ExperimentLogger`, restore, train, killed or finished), remembering the curve each metric
//! must show afterwards: the steps the final state went through, with the value logged last.
//! Shared by the judges of each logger (`tensorboard_sequences`, `wandb_sequences`).

use crate::common::training::Tiny;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use waypoint::{AutoResume, ExperimentLoggerBuilder, ModelCheckpoint, SavedCheckpoint};

/// Per tag, step → the value logged last (`None`: a measured value, any is right).
pub type Curves = BTreeMap<String, BTreeMap<u64, Option<f64>>>;

/// How a session (one process's run) ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// Dropped without `finish` after this step (its saves committed): a kill.
    KilledAfter(u64),
    /// Trains to `max_steps` and finishes.
    Finish,
}

/// The training loss session `session` logs at `step`.
pub fn train_loss(step: u64, session: u32) -> f64 {
    1.0 / (step as f64 + 1.0) + f64::from(session) * 0.125
}

/// The validation loss session `session` logs at `step` (every 5 steps).
pub fn val_loss(step: u64, session: u32) -> f64 {
    2.0 / (step as f64 + 1.0) + f64::from(session) * 0.25
}

/// One run directory (`<root>/<name>/v1`) and what it went through.
pub struct Sequence {
    pub root: PathBuf,
    pub name: &'static str,
    pub max_steps: u64,
    pub curves: Curves,
    /// The first step each writing session logs (its event file's `START`), in order.
    pub starts: Vec<i64>,
    /// Sessions so far (each logs values of its own).
    pub sessions: u32,
    /// Every checkpoint committed, in order.
    pub saved: Vec<SavedCheckpoint>,
    /// Tags each committed checkpoint adds at its step (measured values).
    pub checkpoint_tags: &'static [&'static str],
    /// The loggers the judge reads (applied to every session's builder).
    pub loggers: fn(ExperimentLoggerBuilder) -> ExperimentLoggerBuilder,
}

impl Sequence {
    pub fn new(
        root: &Path,
        name: &'static str,
        max_steps: u64,
        loggers: fn(ExperimentLoggerBuilder) -> ExperimentLoggerBuilder,
    ) -> Self {
        Sequence {
            root: root.to_path_buf(),
            name,
            max_steps,
            curves: Curves::new(),
            starts: Vec::new(),
            sessions: 0,
            saved: Vec::new(),
            checkpoint_tags: &[],
            loggers,
        }
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(self.name).join("v1")
    }

    /// One process: set up (the production order), restore, train, end as told.
    pub fn session(&mut self, end: End, resume: &AutoResume, dirpath: Option<&Path>) {
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
        let logger = waypoint::ExperimentLogger::builder()
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
            .checkpoint(policy.build().unwrap());
        let mut experiment = (self.loggers)(logger)
            .build()
            .unwrap()
            .setup(resume)
            .unwrap();
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
        for points in self.curves.values_mut() {
            points.retain(|s, _| *s <= from); // rewound
        }
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
                self.log(tag, step, Some(*value));
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

    fn log(&mut self, tag: &str, step: u64, value: Option<f64>) {
        self.curves
            .entry(tag.to_owned())
            .or_default()
            .insert(step, value);
    }

    fn record(&mut self, saved: Vec<SavedCheckpoint>) {
        for s in &saved {
            for tag in self.checkpoint_tags {
                self.log(tag, s.step, None);
            }
        }
        self.saved.extend(saved);
    }

    /// The committed checkpoint of `step` (not the -last).
    pub fn checkpoint_at(&self, step: u64) -> PathBuf {
        self.saved
            .iter()
            .find(|s| s.step == step && !s.name.ends_with("-last") && !s.link)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| panic!("no checkpoint at step {step}: {:?}", self.saved))
    }
}
