//! `waypoint bench`: how fast checkpoints go on the user's own storage. Saves and loads a
//! synthetic state and measures, in the same run, the baselines a checkpoint cannot beat by much:
//! a plain write + fsync of the same bytes, and a memcpy into pre-faulted buffers. Reports
//! throughputs, their ratios to the baselines, the peak extra memory of a save and the file system.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, LoadOptions, SinkSlot, TensorRef};

use crate::cli::BenchConfig;

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
    /// Plain write + fsync of the same bytes, seconds (median).
    pub baseline_write_s: f64,
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

pub(crate) fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Fills `buf` with a cheap deterministic pattern (so pages are really allocated).
pub(crate) fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Resident set size and its high-water mark from /proc/self/status, in bytes.
pub(crate) fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the high-water mark of the resident set (Linux ≥ 4.0).
pub(crate) fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The file system holding `dir`: type and source of the longest matching mount point.
pub fn file_system_of(dir: &Path) -> String {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(fs_type), Some(source)) = (fields.get(dash + 1), fields.get(dash + 2)) else {
            continue;
        };
        let mp = mount_point.replace("\\040", " ");
        if dir.starts_with(&mp) && best.as_ref().is_none_or(|(len, _)| mp.len() > *len) {
            best = Some((mp.len(), format!("{fs_type} ({source} on {mp})")));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, s)| s)
}

/// A scratch directory `waypoint-bench-*` in `dir`, removed when dropped.
pub(crate) fn scratch_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("waypoint-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))
}

/// Progress lines on stderr, unless `quiet` (JSON output).
pub(crate) fn progress_printer(quiet: bool) -> impl Fn(&str) {
    move |msg: &str| {
        if !quiet {
            eprintln!("bench: {msg}");
        }
    }
}

