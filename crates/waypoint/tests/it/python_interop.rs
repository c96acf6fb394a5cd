//! Python interop: checkpoints written by waypoint are read back from Python, both with the
//! `safetensors` package (every shard file, every dtype, `DCP_SHARDING_INFO` for split tensors)
//! and with `tests/python/reader.py`, a reader written from docs/FORMAT.md alone.
//!
//! The interpreter comes from `WAYPOINT_PYTHON`, which `scripts/test.sh` sets to its virtual
//! environment. Without it, the single `venv-*` in `${WAYPOINT_CACHE:-$HOME/.cache/waypoint}` is
//! used; otherwise the tests fail (they never skip silently): run `scripts/test.sh`.

use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;
use test_python::python;
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, SaveOptions, TensorRef};

// ------------------------------------------------------------------------------------------------
// Test data
// ------------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (SplitMix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// A global tensor and how it is handed to the save: whole (no chunks) or as chunk boxes.
struct Global {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    data: Vec<u8>,
    /// `(offsets, sizes)` of each chunk; empty for a whole tensor.
    chunks: Vec<(Vec<u64>, Vec<u64>)>,
}

fn byte_len(dtype: Dtype, shape: &[u64]) -> usize {
    let elements: u64 = shape.iter().product();
    let bits = elements * dtype.bits();
    assert_eq!(
        bits % 8,
        0,
        "{dtype} {shape:?} is not a whole number of bytes"
    );
    (bits / 8) as usize
}

impl Global {
    /// A tensor of pseudo-random content (BOOL gets 0/1 bytes, as PyTorch and numpy expect).
    fn random(rng: &mut Rng, name: &str, dtype: Dtype, shape: Vec<u64>) -> Self {
        let mut data = rng.bytes(byte_len(dtype, &shape));
        if dtype == Dtype::BOOL {
            data.iter_mut().for_each(|b| *b &= 1);
        }
        Global {
            name: name.to_owned(),
            dtype,
            shape,
            data,
            chunks: Vec::new(),
        }
    }

    fn split(mut self, chunks: Vec<(Vec<u64>, Vec<u64>)>) -> Self {
        self.chunks = chunks;
        self
    }

    /// The row-major bytes of the box at `offsets` of shape `sizes`.
    fn extract(&self, offsets: &[u64], sizes: &[u64]) -> Vec<u8> {
        if sizes == self.shape.as_slice() {
            return self.data.clone();
        }
        if self.dtype.is_sub_byte() {
            // Only splits on the first dimension: the box is a contiguous byte range.
            assert_eq!(
                sizes[1..],
                self.shape[1..],
                "sub-byte chunks are split on the first dimension"
            );
            let row: u64 = self.shape[1..].iter().product::<u64>() * self.dtype.bits();
            assert_eq!(offsets[0] * row % 8, 0);
            let start = (offsets[0] * row / 8) as usize;
            return self.data[start..start + byte_len(self.dtype, sizes)].to_vec();
        }
        let elem = (self.dtype.bits() / 8) as usize;
        let dims = self.shape.len();
        let mut out = Vec::with_capacity(byte_len(self.dtype, sizes));
        if sizes.contains(&0) {
            return out;
        }
        // Iterate over every index of the box's outer dimensions; copy one innermost run each.
        let run = sizes[dims - 1] as usize * elem;
        let mut index = vec![0u64; dims - 1];
        loop {
            let mut flat = 0u64;
            for d in 0..dims {
                let i = if d < dims - 1 {
                    offsets[d] + index[d]
                } else {
                    offsets[d]
                };
                flat = flat * self.shape[d] + i;
            }
            let start = flat as usize * elem;
            out.extend_from_slice(&self.data[start..start + run]);
            // Odometer increment over the outer dimensions.
            let mut d = dims - 1;
            loop {
                if d == 0 {
                    return out;
                }
                d -= 1;
                index[d] += 1;
                if index[d] < sizes[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }

    fn refs(&self) -> Vec<TensorRef<'_>> {
        if self.chunks.is_empty() {
            return vec![TensorRef::whole(
                self.name.as_str(),
                self.dtype,
                self.shape.clone(),
                self.data.as_slice(),
            )];
        }
        self.chunks
            .iter()
            .map(|(offsets, sizes)| {
                TensorRef::chunk(
                    self.name.as_str(),
                    self.dtype,
                    self.shape.clone(),
                    offsets.clone(),
                    sizes.clone(),
                    self.extract(offsets, sizes),
                )
            })
            .collect()
    }
}

fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(data.len() * 2);
    for &b in data {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    String::from_utf8(out).unwrap()
}

// ------------------------------------------------------------------------------------------------
// Running Python
// ------------------------------------------------------------------------------------------------

fn python_dir() -> PathBuf {
    test_python::scripts_dir()
}

/// Runs a script of tests/python; panics with its output unless it succeeds. Returns stdout.
pub(crate) fn run_python(script: &str, args: &[&Path], extra: &[&str]) -> String {
    let python = python();
    let out = Command::new(&python)
        .arg(python_dir().join(script))
        .args(args)
        .args(extra)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {}: {e} (run scripts/test.sh)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    stdout
}

// ------------------------------------------------------------------------------------------------
// Save, describe what Python must find, check
// ------------------------------------------------------------------------------------------------

struct Saved {
    _tmp: TempDir,
    record: Value,
}

/// Saves `globals` with `options`, writes the expectations next to the checkpoint and runs both
/// Python checks. Returns the commit record for further assertions.
fn save_and_check_from_python(globals: &[Global], options: SaveOptions) -> Saved {
    let tmp = TempDir::new().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    let checkpointer = Checkpointer::new(storage).with_options(options);
    let refs: Vec<TensorRef<'_>> = globals.iter().flat_map(Global::refs).collect();
    let dir = StoragePath::new("ckpt").unwrap();
    checkpointer
        .save(&dir, &CheckpointMeta::at_step(5), &refs, &json!({"k": 1}))
        .unwrap();
    drop(refs);

    let ckpt = tmp.path().join("ckpt");
    let record: Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("weights/metadata.json")).unwrap())
            .unwrap();

