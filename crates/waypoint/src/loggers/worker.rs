//! The background writer of [`Loggers`](super::Loggers): one thread that receives the caller's
//! messages and applies each to every logger, in order.
//!
//! It drains everything queued, then flushes every logger once (or after [`BATCH_LIMIT`]
//! messages under a sustained stream), then parks until the caller wakes it or `max_latency`
//! passes. Errors are counted and the first is kept for the caller's next `flush` or `finalize`;
//! a logger that panics is reported the same way and receives nothing more. The writer never
//! panics on a logger's behalf.

use super::logger::{CheckpointEvent, MetricLogger, RunStatus};
use super::names::Names;
use super::values::Values;
use crate::error::{Error, Result};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Messages applied between two flushes at most, so that a sustained stream still reaches the
/// files regularly.
pub(super) const BATCH_LIMIT: usize = 4096;

/// Metrics of one call held on the stack when building the names for a logger; more spill to
/// the heap.
const INLINE_METRICS: usize = 16;

/// What the caller sends to the writer.
#[derive(Debug)]
pub(super) enum Message {
    /// `log_metrics`.
    Metrics {
        step: u64,
        wall_time: f64,
        values: Values,
    },
    /// `log_hyperparams`.
    Hyperparams(Box<serde_json::Map<String, serde_json::Value>>),
    /// `log_text`.
    Text(Box<TextRecord>),
    /// `checkpoint_saved`.
    Checkpoint(Box<CheckpointEvent>),
    /// `resumed`.
    Resumed(u64),
    /// `restore_state`: each logger's saved state, by logger name.
    RestoreState(Box<serde_json::Map<String, serde_json::Value>>),
    /// `flush`: flush every logger, then answer.
    Flush(SyncSender<()>),
    /// `finalize`: finalize every logger, then end the thread.
    Finalize(RunStatus),
    /// `discard`: tell every logger the run logs nothing, then end the thread.
    Discard,
}

/// A text record.
#[derive(Debug)]
pub(super) struct TextRecord {
    pub step: u64,
    pub wall_time: f64,
    pub tag: String,
    pub text: String,
}

/// What the writer reports to the caller.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Errors returned (or panics raised) by loggers so far.
    pub errors: AtomicU64,
    /// The first error not yet handed to the caller.
    pub first: Mutex<Option<Error>>,
    /// The loggers' resume states (by logger name) as of their last flush.
    pub states: Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl Shared {
    /// Counts `error` and keeps it if no earlier one is waiting.
    pub(super) fn record(&self, error: Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(error);
        } else {
            tracing::warn!(%error, "metric logger error (an earlier one is waiting to be reported)");
        }
    }

    /// The waiting error, if any, as a `Result`.
    pub(super) fn take(&self) -> Result<()> {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.take().map_or(Ok(()), Err)
    }
}

/// One logger and whether it is still usable.
struct Slot {
    logger: Box<dyn MetricLogger>,
    /// Set after a panic: the logger's state is unknown, it receives nothing more.
    panicked: bool,
}

/// The writer's state.
pub(super) struct Writer {
    slots: Vec<Slot>,
    names: Names,
    shared: std::sync::Arc<Shared>,
}

impl Writer {
    /// A writer applying messages to `loggers`.
    pub(super) fn new(
        loggers: Vec<Box<dyn MetricLogger>>,
        names: Names,
        shared: std::sync::Arc<Shared>,
    ) -> Self {
        let slots = loggers
            .into_iter()
            .map(|logger| Slot {
                logger,
                panicked: false,
            })
            .collect();
        Writer {
            slots,
            names,
            shared,
        }
    }

