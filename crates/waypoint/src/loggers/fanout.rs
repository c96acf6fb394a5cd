//! [`Loggers`]: the training thread's side of metric logging. Each call puts one message on a
//! bounded queue ([`LoggerOptions::depth`]) and returns; one background thread applies the
//! messages to every logger (see `worker.rs`). The guard flushes and finalizes on drop.
//!
//! The caller never makes a system call in the steady state: the writer is not woken per
//! message (waking a parked thread is a `futex` call, ~µs) but wakes by itself every
//! [`LoggerOptions::max_latency`], when the queue is half full, on `flush` and on `finalize`.

use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use super::names::{Interner, MetricId, Names};
use super::values::Values;
use super::worker::{Message, Shared, TextRecord, Writer};
use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// What [`Loggers`] does with a metrics call when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait for the writer to make room: nothing is lost, the training loop may stall behind a
    /// slow disk.
    #[default]
    Block,
    /// Drop the call and count it ([`Loggers::dropped`]): the loop never waits. Only metrics are
    /// dropped; hyperparameters, text, checkpoint events, resumes, flushes and the end always
    /// wait for room.
    Drop,
}

/// Options of [`Loggers::spawn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerOptions {
    /// Messages the queue holds (one per call); at least 1. Default 65,536: 8 MiB (128 bytes a
    /// slot, allocated up front; a call's values travel inside its message, up to 8 metrics),
    /// and more than a second of a loop logging at 50,000 calls per second while the disk
    /// stalls.
    pub depth: usize,
    /// What a metrics call does when the queue is full. Default [`WhenFull::Block`].
    pub when_full: WhenFull,
    /// Log on global rank 0 only (default `true`); the other ranks get a fan-out that does
    /// nothing and starts no thread.
    pub rank_zero_only: bool,
    /// This process's global rank. Default 0.
    pub global_rank: u64,
    /// The longest a message waits in the queue before the writer applies it and flushes, when
    /// nothing else wakes the writer. Default 100 ms.
    pub max_latency: Duration,
}

/// The default queue depth.
pub const DEFAULT_DEPTH: usize = 65_536;

impl Default for LoggerOptions {
    fn default() -> Self {
        LoggerOptions {
            depth: DEFAULT_DEPTH,
            when_full: WhenFull::Block,
            rank_zero_only: true,
            global_rank: 0,
            max_latency: Duration::from_millis(100),
        }
    }
}

impl LoggerOptions {
    /// Whether this process logs: not when `rank_zero_only` and the global rank is not 0. Build
    /// loggers (which create files) only when this is true.
    pub fn is_active(&self) -> bool {
        !self.rank_zero_only || self.global_rank == 0
    }
}

/// The non-blocking fan-out to several [`MetricLogger`]s, and the guard that ends them.
///
/// Cheap on the calling thread: a metrics call looks its names up in a local table (each new
/// name is interned once, see [`metric_id`](Self::metric_id)), reads the clock and puts one
/// message on a bounded queue. Errors of the loggers surface on the next [`flush`](Self::flush)
/// or [`finalize`](Self::finalize), never on the logging calls.
///
/// Dropping it without [`finalize`](Self::finalize) finalizes with [`RunStatus::Failed`] while
/// the thread is panicking and [`RunStatus::Success`] otherwise (as Lightning's teardown does),
/// waiting for everything queued to be written; errors are then only logged with `tracing`.
#[must_use = "dropping Loggers finalizes the loggers"]
#[derive(Debug)]
pub struct Loggers {
    active: Option<Active>,
    shared: Arc<Shared>,
    dropped: u64,
}

#[derive(Debug)]
struct Active {
    tx: SyncSender<Message>,
    writer: JoinHandle<()>,
    interner: Interner,
    when_full: WhenFull,
    /// Metrics calls sent since the writer was last woken.
    since_wake: usize,
    /// Wake the writer after this many metrics calls (half the depth).
    wake_every: usize,
    /// The writer's early end was reported.
    gone: bool,
}

