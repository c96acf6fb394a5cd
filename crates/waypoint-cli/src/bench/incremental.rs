//! `waypoint bench --incremental`: a frozen base plus a small trainable part (fine-tuning with
//! adapters), saved again and again. Measures, in one run on the same storage (a local directory
//! or `--dir s3://…`): full saves of the state (incremental saves off), incremental saves with the
//! base marked frozen, and incremental saves that find the unchanged base by its checksums; for
//! each, the save time and the bytes sent to the storage per save (carried files are linked or
//! copied server-side, not sent). Each incremental checkpoint deletes the one before it, as a run
//! keeping one would, and the last one is verified on its own.
//!
//! It uses only the helpers of `bench/mod.rs`, never another benchmark; it must not write outside
//! its scratch directory (or unique prefix), nor report a checkpoint that does not verify.

use super::{
    f32_slots, file_system_of, median, progress_printer, scratch_dir, synthetic_buffers, whole_f32,
};
use crate::cli::BenchConfig;
use anyhow::{Result, ensure};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use waypoint::storage::{
    CountingStorage, SharedStorage, StoragePath, local_storage, open_location,
};
use waypoint::{CheckpointMeta, Checkpointer, LoadOptions, SaveOptions};

/// Measured saves of each kind (after one unmeasured save that each kind starts from).
const REPS: usize = 5;

/// Tensors of the trainable part.
const TRAINABLE_TENSORS: u64 = 4;

/// What `--incremental` measured.
#[derive(Debug, serde::Serialize)]
pub struct IncrementalResult {
    /// Where the checkpoints went: a local directory's file system, or the URL.
    pub storage: String,
    /// Bytes of tensor data per save.
    pub bytes: u64,
    /// Bytes of the trainable part (changed before every save).
    pub trainable_bytes: u64,
    /// A full save of the state (incremental saves off), seconds (median).
    pub full_save_s: f64,
    /// Bytes sent to the storage by a full save (median).
    pub full_bytes_written: u64,
    /// An incremental save with the base marked frozen, seconds (median).
    pub save_s: f64,
    /// Bytes sent to the storage by such a save (median): the figure to compare with
    /// `trainable_bytes` (target ≤ 1.1×).
    pub bytes_written_per_save: u64,
    /// `bytes_written_per_save / trainable_bytes`.
    pub bytes_ratio: f64,
    /// `save_s / full_save_s` (target ≤ 0.05).
    pub time_ratio: f64,
    /// Bytes carried over per save (linked or copied server-side), median.
    pub bytes_carried_per_save: u64,
    /// An incremental save with nothing marked, the base found unchanged by its checksums,
    /// seconds (median).
    pub detected_save_s: f64,
    /// Bytes sent to the storage by such a save (median).
    pub detected_bytes_written_per_save: u64,
    /// `detected_save_s / full_save_s`.
    pub detected_time_ratio: f64,
}

/// The state: a frozen base of `--tensors` tensors and a trainable part.
struct State {
    base: Vec<Vec<u8>>,
    trainable: Vec<Vec<u8>>,
    names: Vec<String>,
}

impl State {
    fn new(config: &BenchConfig, trainable: u64) -> State {
        let base_bytes = config.size.saturating_sub(trainable).max(4);
        let per = (base_bytes / config.tensors / 4 * 4).max(4) as usize;
        let per_trainable = (trainable / TRAINABLE_TENSORS / 4 * 4).max(4) as usize;
        let base = synthetic_buffers(config.tensors, per);
        let trainable = (0..TRAINABLE_TENSORS)
            .map(|i| {
                let mut v = vec![0u8; per_trainable];
                super::fill(&mut v, 1_000 + i);
                v
            })
            .collect();
        let names = (0..config.tensors)
            .map(|i| format!("base.layers.{i}.weight"))
            .chain((0..TRAINABLE_TENSORS).map(|i| format!("lora.{i}.weight")))
            .collect();
        State {
            base,
            trainable,
            names,
        }
    }

    /// A training step's change: every trainable byte moves.
    fn train(&mut self, step: u64) {
        for t in &mut self.trainable {
            super::fill(t, step.wrapping_mul(31));
        }
    }

    fn buffers(&self) -> Vec<Vec<u8>> {
        self.base.iter().chain(&self.trainable).cloned().collect()
    }

    fn frozen(&self) -> BTreeSet<String> {
        self.names[..self.base.len()].iter().cloned().collect()
    }
}

/// The time and the bytes sent of each measured save of one kind.
#[derive(Default)]
struct Kind {
    times: Vec<Duration>,
    written: Vec<u64>,
    carried: Vec<u64>,
}

/// Saves `state` `1 + REPS` times with `options` as `<prefix>-<i>` (the first unmeasured),
/// changing the trainable part before each, deleting each checkpoint once the next committed;
/// verifies the last one on its own and returns its name.
fn series(
    counting: &Arc<CountingStorage>,
    prefix: &str,
    options: SaveOptions,
    state: &mut State,
    say: &dyn Fn(&str),
) -> Result<(Kind, StoragePath)> {
    let storage: SharedStorage = counting.clone();
    let checkpointer = Checkpointer::new(storage.clone()).with_options(options);
    let mut kind = Kind::default();
    let mut previous: Option<StoragePath> = None;
    for i in 0..=REPS {
        say(&format!("{prefix} save {i}/{REPS}"));
        state.train(i as u64 + 1);
        let buffers = state.buffers();
        let refs = whole_f32(&buffers, &state.names);
        let dir = StoragePath::new(&format!("{prefix}-{i}"))?;
        counting.reset();
        let report = checkpointer.save(&dir, &CheckpointMeta::at_step(i as u64), &refs, &())?;
        let counts = counting.counts();
        if i > 0 {
            kind.times.push(report.elapsed);
            kind.written.push(counts.bytes_written);
            kind.carried.push(counts.bytes_carried);
        }
        if let Some(old) = previous.replace(dir) {
            storage.remove_dir_all(&old, &old.join("weights/metadata.json")?)?;
        }
    }
    let last = previous.unwrap_or_default();
    let report = checkpointer.verify(&last, &mut |_| {})?;
    ensure!(
        report.problems.is_empty(),
        "{last} does not verify: {:?}",
        report.problems
    );
    Ok((kind, last))
}

