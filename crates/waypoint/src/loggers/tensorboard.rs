//! [`TensorBoardLogger`]: a [`MetricLogger`] writing TensorBoard event files with the `tfevents`
//! crate: scalars, text, hyperparameters (the hparams plugin's session start and end) and the
//! `SessionLog` `START` records that keep curves from doubling back after a resume.
//!
//! Each logger writes one new event file in its directory, named to sort after the files of
//! earlier runs there (even one started in the same second), so TensorBoard reads them in order.
//!
//! It must never rewrite or remove an earlier event file. Encoding, framing and naming the files
//! are the `tfevents` crate's; when it is called, flushed or finalized, and on which rank, is
//! `Loggers`' and the run's.

use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tfevents::proto::hparams::SessionStatus;
use tfevents::{EventWriter, HParamValue, WriterOptions, wall_time_now};

/// Scalars of one call converted on the stack; more spill to the heap.
const INLINE_SCALARS: usize = 16;

/// Writes one event file in a run's TensorBoard directory.
///
/// The first record after the file's header is a `SessionLog` `START`: at step 0 for a new run,
/// at the resume step for a resumed one, so that TensorBoard drops what an earlier run logged at
/// or after it (TensorBoard's readers differ: its legacy `EventAccumulator` purges on every
/// `START`; its Python loader ignores a run's first `START`, hence one at the start of every run;
/// its Rust loader drops a series' points at or after a step the series logs again). The `START`
/// is written just before the first other record, so a [`resumed`](MetricLogger::resumed) call
/// that comes before anything else replaces the step-0 `START` rather than following it (a
/// `START` at 0 after earlier runs would purge all of their points).
#[derive(Debug)]
pub struct TensorBoardLogger {
    writer: EventWriter,
    /// The step of the `START` still to write before the next record.
    pending_start: Option<u64>,
    /// The largest step recorded, for the session end.
    last_step: u64,
}

impl TensorBoardLogger {
    /// Creates `dir` if needed and a new event file in it. `resumed_at` is the first step this
    /// run logs when it resumes an earlier one (the checkpoint's step + 1 for a loop that logs a
    /// step after computing it); `None` for a run starting from scratch.
    pub fn new(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let writer = EventWriter::create(dir, &WriterOptions::default()).map_err(tb_error)?;
        let start = resumed_at.unwrap_or(0);
        Ok(TensorBoardLogger {
            writer,
            pending_start: Some(start),
            last_step: start,
        })
    }

    /// The event file written.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// Writes the pending `START`, if any.
    fn start(&mut self) -> Result<()> {
        if let Some(step) = self.pending_start.take() {
            self.writer
                .add_session_log_start(to_i64(step), wall_time_now())
                .map_err(tb_error)?;
        }
        Ok(())
    }

    fn saw(&mut self, step: u64) {
        self.last_step = self.last_step.max(step);
    }
}

impl MetricLogger for TensorBoardLogger {
    fn name(&self) -> &'static str {
        "tensorboard"
    }

    fn log_metrics(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        self.start()?;
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
        self.writer
            .add_scalars(to_i64(step), wall_time, scalars)
            .map_err(tb_error)
    }

    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        self.start()?;
        let mut flat = BTreeMap::new();
        flatten("", params, &mut flat);
        // No experiment summary: TensorBoard then infers the hparams table's columns from the
        // session's values and the run's scalar tags, which are not known yet here.
        self.writer
            .add_session_start(&flat, to_i64(self.last_step), wall_time_now())
            .map_err(tb_error)
    }

    fn log_text(&mut self, step: u64, wall_time: f64, tag: &str, text: &str) -> Result<()> {
        self.start()?;
        self.saw(step);
        self.writer
            .add_text(tag, text, to_i64(step), wall_time)
            .map_err(tb_error)
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()> {
        self.start()?;
        self.saw(event.step);
        let step = to_i64(event.step);
        let now = wall_time_now();
        let mib = event.bytes as f64 / (1024.0 * 1024.0);
        self.writer
            .add_scalars(
                step,
                now,
                &[
                    ("checkpoint/blocked_ms", event.blocked_ms as f32),
                    ("checkpoint/write_ms", event.write_ms as f32),
                    ("checkpoint/size_mib", mib as f32),
                ],
            )
            .map_err(tb_error)?;
        let text = format!("saved `{}` ({mib:.1} MiB)", event.path.display());
        self.writer
            .add_text("checkpoint", &text, step, now)
            .map_err(tb_error)
    }

    fn resumed(&mut self, step: u64) -> Result<()> {
        // Written before the next record: replaces the step-0 START if nothing came yet.
        self.pending_start = Some(step);
        self.last_step = step;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(tb_error)
    }

    fn finalize(&mut self, status: RunStatus) -> Result<()> {
        self.start()?;
        self.writer
            .add_session_end(
                session_status(status),
                to_i64(self.last_step),
                wall_time_now(),
            )
            .map_err(tb_error)?;
        self.writer.sync().map_err(tb_error)
    }
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
