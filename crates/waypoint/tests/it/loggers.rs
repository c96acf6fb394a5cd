//! The metric loggers: the fan-out delivers in order, drops and counts only in lossy mode,
//! flushes synchronously, surfaces a logger's error, logs nothing off rank 0 and finalizes on
//! drop; the CSV logger's layout, header growth and resume truncation; the TensorBoard logger's
//! records, read back with `tfevents` here and by the real TensorBoard in
//! `tensorboard_reads_a_resumed_run` (see `tests/python/check_logger_resume.py`).

use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use waypoint::{CheckpointEvent, Error, LoggerOptions, Loggers, MetricLogger, RunStatus, WhenFull};

/// One call a [`Recorder`] received.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Metrics(u64, Vec<(String, f64)>),
    Hyperparams(Value),
    Text(u64, String, String),
    Checkpoint(u64),
    Resumed(u64),
    Flush,
    Finalize(RunStatus),
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A test logger: records its calls; optionally holds its first metrics call until released,
/// fails at a step, or panics at a step.
#[derive(Default)]
struct Recorder {
    calls: Calls,
    /// Told the step of the first metrics call, which then waits for `release`.
    entered: Option<Sender<u64>>,
    release: Option<Receiver<()>>,
    fail_at: Option<u64>,
    panic_at: Option<u64>,
}

impl Recorder {
    fn new() -> (Self, Calls) {
        let r = Recorder::default();
        let calls = Arc::clone(&r.calls);
        (r, calls)
    }

    /// A recorder whose first metrics call blocks: returns it, the calls, a receiver told when
    /// the call started and a sender that releases it.
    fn gated() -> (Self, Calls, Receiver<u64>, Sender<()>) {
        let (mut r, calls) = Recorder::new();
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        r.entered = Some(entered_tx);
        r.release = Some(release_rx);
        (r, calls, entered, release)
    }

    fn push(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl MetricLogger for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn log_metrics(
        &mut self,
        step: u64,
        _wall: f64,
        metrics: &[(&str, f64)],
    ) -> waypoint::Result<()> {
        if let Some(entered) = self.entered.take() {
            entered.send(step).unwrap();
            self.release.take().unwrap().recv().unwrap();
        }
        if self.panic_at == Some(step) {
            panic!("recorder told to panic at step {step}");
        }
        self.push(Call::Metrics(
            step,
            metrics.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        ));
        if self.fail_at == Some(step) {
            return Err(Error::Logger {
                logger: "recorder",
                reason: format!("told to fail at step {step}"),
            });
        }
        Ok(())
    }

    fn log_hyperparams(&mut self, params: &Map<String, Value>) -> waypoint::Result<()> {
        self.push(Call::Hyperparams(Value::Object(params.clone())));
        Ok(())
    }

    fn log_text(&mut self, step: u64, _wall: f64, tag: &str, text: &str) -> waypoint::Result<()> {
        self.push(Call::Text(step, tag.into(), text.into()));
        Ok(())
    }

    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> waypoint::Result<()> {
        self.push(Call::Checkpoint(event.step));
        Ok(())
    }

    fn resumed(&mut self, step: u64) -> waypoint::Result<()> {
        self.push(Call::Resumed(step));
        Ok(())
    }

    fn flush(&mut self) -> waypoint::Result<()> {
        self.push(Call::Flush);
        Ok(())
    }

    fn finalize(&mut self, status: RunStatus) -> waypoint::Result<()> {
        self.push(Call::Finalize(status));
        Ok(())
    }
}

fn options(depth: usize, when_full: WhenFull) -> LoggerOptions {
    LoggerOptions {
        depth,
        when_full,
        ..LoggerOptions::default()
    }
}

fn spawn(loggers: Vec<Recorder>, options: LoggerOptions) -> Loggers {
    let boxed = loggers
        .into_iter()
        .map(|r| Box::new(r) as Box<dyn MetricLogger>)
        .collect();
    Loggers::spawn(boxed, options).unwrap()
}

/// The calls other than flushes (the writer flushes after each batch, at its own pace).
fn without_flushes(calls: &Calls) -> Vec<Call> {
    let calls = calls.lock().unwrap();
    calls
        .iter()
        .filter(|c| **c != Call::Flush)
        .cloned()
        .collect()
}

fn metric_steps(calls: &Calls) -> Vec<u64> {
    let calls = calls.lock().unwrap();
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Metrics(step, _) => Some(*step),
            _ => None,
        })
        .collect()
}

