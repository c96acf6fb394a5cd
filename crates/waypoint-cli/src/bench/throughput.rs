//! `waypoint bench` (the default): saves and loads a synthetic state and measures, in the same
//! run, the baselines a checkpoint cannot beat by much: a plain write + fsync of the same bytes
//! the best way a plain program could (one thread and as many as the save uses, through the page
//! cache and with `O_DIRECT`; the fastest counts), and a memcpy into pre-faulted buffers. Reports throughputs, their ratios to the baselines, the
//! peak extra memory of a save and the file system.

use super::{
    PlainWrite, f32_slots, file_system_of, keep_scratch, layer_names, median, plain_write,
    plain_writes, progress_printer, reset_peak, rss, scratch_dir, synthetic_buffers, whole_f32,
};
use crate::cli::BenchConfig;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, LoadOptions, SaveOptions};

/// Repetitions of each measurement; the median is reported.
const REPS: usize = 5;

/// Everything a bench run measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    /// The directory benchmarked.
    pub dir: PathBuf,
    /// File system type and device, as /proc/self/mountinfo names them.
    pub file_system: String,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// Plain write + fsync of the same bytes, the fastest way tried (`baselines`), seconds
    /// (median).
    pub baseline_write_s: f64,
    /// The way of the fastest plain write.
    pub baseline: String,
    /// Every way of writing tried, with its median time (`null`: refused by the file system).
    pub baselines: Vec<(PlainWrite, Option<f64>)>,
    /// waypoint save (commit and fsyncs included), seconds (median).
    pub save_s: f64,
    /// `baseline_write_s / save_s`: 1.0 means as fast as a plain write.
    pub save_ratio: f64,
    /// memcpy into pre-faulted buffers, seconds (median).
    pub baseline_memcpy_s: f64,
    /// Hot load into pre-faulted caller buffers without checksums, seconds (median).
    pub load_s: f64,
    /// `baseline_memcpy_s / load_s`.
    pub load_ratio: f64,
    /// Hot load with CRC-32C verification, seconds (median).
    pub load_verified_s: f64,
    /// `baseline_memcpy_s / load_verified_s`.
    pub load_verified_ratio: f64,
    /// Peak resident memory a save added beyond the state itself, bytes.
    pub save_peak_extra_bytes: u64,
    /// Where the checkpoint was left (with `--keep`).
    pub kept: Option<PathBuf>,
}

/// The save measurements: write + fsync baselines (per way of writing), saves, and the peak
/// extra memory of a save.
struct Saves {
    baseline: Vec<(PlainWrite, Vec<Duration>)>,
    saves: Vec<Duration>,
    peak_extra: u64,
}

/// The load measurements: memcpy baselines, hot loads without and with checksums.
struct Loads {
    memcpy: Vec<Duration>,
    loads: Vec<Duration>,
    verified: Vec<Duration>,
}

/// Saves `state` [`REPS`] times as `step-<rep>` (all but the last removed again), each after a
/// write + fsync baseline of the same bytes in `work`.
fn measure_saves(
    checkpointer: &Checkpointer,
    work: &Path,
    state: &[Vec<u8>],
    names: &[String],
    progress: &dyn Fn(&str),
) -> Result<Saves> {
    let refs = whole_f32(state, names);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let mut out = Saves {
        baseline: plain_writes(threads)
            .into_iter()
            .map(|w| (w, Vec::new()))
            .collect(),
        saves: Vec::new(),
        peak_extra: 0,
    };
    for rep in 0..REPS {
        for (how, times) in &mut out.baseline {
            progress(&format!(
                "write + fsync baseline ({how}) {}/{REPS}",
                rep + 1
            ));
            if let Some(t) = plain_write(&work.join("baseline.bin"), state, *how)? {
                times.push(t);
            }
        }

        progress(&format!("waypoint save {}/{REPS}", rep + 1));
        let dir = StoragePath::new(&format!("step-{rep}"))?;
        let before = rss();
        let peak_ok = reset_peak();
        let report = checkpointer.save(&dir, &CheckpointMeta::at_step(rep as u64), &refs, &())?;
        out.saves.push(report.elapsed);
        if let (true, Some((rss_before, _)), Some((_, hwm))) = (peak_ok, before, rss()) {
            out.peak_extra = out.peak_extra.max(hwm.saturating_sub(rss_before));
        }
        if rep + 1 < REPS {
            let record = dir.join("weights/metadata.json")?;
            checkpointer.storage().remove_dir_all(&dir, &record)?;
        }
    }
    Ok(out)
}