    // Which chunk landed in which file, according to the record (Python checks the files agree).
    let mut files: Map<String, Value> = Map::new();
    for (name, tensor) in record["tensors"].as_object().unwrap() {
        for chunk in tensor["chunks"].as_array().unwrap() {
            let file = chunk["file"].as_str().unwrap();
            let entry = files.entry(file.to_owned()).or_insert_with(|| json!({}));
            entry[name.as_str()] = json!({"offsets": chunk["offsets"], "sizes": chunk["sizes"]});
        }
    }
    let mut tensors = Map::new();
    let mut chunks = Map::new();
    for g in globals {
        tensors.insert(
            g.name.clone(),
            json!({"dtype": g.dtype.name(), "shape": g.shape, "hex": hex(&g.data)}),
        );
        let handed: Vec<Value> = if g.chunks.is_empty() {
            vec![json!({"offsets": vec![0u64; g.shape.len()], "sizes": g.shape})]
        } else {
            g.chunks
                .iter()
                .map(|(o, s)| json!({"offsets": o, "sizes": s}))
                .collect()
        };
        chunks.insert(g.name.clone(), Value::Array(handed));
    }
    let expect = json!({"tensors": tensors, "chunks": chunks, "files": files});
    let expect_path = tmp.path().join("expected.json");
    std::fs::write(&expect_path, serde_json::to_vec(&expect).unwrap()).unwrap();

    let out = run_python("check_interop.py", &[&ckpt, &expect_path], &[]);
    assert!(
        out.contains("interop OK"),
        "unexpected output of check_interop.py: {out}"
    );
    let out = run_python(
        "reader.py",
        &[&ckpt],
        &["--expect", expect_path.to_str().unwrap()],
    );
    let summary: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("reader.py printed no JSON ({e}): {out}"));
    assert_eq!(summary["step"], 5);
    assert_eq!(summary["tensors"].as_object().unwrap().len(), globals.len());
    for g in globals {
        let t = &summary["tensors"][g.name.as_str()];
        assert_eq!(t["dtype"], g.dtype.name(), "{}", g.name);
        assert_eq!(t["shape"], json!(g.shape), "{}", g.name);
        assert_eq!(t["bytes"], g.data.len(), "{}", g.name);
    }
    assert_eq!(record["trainer_state"]["user"], json!({"k": 1}));
    Saved { _tmp: tmp, record }
}

