//! `waypoint bench --ranks N`: many ranks as threads of one process (an in-process group). Saves
//! the same state, sharded by rows over N ranks and from a single rank, and loads the N-rank
//! checkpoint resharded onto N - 1 ranks (at least 1), through the library's `CountingStorage`,
//! which counts the bytes really read. Reports, in one run: save throughput of N ranks against 1
//! rank and against a plain write + fsync of the same bytes; for the resharded load, bytes read /
//! bytes needed (with and without checksum verification) and its time against a plain load of the
//! whole checkpoint by one rank through the same wrapper.
//!
//! It uses only the helpers of `bench/mod.rs`, never another benchmark, and saves and loads through
//! the library (`Checkpointer`, `ThreadGroup`); it must not read the files behind the counting
//! wrapper's back, or the bytes-read figure would be wrong, nor write outside its scratch
//! directory.

mod meter;

use super::{
    f32_slots, file_system_of, keep_scratch, layer_names, median, progress_printer, scratch_dir,
    synthetic_buffers, write_fsync_baseline,
};
use crate::cli::BenchConfig;
use anyhow::{Result, ensure};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use waypoint::dist::{Coordinator, ThreadGroup};
use waypoint::storage::{CountingStorage, SharedStorage, StoragePath, local_storage};
use waypoint::{
    CheckpointMeta, Checkpointer, Dtype, LoadOptions, RegionSlot, SaveOptions, TensorRef,
};

/// Repetitions of each measurement; the median is reported.
const REPS: usize = 3;
/// Columns of every benchmark tensor (F32): rows of 4 KiB.
const COLS: u64 = 1024;

/// Everything `waypoint bench --ranks` measured.
#[derive(Debug, serde::Serialize)]
pub struct RanksResult {
    /// The directory benchmarked.
    pub dir: PathBuf,
    /// File system type and device.
    pub file_system: String,
    /// Bytes of tensor data (the whole state).
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// Ranks that saved.
    pub ranks: u64,
    /// Ranks that loaded the resharded checkpoint.
    pub load_ranks: u64,
    /// Plain write + fsync of the same bytes, seconds (median).
    pub baseline_write_s: f64,
    /// One rank saving everything, seconds (median).
    pub save_1_s: f64,
    /// N ranks saving their rows together (commit included), seconds (median).
    pub save_n_s: f64,
    /// `save_1_s / save_n_s`.
    pub save_n_speedup: f64,
    /// `baseline_write_s / save_n_s`.
    pub save_n_ratio: f64,
    /// One rank loading the whole N-rank checkpoint, no checksums, seconds (median).
    pub plain_load_s: f64,
    /// N - 1 ranks each loading their rows of every tensor, no checksums, seconds (median).
    pub resharded_load_s: f64,
    /// `resharded_load_s / plain_load_s` (target ≤ 1.2).
    pub resharded_load_ratio: f64,
    /// Bytes the resharded load read, counted by the storage wrapper (headers included),
    /// divided by the bytes the ranks asked for (target ≤ 1.05).
    pub resharded_read_amplification: f64,
    /// The same with checksum verification (whole blocks are read and checked).
    pub resharded_read_amplification_verified: f64,
    /// The checksum block size of the saved checkpoint.
    pub block_size: u64,
    /// The protocol of the (last) N-rank save, from each rank's metered collectives.
    pub protocol: ProtocolFigures,
    /// Where the N-rank checkpoint was left (with `--keep`).
    pub kept: Option<PathBuf>,
}

/// What each rank's collectives show of one N-rank save.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ProtocolFigures {
    /// Collectives per rank.
    pub collectives: usize,
    /// Bytes rank 0 sent and received.
    pub rank0_bytes: u64,
    /// The most bytes any other rank sent and received.
    pub other_max_bytes: u64,
    /// The mean over the other ranks.
    pub other_mean_bytes: f64,
    /// The longest time a rank spent between the open step and its report (its data write).
    pub data_write_s: f64,
    /// The collectives before the write (the slowest rank's) plus the time from the last rank's
    /// finished write to rank 0's visible commit.
    pub commit_overhead_s: f64,
    /// `commit_overhead_s / data_write_s` (target ≤ 0.10 at 1,024 ranks).
    pub commit_overhead_ratio: f64,
    /// Of the overhead: the announce and open steps, until the slowest rank may write.
    pub announce_open_s: f64,
    /// Of the overhead: rank 0 from every part gathered to its outcome broadcast (merge,
    /// validation, `context/`, the record, the commit).
    pub rank0_commit_s: f64,
}

