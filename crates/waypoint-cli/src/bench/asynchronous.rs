//! `waypoint bench --async`: asynchronous checkpointing inside a training-like loop. A state of
//! `--size` bytes, a loop of fixed-work compute steps (the work is calibrated once, then counted,
//! not timed, so a step that loses its core to the writer really takes longer), and a save every
//! `--every` steps through a [`Run`]. Reports, in one run: the time each save blocked the loop
//! against a memcpy of the same bytes into a pre-faulted buffer, the loop's slowdown against the
//! same loop without saves ([`REPS`] times, the two loops alternating: the median and the worst),
//! and the peak resident memory against state + staging.

use super::{median, progress_printer, reset_peak, rss, scratch_dir, synthetic_buffers};
use crate::cli::{AsyncBench, BenchConfig};
use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::{Checkpointable, Dtype, ModelCheckpoint, Run, SaveLast, SinkSlot, TensorRef};

/// The benchmark's state: `tensors` buffers and a step counter.
struct State {
    tensors: Vec<Vec<u8>>,
    names: Vec<String>,
    step: u64,
}

impl Checkpointable for State {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        self.tensors
            .iter()
            .zip(&self.names)
            .map(|(t, n)| {
                TensorRef::whole(
                    n.as_str(),
                    Dtype::F32,
                    vec![t.len() as u64 / 4],
                    t.as_slice(),
                )
            })
            .collect()
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        Vec::new()
    }
    fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
        Ok(())
    }
}

/// Repetitions of the pair of loops (without and with saves); the slowdown's median and worst
/// are reported.
const REPS: usize = 5;

/// A fixed amount of floating-point work.
fn work(iterations: u64) -> f64 {
    let mut x = 1.000_000_1f64;
    for i in 0..iterations {
        x = x * 1.000_000_01 + (i & 7) as f64 * 1e-12;
    }
    std::hint::black_box(x)
}

/// Iterations of [`work`] that take about `ms` milliseconds on this machine, measured now.
fn calibrate(ms: u64) -> u64 {
    let probe = 2_000_000;
    let started = Instant::now();
    work(probe);
    let per_ms = probe as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1000.0;
    (per_ms * ms as f64) as u64
}

/// One training step: the fixed compute, then an update touching every tensor (as an optimizer
/// step does).
fn step(state: &mut State, iterations: u64) {
    work(iterations);
    state.step += 1;
    let s = state.step as u8;
    for t in &mut state.tensors {
        for b in t.iter_mut().step_by(4096) {
            *b = b.wrapping_add(s);
        }
    }
}

/// Everything `--async` measured.
#[derive(Debug, serde::Serialize)]
pub struct AsyncResult {
    /// Bytes of state.
    pub bytes: u64,
    /// Steps per loop.
    pub steps: u64,
    /// Saves in the loop with saves.
    pub saves: usize,
    /// Median time a save blocked the loop (staging), seconds.
    pub blocked_s: f64,
    /// memcpy of the state into a pre-faulted buffer, seconds (median).
    pub memcpy_s: f64,
    /// `blocked_s / memcpy_s` (target ≤ 1.2).
    pub blocked_ratio: f64,
    /// The loop without saves, seconds.
    pub loop_plain_s: f64,
    /// The same loop with asynchronous saves, seconds (the wait for the last save excluded).
    pub loop_saving_s: f64,
    /// `loop_saving_s / loop_plain_s - 1`, the median of the repetitions (target ≤ 0.05).
    pub slowdown: f64,
    /// The worst repetition's slowdown (target ≤ 0.05 too).
    pub slowdown_worst: f64,
    /// Every repetition's slowdown, in order.
    pub slowdowns: Vec<f64>,
    /// Median background write time of a save, seconds (whether the disk keeps up).
    pub write_s: f64,
    /// Peak resident memory during the loop with saves, bytes.
    pub peak_rss_bytes: u64,
    /// Staging memory the run held, bytes.
    pub staging_bytes: u64,
    /// `peak_rss_bytes - bytes - staging_bytes`: the rest (target ≤ 64 MiB).
    pub other_bytes: i64,
}

