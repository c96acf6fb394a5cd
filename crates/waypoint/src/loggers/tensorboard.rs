//! [`TensorBoardLogger`]: a [`MetricLogger`] writing TensorBoard event files with the `tfevents`
//! crate: scalars, text, hyperparameters (the hparams plugin's session start and end) and the
//! one `SessionLog` `START` per file that keeps curves from doubling back after a resume.
//!
//! Each logger writes at most one new event file in its directory, named to sort after the files
//! of earlier runs there (even one started in the same second), so TensorBoard reads them in
//! order. The file is created with its first record, once the step the run starts at is known:
//! a run that never starts (one that found itself already complete and was
//! [`discard`](MetricLogger::discard)ed) leaves no file.
//!
//! It must never rewrite or remove an earlier event file. Encoding, framing and naming the files
//! are the `tfevents` crate's; when it is called, flushed or finalized, and on which rank, is
//! `Loggers`' and the run's.

use super::checkpoint_scalars::StepCheckpoints;
use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tfevents::proto::hparams::SessionStatus;
use tfevents::{EventWriter, HParamValue, WriterOptions, wall_time_now};

/// Scalars of one call converted on the stack; more spill to the heap.
const INLINE_SCALARS: usize = 16;

/// Writes one event file in a run's TensorBoard directory.
///
/// TensorBoard's readers purge what a restart superseded in different ways: its
/// `EventAccumulator` (with its default `purge_orphaned_data`) drops every point at or after the
/// step of each `SessionLog` `START`, across the run's files; the server's Python loader does the
/// same except for the run's first `START`; its Rust loader drops a series' points at or after a
/// step the series logs again. So the file's first record after its header is its only `START`:
/// at step 0 for a run starting from scratch (nothing before it survives; in the run's first file
/// it is the one the Python loader skips) and at the first step a resumed run logs (what earlier
/// runs logged there and after is superseded; what they logged before stays). The step comes
/// from [`resumed`](MetricLogger::resumed) (the run tells it at build, or at restore for a
/// resumed run); hyperparameters logged before it are held and written just after the `START`,
/// so nothing precedes it. Records of steps before the `START` belong to the run resumed from
/// (it logged them) and are skipped.
///
/// The `checkpoint/blocked_ms`, `checkpoint/write_ms` and `checkpoint/size_mib` scalars are one
/// value per step (see [`CheckpointEvent`]): several checkpoints saved at one step are reported
/// together once the run moves past the step, or at the end.
#[derive(Debug)]
pub struct TensorBoardLogger {
    dir: PathBuf,
    /// Created with the first record.
    writer: Option<EventWriter>,
    /// The step of this file's `START`, once known.
    start: Option<u64>,
    /// Hyperparameters waiting for the `START`.
    held_hparams: Option<serde_json::Map<String, serde_json::Value>>,
    /// Checkpoint scalars of the latest step with a save, not written yet.
    checkpoints: Option<StepCheckpoints>,
    /// The largest step recorded, for the session end.
    last_step: u64,
}

impl TensorBoardLogger {
    /// Creates `dir` if needed; the event file comes with the first record. `resumed_at` is the
    /// first step this run logs when it resumes an earlier one (the checkpoint's step + 1 for a
    /// loop that logs a step after computing it); `None` when not known yet: a
    /// [`resumed`](MetricLogger::resumed) call before the first metric, text or checkpoint sets
    /// it, and without one the run starts from scratch (0).
    pub fn new(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        Ok(TensorBoardLogger {
            dir: dir.to_path_buf(),
            writer: None,
            start: resumed_at,
            held_hparams: None,
            checkpoints: None,
            last_step: resumed_at.unwrap_or(0),
        })
    }

    /// The event file written, once its first record is.
    pub fn path(&self) -> Option<&Path> {
        self.writer.as_ref().map(EventWriter::path)
    }

    /// The writer, the file created with its `START` (and the held hyperparameters) first.
    fn writer(&mut self) -> Result<&mut EventWriter> {
        if self.writer.is_none() {
            let start = *self.start.get_or_insert(0);
            let mut writer =
                EventWriter::create(&self.dir, &WriterOptions::default()).map_err(tb_error)?;
            writer
                .add_session_log_start(to_i64(start), wall_time_now())
                .map_err(tb_error)?;
            if let Some(params) = self.held_hparams.take() {
                write_hparams(&mut writer, &params, start)?;
            }
            self.last_step = self.last_step.max(start);
            self.writer = Some(writer);
        }
        self.writer.as_mut().ok_or_else(|| Error::Logger {
            logger: "tensorboard",
            reason: "the event file could not be created".into(),
        })
    }

    /// Whether a record at `step` is this run's: not one before its `START`.
    fn records(&mut self, step: u64) -> bool {
        if self.start.is_none() {
            self.start = Some(0);
        }
        step >= self.start.unwrap_or(0)
    }

    fn saw(&mut self, step: u64) {
        self.last_step = self.last_step.max(step);
    }

    /// Writes the held checkpoints when they are of a step before `step` (any with `None`).
    fn write_checkpoints_before(&mut self, step: Option<u64>) -> Result<()> {
        match StepCheckpoints::due(&mut self.checkpoints, step) {
            Some(held) => self.write_checkpoints(&held),
            None => Ok(()),
        }
    }

