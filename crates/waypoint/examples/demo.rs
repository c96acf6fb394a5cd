//! The main job until the example trainer exists: saves a checkpoint of a synthetic model state
//! (64 MiB by default, several dtypes, one tensor split in two chunks), reopens it, checks every
//! byte and the trainer state, and prints what it did. Each run adds the next step, so running it
//! again shows the checkpoints accumulating. It uses only the public API, as a user's code
//! would, and must not reach into the library's internals.
//!
//! ```text
//! cargo run --release -p waypoint --example demo [-- <log_dir> [<MiB>]]
//! ```

use std::time::Instant;
use waypoint::storage::{SharedStorage, StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, LoadOptions, TensorRef, TensorSource};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    consumed_samples: u64,
    rng_state: [u64; 2],
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let log_dir = args.next().unwrap_or_else(|| "waypoint_runs".to_owned());
    let mib: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let root = std::path::Path::new(&log_dir).join("demo/checkpoints");
    let storage = local_storage(&root)?;
    let checkpointer = Checkpointer::new(storage.clone());
    let removed = checkpointer.cleanup_temporaries(&StoragePath::root())?;
    if !removed.is_empty() {
        println!(
            "removed {} leftover temporaries of interrupted saves",
            removed.len()
        );
    }
    let step = next_step(&storage)?;

    let model = SyntheticModel::new(step, mib);
    let tensors = model.tensors();
    let state = TrainerState {
        step,
        consumed_samples: step * 32,
        rng_state: [step, !step],
    };

    let dir = StoragePath::new(&format!("step-{step}"))?;
    save(&checkpointer, &storage, &dir, &tensors, &state)?;
    verify(&checkpointer, &dir, &model, &state)?;
    println!(
        "checkpoints in {}: run again to add step {}",
        root.display(),
        step + 100
    );
    Ok(())
}

/// The step after the newest `step-N` checkpoint under the root (100 for the first).
fn next_step(storage: &SharedStorage) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(storage
        .list(&StoragePath::root())?
        .iter()
        .filter_map(|e| e.name.strip_prefix("step-")?.parse::<u64>().ok())
        .max()
        .map_or(100, |s| s + 100))
}

/// The bytes of the synthetic model of one step.
struct SyntheticModel {
    layer_bytes: usize,
    embedding: Vec<u8>,
    layers: Vec<Vec<u8>>,
    head: Vec<u8>,
}

impl SyntheticModel {
    fn new(step: u64, mib: usize) -> Self {
        // A synthetic model: embedding (bf16), 4 layers of f32 weights, an f16 head split in two.
        let layer_bytes = (mib << 20) / 6 / 8192 * 8192;
        let embedding = pattern(step, layer_bytes);
        let layers: Vec<Vec<u8>> = (0..4).map(|i| pattern(step + i + 1, layer_bytes)).collect();
        let head = pattern(step + 9, layer_bytes);
        Self {
            layer_bytes,
            embedding,
            layers,
            head,
        }
    }

    /// The tensors to save, the head in two chunks of rows.
    fn tensors(&self) -> Vec<TensorRef<'_>> {
        let layer_bytes = self.layer_bytes;
        let (head_top, head_bottom) = self.head.split_at(self.head.len() / 2);
        let cols = 1024u64;
        let head_rows = layer_bytes as u64 / 2 / cols;
        let mut tensors = vec![TensorRef::whole(
            "embedding.weight",
            Dtype::BF16,
            vec![layer_bytes as u64 / 2 / cols, cols],
            self.embedding.as_slice(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            tensors.push(TensorRef::whole(
                format!("layers.{i}.weight"),
                Dtype::F32,
                vec![l.len() as u64 / 4 / cols, cols],
                l.as_slice(),
            ));
        }
        let half = head_rows / 2;
        tensors.push(TensorRef::chunk(
            "head.weight",
            Dtype::F16,
            vec![head_rows, cols],
            vec![0, 0],
            vec![half, cols],
            head_top,
        ));
        tensors.push(TensorRef::chunk(
            "head.weight",
            Dtype::F16,
            vec![head_rows, cols],
            vec![half, 0],
            vec![head_rows - half, cols],
            head_bottom,
        ));
        tensors
    }
}

/// Saves the checkpoint of `step` in `dir` and prints its size and speed.
fn save(
    checkpointer: &Checkpointer,
    storage: &SharedStorage,
    dir: &StoragePath,
    tensors: &dyn TensorSource,
    state: &TrainerState,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = checkpointer.save(dir, &CheckpointMeta::at_step(state.step), tensors, state)?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "saved {} ({} files, {:.1} MiB) in {:.3} s, {:.2} GiB/s",
        storage.describe(dir).display(),
        report.files,
        report.file_bytes as f64 / (1 << 20) as f64,
        secs,
        report.file_bytes as f64 / (1u64 << 30) as f64 / secs
    );
    Ok(())
}

/// Reopens the checkpoint in `dir` and checks every byte and the trainer state against what was
/// saved.
fn verify(
    checkpointer: &Checkpointer,
    dir: &StoragePath,
    model: &SyntheticModel,
    state: &TrainerState,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let reader = checkpointer.open(dir)?;
    let loaded = reader.load_all(&LoadOptions::default())?;
    let load_secs = started.elapsed().as_secs_f64();
    let restored: TrainerState = reader.user_state()?;
    let mut ok = restored == *state
        && loaded["head.weight"].data == model.head
        && loaded["embedding.weight"].data == model.embedding;
    for (i, l) in model.layers.iter().enumerate() {
        ok &= &loaded[&format!("layers.{i}.weight")].data == l;
    }
    if !ok {
        return Err("the reloaded checkpoint differs from what was saved".into());
    }
    println!(
        "reloaded and verified every byte and the trainer state in {load_secs:.3} s (checksums verified)"
    );
    Ok(())
}
