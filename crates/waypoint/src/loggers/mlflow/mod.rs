//! [`MlflowLogger`]: a [`MetricLogger`] sending a run's parameters, metrics and status to an
//! MLflow tracking server over its REST API (experiments get-by-name/create, runs/create,
//! runs/log-batch, runs/update, metrics/get-history), from the loggers' background writer.
//!
//! # What it sends, and when
//!
//! The run is created on the first flush after the training loop started (a metric, or the run's
//! [`resumed`](MetricLogger::resumed) call), in the experiment named by
//! [`MlflowOptions::experiment_name`] (created if missing), with the tags `mlflow.runName`,
//! `mlflow.source.git.commit` and `waypoint.version_dir`. Each flush sends what was logged since
//! the last one, cut into log-batch requests within the server's limits. Parameters are sent
//! once (MLflow's are immutable: a changed value is reported, not sent). The end sets the
//! status: `FINISHED`, `FAILED`, `KILLED` (killed or preempted) and the end time.
//!
//! # Outages: nothing lost, nothing sent twice
//!
//! A request the server did not acknowledge stays queued, in order, and from then on the queue
//! is mirrored on disk ([`SPOOL_FILE`] in [`MlflowOptions::spool_dir`], bounded by
//! [`MlflowOptions::max_spool_bytes`]); it is retried with an exponential backoff (1 s to 30 s)
//! and, at the end, for up to [`MlflowOptions::finalize_timeout`]. What is still queued then stays
//! on disk, and a run started in the same directory sends it first.
//!
//! log-batch is not idempotent, and a request can fail after the server applied it (a timeout
//! while waiting for the answer). The rule: every metric gets its timestamp when it is logged,
//! and a request whose fate is unknown (no answer, a reset after sending, a 5xx answer, or left
//! on disk by an earlier process) is checked before it is sent again: the metrics the server
//! already holds (same key, step, timestamp and value, read with `metrics/get-history`) are
//! taken out. Requests that provably never reached the server (connection refused, name not
//! found, connect timeout, 429) are sent again as they are. Parameters and tags are idempotent
//! (the same value again is accepted), run updates too. A 4xx answer is final: the request is
//! dropped and the error reported.
//!
//! # Resume
//!
//! [`resume_state`](MetricLogger::resume_state) is `{"run_id", "experiment_id",
//! "tracking_uri"}`: the run saves it in every checkpoint, and a run resumed from one continues
//! the same MLflow run (set back to `RUNNING`; a run the server no longer has, or one on another
//! server, is replaced by a new run, with a warning). Metrics the server holds at or after the resume
//! step stay (MLflow cannot delete them; the resumed run's have later timestamps); queued ones
//! not yet sent are dropped, as the resumed run logs them again.

mod batch;
mod client;
mod deliver;
mod spool;

pub use spool::{SENT_FILE, SPOOL_FILE};

use super::checkpoint_scalars::StepCheckpoints;
use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use crate::error::{Error, Result};
use batch::{Chunk, Metric, StatusUpdate, bad_key};
use client::Client;
use spool::Spool;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the MLflow logger keeps its queue during outages, below the logger directory.
pub const MLFLOW_DIR: &str = "mlflow";

/// The shortest wait before retrying after a failed request.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What an [`MlflowLogger`] talks to and where it keeps what it could not send yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowOptions {
    /// The tracking server, `http://host:port` (`https://` with the `mlflow-tls` feature).
    pub tracking_uri: String,
    /// The experiment the run goes into (created if missing).
    pub experiment_name: String,
    /// The run's name (the `mlflow.runName` tag); the server picks one when `None`.
    pub run_name: Option<String>,
    /// Tags set on the run when it is created (added to the logger's own).
    pub tags: BTreeMap<String, String>,
    /// The directory of the on-disk queue ([`SPOOL_FILE`]); ExperimentLogger uses
    /// `<version dir>/mlflow`.
    pub spool_dir: PathBuf,
    /// The on-disk queue's limit (default 256 MiB, about 2.5 million metric values): requests
    /// past it are dropped and reported.
    pub max_spool_bytes: u64,
    /// The longest one request may take (default 10 s).
    pub request_timeout: Duration,
    /// How long the end of the run keeps retrying an unreachable server (default 30 s).
    pub finalize_timeout: Duration,
}