/// The baseline a save cannot beat by much: a plain `write` of `state` in 8 MiB pieces into a
/// new file at `path`, then `fsync`; the file is removed afterwards. Returns the time.
pub(crate) fn write_fsync_baseline(path: &Path, state: &[Vec<u8>]) -> Result<Duration> {
    let started = Instant::now();
    let mut file = File::create(path)?;
    for d in state {
        for piece in d.chunks(8 << 20) {
            file.write_all(piece)?;
        }
    }
    file.sync_all()?;
    drop(file);
    let elapsed = started.elapsed();
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// `tensors` buffers of `per` bytes, each filled with its own deterministic pattern.
pub(crate) fn synthetic_buffers(tensors: u64, per: usize) -> Vec<Vec<u8>> {
    (0..tensors)
        .map(|i| {
            let mut v = vec![0u8; per];
            fill(&mut v, i);
            v
        })
        .collect()
}

/// The benchmark tensors' names, `model.layers.<i>.weight`.
pub(crate) fn layer_names(tensors: u64) -> Vec<String> {
    (0..tensors)
        .map(|i| format!("model.layers.{i}.weight"))
        .collect()
}

/// Each buffer as a whole one-dimensional F32 tensor.
pub(crate) fn whole_f32<'a>(state: &'a [Vec<u8>], names: &'a [String]) -> Vec<TensorRef<'a>> {
    state
        .iter()
        .zip(names)
        .map(|(d, n)| {
            TensorRef::whole(
                n.as_str(),
                Dtype::F32,
                vec![d.len() as u64 / 4],
                d.as_slice(),
            )
        })
        .collect()
}

/// The caller's F32 buffers offered to a load.
pub(crate) fn f32_slots<'a, S: AsRef<[u64]>>(
    dest: &'a mut [Vec<u8>],
    names: &'a [String],
    shapes: &'a [S],
) -> Vec<SinkSlot<'a>> {
    dest.iter_mut()
        .zip(names)
        .zip(shapes)
        .map(|((d, n), s)| SinkSlot {
            name: n,
            dtype: Dtype::F32,
            shape: s.as_ref(),
            data: d,
        })
        .collect()
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
    let refs = whole_f32(&state, &names);
    let checkpointer = Checkpointer::new(local_storage(work.path())?);

    let mut baseline = Vec::new();
    let mut saves = Vec::new();
    let mut peak_extra = 0u64;
    for rep in 0..REPS {
        progress(&format!("write + fsync baseline {}/{REPS}", rep + 1));
        baseline.push(write_fsync_baseline(
            &work.path().join("baseline.bin"),
            &state,
        )?);

        progress(&format!("waypoint save {}/{REPS}", rep + 1));
        let dir = StoragePath::new(&format!("step-{rep}"))?;
        let before = rss();
        let peak_ok = reset_peak();
        let report = checkpointer.save(&dir, &CheckpointMeta::at_step(rep as u64), &refs, &())?;
        saves.push(report.elapsed);
        if let (true, Some((rss_before, _)), Some((_, hwm))) = (peak_ok, before, rss()) {
            peak_extra = peak_extra.max(hwm.saturating_sub(rss_before));
        }
        if rep + 1 < REPS {
            let record = dir.join("weights/metadata.json")?;
            checkpointer.storage().remove_dir_all(&dir, &record)?;
        }
    }
    let last = StoragePath::new(&format!("step-{}", REPS - 1))?;
    let reader = checkpointer.open(&last)?;
    // Pre-faulted destination buffers, as a training loop's parameters would be.
    let mut dest: Vec<Vec<u8>> = state.iter().map(|d| vec![1u8; d.len()]).collect();
    let shapes: Vec<[u64; 1]> = state.iter().map(|d| [d.len() as u64 / 4]).collect();
    let mut memcpy = Vec::new();
    let mut loads = Vec::new();
    let mut verified = Vec::new();
    for rep in 0..REPS {
        progress(&format!("memcpy baseline and hot loads {}/{REPS}", rep + 1));
        let started = Instant::now();
        for (d, s) in dest.iter_mut().zip(&state) {
            d.copy_from_slice(s);
        }
        memcpy.push(started.elapsed());
        for (verify, out) in [(false, &mut loads), (true, &mut verified)] {
            let mut slots = f32_slots(&mut dest, &names, &shapes);
            let options = LoadOptions {
                verify_checksums: verify,
                ..Default::default()
            };
            let started = Instant::now();
            reader.load_into(&mut slots, &options)?;
            out.push(started.elapsed());
        }
    }
    anyhow::ensure!(
        dest == state,
        "the loaded state differs from what was saved"
    );
    let kept = keep.then(|| work.path().join(last.as_str()));
    let file_system = file_system_of(&std::fs::canonicalize(work.path())?);
    if keep {
        let _ = work.keep();
    }
    let (baseline_write_s, save_s) = (median(baseline), median(saves));
    let (baseline_memcpy_s, load_s, load_verified_s) =
        (median(memcpy), median(loads), median(verified));
    Ok(BenchResult {
        dir: dir.to_path_buf(),
        file_system,
        bytes: total,
        tensors,
        baseline_write_s,
        save_s,
        save_ratio: baseline_write_s / save_s,
        baseline_memcpy_s,
        load_s,
        load_ratio: baseline_memcpy_s / load_s,
        load_verified_s,
        load_verified_ratio: baseline_memcpy_s / load_verified_s,
        save_peak_extra_bytes: peak_extra,
        kept,
    })
}

/// Entry point of `waypoint bench`.
pub fn run(config: &BenchConfig) -> Result<ExitCode> {
    if let Some(loop_config) = &config.asynchronous {
        return crate::bench_async::run(config, loop_config);
    }
    if let Some(url) = &config.url {
        return crate::bench_object::run(config, url);
    }
    if let Some(ranks) = config.ranks {
        return crate::bench_ranks::run(config, ranks);
    }
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
        return Ok(ExitCode::SUCCESS);
    }
    let gib = |s: f64| r.bytes as f64 / (1u64 << 30) as f64 / s;
    println!("file system   {}", r.file_system);
    println!(
        "state         {} tensors, {:.1} MiB",
        r.tensors,
        r.bytes as f64 / (1u64 << 20) as f64
    );
    println!(
        "save + fsync  {:.3} s  {:.2} GiB/s   plain write + fsync {:.3} s  {:.2} GiB/s   ratio {:.2}",
        r.save_s,
        gib(r.save_s),
        r.baseline_write_s,
        gib(r.baseline_write_s),
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
    Ok(ExitCode::SUCCESS)
}