/// The figures from every rank's collectives (`calls[rank]`) of a save that began at `started`:
/// the last three collectives are the open step's broadcast, the report and the outcome.
fn protocol_figures(started: Instant, calls: &[Vec<meter::Call>]) -> ProtocolFigures {
    let n = calls.first().map_or(0, Vec::len);
    if n < 3 || calls.iter().any(|c| c.len() != n) {
        return ProtocolFigures::default();
    }
    let (open, report, outcome) = (n - 3, n - 2, n - 1);
    let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
    let before = calls
        .iter()
        .map(|c| secs(started, c[open].1))
        .fold(0.0, f64::max);
    let data_write_s = calls
        .iter()
        .map(|c| secs(c[open].1, c[report].0))
        .fold(0.0, f64::max);
    let last_written = calls.iter().map(|c| c[report].0).max().unwrap_or(started);
    let commit_overhead_s = before + secs(last_written, calls[0][outcome].0);
    let bytes: Vec<u64> = calls
        .iter()
        .map(|c| c.iter().map(|&(_, _, s, r)| s + r).sum())
        .collect();
    let others = &bytes[1..];
    ProtocolFigures {
        collectives: n,
        rank0_bytes: bytes[0],
        other_max_bytes: others.iter().copied().max().unwrap_or(0),
        other_mean_bytes: others.iter().sum::<u64>() as f64 / others.len().max(1) as f64,
        data_write_s,
        commit_overhead_s,
        commit_overhead_ratio: commit_overhead_s / data_write_s,
        announce_open_s: before,
        rank0_commit_s: secs(calls[0][report].1, calls[0][outcome].0),
    }
}

/// Rows `first..end` of `rows` for rank `rank` of `world`.
fn rows_of(rows: u64, rank: u64, world: u64) -> (u64, u64) {
    (rows * rank / world, rows * (rank + 1) / world)
}

/// The state's tensors, as rank `rank` of `world` holds them (rows of each, no copy).
fn shard<'a>(
    state: &'a [Vec<u8>],
    names: &'a [String],
    rank: u64,
    world: u64,
) -> Vec<TensorRef<'a>> {
    state
        .iter()
        .zip(names)
        .map(|(data, name)| {
            let rows = data.len() as u64 / (COLS * 4);
            let (first, end) = rows_of(rows, rank, world);
            let bytes = &data[(first * COLS * 4) as usize..(end * COLS * 4) as usize];
            let mut t = TensorRef::whole(name.as_str(), Dtype::F32, vec![end - first, COLS], bytes);
            t.global_shape = vec![rows, COLS];
            t.offsets = vec![first, 0];
            t
        })
        .collect()
}

/// A rank thread's outcome; a panic becomes an error.
fn joined(join: std::thread::ScopedJoinHandle<'_, waypoint::Result<()>>) -> waypoint::Result<()> {
    join.join().unwrap_or_else(|_| {
        Err(waypoint::Error::InvalidArgument {
            name: "bench",
            reason: "a rank thread panicked".into(),
        })
    })
}

/// Saves `dir` from `world` ranks (threads) at once; returns the wall time and what the ranks'
/// collectives show.
fn save_ranks(
    storage: &SharedStorage,
    dir: &StoragePath,
    state: &[Vec<u8>],
    names: &[String],
    world: u64,
    options: &SaveOptions,
) -> Result<(Duration, ProtocolFigures)> {
    let handles: Vec<Arc<meter::Metered>> = ThreadGroup::new(world)
        .into_iter()
        .map(|g| Arc::new(meter::Metered::new(g)))
        .collect();
    let started = Instant::now();
    let results: Vec<waypoint::Result<()>> = std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .iter()
            .map(|group| {
                let storage = storage.clone();
                let group = group.clone();
                s.spawn(move || {
                    let rank = group.rank();
                    let refs = shard(state, names, rank, world);
                    let checkpointer = Checkpointer::new(storage)
                        .with_options(options.clone())
                        .with_coordinator(group);
                    checkpointer
                        .save(dir, &CheckpointMeta::at_step(1), &refs, &())
                        .map(|_| ())
                })
            })
            .collect();
        joins.into_iter().map(joined).collect()
    });
    let elapsed = started.elapsed();
    for r in results {
        r?;
    }
    let calls: Vec<Vec<meter::Call>> = handles.iter().map(|h| h.calls()).collect();
    Ok((elapsed, protocol_figures(started, &calls)))
}