impl Loggers {
    /// Starts the background writer for `loggers`. On a rank that does not log (see
    /// [`LoggerOptions::is_active`]) the loggers are dropped unused and no thread starts.
    pub fn spawn(loggers: Vec<Box<dyn MetricLogger>>, options: LoggerOptions) -> Result<Self> {
        if options.depth == 0 {
            return Err(Error::InvalidArgument {
                name: "depth",
                reason: "the logger queue must hold at least one message".into(),
            });
        }
        if !options.is_active() {
            return Ok(Loggers::disabled());
        }
        let shared = Arc::new(Shared::default());
        let interner = Interner::new();
        let writer = Writer::new(loggers, Names::new(interner.shared()), Arc::clone(&shared));
        let (tx, rx) = sync_channel(options.depth);
        let max_latency = options.max_latency;
        let writer = std::thread::Builder::new()
            .name("waypoint-loggers".into())
            .spawn(move || writer.run(rx, max_latency))
            .map_err(|e| Error::Logger {
                logger: "loggers",
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Loggers {
            active: Some(Active {
                tx,
                writer,
                interner,
                when_full: options.when_full,
                since_wake: 0,
                wake_every: (options.depth / 2).max(1),
                gone: false,
            }),
            shared,
            dropped: 0,
        })
    }

    /// A fan-out that logs nothing (what other ranks get).
    pub fn disabled() -> Self {
        Loggers {
            active: None,
            shared: Arc::new(Shared::default()),
            dropped: 0,
        }
    }

    /// Whether messages go anywhere: false on other ranks and after [`finalize`](Self::finalize).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The id of a metric name, for [`log_ids`](Self::log_ids): skips the name lookup of
    /// [`log_metrics`](Self::log_metrics). Names are kept for the life of the `Loggers`.
    pub fn metric_id(&mut self, name: &str) -> MetricId {
        match &mut self.active {
            Some(active) => active.interner.id(name),
            None => MetricId::default(),
        }
    }

    /// Logs metric values at `step`, stamped with the current wall time. An empty slice logs
    /// nothing.
    pub fn log_metrics(&mut self, step: u64, metrics: &[(&str, f64)]) {
        let Some(active) = self.active.as_mut().filter(|_| !metrics.is_empty()) else {
            return;
        };
        let interner = &mut active.interner;
        let values = Values::collect(
            metrics
                .iter()
                .map(|(name, value)| (interner.id(name), *value)),
        );
        self.send_metrics(step, values);
    }

    /// Logs metric values by id (ids from [`metric_id`](Self::metric_id) of this `Loggers`).
    pub fn log_ids(&mut self, step: u64, metrics: &[(MetricId, f64)]) {
        if self.active.is_some() && !metrics.is_empty() {
            self.send_metrics(step, Values::collect(metrics.iter().copied()));
        }
    }

    fn send_metrics(&mut self, step: u64, values: Values) {
        let Some(active) = &mut self.active else {
            return;
        };
        let message = Message::Metrics {
            step,
            wall_time: tfevents::wall_time_now(),
            values,
        };
        match active.tx.try_send(message) {
            Ok(()) => {
                active.since_wake += 1;
                if active.since_wake >= active.wake_every {
                    active.wake();
                }
            }
            Err(TrySendError::Full(message)) => {
                active.wake();
                match active.when_full {
                    WhenFull::Drop => self.dropped += 1,
                    WhenFull::Block => active.send_or_record(message, &self.shared),
                }
            }
            Err(TrySendError::Disconnected(_)) => active.writer_gone(&self.shared),
        }
    }

    /// Logs the run's hyperparameters.
    pub fn log_hyperparams(&mut self, params: &serde_json::Map<String, serde_json::Value>) {
        self.send(|| Message::Hyperparams(Box::new(params.clone())));
    }

    /// Logs a text under `tag` at `step`.
    pub fn log_text(&mut self, step: u64, tag: &str, text: &str) {
        self.send(|| {
            Message::Text(Box::new(TextRecord {
                step,
                wall_time: tfevents::wall_time_now(),
                tag: tag.to_owned(),
                text: text.to_owned(),
            }))
        });
    }

    /// Records a committed checkpoint.
    pub fn checkpoint_saved(&mut self, event: &CheckpointEvent) {
        self.send(|| Message::Checkpoint(Box::new(event.clone())));
    }

    /// Tells the loggers that the run resumed and logs again from `step` on: what earlier runs
    /// logged at or after `step` is superseded. With a checkpoint holding the state after its
    /// step `s`, the resumed loop logs `s + 1` first: pass `s + 1`.
    pub fn resumed(&mut self, step: u64) {
        self.send(|| Message::Resumed(step));
    }

    /// Hands each logger the state it saved in the checkpoint the run restores (the commit
    /// record's `loggers` ([`crate::format::Reserved::loggers`]) object, by logger name), before
    /// [`resumed`](Self::resumed).
    pub fn restore_state(&mut self, states: &serde_json::Map<String, serde_json::Value>) {
        self.send(|| Message::RestoreState(Box::new(states.clone())));
    }

    /// The loggers' resume states (by logger name) as of their last flush: what a checkpoint
    /// saved now must hold so that a run resumed from it continues the same MLflow or W&B run.
    /// Call [`flush`](Self::flush) first for the latest.
    pub fn resume_state(&self) -> serde_json::Map<String, serde_json::Value> {
        self.shared
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn send(&mut self, message: impl FnOnce() -> Message) {
        if let Some(active) = &mut self.active {
            active.send_or_record(message(), &self.shared);
            active.wake();
        }
    }

    /// Waits until the writer has applied every message sent before, and the loggers have
    /// flushed. Returns the first logger error not reported yet (later ones are counted in
    /// [`errors`](Self::errors) and logged with `tracing`).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(active) = &mut self.active {
            let (reply, done) = sync_channel(1);
            active.send_or_record(Message::Flush(reply), &self.shared);
            active.wake();
            if done.recv().is_err() {
                active.writer_gone(&self.shared);
            }
        }
        self.shared.take()
    }

