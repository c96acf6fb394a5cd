//! [`WandbLogger`]: a [`MetricLogger`] writing an offline Weights & Biases run, which `wandb sync`
//! uploads later from a machine with internet:
//! `wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>/run-<id>.wandb` in W&B's transaction-log format (see
//! `store.rs`), holding protobuf `wandb_internal.Record`s: a header, the run (with its config), a
//! history row and a summary update per step, config updates, and the exit. Checked against wandb
//! 0.31.0 (`wandb leet inspect`, `wandb sync --dry-run`): the format is W&B's internal one, so pin
//! the version you sync with.
//!
//! Metrics logged at one step (several calls) make one history row, written when a later step
//! arrives or at the end: the row of the last step is on disk after
//! [`finalize`](MetricLogger::finalize). A run resumed from a checkpoint writes a new offline
//! directory for the same W&B run id (`resumed` set in its run record) that rewinds the run to
//! the checkpoint's step (a branch point on its own run at `_step`), so that `wandb sync` of both
//! continues one run with each step once (docs/MLFLOW_WANDB.md).
//!
//! It must never reach the network (uploading is `wandb sync`'s) nor overwrite an existing offline
//! run: directories and files are created new. The framing is `store.rs`'s, the messages
//! `proto.rs`'s; a run id restored from a checkpoint is not trusted (one with characters other than
//! ASCII letters, digits, `-` and `_` is ignored).

mod proto;
mod store;

use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use crate::error::{Error, Result};
use proto::{
    BranchPoint, ConfigRecord, HeaderRecord, HistoryRecord, HistoryStep, Item, Record, RecordType,
    RunExitRecord, RunRecord, SummaryRecord, Timestamp, VersionInfo,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory W&B's offline runs go into, below the logger directory.
pub const WANDB_DIR: &str = "wandb";

/// The wandb version the offline format was checked against (tests/python/requirements.txt).
pub const WANDB_TESTED_VERSION: &str = "0.31.0";

/// What a [`WandbLogger`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WandbOptions {
    /// The directory that holds `wandb/` (ExperimentLogger: the logger directory).
    pub dir: PathBuf,
    /// The W&B project.
    pub project: String,
    /// The run's display name.
    pub run_name: Option<String>,
    /// The W&B entity (team or user); empty lets `wandb sync` use the default.
    pub entity: String,
}

impl WandbOptions {
    /// An offline run of `project` below `dir`.
    pub fn new(dir: impl Into<PathBuf>, project: impl Into<String>) -> Self {
        WandbOptions {
            dir: dir.into(),
            project: project.into(),
            run_name: None,
            entity: String::new(),
        }
    }
}

/// The open row: the metrics of one step.
#[derive(Debug)]
struct Row {
    step: u64,
    wall_time: f64,
    values: BTreeMap<String, f64>,
}

/// The open transaction log.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: File,
    /// Bytes written so far (the block position).
    offset: usize,
    buf: Vec<u8>,
}

/// Writes an offline W&B run; see the module documentation.
#[derive(Debug)]
pub struct WandbLogger {
    options: WandbOptions,
    run_id: String,
    /// The W&B run id came from a checkpoint.
    resumed_run: bool,
    starting_step: u64,
    start: f64,
    log: Option<Log>,
    num: i64,
    /// Config items not written yet (before the run record, they go into it).
    config: Vec<Item>,
    row: Option<Row>,
    last_step: u64,
}

impl WandbLogger {
    /// A logger for `options`; the run's file is created with the first record after the run
    /// started (so that a resumed run can take the id its checkpoint saved first).
    pub fn new(options: WandbOptions) -> Result<Self> {
        if options.project.is_empty() {
            return Err(Error::InvalidArgument {
                name: "wandb",
                reason: "the W&B project needs a name".into(),
            });
        }
        let wandb = options.dir.join(WANDB_DIR);
        std::fs::create_dir_all(&wandb).map_err(|e| Error::io("create directory", &wandb, e))?;
        Ok(WandbLogger {
            options,
            run_id: new_run_id(),
            resumed_run: false,
            starting_step: 0,
            start: tfevents::wall_time_now(),
            log: None,
            num: 0,
            config: Vec::new(),
            row: None,
            last_step: 0,
        })
    }

