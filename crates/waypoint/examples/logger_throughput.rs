//! What metric logging costs a training loop, measured in one run (release build):
//!
//! ```sh
//! cargo run --release -p waypoint --example logger_throughput [-- DIR]
//! ```
//!
//! 1. Sustained throughput: calls of 8 scalars sent back to back through [`Loggers`] (blocking
//!    mode, default depth) to a [`TensorBoardLogger`], until everything is in the event file and
//!    synced (`finalize`): scalars per second.
//! 2. The caller's cost of one call with 8 scalars, by name (`log_metrics`) and by id
//!    (`log_ids`), with a queue deep enough never to block: p50, p99, p99.9, max.
//! 3. The same inside a loop that computes ~20 µs between calls, with the default options (the
//!    writer woken every 32,768 calls and every 100 ms).
//!
//! Event files go to a temporary directory under DIR (default: the system's temporary
//! directory), removed at the end.

use std::time::{Duration, Instant};
use waypoint::{LoggerOptions, Loggers, MetricLogger, RunStatus, TensorBoardLogger};

const NAMES: [&str; 8] = [
    "train/loss",
    "train/acc",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "loss_scale",
    "mem_gib",
    "step_ms",
];
const THROUGHPUT_CALLS: u64 = 2_000_000;
const LATENCY_CALLS: usize = 500_000;
const PACED_CALLS: usize = 50_000;
const PACED_WORK: Duration = Duration::from_micros(20);

fn main() -> waypoint::Result<()> {
    let parent = std::env::args_os()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::Builder::new()
        .prefix("waypoint-logger-bench-")
        .tempdir_in(&parent)
        .map_err(|e| waypoint::Error::io("create directory", &parent, e))?;
    println!(
        "logger_throughput: {} cores, event files in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        tmp.path().display()
    );

    // 1. Sustained throughput.
    let dir = tmp.path().join("throughput");
    let logger = TensorBoardLogger::new(&dir, None)?;
    let mut log = spawn(logger, LoggerOptions::default())?;
    let start = Instant::now();
    for step in 0..THROUGHPUT_CALLS {
        log.log_metrics(step, &values(step));
    }
    let sent = start.elapsed();
    log.finalize(RunStatus::Success)?;
    let total = start.elapsed();
    let scalars = THROUGHPUT_CALLS * NAMES.len() as u64;
    // The event file (created with the first record) is the directory's only file.
    let bytes: u64 = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "throughput: {scalars} scalars in {:.3} s = {:.2} M scalars/s into the event file \
         ({:.1} MB, synced); the caller sent them in {:.3} s",
        total.as_secs_f64(),
        scalars as f64 / total.as_secs_f64() / 1e6,
        bytes as f64 / 1e6,
        sent.as_secs_f64(),
    );

    // 2. The caller's cost, never blocking.
    let options = LoggerOptions {
        depth: 1 << 20,
        ..LoggerOptions::default()
    };
    let logger = TensorBoardLogger::new(&tmp.path().join("latency"), None)?;
    let mut log = spawn(logger, options.clone())?;
    let by_name = measure(LATENCY_CALLS, Duration::ZERO, |step| {
        log.log_metrics(step, &values(step));
    });
    log.finalize(RunStatus::Success)?;
    report("log_metrics, 8 scalars by name", &by_name);

    let logger = TensorBoardLogger::new(&tmp.path().join("latency-ids"), None)?;
    let mut log = spawn(logger, options)?;
    let ids: Vec<_> = NAMES.iter().map(|n| log.metric_id(n)).collect();
    let by_id = measure(LATENCY_CALLS, Duration::ZERO, |step| {
        let v = values(step);
        let pairs: [(waypoint::loggers::MetricId, f64); 8] =
            std::array::from_fn(|i| (ids[i], v[i].1));
        log.log_ids(step, &pairs);
    });
    log.finalize(RunStatus::Success)?;
    report("log_ids, 8 scalars by id", &by_id);

    // 3. Inside a loop that computes between calls, default options.
    let logger = TensorBoardLogger::new(&tmp.path().join("paced"), None)?;
    let mut log = spawn(logger, LoggerOptions::default())?;
    let paced = measure(PACED_CALLS, PACED_WORK, |step| {
        log.log_metrics(step, &values(step));
    });
    log.finalize(RunStatus::Success)?;
    report("log_metrics in a 20 µs loop, default options", &paced);

    let clock = measure(LATENCY_CALLS, Duration::ZERO, |_| {});
    report("(the timer alone)", &clock);
    Ok(())
}

fn spawn(logger: TensorBoardLogger, options: LoggerOptions) -> waypoint::Result<Loggers> {
    let loggers: Vec<Box<dyn MetricLogger>> = vec![Box::new(logger)];
    Loggers::spawn(loggers, options)
}

fn values(step: u64) -> [(&'static str, f64); 8] {
    let x = step as f64;
    std::array::from_fn(|i| (NAMES[i], 1.0 / (x + 1.0) + i as f64))
}

/// Times `calls` calls of `f`, spinning `work` between them; nanoseconds per call, sorted.
fn measure(calls: usize, work: Duration, mut f: impl FnMut(u64)) -> Vec<u64> {
    let mut ns = Vec::with_capacity(calls);
    for step in 0..calls as u64 {
        if !work.is_zero() {
            let until = Instant::now() + work;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        let start = Instant::now();
        f(step);
        ns.push(start.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    ns
}

fn report(what: &str, sorted_ns: &[u64]) {
    let at = |q: f64| {
        let i = ((sorted_ns.len() as f64 * q) as usize).min(sorted_ns.len().saturating_sub(1));
        sorted_ns.get(i).copied().unwrap_or(0)
    };
    println!(
        "{what}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} calls)",
        at(0.50),
        at(0.99),
        at(0.999),
        sorted_ns.last().copied().unwrap_or(0),
        sorted_ns.len()
    );
}
