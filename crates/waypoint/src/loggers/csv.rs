//! [`CsvLogger`]: metrics in `metrics.csv` laid out like Lightning's `CSVLogger` (a `step`
//! column, then one column per metric, sorted by name), the hyperparameters in `hparams.yaml`
//! beside it, and committed checkpoints in `checkpoints.csv` (paths relative to the run's directory when inside it).
//!
//! One row per step: calls logging the same step one after the other fill the same row, even
//! across a flush (the row is rewritten in place). When a new metric appears the file is
//! rewritten with the new header, atomically (temporary file, rename). A resumed run drops the
//! rows at or after its resume step, so rows continue across restarts without a duplicated step.
//!
//! It owns its three files in the directory it is given. It must not decide where that directory
//! is, when it is called, flushed or finalized, nor on which rank (`Loggers` and the run do), and
//! it leaves quoting, parsing and atomic replacement to `csv_format.rs` and the YAML to `yaml.rs`.

use super::csv_format::{Table, push_record, read_table, remove_dead_temporaries, replace_file};
use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use super::yaml::to_yaml;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The metrics file's name.
pub const METRICS_FILE: &str = "metrics.csv";
/// The hyperparameters file's name.
pub const HPARAMS_FILE: &str = "hparams.yaml";
/// The checkpoint events file's name.
pub const CHECKPOINTS_FILE: &str = "checkpoints.csv";
/// The header of [`CHECKPOINTS_FILE`].
const CHECKPOINTS_HEADER: [&str; 5] = ["step", "path", "bytes", "blocked_ms", "write_ms"];
/// Rows buffered before they are written without waiting for a flush.
const BUFFER_BYTES: usize = 64 * 1024;

/// Writes `metrics.csv`, `hparams.yaml` and `checkpoints.csv` in one directory.
#[derive(Debug)]
pub struct CsvLogger {
    dir: PathBuf,
    metrics: PathBuf,
    /// The metric columns after `step`, sorted.
    columns: Vec<String>,
    /// `metrics.csv`, once it exists.
    file: Option<File>,
    /// Its length.
    end: u64,
    /// Rows to append at `end`.
    buf: String,
    /// The latest step's row.
    last: Option<Row>,
}

#[derive(Debug)]
struct Row {
    step: u64,
    /// One per column.
    values: Vec<Option<f64>>,
    /// Where it starts in the file, once written.
    offset: Option<u64>,
    /// Changed since written.
    dirty: bool,
}

impl CsvLogger {
    /// Opens the logger on `dir` (created if needed). An existing `metrics.csv` is continued;
    /// a row cut short by a killed writer is dropped, and the temporary of a rewrite a crash
    /// interrupted is removed. `resumed_at` is the first step this run
    /// logs when it resumes an earlier one: rows at or after it are dropped (they belong to the
    /// killed run's future, which its checkpoint does not hold); `None` to append after them.
    pub fn new(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        for file in [METRICS_FILE, CHECKPOINTS_FILE, HPARAMS_FILE] {
            remove_dead_temporaries(&dir.join(file))?;
        }
        let mut logger = CsvLogger {
            dir: dir.to_path_buf(),
            metrics: dir.join(METRICS_FILE),
            columns: Vec::new(),
            file: None,
            end: 0,
            buf: String::new(),
            last: None,
        };
        logger.reload(resumed_at.unwrap_or(u64::MAX))?;
        truncate_checkpoints(&dir.join(CHECKPOINTS_FILE), resumed_at.unwrap_or(u64::MAX))?;
        Ok(logger)
    }

    /// The metrics file.
    pub fn metrics_path(&self) -> &Path {
        &self.metrics
    }

    /// Reads `metrics.csv` back, keeping the complete rows before step `keep_below`.
    fn reload(&mut self, keep_below: u64) -> Result<()> {
        self.file = None;
        self.last = None;
        self.buf.clear();
        let Some(table) = read_table(&self.metrics, starts_with_step, has_step)? else {
            self.columns.clear();
            return Ok(());
        };
        let rows = keep_rows(&table, keep_below);
        self.columns = table.header.iter().skip(1).cloned().collect();
        if table.partial || table.set_aside || rows.len() != table.rows.len() {
            self.rewrite(&table.header, &rows)?;
        }
        self.open()
    }