    /// The checkpoint scalars and text of one step.
    fn write_checkpoints(&mut self, held: &StepCheckpoints) -> Result<()> {
        let scalars = held.scalars().map(|(tag, v)| (tag, v as f32));
        let step = to_i64(held.step);
        let writer = self.writer()?;
        writer
            .add_scalars(step, held.wall_time, &scalars)
            .map_err(tb_error)?;
        writer
            .add_text("checkpoint", &held.text(), step, held.wall_time)
            .map_err(tb_error)
    }
}

impl MetricLogger for TensorBoardLogger {
    fn name(&self) -> &'static str {
        "tensorboard"
    }

    fn log_metrics(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        if !self.records(step) {
            return Ok(());
        }
        self.write_checkpoints_before(Some(step))?;
        self.saw(step);
        let mut inline = [("", 0.0f32); INLINE_SCALARS];
        let mut heap = Vec::new();
        let scalars: &mut [(&str, f32)] = if metrics.len() <= INLINE_SCALARS {
            inline.get_mut(..metrics.len()).unwrap_or_default()
        } else {
            heap.resize(metrics.len(), ("", 0.0));
            &mut heap
        };
        for (slot, (name, value)) in scalars.iter_mut().zip(metrics) {
            // TensorBoard's scalars are 32-bit.
            *slot = (name, *value as f32);
        }
        self.writer()?
            .add_scalars(to_i64(step), wall_time, scalars)
            .map_err(tb_error)
    }

    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let step = self.last_step;
        match &mut self.writer {
            Some(writer) => write_hparams(writer, params, step),
            // Written after the START, once its step is known.
            None => {
                self.held_hparams = Some(params.clone());
                Ok(())
            }
        }
    }

    fn log_text(&mut self, step: u64, wall_time: f64, tag: &str, text: &str) -> Result<()> {
        if !self.records(step) {
            return Ok(());
        }
        self.write_checkpoints_before(Some(step))?;
        self.saw(step);
        self.writer()?
            .add_text(tag, text, to_i64(step), wall_time)
            .map_err(tb_error)
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()> {
        if !self.records(event.step) {
            return Ok(());
        }
        self.saw(event.step);
        match StepCheckpoints::add(&mut self.checkpoints, event, wall_time_now()) {
            Some(earlier) => self.write_checkpoints(&earlier),
            None => Ok(()),
        }
    }

    fn resumed(&mut self, step: u64) -> Result<()> {
        // Held checkpoint scalars at or after `step` are superseded with the rest.
        if self.checkpoints.as_ref().is_some_and(|c| c.step >= step) {
            self.checkpoints = None;
        }
        self.write_checkpoints_before(None)?;
        self.last_step = step;
        match &mut self.writer {
            // The file's first record will be the START at `step`.
            None => self.start = Some(step),
            // Something was written already (a logger resumed twice): a START of its own.
            Some(writer) => {
                self.start = Some(step);
                writer
                    .add_session_log_start(to_i64(step), wall_time_now())
                    .map_err(tb_error)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush().map_err(tb_error),
            None => Ok(()),
        }
    }

    fn finalize(&mut self, status: RunStatus) -> Result<()> {
        if self.writer.is_none() && self.start.is_none() {
            // Never told where it starts and given nothing to record: no file.
            return Ok(());
        }
        self.write_checkpoints_before(None)?;
        let step = to_i64(self.last_step);
        let writer = self.writer()?;
        writer
            .add_session_end(session_status(status), step, wall_time_now())
            .map_err(tb_error)?;
        writer.sync().map_err(tb_error)
    }
}

/// The hparams plugin's session start of `params` at `step`.
fn write_hparams(
    writer: &mut EventWriter,
    params: &serde_json::Map<String, serde_json::Value>,
    step: u64,
) -> Result<()> {
    let mut flat = BTreeMap::new();
    flatten("", params, &mut flat);
    // No experiment summary: TensorBoard then infers the hparams table's columns from the
    // session's values and the run's scalar tags, which are not known yet here.
    writer
        .add_session_start(&flat, to_i64(step), wall_time_now())
        .map_err(tb_error)
}

/// The hparams plugin's status of a run that ended with `status`. A preempted run will go on
/// after its restart: it is still running.
pub fn session_status(status: RunStatus) -> SessionStatus {
    match status {
        RunStatus::Success => SessionStatus::Success,
        RunStatus::Failed | RunStatus::Killed => SessionStatus::Failure,
        RunStatus::Preempted => SessionStatus::Running,
    }
}

/// Hyperparameters as TensorBoard takes them: nested objects flattened with `/` between keys
/// (as Lightning does), arrays and nulls as their JSON text.
fn flatten(
    prefix: &str,
    params: &serde_json::Map<String, serde_json::Value>,
    out: &mut BTreeMap<String, HParamValue>,
) {
    use serde_json::Value;
    for (key, value) in params {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        let value = match value {
            Value::Object(inner) => {
                flatten(&name, inner, out);
                continue;
            }
            Value::Bool(b) => HParamValue::Bool(*b),
            Value::Number(n) => n
                .as_f64()
                .map_or_else(|| HParamValue::Text(n.to_string()), HParamValue::Number),
            Value::String(s) => HParamValue::Text(s.clone()),
            Value::Null | Value::Array(_) => HParamValue::Text(value.to_string()),
        };
        out.insert(name, value);
    }
}

fn to_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// The crate's error for an event-file error, keeping the path.
fn tb_error(error: tfevents::Error) -> Error {
    match error {
        tfevents::Error::Io { path, source } => Error::io("write event file", path, source),
        other => Error::Logger {
            logger: "tensorboard",
            reason: other.to_string(),
        },
    }
}
