//! [`EventWriter`]: appends framed `Event` records to an event file through a buffer.
//!
//! Synchronous: each `add_*` call encodes one event into a reused buffer and hands the framed
//! record to a `BufWriter`, which reaches the OS when it fills, on [`EventWriter::flush`], or on
//! drop. A record is handed over whole, so a file cut short (a killed writer, a full disk) holds
//! complete records followed by at most one partial record, which readers skip as unfinished.
//!
//! It owns the writer's state, including refusing every record after a failed write. It must not
//! create, name or sync files (`file_writer.rs` does), nor build the summaries' contents
//! (`summaries` and `hparams` do).

use crate::error::{Error, Result};
use crate::hparams::{self, HParamValue};
use crate::proto::hparams::{Experiment, SessionStatus};
use crate::proto::session_log::SessionStatus as LogStatus;
use crate::proto::{Event, HistogramProto, SessionLog, Summary, event::What, summary};
use crate::{encode, histogram, record, summaries};
use prost::Message;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Version string of the first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Capacity of the buffer between the writer and the file.
pub const BUFFER_CAPACITY: usize = 256 * 1024;

/// Seconds since the Unix epoch, with fractions, of `time` (0 for times before the epoch).
pub fn wall_time(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch, with fractions, now.
pub fn wall_time_now() -> f64 {
    wall_time(SystemTime::now())
}

/// Writes events to one event file.
///
/// Each `add_*` call encodes one event into a reused buffer and hands the framed record whole to
/// the underlying writer (a 256 KiB `BufWriter` for [`create`](EventWriter::create)); records
/// reach the OS when the buffer fills, on [`flush`](Self::flush) and on drop.
///
/// After any write error the file may end with a partial record, so every later call returns
/// [`Error::WriterFailed`] instead of appending records a reader could not reach.
#[derive(Debug)]
pub struct EventWriter<W: Write = BufWriter<File>> {
    out: W,
    path: PathBuf,
    /// The record being built, reused so that a call allocates nothing in the steady state.
    record: Vec<u8>,
    failed: bool,
    /// The directory [`EventWriter::create`] added the file to, until `sync` has synced it.
    pub(crate) unsynced_dir: Option<PathBuf>,
}

impl<W: Write> EventWriter<W> {
    /// Writes the first record (the file version, at `wall_time`) to `out` and returns a writer
    /// appending to it. `path` names the destination in errors.
    pub fn new(out: W, path: impl Into<PathBuf>, wall_time: f64) -> Result<Self> {
        let mut writer = EventWriter {
            out,
            path: path.into(),
            record: Vec::new(),
            failed: false,
            unsynced_dir: None,
        };
        writer.write_event(&Event {
            wall_time,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.to_owned())),
        })?;
        Ok(writer)
    }

    /// The file written (or the name given to [`EventWriter::new`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Appends one event.
    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        self.write_record_with(|buf| {
            // Encoding into a Vec only fails for lack of capacity, which a Vec never lacks.
            let _ = event.encode(buf);
        })
    }

    /// Appends one scalar as a `simple_value`.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64, wall_time: f64) -> Result<()> {
        self.add_scalars(step, wall_time, &[(tag, value)])
    }

    /// Appends one event holding several scalars of the same step. Allocates nothing once the
    /// writer's buffers have grown to the size of a record.
    pub fn add_scalars<T: AsRef<str>>(
        &mut self,
        step: i64,
        wall_time: f64,
        values: &[(T, f32)],
    ) -> Result<()> {
        self.write_record_with(|buf| encode::scalars_event(buf, step, wall_time, values))
    }

    /// Appends a text summary (rendered as Markdown by TensorBoard).
    pub fn add_text(&mut self, tag: &str, text: &str, step: i64, wall_time: f64) -> Result<()> {
        self.add_summary(step, wall_time, vec![summaries::text(tag, text)])
    }

    /// Appends a histogram of `values` over TensorFlow's default buckets (see
    /// [`histogram`](crate::histogram)).
    pub fn add_histogram(
        &mut self,
        tag: &str,
        values: &[f64],
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        self.add_histogram_proto(tag, histogram::histogram(values), step, wall_time)
    }

    /// Appends a histogram whose buckets the caller computed.
    pub fn add_histogram_proto(
        &mut self,
        tag: &str,
        histo: HistogramProto,
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        self.add_summary(step, wall_time, vec![summaries::histogram(tag, histo)])
    }

    /// Appends the hparams experiment summary: which hyperparameters and metrics exist (see
    /// [`hparams::experiment`] for one built from values). Written at step 0, as TensorBoard does.
    pub fn add_hparams_experiment(&mut self, experiment: Experiment, wall_time: f64) -> Result<()> {
        self.add_summary(
            0,
            wall_time,
            vec![summaries::hparams_experiment(experiment)],
        )
    }

    /// Appends the hparams session-start summary with these hyperparameter values.
    pub fn add_session_start(
        &mut self,
        hparams: &BTreeMap<String, HParamValue>,
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        let info = hparams::session_start(hparams, wall_time);
        self.add_summary(
            step,
            wall_time,
            vec![summaries::hparams_session_start(info)],
        )
    }

    /// Appends the hparams session-end summary.
    pub fn add_session_end(
        &mut self,
        status: SessionStatus,
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        let info = hparams::session_end(status, wall_time);
        self.add_summary(step, wall_time, vec![summaries::hparams_session_end(info)])
    }

    /// Appends a `SessionLog` `START` at `step`, so that TensorBoard drops the points a run
    /// logged at or after `step` before it was resumed from a checkpoint taken at `step`.
    ///
    /// Write one when a run starts (at its first step) and one first thing after every resume (at
    /// the resumed step): the TensorBoard server's Python loader (`--load_fast=false`) ignores a
    /// run's first `START` and purges on the later ones; the legacy `EventAccumulator` purges on
    /// every `START`. TensorBoard's Rust data server (its default loader) ignores `SessionLog`
    /// and instead drops a series' points at or after any step that series logs again, which a
    /// resumed run logging the same tags at the same cadence does.
    pub fn add_session_log_start(&mut self, step: i64, wall_time: f64) -> Result<()> {
        let log = SessionLog {
            status: LogStatus::Start as i32,
            ..SessionLog::default()
        };
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(What::SessionLog(log)),
        })
    }

    /// Appends one event holding the given values.
    pub fn add_summary(
        &mut self,
        step: i64,
        wall_time: f64,
        values: Vec<summary::Value>,
    ) -> Result<()> {
        let summary = Summary { value: values };
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(What::Summary(summary)),
        })
    }

    /// Hands everything buffered to the OS (no fsync: see `sync` on a file writer).
    pub fn flush(&mut self) -> Result<()> {
        self.check()?;
        let result = self.out.flush();
        result.map_err(|source| self.fail(source))
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        Ok(self.out)
    }

    fn write_record_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        self.check()?;
        self.record.clear();
        self.record.resize(record::HEADER_LEN, 0);
        encode(&mut self.record);
        record::finish_record(&mut self.record, 0);
        let result = self.out.write_all(&self.record);
        result.map_err(|source| self.fail(source))
    }

    fn check(&self) -> Result<()> {
        if self.failed {
            return Err(Error::WriterFailed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn fail(&mut self, source: io::Error) -> Error {
        self.failed = true;
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}