impl MlflowOptions {
    /// The defaults for a server at `tracking_uri`, experiment `experiment_name`, queue in
    /// `spool_dir`.
    pub fn new(
        tracking_uri: impl Into<String>,
        experiment_name: impl Into<String>,
        spool_dir: impl Into<PathBuf>,
    ) -> Self {
        MlflowOptions {
            tracking_uri: tracking_uri.into(),
            experiment_name: experiment_name.into(),
            run_name: None,
            tags: BTreeMap::new(),
            spool_dir: spool_dir.into(),
            max_spool_bytes: 256 << 20,
            request_timeout: Duration::from_secs(10),
            finalize_timeout: Duration::from_secs(30),
        }
    }
}

/// Checks a tracking URI: `http://…`, or `https://…` when built with the `mlflow-tls` feature.
pub fn check_tracking_uri(uri: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidArgument {
        name: "mlflow",
        reason,
    };
    let rest = if let Some(rest) = uri.strip_prefix("http://") {
        rest
    } else if let Some(rest) = uri.strip_prefix("https://") {
        if !cfg!(feature = "mlflow-tls") {
            return Err(invalid(format!(
                "{uri}: https needs waypoint's `mlflow-tls` feature; this build has plain http only"
            )));
        }
        rest
    } else {
        return Err(invalid(format!(
            "{uri:?} is not an http(s) URL of a tracking server (file stores and databricks:// \
             are not supported: start `mlflow server` and give its URL)"
        )));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(format!("{uri:?} names no host")));
    }
    Ok(())
}

/// Sends a run to an MLflow tracking server; see the module documentation.
#[derive(Debug)]
pub struct MlflowLogger {
    options: MlflowOptions,
    client: Client,
    experiment_id: Option<String>,
    run_id: Option<String>,
    /// The run id came from a checkpoint: set the run back to RUNNING on first contact.
    reopen: bool,
    /// A restored run that could not be continued: what was queued for it goes to the new one.
    replaced: Option<String>,
    /// The training loop started: the run may be created.
    started: bool,
    start_ms: i64,
    params_sent: BTreeMap<String, String>,
    params: Vec<(String, String)>,
    metrics: Vec<Metric>,
    spool: Spool,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// The current outage was reported.
    outage_reported: bool,
    /// Requests dropped because the on-disk queue was full.
    dropped: u64,
    /// Metric names already reported as refused.
    refused_keys: std::collections::BTreeSet<String>,
    /// Checkpoint metrics of the latest step with a save, sent once the run moves past it.
    checkpoints: Option<StepCheckpoints>,
}

impl MlflowLogger {
    /// A logger for `options`; contacts no server yet. Fails on a bad tracking URI or when the
    /// queue's directory cannot be made or its leftovers read.
    pub fn new(options: MlflowOptions) -> Result<Self> {
        check_tracking_uri(&options.tracking_uri)?;
        if options.experiment_name.is_empty() {
            return Err(Error::InvalidArgument {
                name: "experiment_name",
                reason: "the MLflow experiment needs a name".into(),
            });
        }
        let spool = Spool::open(&options.spool_dir, options.max_spool_bytes)?;
        Ok(MlflowLogger {
            client: Client::new(&options.tracking_uri, options.request_timeout),
            options,
            experiment_id: None,
            run_id: None,
            reopen: false,
            replaced: None,
            started: false,
            start_ms: now_ms(),
            params_sent: BTreeMap::new(),
            params: Vec::new(),
            metrics: Vec::new(),
            spool,
            backoff: FIRST_BACKOFF,
            next_attempt: None,
            outage_reported: false,
            dropped: 0,
            refused_keys: std::collections::BTreeSet::new(),
            checkpoints: None,
        })
    }

