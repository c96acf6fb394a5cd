//! The commit record of a 100 B-parameter bf16 checkpoint (200 GB, 2,000 tensors, 1,024 ranks,
//! 1 MiB checksum blocks), built in memory without writing any tensor bytes: its size, the time
//! to serialise and check it as a save does (`to_committed_json`), to write it to a file, to parse
//! and validate it as every open does (`from_json`), and the peak memory of each.
//!
//! ```text
//! cargo run --release -p waypoint --example record_scale -- [sharded|tp8|whole|all]
//! ```
//!
//! - `sharded`: every tensor cut by rows over all 1,024 ranks (FSDP/ZeRO-3 style): 2,048,000
//!   chunks of ~95 KiB, one block each;
//! - `tp8`: every tensor cut over 8 ranks (tensor parallel 8), the tensors spread over the 128
//!   groups: 16,000 chunks of ~12 MiB;
//! - `whole`: every tensor whole on one rank: 2,000 chunks of ~95 MiB.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use waypoint::Dtype;
use waypoint::format::{
    ChunkEntry, CommitRecord, FORMAT_NAME, FileEntry, TensorEntry, TrainerState, shard_file_name,
};

const RANKS: u64 = 1024;
const TENSORS: u64 = 2000;
/// Each tensor `[ROWS, COLS]` bf16: 50 M parameters, 100 M in all... times 2,000 = 100 B.
const ROWS: u64 = 8192;
const COLS: u64 = 6104;
const BLOCK: u64 = 1 << 20;
const HEADER: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    for layout in ["sharded", "tp8", "whole"] {
        if which == "all" || which == layout {
            measure(layout)?;
        }
    }
    Ok(())
}

fn measure(layout: &str) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let record = build(match layout {
        "sharded" => RANKS,
        "tp8" => 8,
        _ => 1,
    });
    let built = started.elapsed().as_secs_f64();
    let path = Path::new("metadata.json");
    let started = Instant::now();
    let json = record.to_committed_json(path)?;
    let committed = started.elapsed().as_secs_f64();
    let peak_save = peak_rss_mib();
    drop(record);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let file = dir.path().join("metadata.json");
    std::fs::write(&file, &json)?;
    std::fs::File::open(&file)?.sync_all()?;
    let written = started.elapsed().as_secs_f64();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_mib();
    let started = Instant::now();
    let bytes = std::fs::read(&file)?;
    let parsed = CommitRecord::from_json(&bytes, path)?;
    let opened = started.elapsed().as_secs_f64();
    let chunks: usize = parsed.tensors.values().map(|t| t.chunks.len()).sum();
    let blocks: usize = parsed
        .tensors
        .values()
        .flat_map(|t| &t.chunks)
        .map(|c| c.block_crc32c.len())
        .sum();
    println!(
        "{layout:8} {:.1} GB in {} files, {chunks} chunks, {blocks} blocks: record {:.1} MiB \
         ({:.0} B/chunk); build {built:.2} s, to_committed_json {committed:.2} s (peak RSS \
         {peak_save} MiB), write+fsync {written:.2} s, read+from_json {opened:.2} s (peak RSS \
         {} MiB, {before} MiB before)",
        parsed.total_bytes() as f64 / 1e9,
        parsed.files.len(),
        json.len() as f64 / (1 << 20) as f64,
        json.len() as f64 / chunks as f64,
        peak_rss_mib(),
    );
    Ok(())
}

/// The record with every tensor cut by rows into `ways` chunks; the chunks of tensor `t` go to
/// ranks `(t * ways + i) % RANKS`, one shard file per rank.
fn build(ways: u64) -> CommitRecord {
    let row_bytes = COLS * 2;
    let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for t in 0..TENSORS {
        let chunks = (0..ways)
            .map(|i| {
                let rank = (t * ways + i) % RANKS;
                let (first, end) = (ROWS * i / ways, ROWS * (i + 1) / ways);
                let bytes = (end - first) * row_bytes;
                let name = shard_file_name(rank, 0);
                let file = files.entry(name.clone()).or_insert(FileEntry {
                    rank,
                    size: HEADER,
                    header_len: HEADER,
                    header_crc32c: 3_000_000_000,
                    carried_from: None,
                });
                let start = file.size;
                file.size += bytes;
                ChunkEntry {
                    offsets: vec![first, 0],
                    sizes: vec![end - first, COLS],
                    file: name,
                    byte_range: [start, start + bytes],
                    block_crc32c: vec![3_000_000_000; bytes.div_ceil(BLOCK) as usize],
                }
            })
            .collect();
        let tensor = TensorEntry {
            dtype: Dtype::BF16,
            shape: vec![ROWS, COLS],
            chunks,
        };
        tensors.insert(format!("model.layers.{t}.weight"), tensor);
    }
    CommitRecord {
        format: FORMAT_NAME.into(),
        format_version: 1,
        producer: "record_scale".into(),
        step: 1,
        epoch: 0,
        world_size: RANKS,
        block_size: BLOCK,
        files,
        tensors,
        trainer_state: TrainerState::default(),
    }
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