fn shard_files(record: &Value) -> usize {
    record["files"].as_object().unwrap().len()
}

// ------------------------------------------------------------------------------------------------
// Cases
// ------------------------------------------------------------------------------------------------

#[test]
fn every_dtype_and_odd_shapes_and_names_read_from_python() {
    let mut rng = Rng::new(1);
    let mut globals = Vec::new();
    for (i, dtype) in Dtype::ALL.into_iter().enumerate() {
        // 24 elements: whole bytes for F4 (12) and F6 (18); a few shapes for variety.
        let shape = match i % 3 {
            0 => vec![24],
            1 => vec![4, 6],
            _ => vec![2, 3, 4],
        };
        globals.push(Global::random(
            &mut rng,
            &format!("dtype/{}", dtype.name()),
            dtype,
            shape,
        ));
    }
    globals.push(Global::random(
        &mut rng,
        "empty.f32",
        Dtype::F32,
        vec![3, 0, 5],
    ));
    globals.push(Global::random(&mut rng, "empty.f4", Dtype::F4, vec![0]));
    globals.push(Global::random(&mut rng, "scalar.f64", Dtype::F64, vec![]));
    globals.push(Global::random(&mut rng, "scalar.bf16", Dtype::BF16, vec![]));
    globals.push(Global::random(
        &mut rng,
        "model.layers.0.self_attn/q_proj.weight",
        Dtype::F16,
        vec![8, 4],
    ));
    globals.push(Global::random(&mut rng, "a/b/../c", Dtype::I32, vec![3]));
    globals.push(Global::random(
        &mut rng,
        "ünïcødé/权重.λ 🚀",
        Dtype::U8,
        vec![5],
    ));
    globals.push(Global::random(
        &mut rng,
        "with \"quotes\" and \\ and spaces",
        Dtype::I8,
        vec![2, 2],
    ));
    let saved = save_and_check_from_python(&globals, SaveOptions::default());
    assert_eq!(
        saved.record["tensors"].as_object().unwrap().len(),
        globals.len()
    );
}