/// One rank's request for one tensor: its rows, and where they go.
struct Request<'a> {
    name: &'a str,
    global: [u64; 2],
    offsets: [u64; 2],
    shape: [u64; 2],
    out: &'a mut [u8],
}

/// Loads every tensor's rows for `world` ranks (threads) into `dest`; returns the wall time.
fn load_ranks(
    storage: &SharedStorage,
    dir: &StoragePath,
    names: &[String],
    dest: &mut [Vec<u8>],
    world: u64,
    verify: bool,
) -> Result<Duration> {
    let reader = Checkpointer::new(storage.clone()).open(dir)?;
    let options = LoadOptions {
        verify_checksums: verify,
        ..LoadOptions::default()
    };
    // Each rank's rows of every tensor: disjoint slices of the destination buffers.
    let mut per_rank: Vec<Vec<Request<'_>>> = (0..world).map(|_| Vec::new()).collect();
    for (buf, name) in dest.iter_mut().zip(names) {
        let rows = buf.len() as u64 / (COLS * 4);
        let mut rest: &mut [u8] = buf;
        for (rank, requests) in per_rank.iter_mut().enumerate() {
            let (first, end) = rows_of(rows, rank as u64, world);
            let (mine, tail) = rest.split_at_mut(((end - first) * COLS * 4) as usize);
            rest = tail;
            requests.push(Request {
                name,
                global: [rows, COLS],
                offsets: [first, 0],
                shape: [end - first, COLS],
                out: mine,
            });
        }
    }
    let started = Instant::now();
    let results: Vec<waypoint::Result<()>> = std::thread::scope(|s| {
        let joins: Vec<_> = per_rank
            .into_iter()
            .map(|mut requests| {
                let (reader, options) = (&reader, &options);
                s.spawn(move || {
                    let mut slots: Vec<RegionSlot<'_>> = requests
                        .iter_mut()
                        .map(|r| RegionSlot {
                            name: r.name,
                            dtype: Dtype::F32,
                            global_shape: &r.global,
                            offsets: &r.offsets,
                            shape: &r.shape,
                            data: &mut *r.out,
                        })
                        .collect();
                    reader.load_regions(&mut slots, options)
                })
            })
            .collect();
        joins.into_iter().map(joined).collect()
    });
    for r in results {
        r?;
    }
    Ok(started.elapsed())
}

/// The save measurements, [`REPS`] of each.
struct Saves {
    baseline: Vec<Duration>,
    single: Vec<Duration>,
    many: Vec<Duration>,
    /// The last N-rank save's protocol figures.
    protocol: ProtocolFigures,
}

/// Saves `state` from 1 rank as `one-<rep>` and from `ranks` ranks as `many-<rep>`, each after a
/// write + fsync baseline in `work`; every checkpoint but the last `many-` is removed again.
fn measure_saves(
    storage: &SharedStorage,
    work: &Path,
    state: &[Vec<u8>],
    names: &[String],
    ranks: u64,
    options: &SaveOptions,
    progress: &dyn Fn(&str),
) -> Result<Saves> {
    let mut out = Saves {
        baseline: Vec::new(),
        single: Vec::new(),
        many: Vec::new(),
        protocol: ProtocolFigures::default(),
    };
    for rep in 0..REPS {
        progress(&format!("write + fsync baseline {}/{REPS}", rep + 1));
        out.baseline
            .push(write_fsync_baseline(&work.join("baseline.bin"), state)?);

        progress(&format!("1-rank save {}/{REPS}", rep + 1));
        let one = StoragePath::new(&format!("one-{rep}"))?;
        out.single
            .push(save_ranks(storage, &one, state, names, 1, options)?.0);
        storage.remove_dir_all(&one, &one.join("weights/metadata.json")?)?;

        progress(&format!("{ranks}-rank save {}/{REPS}", rep + 1));
        let dir = StoragePath::new(&format!("many-{rep}"))?;
        let (elapsed, protocol) = save_ranks(storage, &dir, state, names, ranks, options)?;
        out.many.push(elapsed);
        out.protocol = protocol;
        if rep + 1 < REPS {
            storage.remove_dir_all(&dir, &dir.join("weights/metadata.json")?)?;
        }
    }
    Ok(out)
}