    /// The thread's body: runs until a `Finalize` arrives or the caller's side is gone.
    pub(super) fn run(mut self, rx: Receiver<Message>, max_latency: Duration) {
        loop {
            let mut unflushed = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(Message::Flush(reply)) => {
                        self.flush();
                        unflushed = 0;
                        // The caller may have given up waiting (it never does today).
                        let _ = reply.send(());
                    }
                    Ok(Message::Finalize(status)) => {
                        self.each(|l| l.finalize(status));
                        return;
                    }
                    Ok(Message::Discard) => {
                        self.each(|l| l.discard());
                        return;
                    }
                    Ok(message) => {
                        self.apply(message);
                        unflushed += 1;
                        if unflushed >= BATCH_LIMIT {
                            self.flush();
                            unflushed = 0;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            if unflushed > 0 {
                self.flush();
            }
            std::thread::park_timeout(max_latency);
        }
    }

    fn flush(&mut self) {
        self.each(|l| l.flush());
        let mut states = self
            .shared
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in self.slots.iter().filter(|s| !s.panicked) {
            if let Some(state) = slot.logger.resume_state() {
                states.insert(slot.logger.name().to_owned(), state);
            }
        }
    }

    fn apply(&mut self, message: Message) {
        match message {
            Message::Metrics {
                step,
                wall_time,
                values,
            } => self.metrics(step, wall_time, &values),
            Message::Hyperparams(params) => self.each(|l| l.log_hyperparams(&params)),
            Message::Text(t) => self.each(|l| l.log_text(t.step, t.wall_time, &t.tag, &t.text)),
            Message::Checkpoint(event) => self.each(|l| l.checkpoint_saved(&event)),
            Message::Resumed(step) => self.each(|l| l.resumed(step)),
            Message::RestoreState(states) => self.each(|l| match states.get(l.name()) {
                Some(state) => l.restore_state(state),
                None => Ok(()),
            }),
            // Handled by `run`.
            Message::Flush(_) | Message::Finalize(_) | Message::Discard => {}
        }
    }

    fn metrics(&mut self, step: u64, wall_time: f64, values: &Values) {
        self.names
            .refresh_to(Names::end_of(values.iter().map(|(id, _)| id)));
        let mut inline = [("", 0.0f64); INLINE_METRICS];
        let mut heap = Vec::new();
        let named: &mut [(&str, f64)] = if values.len() <= INLINE_METRICS {
            inline.get_mut(..values.len()).unwrap_or_default()
        } else {
            heap.resize(values.len(), ("", 0.0));
            &mut heap
        };
        for (slot, (id, value)) in named.iter_mut().zip(values.iter()) {
            match self.names.get(id) {
                Some(name) => *slot = (name, value),
                None => {
                    self.shared.record(Error::Logger {
                        logger: "loggers",
                        reason: format!(
                            "metric id {id:?} was not made by this Loggers; the call at step \
                             {step} is skipped"
                        ),
                    });
                    return;
                }
            }
        }
        let named: &[(&str, f64)] = named;
        for slot in &mut self.slots {
            call(slot, &self.shared, |l| {
                l.log_metrics(step, wall_time, named)
            });
        }
    }

    /// Calls `f` on every logger that has not panicked, recording errors and panics.
    fn each(&mut self, mut f: impl FnMut(&mut dyn MetricLogger) -> Result<()>) {
        for slot in &mut self.slots {
            call(slot, &self.shared, &mut f);
        }
    }
}

fn call(slot: &mut Slot, shared: &Shared, f: impl FnOnce(&mut dyn MetricLogger) -> Result<()>) {
    if slot.panicked {
        return;
    }
    let logger = &mut *slot.logger;
    match catch_unwind(AssertUnwindSafe(|| f(&mut *logger))) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => shared.record(error),
        Err(panic) => {
            slot.panicked = true;
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            shared.record(Error::Logger {
                logger: slot.logger.name(),
                reason: format!("panicked ({what}); it receives nothing more"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue's memory is `depth` times a slot of about this size: keep it in sync with
    /// [`LoggerOptions::depth`](super::super::LoggerOptions::depth)'s documentation.
    #[test]
    fn a_message_stays_small() {
        // 120 bytes, 128 with the channel's stamp: 8 MiB at the default depth.
        assert!(std::mem::size_of::<Message>() <= 120);
    }
}
