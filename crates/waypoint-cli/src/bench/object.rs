//! `waypoint bench --dir s3://bucket/prefix`: save and load throughput through an object store
//! against waypoint's local file backend, on the same synthetic state, in one run (the two
//! alternate, rep by rep, so that both see the same machine). The benchmark writes under a
//! unique prefix below the URL and removes it afterwards unless `--keep`.
//!
//! It uses only the helpers of `bench/mod.rs`, never another benchmark, and saves and loads through
//! the library's `Checkpointer`; it must not write outside its scratch directory and the unique
//! prefix, nor report a load that differs from what was saved (the run fails instead).

use super::{
    f32_slots, layer_names, median, progress_printer, scratch_dir, synthetic_buffers, whole_f32,
};
use crate::cli::BenchConfig;
use anyhow::Result;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use waypoint::storage::{SharedStorage, StoragePath, local_storage, open_location};
use waypoint::{CheckpointMeta, Checkpointer, LoadOptions, TensorSource};

/// Repetitions of each measurement; the median is reported.
const REPS: usize = 3;

/// What an object-store bench run measured.
#[derive(Debug, serde::Serialize)]
pub struct ObjectBenchResult {
    /// Where the object-store checkpoints went (a unique prefix below `--dir`).
    pub url: String,
    /// The local directory of the file-backend checkpoints.
    pub local_dir: String,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// Save to the local file backend (fsyncs included), seconds (median).
    pub local_save_s: f64,
    /// Save to the object store (commit record included), seconds (median).
    pub object_save_s: f64,
    /// `local_save_s / object_save_s`: 1.0 means as fast as the local disk.
    pub save_ratio: f64,
    /// Load from the local file backend without checksums, seconds (median).
    pub local_load_s: f64,
    /// Load from the object store (ranged reads) without checksums, seconds (median).
    pub object_load_s: f64,
    /// `local_load_s / object_load_s`.
    pub load_ratio: f64,
}

/// Saves and loads of one backend.
#[derive(Default)]
struct Times {
    saves: Vec<Duration>,
    loads: Vec<Duration>,
}

/// One rep on `storage`: save `refs` as `step-<rep>`, load it back into `dest`, then remove it.
fn rep(
    storage: &SharedStorage,
    rep: usize,
    refs: &dyn TensorSource,
    names: &[String],
    dest: &mut [Vec<u8>],
    times: &mut Times,
    keep: bool,
) -> Result<()> {
    let checkpointer = Checkpointer::new(storage.clone());
    let dir = StoragePath::new(&format!("step-{rep}"))?;
    let started = Instant::now();
    checkpointer.save(&dir, &CheckpointMeta::at_step(rep as u64), refs, &())?;
    times.saves.push(started.elapsed());
    let reader = checkpointer.open(&dir)?;
    let shapes: Vec<[u64; 1]> = dest.iter().map(|d| [d.len() as u64 / 4]).collect();
    let mut slots = f32_slots(dest, names, &shapes);
    let started = Instant::now();
    reader.load_into(&mut slots, &LoadOptions::default())?;
    times.loads.push(started.elapsed());
    if !(keep && rep + 1 == REPS) {
        storage.remove_dir_all(&dir, &dir.join("weights/metadata.json")?)?;
    }
    Ok(())
}

/// Measures both backends on `config.size` bytes.
pub fn measure(
    config: &BenchConfig,
    url: &str,
    progress: &dyn Fn(&str),
) -> Result<ObjectBenchResult> {
    let work = scratch_dir(&config.dir)?;
    let unique = work
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("waypoint-bench")
        .to_owned();
    let object_url = format!("{url}/{unique}");
    let object = open_location(&object_url)?;
    let local = local_storage(work.path())?;

    let per = (config.size / config.tensors / 4 * 4).max(4) as usize;
    progress(&format!(
        "allocating {} tensors of {per} bytes",
        config.tensors
    ));
    let state = synthetic_buffers(config.tensors, per);
    let total: u64 = state.iter().map(|v| v.len() as u64).sum();
    let names = layer_names(config.tensors);
    let refs = whole_f32(&state, &names);
    let mut dest: Vec<Vec<u8>> = state.iter().map(|d| vec![1u8; d.len()]).collect();
    let (mut local_times, mut object_times) = (Times::default(), Times::default());
    for r in 0..REPS {
        progress(&format!("local save + load {}/{REPS}", r + 1));
        rep(&local, r, &refs, &names, &mut dest, &mut local_times, false)?;
        progress(&format!("object-store save + load {}/{REPS}", r + 1));
        dest.iter_mut().for_each(|d| d.fill(1));
        rep(
            &object,
            r,
            &refs,
            &names,
            &mut dest,
            &mut object_times,
            config.keep,
        )?;
        anyhow::ensure!(
            dest == state,
            "the state loaded from {object_url} differs from what was saved"
        );
    }
    let (local_save_s, object_save_s) = (median(local_times.saves), median(object_times.saves));
    let (local_load_s, object_load_s) = (median(local_times.loads), median(object_times.loads));
    Ok(ObjectBenchResult {
        url: object_url,
        local_dir: work.path().display().to_string(),
        bytes: total,
        tensors: config.tensors,
        local_save_s,
        object_save_s,
        save_ratio: local_save_s / object_save_s,
        local_load_s,
        object_load_s,
        load_ratio: local_load_s / object_load_s,
    })
}

/// Entry point of `waypoint bench --dir URL`.
pub fn run(config: &BenchConfig, url: &str) -> Result<ExitCode> {
    let progress = progress_printer(config.json);
    let r = measure(config, url, &progress)?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |s: f64| r.bytes as f64 / (1u64 << 20) as f64 / s;
    println!("object store  {}", r.url);
    println!(
        "state         {} tensors, {:.1} MiB",
        r.tensors,
        r.bytes as f64 / (1u64 << 20) as f64
    );
    println!(
        "save          object store {:.3} s  {:.1} MiB/s   local files {:.3} s  {:.1} MiB/s   ratio {:.2}",
        r.object_save_s,
        mib(r.object_save_s),
        r.local_save_s,
        mib(r.local_save_s),
        r.save_ratio
    );
    println!(
        "load          object store {:.3} s  {:.1} MiB/s   local files {:.3} s  {:.1} MiB/s   ratio {:.2}",
        r.object_load_s,
        mib(r.object_load_s),
        r.local_load_s,
        mib(r.local_load_s),
        r.load_ratio
    );
    if config.keep {
        println!("checkpoint kept at {}/step-{}", r.url, REPS - 1);
    }
    Ok(ExitCode::SUCCESS)
}
