//! [`Experiment`]: what [`crate::ExperimentLogger::setup`] returns. It owns the [`Run`] and what
//! must live exactly as long as it: the preemption handlers, the log files and the lock. Fields
//! drop in declaration order, so the run (which completes its saves in flight when dropped)
//! goes first and the lock last: no other run can take the directory while a save of this one
//! is still being written.
//!
//! It must not change the directory's layout: what it reports was decided by the setup (the
//! names, the version and the loggers are read from the [`RunSpec`] the run was built from).

use super::logs::LogFiles;
use super::setup::RunSpec;
use super::signals::Preemption;
use super::{VERSION_ENV, lock::RunLock};
use crate::dist::RankInfo;
use crate::error::Result;
use crate::resume::AutoResume;
use crate::run::{Checkpointable, Run, SavedCheckpoint};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// A set-up experiment: its directory, its run, and the lock, log files and signal handlers it
/// holds until dropped (or [`Experiment::finish`]ed).
#[derive(Debug)]
pub struct Experiment {
    pub(super) run: Run,
    pub(super) spec: RunSpec,
    pub(super) logger_dir: Option<PathBuf>,
    pub(super) version_dir: PathBuf,
    pub(super) ranks: RankInfo,
    pub(super) previous_run: Option<PathBuf>,
    pub(super) stale_lock: Option<String>,
    pub(super) preemption: Option<Preemption>,
    pub(super) logs: Option<LogFiles>,
    /// Set when the setup found the run complete and skipped its writing steps.
    pub(super) skipped: Option<Box<super::ExperimentLogger>>,
    pub(super) lock: Option<RunLock>,
}

impl Experiment {
    /// The run: restore, report metrics, step ends.
    pub fn run(&self) -> &Run {
        &self.run
    }

    /// The run, mutably.
    pub fn run_mut(&mut self) -> &mut Run {
        &mut self.run
    }

    /// Ends training ([`Run::finish`]: the train-end save, saves in flight completed), then
    /// releases the handlers, the log files and the lock, in this order.
    pub fn finish(
        self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let Experiment { run, .. } = self;
        // The other fields are dropped when this returns, after the run finished.
        run.finish(step, epoch, state)
    }

    /// Builds the run again with other resume rules, keeping the directory, its lock and the
    /// log files; saves in flight are completed first (and returned). For a loop that decides
    /// after looking at the resume point, e.g. to continue a completed run past its end with
    /// `resume_past_end`. On an error the current run stays. A complete run's setup wrote
    /// nothing; reopened to train on, it does now what it skipped (the earlier run's files moved
    /// to `run_<N>/`, the log files, the run files).
    pub fn reopen(&mut self, resume: &AutoResume) -> Result<Vec<SavedCheckpoint>> {
        let saved = self.run.wait_for_saves()?;
        let run = self.spec.build(resume)?;
        let complete = run.resume_point().is_some_and(|p| p.completed);
        if !complete && let Some(logger) = self.skipped.take() {
            let (previous_run, logs) = logger.skipped_steps(&self.version_dir, self.ranks)?;
            self.previous_run = previous_run;
            self.logs = logs;
        }
        self.run = run;
        Ok(saved)
    }

    /// The experiment's name.
    pub fn name(&self) -> &str {
        &self.spec.config.name
    }

    /// The version directory's name, or `None` when there is none (resuming without a given
    /// version, `explicit_log_dir`, or `use_datetime_version` off).
    pub fn version(&self) -> Option<&str> {
        self.spec.config.version.as_deref()
    }

    /// The version directory (absolute): run files, logs, `checkpoints/`.
    pub fn version_dir(&self) -> &Path {
        &self.version_dir
    }

    /// Where loggers write (the version directory) with `update_logger_directory`; `None`
    /// without it, when loggers keep their own directories. Loggers put their files there
    /// (TensorBoard event files, a CSV file) or in a subdirectory of their own; `run_<N>/`
    /// moving never touches them.
    pub fn logger_dir(&self) -> Option<&Path> {
        self.logger_dir.as_deref()
    }

    /// The checkpoints directory.
    pub fn checkpoint_dir(&self) -> &Path {
        self.run.checkpoint_dir()
    }

    /// This process's ranks (global rank = `rank`, local rank = `local_rank.unwrap_or(0)`).
    pub fn ranks(&self) -> RankInfo {
        self.ranks
    }

    /// Whether the TensorBoard logger is wanted.
    pub fn tensorboard(&self) -> bool {
        self.spec.loggers.tensorboard
    }

    /// Whether the CSV logger is wanted.
    pub fn csv(&self) -> bool {
        self.spec.loggers.csv
    }

    /// The hyper-parameters (also in `hparams.yaml`).
    pub fn hparams(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.spec.loggers.hparams.as_ref()
    }

    /// `hparams.yaml`, when hyper-parameters were given (written by global rank 0).
    pub fn hparams_path(&self) -> Option<PathBuf> {
        self.hparams()
            .map(|_| self.version_dir.join(super::HPARAMS_FILE))
    }

    /// Where the loose files of an earlier run in this directory were moved (`run_<N>/`).
    pub fn previous_run_dir(&self) -> Option<&Path> {
        self.previous_run.as_deref()
    }

    /// The holder of a stale lock taken over at setup (a run that died), described.
    pub fn stale_lock(&self) -> Option<&str> {
        self.stale_lock.as_deref()
    }

    /// The lock file, when this process holds it (global rank 0).
    pub fn lock_path(&self) -> Option<&Path> {
        self.lock.as_ref().map(RunLock::path)
    }

    /// This rank's text log and error log, when it writes them.
    pub fn log_files(&self) -> Option<(&Path, &Path)> {
        self.logs.as_ref().map(|l| (l.text_path(), l.errors_path()))
    }

    /// Whether a preemption signal arrived (the run saves and stops at the next step end).
    pub fn preemption_requested(&self) -> bool {
        self.preemption
            .as_ref()
            .is_some_and(|p| p.flag().load(Ordering::SeqCst))
    }

    /// The environment the processes this run starts need to agree on its version directory:
    /// `WAYPOINT_VERSION` = the version (empty for none).
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![(
            VERSION_ENV.to_owned(),
            self.version().unwrap_or_default().to_owned(),
        )]
    }
}