    /// Opens `metrics.csv` for writing at its end.
    fn open(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.metrics)
            .map_err(|e| Error::io("open", &self.metrics, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &self.metrics, e))?;
        self.end = len.len();
        self.file = Some(file);
        Ok(())
    }

    /// Replaces `metrics.csv` with the header `step` + columns and `rows` (cells by `header`).
    fn rewrite(&mut self, header: &[String], rows: &[&Vec<String>]) -> Result<()> {
        let mut text = String::new();
        let new_header = std::iter::once("step").chain(self.columns.iter().map(String::as_str));
        push_record(&mut text, new_header);
        let positions: Vec<Option<usize>> = std::iter::once("step")
            .chain(self.columns.iter().map(String::as_str))
            .map(|name| header.iter().position(|h| h == name))
            .collect();
        for row in rows {
            let cells = positions.iter().map(|p| {
                p.and_then(|i| row.get(i))
                    .map_or("", |cell: &String| cell.as_str())
            });
            push_record(&mut text, cells);
        }
        replace_file(&self.metrics, text.as_bytes())
    }

    /// Adds the names of `metrics` not yet among the columns, rewriting the file if it exists.
    fn add_columns(&mut self, metrics: &[(&str, f64)]) -> Result<()> {
        let mut new: Vec<&str> = metrics
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !self.columns.iter().any(|c| c == name))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        new.dedup();
        self.write_buf()?;
        let old_columns = self.columns.clone();
        self.columns.extend(new.iter().map(|s| (*s).to_owned()));
        self.columns.sort();
        if let Some(row) = &mut self.last {
            let old: Vec<(String, Option<f64>)> = old_columns
                .iter()
                .cloned()
                .zip(row.values.drain(..))
                .collect();
            row.values = self
                .columns
                .iter()
                .map(|c| old.iter().find(|(o, _)| o == c).and_then(|(_, v)| *v))
                .collect();
        }
        if self.file.is_some() {
            let table = read_table(&self.metrics, starts_with_step, has_step)?.unwrap_or_default();
            let mut rows: Vec<&Vec<String>> = table.rows.iter().collect();
            // The latest row is written again with the new columns.
            if let Some(row) = &mut self.last
                && row.offset.take().is_some()
            {
                rows.pop();
                row.dirty = true;
            }
            self.rewrite(&table.header, &rows)?;
            self.open()?;
        }
        Ok(())
    }

    /// Puts the latest row where it belongs: appended to the buffer, or rewritten in place if
    /// it was written before and changed since.
    fn close_last(&mut self) -> Result<()> {
        let Some(row) = self.last.as_ref().filter(|r| r.dirty) else {
            return Ok(());
        };
        let mut text = String::new();
        let step = row.step.to_string();
        let values: Vec<String> = row
            .values
            .iter()
            .map(|v| v.map(|v| v.to_string()).unwrap_or_default())
            .collect();
        push_record(
            &mut text,
            std::iter::once(step.as_str()).chain(values.iter().map(String::as_str)),
        );
        let offset = row.offset;
        if self.file.is_none() {
            let mut header = String::new();
            push_record(
                &mut header,
                std::iter::once("step").chain(self.columns.iter().map(String::as_str)),
            );
            let file =
                File::create(&self.metrics).map_err(|e| Error::io("create", &self.metrics, e))?;
            self.file = Some(file);
            self.end = 0;
            self.buf.insert_str(0, &header);
        }
        match offset {
            Some(at) => {
                // Cut the old row off first: a kill in between loses this row, but never leaves
                // the tail of a longer old row behind as a line of its own.
                self.write_buf()?;
                if let Some(file) = &self.file {
                    file.set_len(at)
                        .map_err(|e| Error::io("truncate", &self.metrics, e))?;
                }
                self.write_at(text.as_bytes(), at)?;
                self.end = at + text.len() as u64;
            }
            None => {
                let at = self.end + self.buf.len() as u64;
                self.buf.push_str(&text);
                if let Some(row) = &mut self.last {
                    row.offset = Some(at);
                }
            }
        }
        if let Some(row) = &mut self.last {
            row.dirty = false;
        }
        Ok(())
    }

    /// Writes the buffered rows at the end of the file.
    fn write_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.buf);
        self.write_at(text.as_bytes(), self.end)?;
        self.end += text.len() as u64;
        Ok(())
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        if let Some(file) = &self.file {
            file.write_all_at(bytes, at)
                .map_err(|e| Error::io("write", &self.metrics, e))?;
        }
        Ok(())
    }
}