#[test]
fn split_tensors_carry_dcp_sharding_info_and_reassemble() {
    let mut rng = Rng::new(2);
    let globals = vec![
        // 2 row chunks.
        Global::random(&mut rng, "w.rows", Dtype::F32, vec![4, 6])
            .split(vec![(vec![0, 0], vec![2, 6]), (vec![2, 0], vec![2, 6])]),
        // 4 boxes: 2 row bands × 2 column bands, of unequal sizes.
        Global::random(&mut rng, "w.boxes", Dtype::BF16, vec![6, 10]).split(vec![
            (vec![0, 0], vec![4, 3]),
            (vec![0, 3], vec![4, 7]),
            (vec![4, 0], vec![2, 3]),
            (vec![4, 3], vec![2, 7]),
        ]),
        // Sub-byte dtypes split on the first dimension (chunks of whole bytes).
        Global::random(&mut rng, "w.f4", Dtype::F4, vec![4, 6])
            .split(vec![(vec![0, 0], vec![2, 6]), (vec![2, 0], vec![2, 6])]),
        Global::random(&mut rng, "w.f6", Dtype::F6_E2M3, vec![8, 4])
            .split(vec![(vec![0, 0], vec![4, 4]), (vec![4, 0], vec![4, 4])]),
        // A 3-D box split and whole tensors beside them.
        Global::random(&mut rng, "w.3d", Dtype::I16, vec![2, 3, 4]).split(vec![
            (vec![0, 0, 0], vec![2, 3, 1]),
            (vec![0, 0, 1], vec![2, 3, 3]),
        ]),
        Global::random(&mut rng, "bias", Dtype::F32, vec![6]),
        Global::random(&mut rng, "norm.weight", Dtype::BF16, vec![10]),
    ];
    let saved = save_and_check_from_python(&globals, SaveOptions::default());
    // Each chunk of one tensor is in a different file, so DCP_SHARDING_INFO had to be there.
    let record = &saved.record;
    assert_eq!(
        record["tensors"]["w.boxes"]["chunks"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert!(shard_files(record) >= 4, "{record}");
    for (name, tensor) in record["tensors"].as_object().unwrap() {
        let chunks = tensor["chunks"].as_array().unwrap();
        let mut files: Vec<&str> = chunks.iter().map(|c| c["file"].as_str().unwrap()).collect();
        files.sort_unstable();
        files.dedup();
        assert_eq!(files.len(), chunks.len(), "{name}: two chunks in one file");
    }
}

#[test]
fn several_megabytes_over_several_shard_files() {
    let mut rng = Rng::new(3);
    let mut globals = Vec::new();
    for i in 0..6 {
        globals.push(Global::random(
            &mut rng,
            &format!("layers.{i}.mlp.weight"),
            Dtype::F32,
            vec![512, 256],
        ));
    }
    for i in 0..3 {
        globals.push(Global::random(
            &mut rng,
            &format!("layers.{i}.attn.weight"),
            Dtype::BF16,
            vec![1024, 512],
        ));
    }
    // Larger than max_shard_bytes: gets a file of its own.
    globals.push(Global::random(
        &mut rng,
        "embed.weight",
        Dtype::U8,
        vec![2560, 1024],
    ));
    // A split tensor across files, and small ones.
    globals.push(
        Global::random(&mut rng, "lm_head.weight", Dtype::F16, vec![512, 512]).split(vec![
            (vec![0, 0], vec![256, 512]),
            (vec![256, 0], vec![256, 512]),
        ]),
    );
    globals.push(Global::random(
        &mut rng,
        "final_norm.weight",
        Dtype::F32,
        vec![1024],
    ));
    let total: usize = globals.iter().map(|g| g.data.len()).sum();
    assert!(total > 8 << 20, "{total}");
    let options = SaveOptions {
        max_shard_bytes: 2 << 20,
        ..Default::default()
    };
    let saved = save_and_check_from_python(&globals, options);
    let files = shard_files(&saved.record);
    assert!(
        files >= 5,
        "expected the 2 MiB limit to force several shard files, got {files}"
    );
    for (name, entry) in saved.record["files"].as_object().unwrap() {
        let size = entry["size"].as_u64().unwrap();
        let header = entry["header_len"].as_u64().unwrap();
        let holds_embed =
            saved.record["tensors"]["embed.weight"]["chunks"][0]["file"] == name.as_str();
        assert!(
            holds_embed || size - header <= 2 << 20,
            "{name} holds {} data bytes, more than max_shard_bytes",
            size - header
        );
    }
}

#[test]
fn tiny_blocks_give_many_block_checksums() {
    for block_size in [64u64, 7] {
        let mut rng = Rng::new(4 + block_size);
        let globals = vec![
            Global::random(&mut rng, "odd.f32", Dtype::F32, vec![250]), // 1000 bytes: short last block
            Global::random(&mut rng, "exact.u8", Dtype::U8, vec![4, 64]), // a whole number of blocks
            Global::random(&mut rng, "small.i16", Dtype::I16, vec![3]),   // smaller than one block
            Global::random(&mut rng, "empty.f64", Dtype::F64, vec![0]),   // no block at all
            Global::random(&mut rng, "split.bf16", Dtype::BF16, vec![20, 30]).split(vec![
                (vec![0, 0], vec![20, 13]),
                (vec![0, 13], vec![20, 17]),
            ]),
        ];
        let options = SaveOptions {
            block_size,
            ..Default::default()
        };
        let saved = save_and_check_from_python(&globals, options);
        let record = &saved.record;
        assert_eq!(record["block_size"], block_size);
        let blocks = |name: &str, chunk: usize| {
            record["tensors"][name]["chunks"][chunk]["block_crc32c"]
                .as_array()
                .unwrap()
                .len() as u64
        };
        assert_eq!(blocks("odd.f32", 0), 1000u64.div_ceil(block_size));
        assert_eq!(blocks("exact.u8", 0), 256u64.div_ceil(block_size));
        assert_eq!(blocks("small.i16", 0), 1);
        assert_eq!(blocks("empty.f64", 0), 0);
        let split_blocks = blocks("split.bf16", 0) + blocks("split.bf16", 1);
        assert_eq!(
            split_blocks,
            520u64.div_ceil(block_size) + 680u64.div_ceil(block_size)
        );
    }
}