/// Loads `last` and checks it holds `state`.
fn check_loaded(storage: &SharedStorage, last: &StoragePath, state: &State) -> Result<()> {
    let want = state.buffers();
    let mut dest: Vec<Vec<u8>> = want.iter().map(|d| vec![0u8; d.len()]).collect();
    let shapes: Vec<[u64; 1]> = want.iter().map(|d| [d.len() as u64 / 4]).collect();
    let mut slots = f32_slots(&mut dest, &state.names, &shapes);
    Checkpointer::new(storage.clone())
        .open(last)?
        .load_into(&mut slots, &LoadOptions::default())?;
    ensure!(dest == want, "{last} does not hold the state saved");
    Ok(())
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs the three kinds of saves on `storage`.
fn measure(
    config: &BenchConfig,
    trainable: u64,
    storage: SharedStorage,
    described: String,
    say: &dyn Fn(&str),
) -> Result<IncrementalResult> {
    let mut state = State::new(config, trainable);
    let counting = Arc::new(CountingStorage::new(storage));
    let shared: SharedStorage = counting.clone();
    let base = SaveOptions::default();
    let full_options = SaveOptions {
        incremental: false,
        ..base.clone()
    };
    let frozen_options = SaveOptions {
        frozen: state.frozen(),
        ..SaveOptions::default()
    };
    let (full, last) = series(&counting, "full", full_options, &mut state, say)?;
    shared.remove_dir_all(&last, &last.join("weights/metadata.json")?)?;
    let (frozen, last) = series(&counting, "frozen", frozen_options, &mut state, say)?;
    check_loaded(&shared, &last, &state)?;
    shared.remove_dir_all(&last, &last.join("weights/metadata.json")?)?;
    let (detected, last) = series(
        &counting,
        "detected",
        SaveOptions {
            detect_unchanged: true,
            ..SaveOptions::default()
        },
        &mut state,
        say,
    )?;
    check_loaded(&shared, &last, &state)?;
    if !config.keep {
        shared.remove_dir_all(&last, &last.join("weights/metadata.json")?)?;
    }
    let bytes = state.buffers().iter().map(|b| b.len() as u64).sum();
    let trainable_bytes = state.trainable.iter().map(|b| b.len() as u64).sum();
    let full_save_s = median(full.times);
    let save_s = median(frozen.times);
    let detected_save_s = median(detected.times);
    let bytes_written_per_save = median_u64(frozen.written);
    Ok(IncrementalResult {
        storage: described,
        bytes,
        trainable_bytes,
        full_save_s,
        full_bytes_written: median_u64(full.written),
        save_s,
        bytes_written_per_save,
        bytes_ratio: bytes_written_per_save as f64 / trainable_bytes as f64,
        time_ratio: save_s / full_save_s,
        bytes_carried_per_save: median_u64(frozen.carried),
        detected_save_s,
        detected_bytes_written_per_save: median_u64(detected.written),
        detected_time_ratio: detected_save_s / full_save_s,
    })
}

/// Entry point of `waypoint bench --incremental`.
pub fn run(config: &BenchConfig, trainable: u64) -> Result<ExitCode> {
    let say = progress_printer(config.json);
    let work = scratch_dir(&config.dir)?;
    let (storage, described) = match &config.url {
        Some(url) => {
            let unique = work
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("waypoint-bench")
                .to_owned();
            let url = format!("{url}/{unique}");
            (open_location(&url)?, url)
        }
        None => (
            local_storage(work.path())?,
            file_system_of(&std::fs::canonicalize(work.path())?),
        ),
    };
    let r = measure(config, trainable, storage, described, &say)?;
    if config.keep {
        let kept = work.keep();
        say(&format!("checkpoint kept in {}", kept.display()));
    }
    if config.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(r: &IncrementalResult) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("storage        {}", r.storage);
    println!(
        "state          {:.1} MiB, of which {:.1} MiB trainable",
        mib(r.bytes),
        mib(r.trainable_bytes)
    );
    println!(
        "full save      {:.3} s, {:.1} MiB written",
        r.full_save_s,
        mib(r.full_bytes_written)
    );
    println!(
        "frozen base    {:.3} s ({:.1}% of a full save), {:.2} MiB written ({:.2}× the trainable part), {:.1} MiB carried over",
        r.save_s,
        r.time_ratio * 100.0,
        mib(r.bytes_written_per_save),
        r.bytes_ratio,
        mib(r.bytes_carried_per_save)
    );
    println!(
        "detected base  {:.3} s ({:.1}% of a full save), {:.2} MiB written",
        r.detected_save_s,
        r.detected_time_ratio * 100.0,
        mib(r.detected_bytes_written_per_save)
    );
}
