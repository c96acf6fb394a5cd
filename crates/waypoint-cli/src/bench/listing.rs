//! `waypoint bench --listing N`: how long `waypoint ls` and AutoResume's choice take over N
//! committed checkpoints, read through their summaries and (where affordable) through their
//! commit records alone, as checkpoints of earlier versions are. The checkpoints are metadata
//! only: each holds a commit record and its summary, no shard (neither `ls` nor the choice opens
//! a shard). `--layout small` gives every checkpoint its own ~1 KB record (one rank, two
//! tensors, a top-k policy state); `--layout 100b` the record of a 100 B-parameter bf16 state
//! (2,000 tensors of `[8192, 6104]`, each sharded by rows over 1,024 ranks, one file per rank,
//! 1 MiB checksum blocks), built once without tensor bytes and hard-linked into every checkpoint.
//! Every figure is hot (the files read once before timing), the median of a few runs.
//!
//! It uses only the helpers of `bench/mod.rs` and the CLI's own `ls`, never another benchmark,
//! and writes only inside its scratch directory.

use super::{median, progress_printer, scratch_dir};
use crate::cli::{BenchConfig, DirLocation, ListingLayout};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::format::{
    CommitRecord, RECORD_FILE, Reserved, RowSharded, RunFacts, SUMMARY_FILE, Summary, WEIGHTS_DIR,
    row_sharded_record,
};
use waypoint::resume::Reading;
use waypoint::{AutoResume, Dtype};

/// Timed runs of each measurement; the median is reported.
const REPS: usize = 5;
/// The record bytes (checkpoints × record size) above which the records-only figures are not
/// measured: 100 records of the 100 B layout take minutes to parse.
const RECORDS_ONLY_LIMIT: u64 = 1 << 30;

/// One measurement: wall time, and the CPU time the process used meanwhile (all threads; on a
/// loaded machine the steadier figure), medians in seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    /// Elapsed time.
    pub wall_s: f64,
    /// User and system CPU time.
    pub cpu_s: f64,
}

/// Everything `waypoint bench --listing` measured.
#[derive(Debug, serde::Serialize)]
pub struct ListingResult {
    /// Committed checkpoints listed.
    pub checkpoints: u64,
    /// `small` or `100b`.
    pub layout: &'static str,
    /// Bytes of one commit record.
    pub record_bytes: u64,
    /// Bytes of one summary.
    pub summary_bytes: u64,
    /// `waypoint ls` (read and render as JSON) through summaries.
    pub ls: Timing,
    /// AutoResume's choice (`resume::choose`) through summaries.
    pub choose: Timing,
    /// The same two with every summary removed (records only); `None` when not measured.
    pub ls_records_only: Option<Timing>,
    /// See `ls_records_only`.
    pub choose_records_only: Option<Timing>,
    /// With `--keep`: where the checkpoints are.
    pub kept: Option<std::path::PathBuf>,
}