/// The state of `config`: `--tensors` buffers of `--size / --tensors` bytes.
fn new_state(config: &BenchConfig, say: &dyn Fn(&str)) -> State {
    let per = (config.size / config.tensors / 4 * 4).max(4) as usize;
    say(&format!(
        "allocating {} tensors of {per} bytes",
        config.tensors
    ));
    State {
        tensors: synthetic_buffers(config.tensors, per),
        names: (0..config.tensors)
            .map(|i| format!("layers.{i}.weight"))
            .collect(),
        step: 0,
    }
}

/// Five copies of the state into a pre-faulted buffer: what staging a save cannot beat.
fn memcpy_baseline(state: &State) -> Vec<Duration> {
    let mut copy: Vec<Vec<u8>> = state.tensors.iter().map(|t| vec![1u8; t.len()]).collect();
    let mut memcpy = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for (d, s) in copy.iter_mut().zip(&state.tensors) {
            d.copy_from_slice(s);
        }
        memcpy.push(started.elapsed());
    }
    memcpy
}

/// What the loop with saves measured.
struct SavingLoop {
    /// The loop's wall time (the wait for the last save excluded).
    elapsed: Duration,
    /// Time each save blocked the loop.
    blocked: Vec<Duration>,
    /// Background write time of each save.
    writes: Vec<Duration>,
    /// Peak resident memory, bytes (the high-water mark since the start, when it could not be
    /// reset).
    peak: u64,
    /// Whether the high-water mark was reset before the loop (else the peak is not reported).
    peak_ok: bool,
    /// Staging memory the run held, bytes.
    staging: u64,
}

/// The loop again, with a [`Run`] in `log_dir` saving asynchronously every `--every` steps.
fn saving_loop(
    state: &mut State,
    loop_config: &AsyncBench,
    iterations: u64,
    log_dir: &Path,
) -> Result<SavingLoop> {
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(1)
        .save_last(SaveLast::No)
        .every_n_train_steps(loop_config.every)
        .build()?;
    let mut run = Run::builder()
        .log_dir(log_dir)
        .name("bench")
        .checkpoint(policy)
        .build()?;
    let peak_ok = reset_peak();
    let mut blocked = Vec::new();
    let mut writes = Vec::new();
    state.step = 0;
    let started = Instant::now();
    for _ in 0..loop_config.steps {
        step(state, iterations);
        let call = Instant::now();
        let finished = run.step_end(state.step, 0, &*state)?;
        if state.step.is_multiple_of(loop_config.every) {
            blocked.push(call.elapsed());
        }
        writes.extend(finished.iter().map(|s| s.elapsed));
    }
    let elapsed = started.elapsed();
    writes.extend(run.wait_for_saves()?.iter().map(|s| s.elapsed));
    let peak = rss().map_or(0, |(_, hwm)| hwm);
    Ok(SavingLoop {
        elapsed,
        blocked,
        writes,
        peak,
        peak_ok,
        staging: run.staging_bytes(),
    })
}

/// Runs `waypoint bench --async`.
pub fn run(config: &BenchConfig, loop_config: &AsyncBench) -> Result<ExitCode> {
    let say = progress_printer(config.json);
    let work_dir = scratch_dir(&config.dir)?;
    let mut state = new_state(config, &say);
    let bytes: u64 = state.tensors.iter().map(|t| t.len() as u64).sum();
    let iterations = calibrate(loop_config.step_ms);

    say("memcpy baseline");
    let memcpy = memcpy_baseline(&state);

    let mut pairs = Vec::with_capacity(REPS);
    for rep in 1..=REPS {
        say(&format!(
            "{rep}/{REPS}: loop without saves: {} steps of ~{} ms",
            loop_config.steps, loop_config.step_ms
        ));
        let started = Instant::now();
        for _ in 0..loop_config.steps {
            step(&mut state, iterations);
        }
        let loop_plain = started.elapsed();
        say(&format!(
            "{rep}/{REPS}: loop with an asynchronous save every {} steps",
            loop_config.every
        ));
        let log_dir = work_dir.path().join(format!("rep-{rep}"));
        let saving = saving_loop(&mut state, loop_config, iterations, &log_dir)?;
        // The run is gone (its saves and deletions finished): free the disk for the next.
        std::fs::remove_dir_all(&log_dir)?;
        pairs.push((loop_plain, saving));
    }
    let result = AsyncResult::new(bytes, loop_config.steps, memcpy, pairs);
    if config.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_text(&result, config.tensors);
    }
    Ok(ExitCode::SUCCESS)
}