    /// Ends the run with `status`: waits for everything queued, finalizes every logger (flushed
    /// and synced) and stops the writer. Later calls do nothing. Returns the first logger error
    /// not reported yet.
    pub fn finalize(&mut self, status: RunStatus) -> Result<()> {
        self.end(Message::Finalize(status))
    }

    /// Ends the loggers without a trace of this run: for a run that found itself already
    /// complete and logs nothing ([`MetricLogger::discard`]). Waits for the writer; later calls
    /// do nothing. Returns the first logger error not reported yet.
    pub fn discard(&mut self) -> Result<()> {
        self.end(Message::Discard)
    }

    /// Sends `last` (the end), waits for the writer to apply it and stop.
    fn end(&mut self, last: Message) -> Result<()> {
        if let Some(mut active) = self.active.take() {
            active.send_or_record(last, &self.shared);
            let Active { tx, writer, .. } = active;
            drop(tx);
            writer.thread().unpark();
            if writer.join().is_err() {
                self.shared.record(Error::WorkerPanicked {
                    what: "the metric loggers' writer".into(),
                });
            }
        }
        self.shared.take()
    }

    /// Metrics calls dropped because the queue was full ([`WhenFull::Drop`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Errors the loggers returned so far, reported or not.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }
}

impl Active {
    fn wake(&mut self) {
        self.since_wake = 0;
        self.writer.thread().unpark();
    }

    /// Sends, waiting for room (waking the writer first if the queue is full).
    fn send_or_record(&mut self, message: Message, shared: &Shared) {
        let message = match self.tx.try_send(message) {
            Ok(()) => return,
            Err(TrySendError::Full(message)) => message,
            Err(TrySendError::Disconnected(_)) => return self.writer_gone(shared),
        };
        self.wake();
        if self.tx.send(message).is_err() {
            self.writer_gone(shared);
        }
    }

    /// The writer thread ended before `finalize`: it cannot, short of a bug, as loggers' panics
    /// are caught.
    fn writer_gone(&mut self, shared: &Shared) {
        if !std::mem::replace(&mut self.gone, true) {
            shared.record(Error::WorkerPanicked {
                what: "the metric loggers' writer".into(),
            });
        }
    }
}

impl Drop for Loggers {
    fn drop(&mut self) {
        if self.active.is_none() {
            return;
        }
        let status = if std::thread::panicking() {
            RunStatus::Failed
        } else {
            RunStatus::Success
        };
        if let Err(error) = self.finalize(status) {
            tracing::warn!(%error, "metric loggers failed while finalizing on drop");
        }
    }
}