/// Runs the benchmark: `count` checkpoints of `layout` in a scratch directory of `config.dir`.
pub fn run(config: &BenchConfig, count: u64, layout: ListingLayout) -> Result<ExitCode> {
    let say = progress_printer(config.json);
    let work = scratch_dir(&config.dir)?;
    let dir = work.path().join("checkpoints");
    std::fs::create_dir_all(&dir)?;
    say(&format!(
        "writing {count} checkpoints ({layout:?} records) in {}",
        dir.display()
    ));
    let (record_bytes, summary_bytes) = write_checkpoints(&dir, count, layout)?;
    say(&format!(
        "records of {record_bytes} bytes, summaries of {summary_bytes} bytes; timing, {REPS} runs each"
    ));
    let (ls, choose) = measure(&dir)?;
    let (ls_records_only, choose_records_only) =
        if record_bytes.saturating_mul(count) <= RECORDS_ONLY_LIMIT {
            say("records only: every summary moved aside");
            let aside = |i: u64, back: bool| {
                let (ckpt, away) = (dir.join(name(i)), format!("{SUMMARY_FILE}.aside"));
                let (from, to) = match back {
                    false => (ckpt.join(SUMMARY_FILE), ckpt.join(away)),
                    true => (ckpt.join(away), ckpt.join(SUMMARY_FILE)),
                };
                std::fs::rename(from, to)
            };
            for i in 0..count {
                aside(i, false)?;
            }
            let measured = measure(&dir)?;
            for i in 0..count {
                aside(i, true)?;
            }
            (Some(measured.0), Some(measured.1))
        } else {
            say("records only: not measured (too many record bytes)");
            (None, None)
        };
    // The scratch directory goes here, unless kept.
    let kept = match config.keep {
        true => Some(work.keep().join("checkpoints")),
        false => None,
    };
    let result = ListingResult {
        checkpoints: count,
        layout: match layout {
            ListingLayout::Small => "small",
            ListingLayout::Hundred => "100b",
        },
        record_bytes,
        summary_bytes,
        ls,
        choose,
        ls_records_only,
        choose_records_only,
        kept,
    };
    if config.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let ms = |t: Timing| format!("{:.1} ms (CPU {:.1} ms)", t.wall_s * 1e3, t.cpu_s * 1e3);
        let opt = |t: Option<Timing>| t.map_or_else(|| "not measured".into(), ms);
        println!(
            "checkpoints     {count} ({} records of {record_bytes} B, summaries of {summary_bytes} B)",
            result.layout
        );
        println!(
            "ls              {}; records only: {}",
            ms(ls),
            opt(ls_records_only)
        );
        println!(
            "AutoResume      {}; records only: {}",
            ms(choose),
            opt(choose_records_only)
        );
    }
    if let (false, Some(kept)) = (config.json, &result.kept) {
        println!("checkpoints kept at {}", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The name of checkpoint `i`.
fn name(i: u64) -> String {
    format!("demo--step={i:07}")
}

/// `waypoint ls --json` (in process) and AutoResume's choice over `dir`: medians in seconds,
/// after one untimed run of each (the hot cache).
fn measure(dir: &Path) -> Result<(Timing, Timing)> {
    let location = DirLocation::Local(dir.to_path_buf());
    let ls = || -> Result<()> {
        let inventory = crate::inventory::read(&location, Reading::Summaries)?;
        std::hint::black_box(crate::ls::to_json(&inventory).to_string());
        Ok(())
    };
    let storage = waypoint::storage::local_storage(dir)?;
    let resume = AutoResume::builder().resume_if_exists(true).build()?;
    let choose = || -> Result<()> {
        let point = waypoint::resume::choose(&resume, &storage, dir)?;
        anyhow::ensure!(
            point.is_some(),
            "AutoResume found nothing in {}",
            dir.display()
        );
        Ok(())
    };
    let time = |f: &dyn Fn() -> Result<()>| -> Result<Timing> {
        f()?;
        let (mut wall, mut cpu) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
        for _ in 0..REPS {
            let (started, cpu_before) = (Instant::now(), cpu_time());
            f()?;
            wall.push(started.elapsed());
            cpu.push(cpu_time().saturating_sub(cpu_before));
        }
        Ok(Timing {
            wall_s: median(wall),
            cpu_s: median(cpu),
        })
    };
    Ok((time(&ls)?, time(&choose)?))
}

/// The CPU time (user and system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given and keeps no pointer to it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let of = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    of(usage.ru_utime) + of(usage.ru_stime)
}

/// Writes `count` checkpoints (record and summary each) into `dir`; returns the size of a record
/// and of a summary.
fn write_checkpoints(dir: &Path, count: u64, layout: ListingLayout) -> Result<(u64, u64)> {
    let mut sizes = (0, 0);
    let shared = match layout {
        ListingLayout::Hundred => Some(dir.join("record.json")),
        ListingLayout::Small => None,
    };
    if let Some(shared) = &shared {
        let record = hundred_b(0);
        let bytes = record.to_committed_json(shared)?;
        std::fs::write(shared, &bytes)?;
        let summary = Summary::committed_bytes(&record, &bytes, shared)
            .map_err(|why| anyhow::anyhow!("no summary: {why}"))?;
        std::fs::write(dir.join("summary.json"), &summary)?;
        sizes = (bytes.len() as u64, summary.len() as u64);
    }
    for i in 0..count {
        let ckpt = dir.join(name(i));
        std::fs::create_dir_all(ckpt.join(WEIGHTS_DIR))?;
        let record_path = ckpt.join(WEIGHTS_DIR).join(RECORD_FILE);
        if let Some(shared) = &shared {
            std::fs::hard_link(shared, &record_path)
                .with_context(|| format!("cannot link {}", record_path.display()))?;
            std::fs::copy(dir.join("summary.json"), ckpt.join(SUMMARY_FILE))?;
            continue;
        }
        let record = small(i, count);
        let bytes = record.to_committed_json(&record_path)?;
        let summary = Summary::committed_bytes(&record, &bytes, &record_path)
            .map_err(|why| anyhow::anyhow!("no summary: {why}"))?;
        std::fs::write(&record_path, &bytes)?;
        std::fs::write(ckpt.join(SUMMARY_FILE), &summary)?;
        sizes = (bytes.len() as u64, summary.len() as u64);
    }
    if let Some(shared) = &shared {
        std::fs::remove_file(shared)?;
        std::fs::remove_file(dir.join("summary.json"))?;
    }
    Ok(sizes)
}

/// The record of checkpoint `i` of `count` in the small layout: one rank, two tensors of 4 MiB
/// in one file, and the state of a top-3 policy over the last three checkpoints.
fn small(i: u64, count: u64) -> CommitRecord {
    let mut record = layout(2, 1, 1, 1024, 1024, Dtype::F32);
    record.step = i;
    let top_k: Vec<serde_json::Value> = (i.saturating_sub(2)..=i)
        .map(|s| serde_json::json!({"name": name(s), "score": 1.0 / (s + 1) as f64}))
        .collect();
    record.trainer_state.waypoint = Reserved {
        model_checkpoint: Some(serde_json::json!({
            "monitor": "val_loss", "mode": "min", "dirpath": "/bench", "top_k": top_k,
            "last_model_path": name(count.saturating_sub(1)), "last_save_step": i})),
        run: Some(RunFacts {
            experiment: "bench".into(),
            ..RunFacts::default()
        }),
        ..Reserved::default()
    };
    record
}

/// The record of the 100 B-parameter layout at step `step` (as `waypoint bench --ranks` and
/// the `record_scale` example describe it): 2,000 bf16 tensors of `[8192, 6104]`, each cut by
/// rows over all 1,024 ranks.
fn hundred_b(step: u64) -> CommitRecord {
    let mut record = layout(2000, 1024, 1024, 8192, 6104, Dtype::BF16);
    record.step = step;
    record
}

/// A record of `tensors` tensors `[rows, cols]` of `dtype`, each cut by rows into `ways` chunks;
/// the chunks of tensor `t` go to ranks `(t * ways + i) % ranks`, one shard file per rank, and
/// carry placeholder checksums (1 MiB blocks).
fn layout(tensors: u64, ranks: u64, ways: u64, rows: u64, cols: u64, dtype: Dtype) -> CommitRecord {
    row_sharded_record(&RowSharded {
        tensors,
        ranks,
        ways,
        rows,
        cols,
        dtype,
        producer: "waypoint bench --listing".into(),
        step: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated records are valid, and the 100 B layout is what it says.
    #[test]
    fn the_layouts_are_valid_records() {
        let record = small(7, 10);
        let bytes = record.to_committed_json(Path::new("r")).unwrap();
        assert!(bytes.len() < 2048, "{}", bytes.len());
        let summary = Summary::committed_bytes(&record, &bytes, Path::new("s")).unwrap();
        assert!(summary.len() < 600, "{}", summary.len());
        let big = layout(20, 1024, 1024, 8192, 6104, Dtype::BF16);
        assert_eq!(big.files.len(), 1024);
        assert_eq!(big.total_bytes(), 20 * 8192 * 6104 * 2);
        big.to_committed_json(Path::new("r")).unwrap();
    }
}