impl MetricLogger for CsvLogger {
    fn name(&self) -> &'static str {
        "csv"
    }

    fn log_metrics(&mut self, step: u64, _wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        self.add_columns(metrics)?;
        if self.last.as_ref().is_none_or(|r| r.step != step) {
            self.close_last()?;
            self.last = Some(Row {
                step,
                values: vec![None; self.columns.len()],
                offset: None,
                dirty: true,
            });
        }
        if let Some(row) = &mut self.last {
            for (name, value) in metrics {
                if let Some(i) = self.columns.iter().position(|c| c == name)
                    && let Some(slot) = row.values.get_mut(i)
                {
                    *slot = Some(*value);
                }
            }
            row.dirty = true;
        }
        if self.buf.len() >= BUFFER_BYTES {
            self.write_buf()?;
        }
        Ok(())
    }

    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        replace_file(&self.dir.join(HPARAMS_FILE), to_yaml(params).as_bytes())
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()> {
        let path = self.dir.join(CHECKPOINTS_FILE);
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let mut text = String::new();
        let new = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
        if new {
            push_record(&mut text, CHECKPOINTS_HEADER);
        }
        // Relative to the run's directory (this logger's parent) when the checkpoint is inside
        // it, so that the run can be moved; absolute (or a URL) otherwise.
        let run_dir = self.dir.parent().unwrap_or(&self.dir);
        let shown = event.path.strip_prefix(run_dir).unwrap_or(&event.path);
        let fields = [
            event.step.to_string(),
            shown.display().to_string(),
            event.bytes.to_string(),
            event.blocked_ms.to_string(),
            event.write_ms.to_string(),
        ];
        push_record(&mut text, fields.iter().map(String::as_str));
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(|e| Error::io("write", &path, e))
    }

    fn resumed(&mut self, step: u64) -> Result<()> {
        self.flush()?;
        self.reload(step)?;
        truncate_checkpoints(&self.dir.join(CHECKPOINTS_FILE), step)
    }

    fn flush(&mut self) -> Result<()> {
        self.close_last()?;
        self.write_buf()
    }

    fn finalize(&mut self, _status: RunStatus) -> Result<()> {
        self.flush()?;
        if let Some(file) = &self.file {
            file.sync_data()
                .map_err(|e| Error::io("fsync", &self.metrics, e))?;
        }
        Ok(())
    }
}

/// Whether a header is this logger's: its first column is `step`.
fn starts_with_step(header: &[String]) -> bool {
    header.first().is_some_and(|h| h == "step")
}

/// Whether a row has a step in its first column.
fn has_step(row: &[String]) -> bool {
    step_of(row).is_some()
}

fn step_of(row: &[String]) -> Option<u64> {
    row.first().and_then(|s| s.parse::<u64>().ok())
}

/// The complete rows of `table` whose step is below `keep_below`.
fn keep_rows(table: &Table, keep_below: u64) -> Vec<&Vec<String>> {
    table
        .rows
        .iter()
        .filter(|row| step_of(row).is_some_and(|s| s < keep_below))
        .collect()
}

/// Drops the rows of `checkpoints.csv` at or after `keep_below`, and a row cut short.
fn truncate_checkpoints(path: &Path, keep_below: u64) -> Result<()> {
    let Some(table) = read_table(path, starts_with_step, has_step)? else {
        return Ok(());
    };
    let rows = keep_rows(&table, keep_below);
    if !table.partial && !table.set_aside && rows.len() == table.rows.len() {
        return Ok(());
    }
    let mut text = String::new();
    push_record(&mut text, table.header.iter().map(String::as_str));
    for row in rows {
        push_record(&mut text, row.iter().map(String::as_str));
    }
    replace_file(path, text.as_bytes())
}
