//! `waypoint bench`: how fast checkpoints go on the user's own storage. One file per benchmark,
//! each using only the helpers here (scratch directory, progress lines, the write + fsync
//! baseline, synthetic buffers and names, medians, memory figures), never another benchmark:
//!
//! - [`throughput`]: save and load against a plain write + fsync and a memcpy (the default);
//! - [`asynchronous`]: `--async`, asynchronous saves inside a training-like loop;
//! - [`object`]: `--dir s3://…`, an object store against the local file backend;
//! - [`ranks`]: `--ranks N`, many ranks saving one checkpoint, and a resharded load.

mod asynchronous;
mod object;
mod ranks;
mod throughput;

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::{Dtype, SinkSlot, TensorRef};

use crate::cli::BenchConfig;

/// Entry point of `waypoint bench`: runs the benchmark the configuration asks for.
pub fn run(config: &BenchConfig) -> Result<ExitCode> {
    if let Some(loop_config) = &config.asynchronous {
        return asynchronous::run(config, loop_config);
    }
    if let Some(url) = &config.url {
        return object::run(config, url);
    }
    if let Some(ranks) = config.ranks {
        return ranks::run(config, ranks);
    }
    throughput::run(config)
}

/// The median of `v`, in seconds.
fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Fills `buf` with a cheap deterministic pattern (so pages are really allocated).
fn fill(buf: &mut [u8], seed: u64) {
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
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the high-water mark of the resident set (Linux ≥ 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The file system holding `dir`: type and source of the longest matching mount point.
fn file_system_of(dir: &Path) -> String {
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
fn scratch_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("waypoint-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))
}

/// Progress lines on stderr, unless `quiet` (JSON output).
fn progress_printer(quiet: bool) -> impl Fn(&str) {
    move |msg: &str| {
        if !quiet {
            eprintln!("bench: {msg}");
        }
    }
}

/// The baseline a save cannot beat by much: a plain `write` of `state` in 8 MiB pieces into a
/// new file at `path`, then `fsync`; the file is removed afterwards. Returns the time.
fn write_fsync_baseline(path: &Path, state: &[Vec<u8>]) -> Result<Duration> {
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
fn synthetic_buffers(tensors: u64, per: usize) -> Vec<Vec<u8>> {
    (0..tensors)
        .map(|i| {
            let mut v = vec![0u8; per];
            fill(&mut v, i);
            v
        })
        .collect()
}

/// The benchmark tensors' names, `model.layers.<i>.weight`.
fn layer_names(tensors: u64) -> Vec<String> {
    (0..tensors)
        .map(|i| format!("model.layers.{i}.weight"))
        .collect()
}

/// Each buffer as a whole one-dimensional F32 tensor.
fn whole_f32<'a>(state: &'a [Vec<u8>], names: &'a [String]) -> Vec<TensorRef<'a>> {
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
fn f32_slots<'a, S: AsRef<[u64]>>(
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

/// Keeps the scratch directory `work` when `keep` (returning `work/name`, the checkpoint left
/// there), otherwise lets it be removed when dropped.
fn keep_scratch(work: tempfile::TempDir, keep: bool, name: &str) -> Option<PathBuf> {
    if !keep {
        return None;
    }
    Some(work.keep().join(name))
}