    /// The MLflow run's id, once created (or restored).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// Requests waiting for the server.
    pub fn queued(&self) -> usize {
        self.spool.len()
    }

    /// Queues metric values (those MLflow would refuse are reported, not sent).
    fn record(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        self.started = true;
        let timestamp = to_ms(wall_time);
        let mut refused = None;
        for (key, value) in metrics {
            if let Some(why) = bad_key(key) {
                if self.refused_keys.insert((*key).to_owned()) {
                    refused.get_or_insert(Error::InvalidArgument {
                        name: "metric",
                        reason: format!("{key:?} {why}; MLflow would refuse it, it is not sent"),
                    });
                }
                continue;
            }
            self.metrics.push(Metric {
                key: (*key).to_owned(),
                value: *value,
                timestamp,
                step: to_i64(step),
            });
        }
        refused.map_or(Ok(()), Err)
    }

    /// Queues the checkpoint metrics of one step.
    fn log_checkpoints(&mut self, held: &StepCheckpoints) -> Result<()> {
        let scalars = held.scalars();
        self.record(held.step, held.wall_time, &scalars)
    }

    fn error(&self, path: &str, reason: impl Into<String>) -> Error {
        Error::Tracking {
            logger: "mlflow",
            url: self.client.url(path),
            reason: reason.into(),
        }
    }

    /// Moves what was logged since the last flush into the queue.
    fn enqueue(&mut self) -> Result<()> {
        let params = std::mem::take(&mut self.params);
        let metrics = std::mem::take(&mut self.metrics);
        for chunk in batch::chunks(self.run_id.as_deref(), params, Vec::new(), metrics) {
            self.push(chunk)?;
        }
        Ok(())
    }