    /// The W&B run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's `.wandb` file, once created.
    pub fn path(&self) -> Option<&Path> {
        self.log.as_ref().map(|l| l.path.as_path())
    }

    /// Creates the run's directory and file, with the header and run records.
    fn open(&mut self) -> Result<&mut Log> {
        if self.log.is_none() {
            let log = self.create()?;
            self.log = Some(log);
            let version = format!("waypoint {}", env!("CARGO_PKG_VERSION"));
            self.write(RecordType::Header(HeaderRecord {
                version_info: Some(VersionInfo {
                    producer: version,
                    min_consumer: String::new(),
                }),
            }))?;
            let config = std::mem::take(&mut self.config);
            let seconds = self.start.floor();
            self.write(RecordType::Run(RunRecord {
                run_id: self.run_id.clone(),
                entity: self.options.entity.clone(),
                project: self.options.project.clone(),
                config: (!config.is_empty()).then_some(ConfigRecord { update: config }),
                display_name: self.options.run_name.clone().unwrap_or_default(),
                host: hostname(),
                starting_step: i64::try_from(self.starting_step).unwrap_or(i64::MAX),
                start_time: Some(Timestamp {
                    seconds: seconds as i64,
                    nanos: ((self.start - seconds) * 1e9) as i32,
                }),
                resumed: self.resumed_run,
                branch_point: self.rewind_point(),
            }))?;
        }
        match &mut self.log {
            Some(log) => Ok(log),
            None => Err(Error::Logger {
                logger: "wandb",
                reason: "the run's file could not be opened".into(),
            }),
        }
    }

    /// A resumed run rewinds its W&B run to the last step it keeps (W&B's `resume_from`): `wandb
    /// sync` then drops what the killed run logged after it (`RewindRun`) before this run's rows.
    fn rewind_point(&self) -> Option<BranchPoint> {
        (self.resumed_run && self.starting_step > 0).then(|| BranchPoint {
            run: self.run_id.clone(),
            value: (self.starting_step - 1) as f64,
            metric: "_step".into(),
        })
    }

    /// `wandb/offline-run-<local time>-<id>/run-<id>.wandb`, created new (a later second when a
    /// run of this id started in the same one).
    fn create(&self) -> Result<Log> {
        let wandb = self.options.dir.join(WANDB_DIR);
        let now = jiff::ZonedDateTime::now();
        for ahead in 0..120 {
            let time = now
                .checked_add(jiff::SignedDuration::from_secs(ahead))
                .unwrap_or_else(|_| now.clone());
            let dir = wandb.join(format!(
                "offline-run-{}-{}",
                time.strftime("%Y%m%d_%H%M%S"),
                self.run_id
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create directory", &dir, e)),
            }
            let path = dir.join(format!("run-{}.wandb", self.run_id));
            let mut file = File::create_new(&path).map_err(|e| Error::io("create", &path, e))?;
            file.write_all(&store::HEADER)
                .map_err(|e| Error::io("write", &path, e))?;
            return Ok(Log {
                path,
                file,
                offset: store::HEADER.len(),
                buf: Vec::new(),
            });
        }
        Err(Error::AlreadyExists { path: wandb })
    }

    /// Appends a record (buffered until the next flush).
    fn write(&mut self, record_type: RecordType) -> Result<()> {
        use prost::Message;
        self.num += 1;
        let record = Record {
            num: self.num,
            record_type: Some(record_type),
        };
        let data = record.encode_to_vec();
        let log = self.open()?;
        log.offset = store::append_record(&mut log.buf, log.offset, &data);
        Ok(())
    }

    /// Writes the open row (and its summary update).
    fn close_row(&mut self) -> Result<()> {
        let Some(row) = self.row.take() else {
            return Ok(());
        };
        let step = i64::try_from(row.step).unwrap_or(i64::MAX);
        let mut items = vec![
            item("_step", step.to_string()),
            item("_runtime", json_f64(row.wall_time - self.start)),
            item("_timestamp", json_f64(row.wall_time)),
        ];
        items.extend(row.values.iter().map(|(k, v)| item(k, json_f64(*v))));
        self.write(RecordType::Summary(SummaryRecord {
            update: items.clone(),
        }))?;
        self.write(RecordType::History(HistoryRecord {
            item: items,
            step: Some(HistoryStep { num: step }),
        }))
    }

    fn flush_log(&mut self) -> Result<()> {
        if let Some(log) = &mut self.log
            && !log.buf.is_empty()
        {
            log.file
                .write_all(&log.buf)
                .map_err(|e| Error::io("write", &log.path, e))?;
            log.buf.clear();
        }
        Ok(())
    }
}

fn item(key: &str, value_json: String) -> Item {
    Item {
        key: key.to_owned(),
        value_json,
    }
}

/// A float as Python's `json.dumps` writes it (non-finite ones as `NaN`, `Infinity`,
/// `-Infinity`, which JSON itself lacks).
fn json_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        serde_json::json!(v).to_string()
    }
}