/// Loads checkpoint `last` [`REPS`] times into pre-faulted buffers (as a training loop's
/// parameters would be), without and with checksums, each after a memcpy baseline; checks that
/// the state read back is `state`.
fn measure_loads(
    checkpointer: &Checkpointer,
    last: &StoragePath,
    state: &[Vec<u8>],
    names: &[String],
    progress: &dyn Fn(&str),
) -> Result<Loads> {
    let reader = checkpointer.open(last)?;
    let mut dest: Vec<Vec<u8>> = state.iter().map(|d| vec![1u8; d.len()]).collect();
    let shapes: Vec<[u64; 1]> = state.iter().map(|d| [d.len() as u64 / 4]).collect();
    let mut out = Loads {
        memcpy: Vec::new(),
        loads: Vec::new(),
        verified: Vec::new(),
    };
    for rep in 0..REPS {
        progress(&format!("memcpy baseline and hot loads {}/{REPS}", rep + 1));
        let started = Instant::now();
        for (d, s) in dest.iter_mut().zip(state) {
            d.copy_from_slice(s);
        }
        out.memcpy.push(started.elapsed());
        for (verify, times) in [(false, &mut out.loads), (true, &mut out.verified)] {
            let mut slots = f32_slots(&mut dest, names, &shapes);
            let options = LoadOptions {
                verify_checksums: verify,
                ..Default::default()
            };
            let started = Instant::now();
            reader.load_into(&mut slots, &options)?;
            times.push(started.elapsed());
        }
    }
    anyhow::ensure!(
        dest == state,
        "the loaded state differs from what was saved"
    );
    Ok(out)
}

/// Runs the benchmark on `dir` with `bytes` of data in `tensors` tensors.
pub fn measure(
    dir: &Path,
    bytes: u64,
    tensors: u64,
    keep: bool,
    progress: &dyn Fn(&str),
) -> Result<BenchResult> {
    let work = scratch_dir(dir)?;
    let per = (bytes / tensors / 4 * 4).max(4) as usize;
    progress(&format!("allocating {tensors} tensors of {per} bytes"));
    let state = synthetic_buffers(tensors, per);
    let total: u64 = state.iter().map(|v| v.len() as u64).sum();
    let names = layer_names(tensors);
    // Full saves: every rep writes every byte (an incremental save would carry the files of
    // the same state over; `--incremental` measures that).
    let checkpointer = Checkpointer::new(local_storage(work.path())?).with_options(SaveOptions {
        incremental: false,
        ..SaveOptions::default()
    });

    let saves = measure_saves(&checkpointer, work.path(), &state, &names, progress)?;
    let last = StoragePath::new(&format!("step-{}", REPS - 1))?;
    let loads = measure_loads(&checkpointer, &last, &state, &names, progress)?;
    let file_system = file_system_of(&std::fs::canonicalize(work.path())?);
    let kept = keep_scratch(work, keep, last.as_str());
    let baselines: Vec<(PlainWrite, Option<f64>)> = saves
        .baseline
        .into_iter()
        .map(|(how, times)| (how, (!times.is_empty()).then(|| median(times))))
        .collect();
    let (fastest, baseline_write_s) = baselines
        .iter()
        .filter_map(|(how, t)| t.map(|t| (*how, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| anyhow::anyhow!("no plain write worked"))?;
    let save_s = median(saves.saves);
    let (baseline_memcpy_s, load_s, load_verified_s) = (
        median(loads.memcpy),
        median(loads.loads),
        median(loads.verified),
    );
    Ok(BenchResult {
        dir: dir.to_path_buf(),
        file_system,
        bytes: total,
        tensors,
        baseline_write_s,
        baseline: fastest.to_string(),
        baselines,
        save_s,
        save_ratio: baseline_write_s / save_s,
        baseline_memcpy_s,
        load_s,
        load_ratio: baseline_memcpy_s / load_s,
        load_verified_s,
        load_verified_ratio: baseline_memcpy_s / load_verified_s,
        save_peak_extra_bytes: saves.peak_extra,
        kept,
    })
}

/// Entry point of `waypoint bench` without `--async`, `--ranks` or a URL.
pub fn run(config: &BenchConfig) -> Result<ExitCode> {
    let progress = progress_printer(config.json);
    let r = measure(
        &config.dir,
        config.size,
        config.tensors,
        config.keep,
        &progress,
    )?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// The text report.
fn print_text(r: &BenchResult) {
    let gib = |s: f64| r.bytes as f64 / (1u64 << 30) as f64 / s;
    println!("file system   {}", r.file_system);
    println!(
        "state         {} tensors, {:.1} MiB",
        r.tensors,
        r.bytes as f64 / (1u64 << 20) as f64
    );
    for (how, t) in &r.baselines {
        match t {
            Some(t) => println!("plain write   {t:.3} s  {:.2} GiB/s   ({how})", gib(*t)),
            None => println!("plain write   refused by the file system ({how})"),
        }
    }
    println!(
        "save + fsync  {:.3} s  {:.2} GiB/s   fastest plain write + fsync {:.3} s  {:.2} GiB/s ({})   ratio {:.2}",
        r.save_s,
        gib(r.save_s),
        r.baseline_write_s,
        gib(r.baseline_write_s),
        r.baseline,
        r.save_ratio
    );
    println!(
        "hot load      {:.3} s  {:.2} GiB/s   memcpy {:.3} s  {:.2} GiB/s   ratio {:.2}",
        r.load_s,
        gib(r.load_s),
        r.baseline_memcpy_s,
        gib(r.baseline_memcpy_s),
        r.load_ratio
    );
    println!(
        "hot load+crc  {:.3} s  {:.2} GiB/s   ratio {:.2}",
        r.load_verified_s,
        gib(r.load_verified_s),
        r.load_verified_ratio
    );
    println!(
        "save peak extra memory  {:.1} MiB",
        r.save_peak_extra_bytes as f64 / (1u64 << 20) as f64
    );
    if let Some(k) = &r.kept {
        println!("checkpoint kept at {}", k.display());
    }
}