/// The load measurements.
struct Loads {
    /// One rank loading everything, [`REPS`] times.
    plain: Vec<Duration>,
    /// `load_ranks` ranks loading their rows, [`REPS`] times.
    resharded: Vec<Duration>,
    /// Bytes read / bytes needed by the (last) resharded load without checksums.
    amplification: f64,
    /// The same for one resharded load with checksums.
    amplification_verified: f64,
}

/// Loads checkpoint `dir`, saved by `reshard.0` ranks, through `counting` (which counts the
/// bytes really read): by one rank whole and by `reshard.1` ranks row by row; checks each time
/// that `state` comes back.
fn measure_loads(
    counting: &Arc<CountingStorage>,
    dir: &StoragePath,
    state: &[Vec<u8>],
    names: &[String],
    reshard: (u64, u64),
    progress: &dyn Fn(&str),
) -> Result<Loads> {
    let (ranks, load_ranks_n) = reshard;
    let storage: SharedStorage = counting.clone();
    let total: u64 = state.iter().map(|v| v.len() as u64).sum();
    let rows = state.first().map_or(0, |d| d.len() as u64 / (COLS * 4));
    let mut dest: Vec<Vec<u8>> = state.iter().map(|d| vec![1u8; d.len()]).collect();
    let shapes: Vec<[u64; 2]> = vec![[rows, COLS]; state.len()];
    let mut out = Loads {
        plain: Vec::new(),
        resharded: Vec::new(),
        amplification: 0.0,
        amplification_verified: 0.0,
    };
    for rep in 0..REPS {
        progress(&format!(
            "plain load and {ranks} -> {load_ranks_n} resharded load {}/{REPS}",
            rep + 1
        ));
        let reader = Checkpointer::new(storage.clone()).open(dir)?;
        let mut slots = f32_slots(&mut dest, names, &shapes);
        let options = LoadOptions {
            verify_checksums: false,
            ..LoadOptions::default()
        };
        let started = Instant::now();
        reader.load_into(&mut slots, &options)?;
        out.plain.push(started.elapsed());
        drop(slots);
        drop(reader);
        ensure!(dest == state, "the plain load differs from what was saved");
        dest.iter_mut().for_each(|d| d.fill(1));

        counting.reset();
        let elapsed = load_ranks(&storage, dir, names, &mut dest, load_ranks_n, false)?;
        out.resharded.push(elapsed);
        out.amplification = counting.counts().bytes_read as f64 / total as f64;
        ensure!(
            dest == state,
            "the resharded load differs from what was saved"
        );
        dest.iter_mut().for_each(|d| d.fill(1));
    }
    counting.reset();
    load_ranks(&storage, dir, names, &mut dest, load_ranks_n, true)?;
    out.amplification_verified = counting.counts().bytes_read as f64 / total as f64;
    ensure!(
        dest == state,
        "the verified resharded load differs from what was saved"
    );
    Ok(out)
}

