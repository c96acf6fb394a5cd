//! PyTorch is the judge of the README's claim that `torch.distributed.checkpoint`'s
//! `HuggingFaceStorageReader` reads our checkpoints: `tests/python/check_torch_hf.py` runs the
//! pinned torch (scripts/test.sh's venv) on `<ckpt>/weights` exactly as a PyTorch user would
//! (`read_metadata`, then `dcp.load` into a state dict of the right shapes and dtypes) and
//! compares every value bit for bit with what was saved: a single-rank checkpoint with every
//! dtype torch has, split tensors, odd shapes and several shard files, and the 4-rank checkpoint
//! of `ranks` (row and column shards, a replicated tensor spread over the replicas, a tensor only
//! one rank holds, a 0-d tensor), which 2 gloo ranks also load as row-sharded DTensors.
//!
//! The interpreter comes from `WAYPOINT_PYTHON` (or the single venv of the cache): without torch
//! there the tests fail, saying to run scripts/test.sh; they never skip.

use crate::python_interop::run_python;
use serde_json::{Map, Value, json};
use std::path::Path;
use tempfile::TempDir;
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, SaveOptions, TensorRef};

/// A tensor of the single-rank state: the global truth and the chunks the save is handed.
struct Tensor {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<u64>,
    data: Vec<u8>,
    /// Row bands `(first row, rows)` handed as separate chunks; empty for a whole tensor.
    bands: Vec<(u64, u64)>,
}

/// Deterministic bytes (xorshift), valid for `dtype` (0 or 1 for BOOL).
fn bytes(seed: u64, dtype: Dtype, shape: &[u64]) -> Vec<u8> {
    let len = dtype.byte_len(shape.iter().product()).unwrap() as usize;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 24) as u8;
            if dtype == Dtype::BOOL { b & 1 } else { b }
        })
        .collect()
}

fn tensor(name: &'static str, dtype: Dtype, shape: Vec<u64>, bands: Vec<(u64, u64)>) -> Tensor {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    Tensor {
        name,
        dtype,
        data: bytes(seed, dtype, &shape),
        shape,
        bands,
    }
}

/// Every dtype safetensors maps to a torch dtype, whole and split, with odd shapes.
fn single_rank_state() -> Vec<Tensor> {
    let mut state: Vec<Tensor> = [
        Dtype::F64,
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I64,
        Dtype::I32,
        Dtype::I16,
        Dtype::I8,
        Dtype::U64,
        Dtype::U32,
        Dtype::U16,
        Dtype::U8,
        Dtype::BOOL,
        Dtype::F8_E4M3,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::C64,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, dtype)| {
        let name: &'static str = Box::leak(format!("layers.{i}.{dtype}").into_boxed_str());
        tensor(name, dtype, vec![3, 5 + i as u64], Vec::new())
    })
    .collect();
    state.extend([
        // Row bands handed as chunks: each in a file of its own, with DCP_SHARDING_INFO.
        tensor(
            "model.embed.weight",
            Dtype::BF16,
            vec![10, 64],
            vec![(0, 4), (4, 4), (8, 2)],
        ),
        tensor(
            "model.head.weight",
            Dtype::F32,
            vec![6, 300],
            vec![(0, 3), (3, 3)],
        ),
        tensor("scale", Dtype::F32, vec![], Vec::new()),
        tensor("big.weight", Dtype::F16, vec![512, 700], Vec::new()),
        tensor("empty.rows", Dtype::F32, vec![0, 4], Vec::new()),
    ]);
    state
}

/// The chunks of `t` as the save is handed them.
fn refs(t: &Tensor) -> Vec<TensorRef<'_>> {
    if t.bands.is_empty() {
        return vec![TensorRef::whole(
            t.name,
            t.dtype,
            t.shape.clone(),
            t.data.as_slice(),
        )];
    }
    let row = t.dtype.byte_len(t.shape[1..].iter().product()).unwrap() as usize;
    t.bands
        .iter()
        .map(|&(first, rows)| {
            let (start, end) = (first as usize * row, (first + rows) as usize * row);
            let mut offsets = vec![0; t.shape.len()];
            offsets[0] = first;
            let mut sizes = t.shape.clone();
            sizes[0] = rows;
            TensorRef::chunk(
                t.name,
                t.dtype,
                t.shape.clone(),
                offsets,
                sizes,
                t.data[start..end].to_vec(),
            )
        })
        .collect()
}

/// `{"tensors": {name: {dtype, shape, hex}}}` for check_torch_hf.py.
fn expectations<'a>(tensors: impl Iterator<Item = (&'a str, Dtype, &'a [u64], &'a [u8])>) -> Value {
    let mut map = Map::new();
    for (name, dtype, shape, data) in tensors {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        map.insert(
            name.to_owned(),
            json!({"dtype": dtype.name(), "shape": shape, "hex": hex}),
        );
    }
    json!({ "tensors": map })
}

/// Runs check_torch_hf.py on `ckpt` against `expect` (with `extra` arguments); panics with its
/// report unless it passes.
fn check_with_torch(ckpt: &Path, expect: &Value, extra: &[&str]) -> String {
    let expect_path = ckpt.with_extension("expected.json");
    std::fs::write(&expect_path, serde_json::to_vec(expect).unwrap()).unwrap();
    let stdout = run_python("check_torch_hf.py", &[ckpt, &expect_path], extra);
    assert!(
        stdout.contains("torch HF reader OK"),
        "check_torch_hf.py:\n{stdout}"
    );
    stdout
}

#[test]
fn torch_hf_reader_loads_a_single_rank_checkpoint_of_every_dtype() {
    let tmp = TempDir::new().unwrap();
    let state = single_rank_state();
    let checkpointer =
        Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(SaveOptions {
            max_shard_bytes: 256 * 1024,
            ..SaveOptions::default()
        });
    let refs: Vec<TensorRef<'_>> = state.iter().flat_map(refs).collect();
    checkpointer
        .save(
            &StoragePath::new("ckpt").unwrap(),
            &CheckpointMeta::at_step(3),
            &refs,
            &json!({}),
        )
        .unwrap();
    drop(refs);
    let ckpt = tmp.path().join("ckpt");
    let files = std::fs::read_dir(ckpt.join("weights")).unwrap().count();
    assert!(files >= 5, "several shard files and the record: {files}");
    let expect = expectations(
        state
            .iter()
            .map(|t| (t.name, t.dtype, t.shape.as_slice(), t.data.as_slice())),
    );
    let out = check_with_torch(&ckpt, &expect, &[]);
    assert!(out.contains(&format!("{} tensors", state.len())), "{out}");
}

#[test]
fn torch_hf_reader_loads_a_four_rank_checkpoint() {
    use crate::ranks::{four_rank_checkpoint, state};
    let tmp = TempDir::new().unwrap();
    let (ckpt, record) = four_rank_checkpoint(tmp.path());
    let ranks: std::collections::BTreeSet<u64> = record["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks.len(), 4, "every rank wrote shard files: {record}");
    let globals = state();
    let expect = expectations(
        globals
            .iter()
            .map(|g| (g.name, g.dtype, g.shape.as_slice(), g.data.as_slice())),
    );
    // Loaded whole by one process, then as row-sharded DTensors by 2 gloo ranks (rows that cut
    // through the 4 ranks' chunks, e.g. head.weight's 3+3+2+2 rows as 5+5: partial reads).
    let out = check_with_torch(&ckpt, &expect, &["--ranks", "2"]);
    assert!(out.contains(&format!("{} tensors", globals.len())), "{out}");
    assert!(out.contains("by 2 gloo ranks"), "{out}");
}