fn checkpoint(step: u64) -> CheckpointEvent {
    CheckpointEvent {
        step,
        path: PathBuf::from(format!("/ckpt/step={step}")),
        bytes: 3 << 20,
        blocked_ms: 1.5,
        write_ms: 20.25,
    }
}

#[test]
fn every_message_reaches_every_logger_in_order() {
    let (a, calls_a) = Recorder::new();
    let (b, calls_b) = Recorder::new();
    let mut log = spawn(vec![a, b], options(8, WhenFull::Block));
    let mut want = Vec::new();
    let params = json!({"lr": 0.1, "layers": 4});
    log.log_hyperparams(params.as_object().unwrap());
    want.push(Call::Hyperparams(params));
    for step in 1..=2000u64 {
        log.log_metrics(step, &[("loss", 1.0 / step as f64), ("lr", 0.1)]);
        want.push(Call::Metrics(
            step,
            vec![("loss".into(), 1.0 / step as f64), ("lr".into(), 0.1)],
        ));
        if step % 500 == 0 {
            log.log_text(step, "notes", "half way");
            log.checkpoint_saved(&checkpoint(step));
            want.push(Call::Text(step, "notes".into(), "half way".into()));
            want.push(Call::Checkpoint(step));
        }
    }
    let id = log.metric_id("val_loss");
    log.log_ids(2000, &[(id, 0.25)]);
    want.push(Call::Metrics(2000, vec![("val_loss".into(), 0.25)]));
    log.log_metrics(2001, &[]); // nothing to log: nothing sent
    log.resumed(7);
    want.push(Call::Resumed(7));
    log.finalize(RunStatus::Preempted).unwrap();
    want.push(Call::Finalize(RunStatus::Preempted));
    assert!(!log.is_active());
    assert_eq!(without_flushes(&calls_a), want);
    assert_eq!(without_flushes(&calls_b), want);
    assert_eq!((log.dropped(), log.errors()), (0, 0));
    // After finalize, calls do nothing.
    log.log_metrics(9999, &[("loss", 0.0)]);
    log.flush().unwrap();
    assert_eq!(without_flushes(&calls_a).len(), want.len());
}

#[test]
fn lossy_mode_drops_and_counts_when_the_queue_is_full() {
    let (gated, calls, entered, release) = Recorder::gated();
    let mut log = spawn(vec![gated], options(2, WhenFull::Drop));
    log.log_metrics(0, &[("x", 0.0)]);
    // The writer holds step 0 inside the logger: the queue is empty and nothing drains it.
    assert_eq!(entered.recv().unwrap(), 0);
    for step in 1..=10 {
        log.log_metrics(step, &[("x", step as f64)]);
    }
    assert_eq!(log.dropped(), 8, "two fit in the queue, eight are dropped");
    release.send(()).unwrap();
    log.flush().unwrap();
    assert_eq!(metric_steps(&calls), [0, 1, 2]);
    // Room again: nothing more is dropped.
    log.log_metrics(11, &[("x", 11.0)]);
    log.finalize(RunStatus::Success).unwrap();
    assert_eq!(metric_steps(&calls), [0, 1, 2, 11]);
    assert_eq!(log.dropped(), 8);
}

#[test]
fn blocking_mode_waits_and_never_drops() {
    let (gated, calls, entered, release) = Recorder::gated();
    let mut log = spawn(vec![gated], options(1, WhenFull::Block));
    log.log_metrics(0, &[("x", 0.0)]);
    assert_eq!(entered.recv().unwrap(), 0);
    let (done_tx, done) = channel();
    let producer = std::thread::spawn(move || {
        for step in 1..=5 {
            log.log_metrics(step, &[("x", step as f64)]);
        }
        done_tx.send(()).unwrap();
        log
    });
    // Step 1 fills the queue; step 2 must wait for the held writer.
    assert!(
        done.recv_timeout(Duration::from_millis(200)).is_err(),
        "the producer finished while the writer was held: it did not block"
    );
    release.send(()).unwrap();
    let mut log = producer.join().unwrap();
    for step in 6..=5000 {
        log.log_metrics(step, &[("x", step as f64)]);
    }
    log.finalize(RunStatus::Success).unwrap();
    assert_eq!(log.dropped(), 0);
    assert_eq!(metric_steps(&calls), (0..=5000).collect::<Vec<_>>());
}