impl AsyncResult {
    /// The figures of a state of `bytes`, a loop of `steps` steps, the memcpy baselines, and the
    /// pairs of loops without saves and with them (the figures of one loop with saves are its
    /// median repetition's; blocked times and writes are all repetitions').
    fn new(
        bytes: u64,
        steps: u64,
        memcpy: Vec<Duration>,
        pairs: Vec<(Duration, SavingLoop)>,
    ) -> Self {
        let memcpy_s = median(memcpy);
        let slowdowns: Vec<f64> = pairs
            .iter()
            .map(|(plain, saving)| saving.elapsed.as_secs_f64() / plain.as_secs_f64() - 1.0)
            .collect();
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by(|&a, &b| slowdowns[a].total_cmp(&slowdowns[b]));
        let middle = order[order.len() / 2];
        let slowdown_worst = slowdowns.iter().copied().fold(f64::MIN, f64::max);
        let blocked: Vec<Duration> = pairs.iter().flat_map(|(_, s)| s.blocked.clone()).collect();
        let writes: Vec<Duration> = pairs.iter().flat_map(|(_, s)| s.writes.clone()).collect();
        let peak = pairs.iter().map(|(_, s)| s.peak).max().unwrap_or(0);
        let peak_ok = pairs.iter().all(|(_, s)| s.peak_ok);
        let staging = pairs.iter().map(|(_, s)| s.staging).max().unwrap_or(0);
        let (loop_plain, saving) = &pairs[middle];
        let saves = saving.blocked.len();
        let blocked_s = median(blocked);
        AsyncResult {
            bytes,
            steps,
            saves,
            blocked_s,
            memcpy_s,
            blocked_ratio: blocked_s / memcpy_s,
            loop_plain_s: loop_plain.as_secs_f64(),
            loop_saving_s: saving.elapsed.as_secs_f64(),
            slowdown: slowdowns[middle],
            slowdown_worst,
            slowdowns,
            write_s: if writes.is_empty() {
                0.0
            } else {
                median(writes)
            },
            peak_rss_bytes: if peak_ok { peak } else { 0 },
            staging_bytes: staging,
            other_bytes: peak as i64 - bytes as i64 - staging as i64,
        }
    }
}

/// The text report.
fn print_text(result: &AsyncResult, tensors: u64) {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let ms = |s: f64| s * 1e3;
    println!(
        "state          {} tensors, {:.1} MiB",
        tensors,
        mib(result.bytes as f64)
    );
    println!(
        "blocked        {:.1} ms per save (median of {}), memcpy {:.1} ms, ratio {:.2}",
        ms(result.blocked_s),
        result.saves,
        ms(result.memcpy_s),
        result.blocked_ratio
    );
    println!(
        "loop           {:.2} s without saves, {:.2} s with, slowdown {:.1}% (median of {}), worst {:.1}%",
        result.loop_plain_s,
        result.loop_saving_s,
        result.slowdown * 100.0,
        result.slowdowns.len(),
        result.slowdown_worst * 100.0
    );
    let all: Vec<String> = result
        .slowdowns
        .iter()
        .map(|s| format!("{:.1}%", s * 100.0))
        .collect();
    println!("slowdowns      {}", all.join(", "));
    println!(
        "write          {:.1} ms per save in the background (median)",
        ms(result.write_s)
    );
    println!(
        "peak RSS       {:.1} MiB = state {:.1} + staging {:.1} + other {:.1} MiB",
        mib(result.peak_rss_bytes as f64),
        mib(result.bytes as f64),
        mib(result.staging_bytes as f64),
        mib(result.other_bytes as f64)
    );
}