    fn push(&mut self, chunk: Chunk) -> Result<()> {
        if let Err(refused) = self.spool.push(chunk)? {
            self.dropped += 1;
            return Err(Error::Logger {
                logger: "mlflow",
                reason: format!(
                    "the on-disk queue {} reached its limit of {} bytes while the server is \
                     unreachable: a request of {} metrics was dropped ({} so far)",
                    self.spool.path().display(),
                    self.options.max_spool_bytes,
                    refused.metrics.len(),
                    self.dropped
                ),
            });
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_ms(wall_time: f64) -> i64 {
    (wall_time * 1000.0).round() as i64
}

fn to_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// Flattens hyperparameters as MLflow takes them: nested keys joined with `/` (as Lightning's
/// MLFlowLogger does), values as text (strings as they are, the rest as JSON).
fn flatten(
    prefix: &str,
    params: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) {
    for (key, value) in params {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        match value {
            serde_json::Value::Object(inner) => flatten(&name, inner, out),
            serde_json::Value::String(s) => out.push((name, s.clone())),
            other => out.push((name, other.to_string())),
        }
    }
}

impl MetricLogger for MlflowLogger {
    fn name(&self) -> &'static str {
        "mlflow"
    }

    fn log_metrics(&mut self, step: u64, wall_time: f64, metrics: &[(&str, f64)]) -> Result<()> {
        if let Some(held) = StepCheckpoints::due(&mut self.checkpoints, Some(step)) {
            self.log_checkpoints(&held)?;
        }
        self.record(step, wall_time, metrics)
    }

    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let mut flat = Vec::new();
        flatten("", params, &mut flat);
        let mut first_error = None;
        for (key, value) in flat {
            let problem = bad_key(&key).or_else(|| {
                (value.chars().count() > batch::MAX_PARAM_VALUE_LEN).then(|| {
                    format!(
                        "has a value longer than MLflow's {} characters",
                        batch::MAX_PARAM_VALUE_LEN
                    )
                })
            });
            let problem = problem.or_else(|| match self.params_sent.get(&key) {
                Some(old) if *old != value => Some(format!(
                    "was already logged as {old:?}; MLflow's parameters cannot change (new value {value:?})"
                )),
                _ => None,
            });
            if let Some(why) = problem {
                first_error.get_or_insert(Error::InvalidArgument {
                    name: "hparams",
                    reason: format!("parameter {key:?} {why}; it is not sent"),
                });
                continue;
            }
            if self
                .params_sent
                .insert(key.clone(), value.clone())
                .is_none()
            {
                self.params.push((key, value));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> Result<()> {
        match StepCheckpoints::add(&mut self.checkpoints, event, tfevents::wall_time_now()) {
            Some(earlier) => self.log_checkpoints(&earlier),
            None => Ok(()),
        }
    }

    fn resume_state(&self) -> Option<serde_json::Value> {
        let run_id = self.run_id.as_ref()?;
        Some(serde_json::json!({
            "run_id": run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.options.tracking_uri,
        }))
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let Some(run_id) = state.get("run_id").and_then(|v| v.as_str()) else {
            return Ok(());
        };
        if self.run_id.is_some() {
            return Ok(());
        }
        let uri = state.get("tracking_uri").and_then(|v| v.as_str());
        if uri.is_some_and(|u| {
            u.trim_end_matches('/') != self.options.tracking_uri.trim_end_matches('/')
        }) {
            tracing::warn!(saved = ?uri, now = %self.options.tracking_uri, "the checkpoint's MLflow run is on another tracking server: starting a new run");
            return Ok(());
        }
        self.run_id = Some(run_id.to_owned());
        self.experiment_id = state
            .get("experiment_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        self.reopen = true;
        tracing::info!(run_id, "continuing the MLflow run of the checkpoint");
        Ok(())
    }

    fn resumed(&mut self, step: u64) -> Result<()> {
        self.started = true;
        if self.checkpoints.as_ref().is_some_and(|c| c.step >= step) {
            self.checkpoints = None;
        }
        // Queued metrics of this run at or after `step` were never sent: the resumed run logs
        // them again. Those of another (earlier) run are still sent to it.
        let current = self.run_id.clone();
        let step = to_i64(step);
        self.metrics.retain(|m| m.step < step);
        let dropped = self
            .spool
            .drop_metrics_from(step, |c| c.run_id.is_none() || c.run_id == current)?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                step,
                "queued MLflow metrics superseded by the resume were dropped"
            );
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.enqueue()?;
        if !self.started || self.spool.is_empty() && self.run_id.is_some() && !self.reopen {
            return Ok(());
        }
        if self.next_attempt.is_some_and(|t| Instant::now() < t) {
            return Ok(()); // waiting out the backoff: the queue is on disk
        }
        self.deliver().map(|_| ())
    }

    fn finalize(&mut self, status: RunStatus) -> Result<()> {
        if let Some(held) = self.checkpoints.take() {
            self.log_checkpoints(&held)?;
        }
        self.started = true;
        self.enqueue()?;
        let status = match status {
            RunStatus::Success => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed | RunStatus::Preempted => "KILLED",
        };
        self.push(Chunk {
            run_id: self.run_id.clone(),
            status: Some(StatusUpdate {
                status: status.into(),
                end_time: Some(now_ms()),
            }),
            ..Chunk::default()
        })?;
        let deadline = Instant::now() + self.options.finalize_timeout;
        let mut first_error = None;
        loop {
            match self.deliver() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                    if self.spool.is_empty() {
                        break;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A retry's backoff, bounded by what is left of the deadline.
            let wait = self
                .next_attempt
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
                .min(deadline - now)
                .min(Duration::from_millis(500));
            std::thread::sleep(wait);
        }
        self.spool.sync()?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if !self.spool.is_empty() {
            return Err(self.error(
                "runs/log-batch",
                format!(
                    "the server stayed unreachable for {:?}: {} requests are kept in {} and a run \
                     started in the same directory sends them",
                    self.options.finalize_timeout,
                    self.spool.len(),
                    self.spool.path().display()
                ),
            ));
        }
        Ok(())
    }
}