/// Eight lower-case letters and digits, as W&B's run ids.
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| {
            let c = alphabet[(bits % 36) as usize];
            bits /= 36;
            char::from(c)
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl MetricLogger for WandbLogger {
    fn name(&self) -> &'static str {
        "wandb"
    }

    fn log_metrics(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        if self.row.as_ref().is_some_and(|r| r.step != step) {
            self.close_row()?;
        }
        self.last_step = self.last_step.max(step);
        let row = self.row.get_or_insert_with(|| Row {
            step,
            wall_time,
            values: BTreeMap::new(),
        });
        row.wall_time = row.wall_time.max(wall_time);
        for (k, v) in metrics {
            row.values.insert((*k).to_owned(), *v);
        }
        Ok(())
    }

    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let items: Vec<Item> = params.iter().map(|(k, v)| item(k, v.to_string())).collect();
        if self.log.is_none() {
            self.config.retain(|c| !params.contains_key(&c.key));
            self.config.extend(items);
            return Ok(());
        }
        self.write(RecordType::Config(ConfigRecord { update: items }))
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()> {
        // Into the summary only: a checkpoint finalized late must not add a row at an older step.
        let mib = event.bytes as f64 / (1024.0 * 1024.0);
        self.write(RecordType::Summary(SummaryRecord {
            update: vec![
                item("checkpoint/step", event.step.to_string()),
                item("checkpoint/blocked_ms", json_f64(event.blocked_ms)),
                item("checkpoint/write_ms", json_f64(event.write_ms)),
                item("checkpoint/size_mib", json_f64(mib)),
            ],
        }))
    }

    fn resume_state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "run_id": self.run_id }))
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<()> {
        if self.log.is_some() {
            return Ok(()); // too late: this run's file already names another id
        }
        if let Some(id) = state.get("run_id").and_then(|v| v.as_str())
            && !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.run_id = id.to_owned();
            self.resumed_run = true;
        }
        Ok(())
    }

    fn resumed(&mut self, step: u64) -> Result<()> {
        if self.log.is_none() {
            self.starting_step = step;
        }
        self.last_step = step;
        self.open().map(|_| ())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_log()
    }

    fn finalize(&mut self, status: RunStatus) -> Result<()> {
        self.close_row()?;
        let runtime = (tfevents::wall_time_now() - self.start).max(0.0);
        let (exit_code, not_complete) = match status {
            RunStatus::Success => (0, false),
            RunStatus::Failed => (1, false),
            RunStatus::Killed => (130, false),
            RunStatus::Preempted => (0, true),
        };
        self.write(RecordType::Exit(RunExitRecord {
            exit_code,
            runtime: runtime as i32,
            not_complete,
        }))?;
        self.flush_log()?;
        if let Some(log) = &self.log {
            log.file
                .sync_all()
                .map_err(|e| Error::io("fsync", &log.path, e))?;
        }
        Ok(())
    }
}
