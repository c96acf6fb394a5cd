//! The [`MetricLogger`] trait every destination implements, and the plain data it receives:
//! [`CheckpointEvent`] and [`RunStatus`].
//!
//! A logger is synchronous and owned by one thread: [`Loggers`](super::Loggers) calls it from its
//! background writer, never from the training thread. It does no batching or queueing of its own.

use crate::error::Result;
use std::path::PathBuf;

/// A destination for a run's metrics: TensorBoard event files, a CSV file, or your own.
///
/// Calls arrive in the order the training loop made them, from one thread at a time (the
/// background writer of [`Loggers`](super::Loggers)). A logger may buffer; [`flush`](Self::flush)
/// must hand what it buffered to the operating system, and [`finalize`](Self::finalize) must also
/// make it durable. An error is reported to the training loop on its next `flush` or `finalize`;
/// the logger keeps receiving later calls.
pub trait MetricLogger: Send {
    /// A short name for error messages (`"tensorboard"`, `"csv"`).
    fn name(&self) -> &'static str {
        "logger"
    }

    /// Records the values of some metrics at `step`, measured at `wall_time` (seconds since the
    /// Unix epoch). Several calls may carry the same step (training and validation metrics).
    fn log_metrics(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()>;

    /// Records the run's hyperparameters (a flat or nested JSON object).
    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()>;

    /// Records a piece of text (Markdown where the destination renders it) under `tag`.
    fn log_text(&mut self, step: u64, wall_time: f64, tag: &str, text: &str) -> Result<()> {
        let _ = (step, wall_time, tag, text);
        Ok(())
    }

    /// Records that a checkpoint was committed. Several may be committed at one step (a top-k
    /// checkpoint and the `-last`, a step-end save and the train-end save); a logger that shows
    /// the save metrics as curves reports one value per step (the provided loggers: the largest
    /// `blocked_ms` and `write_ms`, the sum of the sizes), once the run has moved past it.
    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()>;

    /// Where the run starts logging, told before anything else is logged (a [`Run`](crate::Run)
    /// tells it when it is built, or for a resumed run when it restores): `step` is the first
    /// step it logs, and whatever earlier runs logged at or after `step` is superseded (a killed
    /// run's future that its checkpoint does not contain; everything, for a run starting from
    /// scratch at 0). What they logged before `step` stays and is not logged again.
    fn resumed(&mut self, step: u64) -> Result<()>;

    /// The run has nothing to log (it found itself already complete): no call follows, not even
    /// [`finalize`](Self::finalize). A logger leaves no trace of this run: no new file, row,
    /// remote run or record. The default does nothing.
    fn discard(&mut self) -> Result<()> {
        Ok(())
    }

    /// What a resumed run must hand back to this logger so that it continues where this run
    /// was (the MLflow run id, the W&B run id); `None` for a logger that needs nothing. Read after
    /// every flush and saved in each checkpoint's commit record (under
    /// `loggers` ([`crate::format::Reserved::loggers`]), by [`name`](Self::name)).
    fn resume_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// The run restored a checkpoint: `state` is what [`resume_state`](Self::resume_state)
    /// returned when it was saved. Arrives before [`resumed`](Self::resumed).
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// Hands everything buffered to the operating system.
    fn flush(&mut self) -> Result<()>;

    /// The run ends with `status`: writes what the destination records about an end, flushes and
    /// makes the data durable. No call follows.
    fn finalize(&mut self, status: RunStatus) -> Result<()>;
}

/// A checkpoint that was committed, as loggers record it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointEvent {
    /// The step saved.
    pub step: u64,
    /// The checkpoint's directory.
    pub path: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Milliseconds the training loop was blocked by the save (staging, or the whole save when
    /// synchronous).
    pub blocked_ms: f64,
    /// Milliseconds the save took from its start to its commit.
    pub write_ms: f64,
}

/// How a run ended, as recorded by [`MetricLogger::finalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Training finished.
    Success,
    /// Training stopped on an error (or a panic).
    Failed,
    /// Training was interrupted (Ctrl-C, a kill the process could catch).
    Killed,
    /// Training was stopped to be resumed later (a scheduler's preemption signal).
    Preempted,
}

impl RunStatus {
    /// The lower-case name (`"success"`, `"failed"`, `"killed"`, `"preempted"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
            RunStatus::Preempted => "preempted",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
