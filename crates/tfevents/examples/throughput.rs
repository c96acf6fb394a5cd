//! Throughput of `EventWriter`: sustained scalars per second into an event file, and the cost of
//! one `add_scalars` call with 8 scalars (p50 / p99 / p99.9 / max); then the file is read back
//! with `EventReader`.
//!
//! ```text
//! cargo run --release -p tfevents --example throughput [-- TOTAL_SCALARS]
//! ```
//!
//! Writes into a temporary directory that is removed at the end. Default: 10,000,000 scalars in
//! events of 8.

use std::time::{Duration, Instant};
use tfevents::{EventWriter, WriterOptions};

const PER_EVENT: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10_000_000,
    };
    let events = total / PER_EVENT;
    let dir = tempfile::TempDir::new()?;
    let tags: Vec<String> = (0..PER_EVENT)
        .map(|i| format!("train/metric_{i}"))
        .collect();
    let mut batch: Vec<(&str, f32)> = tags.iter().map(|t| (t.as_str(), 0.0)).collect();

    let mut writer = EventWriter::create(dir.path(), &WriterOptions::default())?;
    let mut latencies = Vec::with_capacity(events);
    let start = Instant::now();
    for step in 0..events {
        for (i, (_, value)) in batch.iter_mut().enumerate() {
            *value = (step * PER_EVENT + i) as f32 * 1e-3;
        }
        let wall_time = 1.7e9 + step as f64 * 1e-3;
        let call = Instant::now();
        writer.add_scalars(step as i64, wall_time, &batch)?;
        latencies.push(call.elapsed());
    }
    writer.flush()?;
    let elapsed = start.elapsed();
    writer.sync()?;
    let synced = start.elapsed();
    let bytes = std::fs::metadata(writer.path())?.len();

    let written = events * PER_EVENT;
    println!(
        "{written} scalars in {events} events, {:.1} MB: {:.3} s to the OS ({:.2} M scalars/s), {:.3} s with fsync ({:.2} M scalars/s)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64() / 1e6,
        synced.as_secs_f64(),
        written as f64 / synced.as_secs_f64() / 1e6,
    );
    let read_start = Instant::now();
    let read = tfevents::EventReader::open(writer.path())?.try_fold(0usize, |n, event| {
        event.map(|e| n + e.summary().map_or(0, |s| s.value.len()))
    })?;
    let read_elapsed = read_start.elapsed();
    println!(
        "read back {read} scalars with EventReader (CRCs checked, decoded): {:.3} s ({:.2} M scalars/s)",
        read_elapsed.as_secs_f64(),
        read as f64 / read_elapsed.as_secs_f64() / 1e6,
    );

    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(Duration::ZERO)
    };
    println!(
        "add_scalars with {PER_EVENT} scalars: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        at(0.999),
        latencies.last().copied().unwrap_or(Duration::ZERO),
    );
    Ok(())
}
