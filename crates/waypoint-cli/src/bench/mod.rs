//! `waypoint bench`: how fast checkpoints go on the user's own storage. One file per benchmark,
//! each using only the helpers here (scratch directory, progress lines, the write + fsync
//! baseline, synthetic buffers and names, medians, memory figures), never another benchmark:
//!
//! - [`throughput`]: save and load against a plain write + fsync and a memcpy (the default);
//! - [`asynchronous`]: `--async`, asynchronous saves inside a training-like loop;
//! - [`object`]: `--dir s3://…`, an object store against the local file backend;
//! - [`ranks`]: `--ranks N`, many ranks saving one checkpoint, and a resharded load;
//! - [`incremental`]: `--incremental`, saves of a frozen base and a trainable part.

mod asynchronous;
mod incremental;
mod object;
mod ranks;
mod throughput;

use anyhow::{Context, Result};
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
    if let Some(trainable) = config.incremental {
        return incremental::run(config, trainable);
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

/// One way a plain program writes a state into a file and fsyncs it: threads (each writing its
/// contiguous share of the file with `pwrite`), and through the page cache or with `O_DIRECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PlainWrite {
    /// Writer threads.
    pub threads: usize,
    /// `O_DIRECT` (from a page-aligned 8 MiB buffer per thread, the bytes copied into it, as a
    /// plain program must) instead of the page cache.
    pub direct: bool,
}

impl std::fmt::Display for PlainWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.direct { "O_DIRECT" } else { "buffered" };
        write!(f, "{how}, {} thread(s)", self.threads)
    }
}

/// The pieces of a plain write: the state's bytes laid end to end, cut into windows of this size.
const WINDOW: usize = 8 << 20;

/// The ways to try for a baseline: one thread and `threads` threads, each buffered and direct.
fn plain_writes(threads: usize) -> Vec<PlainWrite> {
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    counts
        .into_iter()
        .flat_map(|threads| {
            [false, true]
                .into_iter()
                .map(move |direct| PlainWrite { threads, direct })
        })
        .collect()
}

/// A plain write + fsync of `state` (laid end to end) into a new file at `path`, `how` says
/// how; the file is removed afterwards. Returns the time, or `None` when the file system refuses
/// `O_DIRECT`.
fn plain_write(path: &Path, state: &[Vec<u8>], how: PlainWrite) -> Result<Option<Duration>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let total: usize = state.iter().map(|d| d.len()).sum();
    let windows = total.div_ceil(WINDOW);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if how.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let started = Instant::now();
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if how.direct && e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    let per_thread = windows.div_ceil(how.threads.max(1));
    let result: std::io::Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..how.threads.max(1))
            .map(|t| {
                let file = &file;
                s.spawn(move || -> std::io::Result<()> {
                    let mut aligned = vec![0u8; WINDOW + 4096];
                    let skip = aligned.as_ptr().align_offset(4096);
                    let buffer = &mut aligned[skip..skip + WINDOW];
                    for w in t * per_thread..((t + 1) * per_thread).min(windows) {
                        let start = w * WINDOW;
                        let end = (start + WINDOW).min(total);
                        if how.direct {
                            let len = gather(state, start, end, buffer);
                            let padded = len.div_ceil(4096) * 4096;
                            buffer[len..padded].fill(0);
                            file.write_all_at(&buffer[..padded], start as u64)?;
                        } else {
                            for (offset, piece) in segments(state, start, end) {
                                file.write_all_at(piece, offset as u64)?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        })
    });
    match result {
        Ok(()) => {}
        Err(e) if how.direct && e.raw_os_error() == Some(libc::EINVAL) => {
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
    file.set_len(total as u64)?;
    file.sync_all()?;
    drop(file);
    let elapsed = started.elapsed();
    std::fs::remove_file(path)?;
    Ok(Some(elapsed))
}

/// The simplest plain write: one thread through the page cache, then fsync.
fn write_fsync_baseline(path: &Path, state: &[Vec<u8>]) -> Result<Duration> {
    let how = PlainWrite {
        threads: 1,
        direct: false,
    };
    plain_write(path, state, how)?.context("a buffered write cannot be refused")
}

/// The pieces of `state` (laid end to end) between `start` and `end`, with their offsets.
fn segments(state: &[Vec<u8>], start: usize, end: usize) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for d in state {
        let (lo, hi) = (start.max(at), end.min(at + d.len()));
        if lo < hi {
            out.push((lo, &d[lo - at..hi - at]));
        }
        at += d.len();
    }
    out
}

/// Copies the bytes of `state` between `start` and `end` into `buffer`; returns their length.
fn gather(state: &[Vec<u8>], start: usize, end: usize, buffer: &mut [u8]) -> usize {
    for (offset, piece) in segments(state, start, end) {
        buffer[offset - start..offset - start + piece.len()].copy_from_slice(piece);
    }
    end - start
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