#[test]
fn flush_returns_after_everything_sent_before_it_was_applied() {
    let (r, calls) = Recorder::new();
    let mut log = spawn(vec![r], LoggerOptions::default());
    for round in 0..5u64 {
        for step in round * 1000..(round + 1) * 1000 {
            log.log_metrics(step, &[("x", 1.0)]);
        }
        log.flush().unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::Metrics(..)))
                .count() as u64,
            (round + 1) * 1000
        );
        assert_eq!(calls.last(), Some(&Call::Flush));
    }
}

#[test]
fn a_failing_logger_surfaces_its_first_error_on_flush_and_the_others_go_on() {
    let (mut failing, failing_calls) = Recorder::new();
    failing.fail_at = Some(3);
    let (mut panicking, panicking_calls) = Recorder::new();
    panicking.panic_at = Some(4);
    let (good, good_calls) = Recorder::new();
    let mut log = spawn(vec![failing, panicking, good], LoggerOptions::default());
    for step in 1..=5 {
        log.log_metrics(step, &[("x", 1.0)]);
    }
    let err = log.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Logger { logger: "recorder", reason } if reason.contains("step 3")),
        "{err}"
    );
    assert_eq!(log.errors(), 2, "the failure and the panic");
    // The failing logger goes on receiving; the one that panicked receives nothing more.
    assert_eq!(metric_steps(&failing_calls), [1, 2, 3, 4, 5]);
    assert_eq!(metric_steps(&panicking_calls), [1, 2, 3]);
    assert_eq!(metric_steps(&good_calls), [1, 2, 3, 4, 5]);
    // Errors that came while one was waiting are counted (and logged with tracing) only.
    log.flush().unwrap();
    // A later error is reported again.
    log.log_metrics(3, &[("y", 2.0)]);
    log.log_metrics(3, &[("y", 3.0)]);
    let err = log.flush().unwrap_err();
    assert!(err.to_string().contains("step 3"), "{err}");
    assert_eq!(log.errors(), 4);
    log.finalize(RunStatus::Success).unwrap();
    assert_eq!(
        good_calls.lock().unwrap().last(),
        Some(&Call::Finalize(RunStatus::Success))
    );
    assert_eq!(
        panicking_calls.lock().unwrap().last(),
        Some(&Call::Metrics(3, vec![("x".into(), 1.0)]))
    );
}

#[test]
fn other_ranks_log_nothing() {
    let (r, calls) = Recorder::new();
    let options = LoggerOptions {
        global_rank: 1,
        ..LoggerOptions::default()
    };
    assert!(!options.is_active());
    let mut log = spawn(vec![r], options);
    assert!(!log.is_active());
    log.log_metrics(1, &[("x", 1.0)]);
    log.log_hyperparams(&Map::new());
    log.checkpoint_saved(&checkpoint(1));
    log.flush().unwrap();
    log.finalize(RunStatus::Success).unwrap();
    drop(log);
    assert!(calls.lock().unwrap().is_empty());

    // Unless every rank logs.
    let (r, calls) = Recorder::new();
    let options = LoggerOptions {
        global_rank: 1,
        rank_zero_only: false,
        ..LoggerOptions::default()
    };
    let mut log = spawn(vec![r], options);
    log.log_metrics(1, &[("x", 1.0)]);
    drop(log);
    assert_eq!(metric_steps(&calls), [1]);
}

#[test]
fn drop_finalizes_with_success_or_with_failed_during_a_panic() {
    let (r, calls) = Recorder::new();
    let mut log = spawn(vec![r], LoggerOptions::default());
    log.log_metrics(1, &[("x", 1.0)]);
    drop(log);
    assert_eq!(
        without_flushes(&calls).last(),
        Some(&Call::Finalize(RunStatus::Success))
    );

    let (r, calls) = Recorder::new();
    let log = spawn(vec![r], LoggerOptions::default());
    let panicked = std::thread::spawn(move || {
        let _log = log;
        panic!("the training loop fails");
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(without_flushes(&calls), [Call::Finalize(RunStatus::Failed)]);
}

#[test]
fn a_zero_depth_is_refused() {
    let err = Loggers::spawn(Vec::new(), options(0, WhenFull::Block)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "depth", .. }),
        "{err}"
    );
}

pub(crate) mod support;

mod csv;
mod tensorboard;
