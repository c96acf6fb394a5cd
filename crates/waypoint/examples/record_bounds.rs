//! What the reader of a commit record costs at its bounds (docs/FORMAT.md, "What a reader
//! bounds"): builds records of three shapes near a size, times `CommitRecord::from_json` (the one
//! typed parse and every invariant) and reports the peak memory of the process.
//!
//! ```text
//! cargo run --release -p waypoint --example record_bounds -- [MiB, default 1024] [rows|tensors|stairs|all]
//! ```
//!
//! - `rows`: one tensor cut into row chunks, one per shard file (the most files and chunks);
//! - `tensors`: one-chunk tensors, a thousand per shard file (the most tensors);
//! - `stairs`: one `[n, n]` tensor cut as a staircase (row i as `[i, 0..i]` and `[i, i..n]`),
//!   the layout that made the old overlap check quadratic.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use waypoint::Dtype;
use waypoint::format::{
    ChunkEntry, CommitRecord, FORMAT_NAME, FileEntry, TensorEntry, TrainerState, shard_file_name,
};

/// Bytes of data per chunk: small, so that the record, not the data, is large.
const CHUNK: u64 = 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u64 = args.first().map_or(Ok(1024), |a| a.parse())?;
    let which = args.get(1).map_or("all", String::as_str);
    let target = mib << 20;
    for shape in ["rows", "tensors", "stairs"] {
        if which == "all" || which == shape {
            measure(shape, target)?;
        }
    }
    Ok(())
}

fn measure(shape: &str, target: u64) -> Result<(), Box<dyn std::error::Error>> {
    // Chunks of each shape take about this many bytes of JSON.
    let per_chunk = match shape {
        "rows" => 224,
        "tensors" => 187,
        _ => 245,
    };
    let n = (target / per_chunk).max(2);
    let record = match shape {
        "rows" => rows(n),
        "tensors" => tensors(n),
        _ => stairs(n / 2),
    };
    let json = record.to_json();
    drop(record);
    // Reset the peak (Linux: "5" to clear_refs), so that it measures the parse alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let parsed = CommitRecord::from_json(&json, Path::new("metadata.json"));
    let elapsed = started.elapsed();
    let parsed = parsed?;
    let chunks: usize = parsed.tensors.values().map(|t| t.chunks.len()).sum();
    println!(
        "{shape:8} record {:>6.1} MiB, {:>9} files, {:>9} tensors, {:>9} chunks: \
         from_json {:>6.2} s, peak RSS {} MiB (the JSON alone {rss_before} MiB)",
        json.len() as f64 / (1 << 20) as f64,
        parsed.files.len(),
        parsed.tensors.len(),
        chunks,
        elapsed.as_secs_f64(),
        peak_rss_mib(),
    );
    Ok(())
}

fn record(
    files: BTreeMap<String, FileEntry>,
    tensors: BTreeMap<String, TensorEntry>,
) -> CommitRecord {
    CommitRecord {
        format: FORMAT_NAME.into(),
        format_version: 1,
        producer: "record_bounds".into(),
        step: 1,
        epoch: 0,
        world_size: 1,
        block_size: 1 << 20,
        files,
        tensors,
        trainer_state: TrainerState::default(),
    }
}

fn file(data: u64) -> FileEntry {
    FileEntry {
        rank: 0,
        size: 4096 + data,
        header_len: 4096,
        header_crc32c: 3_000_000_000,
        carried_from: None,
    }
}

fn chunk(offsets: Vec<u64>, sizes: Vec<u64>, file: String, start: u64, bytes: u64) -> ChunkEntry {
    ChunkEntry {
        offsets,
        sizes,
        file,
        byte_range: [start, start + bytes],
        block_crc32c: vec![3_000_000_000; bytes.div_ceil(1 << 20) as usize],
    }
}

/// One U8 tensor `[n, CHUNK]`, row i in file i.
fn rows(n: u64) -> CommitRecord {
    let mut files = BTreeMap::new();
    let chunks = (0..n)
        .map(|i| {
            let name = shard_file_name(0, i);
            files.insert(name.clone(), file(CHUNK));
            chunk(vec![i, 0], vec![1, CHUNK], name, 4096, CHUNK)
        })
        .collect();
    let tensor = TensorEntry {
        dtype: Dtype::U8,
        shape: vec![n, CHUNK],
        chunks,
    };
    record(files, [("rows".to_owned(), tensor)].into())
}

/// `n` U8 tensors `[CHUNK]`, a thousand per file.
fn tensors(n: u64) -> CommitRecord {
    let per_file = 1000;
    let mut files = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for i in 0..n {
        let name = shard_file_name(0, i / per_file);
        let in_file = (i % per_file) * CHUNK;
        let entry = files.entry(name.clone()).or_insert_with(|| file(0));
        entry.size += CHUNK;
        let tensor = TensorEntry {
            dtype: Dtype::U8,
            shape: vec![CHUNK],
            chunks: vec![chunk(vec![0], vec![CHUNK], name, 4096 + in_file, CHUNK)],
        };
        tensors.insert(format!("layer.{i}.weight"), tensor);
    }
    record(files, tensors)
}

/// One U8 tensor `[n, n]` as a staircase, each chunk in a file of its own.
fn stairs(n: u64) -> CommitRecord {
    let mut files = BTreeMap::new();
    let mut chunks = Vec::new();
    let mut add = |offsets: Vec<u64>, sizes: Vec<u64>| {
        let name = shard_file_name(0, files.len() as u64);
        let bytes = sizes[0] * sizes[1];
        files.insert(name.clone(), file(bytes));
        chunks.push(chunk(offsets, sizes, name, 4096, bytes));
    };
    add(vec![0, 0], vec![1, n]);
    for i in 1..n {
        add(vec![i, 0], vec![1, i]);
        add(vec![i, i], vec![1, n - i]);
    }
    let tensor = TensorEntry {
        dtype: Dtype::U8,
        shape: vec![n, n],
        chunks,
    };
    record(files, [("stairs".to_owned(), tensor)].into())
}

/// The process's peak resident memory (Linux), in MiB; 0 where unknown.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