/// Runs the benchmark.
pub fn measure(config: &BenchConfig, ranks: u64, progress: &dyn Fn(&str)) -> Result<RanksResult> {
    let work = scratch_dir(&config.dir)?;
    let row_bytes = COLS * 4;
    let rows = (config.size / config.tensors / row_bytes).max(1);
    ensure!(
        rows >= ranks,
        "--size / --tensors gives tensors of {rows} rows of {row_bytes} bytes: fewer than --ranks {ranks}; raise --size or lower --tensors"
    );
    let load_ranks_n = (ranks - 1).max(1);
    progress(&format!(
        "allocating {} tensors of {rows} x {COLS} F32",
        config.tensors
    ));
    let state = synthetic_buffers(config.tensors, (rows * row_bytes) as usize);
    let names = layer_names(config.tensors);
    let total: u64 = state.iter().map(|v| v.len() as u64).sum();
    let storage = local_storage(work.path())?;
    let mut options = SaveOptions::default();
    if let Some(block_size) = config.block_size {
        options.block_size = block_size;
    }

    let saves = measure_saves(
        &storage,
        work.path(),
        &state,
        &names,
        ranks,
        &options,
        progress,
    )?;
    let dir = StoragePath::new(&format!("many-{}", REPS - 1))?;
    // Counting every byte read: files are never mapped through the wrapper.
    let counting = Arc::new(CountingStorage::new(storage.clone()));
    let reshard = (ranks, load_ranks_n);
    let loads = measure_loads(&counting, &dir, &state, &names, reshard, progress)?;
    let file_system = file_system_of(&std::fs::canonicalize(work.path())?);
    let kept = keep_scratch(work, config.keep, dir.as_str());
    let (baseline_write_s, save_1_s, save_n_s) = (
        median(saves.baseline),
        median(saves.single),
        median(saves.many),
    );
    let (plain_load_s, resharded_load_s) = (median(loads.plain), median(loads.resharded));
    Ok(RanksResult {
        dir: config.dir.clone(),
        file_system,
        bytes: total,
        tensors: config.tensors,
        ranks,
        load_ranks: load_ranks_n,
        baseline_write_s,
        save_1_s,
        save_n_s,
        save_n_speedup: save_1_s / save_n_s,
        save_n_ratio: baseline_write_s / save_n_s,
        plain_load_s,
        resharded_load_s,
        resharded_load_ratio: resharded_load_s / plain_load_s,
        resharded_read_amplification: loads.amplification,
        resharded_read_amplification_verified: loads.amplification_verified,
        block_size: options.block_size,
        protocol: saves.protocol,
        kept,
    })
}

/// Entry point of `waypoint bench --ranks N`.
pub fn run(config: &BenchConfig, ranks: u64) -> Result<ExitCode> {
    let progress = progress_printer(config.json);
    let r = measure(config, ranks, &progress)?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// The text report.
fn print_text(r: &RanksResult) {
    let gib = |s: f64| r.bytes as f64 / (1u64 << 30) as f64 / s;
    println!("file system     {}", r.file_system);
    println!(
        "state           {} tensors, {:.1} MiB, sharded by rows over {} ranks",
        r.tensors,
        r.bytes as f64 / (1u64 << 20) as f64,
        r.ranks
    );
    println!(
        "save, {} ranks   {:.3} s  {:.2} GiB/s   1 rank {:.3} s  {:.2} GiB/s   speedup {:.2}",
        r.ranks,
        r.save_n_s,
        gib(r.save_n_s),
        r.save_1_s,
        gib(r.save_1_s),
        r.save_n_speedup
    );
    println!(
        "                plain write + fsync {:.3} s  {:.2} GiB/s   ratio {:.2}",
        r.baseline_write_s,
        gib(r.baseline_write_s),
        r.save_n_ratio
    );
    println!(
        "load {} -> {}    {:.3} s   plain load {:.3} s   time ratio {:.2}",
        r.ranks, r.load_ranks, r.resharded_load_s, r.plain_load_s, r.resharded_load_ratio
    );
    println!(
        "                bytes read / needed {:.4} (with checksums {:.4}, blocks of {} KiB)",
        r.resharded_read_amplification,
        r.resharded_read_amplification_verified,
        r.block_size / 1024
    );
    let p = &r.protocol;
    println!(
        "protocol        {} collectives; bytes exchanged: rank 0 {}, other ranks max {} mean {:.0}",
        p.collectives, p.rank0_bytes, p.other_max_bytes, p.other_mean_bytes
    );
    println!(
        "                data write {:.3} s, commit overhead {:.3} s ({:.1} %): announce + open {:.3} s, rank 0's commit {:.3} s",
        p.data_write_s,
        p.commit_overhead_s,
        100.0 * p.commit_overhead_ratio,
        p.announce_open_s,
        p.rank0_commit_s
    );
    if let Some(k) = &r.kept {
        println!("checkpoint kept at {}", k.display());
    }
}
