//! Metadata-only commit records of large layouts, with no bytes behind them: what the benchmarks
//! and examples that measure the record itself (its size, parse time, discovery over many) need,
//! generated in one place. Every tensor is cut by rows over the ranks; checksums are placeholders
//! with as many digits as real ones.
//!
//! It must not be used to commit a checkpoint: the records describe files that do not exist.

use super::{
    ChunkEntry, CommitRecord, Dtype, FORMAT_NAME, FileEntry, TensorEntry, TrainerState,
    shard_file_name,
};
use std::collections::BTreeMap;

/// A row-sharded layout: `tensors` matrices `model.layers.<t>.weight` of `rows` × `cols`
/// elements of `dtype`, each cut by rows into `ways` chunks.
#[derive(Debug, Clone)]
pub struct RowSharded {
    /// How many tensors.
    pub tensors: u64,
    /// The world size: chunk `i` of tensor `t` goes to rank `(t * ways + i) % ranks`, whose one
    /// shard file holds a 1 MiB header and then its chunks back to back.
    pub ranks: u64,
    /// Chunks per tensor.
    pub ways: u64,
    /// Rows of each tensor.
    pub rows: u64,
    /// Columns of each tensor.
    pub cols: u64,
    /// Element type.
    pub dtype: Dtype,
    /// The record's `producer`.
    pub producer: String,
    /// The record's step.
    pub step: u64,
}

/// Block size of the generated records (1 MiB).
const BLOCK: u64 = 1 << 20;
/// Header length of every generated shard file.
const HEADER: u64 = 1 << 20;
/// A placeholder checksum with as many digits as a real one usually has.
const CRC: u32 = 3_000_000_000;

/// The record of `layout`.
///
/// ```
/// use waypoint::format::{Dtype, RowSharded, row_sharded_record};
/// let layout = RowSharded {
///     tensors: 2, ranks: 4, ways: 4, rows: 8, cols: 4, dtype: Dtype::BF16,
///     producer: "doc".into(), step: 1,
/// };
/// let record = row_sharded_record(&layout);
/// assert_eq!(record.tensors["model.layers.1.weight"].chunks.len(), 4);
/// assert_eq!(record.files.len(), 4);
/// ```
pub fn row_sharded_record(layout: &RowSharded) -> CommitRecord {
    let RowSharded {
        tensors,
        ranks,
        ways,
        rows,
        cols,
        dtype,
        ..
    } = *layout;
    let row_bytes = cols * dtype.bits() / 8;
    let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut entries = BTreeMap::new();
    for t in 0..tensors {
        let chunks = (0..ways)
            .map(|i| {
                let rank = (t * ways + i) % ranks;
                let (first, end) = (rows * i / ways, rows * (i + 1) / ways);
                let bytes = (end - first) * row_bytes;
                let file_name = shard_file_name(rank, 0);
                let file = files.entry(file_name.clone()).or_insert(FileEntry {
                    rank,
                    size: HEADER,
                    header_len: HEADER,
                    header_crc32c: CRC,
                    carried_from: None,
                });
                let start = file.size;
                file.size += bytes;
                ChunkEntry {
                    offsets: vec![first, 0],
                    sizes: vec![end - first, cols],
                    file: file_name,
                    byte_range: [start, start + bytes],
                    block_crc32c: vec![CRC; bytes.div_ceil(BLOCK) as usize],
                }
            })
            .collect();
        let entry = TensorEntry {
            dtype,
            shape: vec![rows, cols],
            chunks,
        };
        entries.insert(format!("model.layers.{t}.weight"), entry);
    }
    CommitRecord {
        format: FORMAT_NAME.into(),
        format_version: 1,
        producer: layout.producer.clone(),
        step: layout.step,
        epoch: 0,
        world_size: ranks,
        block_size: BLOCK,
        files,
        tensors: entries,
        trainer_state: TrainerState::default(),
    }
}
