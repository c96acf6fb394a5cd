//! The commit record, `weights/metadata.json`: its serde shape and the validation every reader runs
//! before trusting a single offset in it. Pure: no I/O.

use super::dtype::{Dtype, element_count};
use super::names::{parse_shard_file_name, tensor_name_problem};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The value of the record's `format` key.
pub const FORMAT_NAME: &str = "waypoint-checkpoint";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u64 = 1;
/// Default size of the checksummed blocks a chunk is cut into (1 MiB).
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;
/// Largest safetensors header accepted (100 MB, as safetensors itself).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Largest commit record accepted (1 GiB): a bound on what a reader allocates.
pub const MAX_RECORD_LEN: u64 = 1 << 30;
/// Largest tensor rank accepted.
pub const MAX_DIMS: usize = 64;

/// The commit record of one checkpoint. Its presence makes the checkpoint exist; it is written
/// last. See docs/FORMAT.md for the normative description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version; readers refuse versions newer than [`FORMAT_VERSION`].
    pub format_version: u64,
    /// Who wrote it, e.g. `"waypoint 0.1.0"`.
    pub producer: String,
    /// The global step the checkpoint was taken at.
    pub step: u64,
    /// The epoch the checkpoint was taken in.
    pub epoch: u64,
    /// How many ranks wrote it.
    pub world_size: u64,
    /// Size in bytes of the blocks each chunk's checksums cover.
    pub block_size: u64,
    /// Shard files, by file name inside `weights/`.
    pub files: BTreeMap<String, FileEntry>,
    /// Tensors, by name.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The trainer state: the user's value and waypoint's own.
    pub trainer_state: TrainerState,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The rank that wrote the file.
    pub rank: u64,
    /// Its exact size in bytes.
    pub size: u64,
    /// Length of the safetensors header including its 8-byte length prefix and padding: where the
    /// data section starts. A multiple of 4096.
    pub header_len: u64,
    /// CRC-32C of the first `header_len` bytes of the file.
    pub header_crc32c: u32,
}

/// One tensor: its global dtype and shape and the chunks that tile it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Element type.
    pub dtype: Dtype,
    /// Global shape.
    pub shape: Vec<u64>,
    /// The chunks; together they cover the tensor exactly, without overlap.
    pub chunks: Vec<ChunkEntry>,
}

/// A box-shaped piece of a tensor stored contiguously (row-major) in one shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Offset of the chunk within the global tensor, per dimension.
    pub offsets: Vec<u64>,
    /// Extent of the chunk, per dimension.
    pub sizes: Vec<u64>,
    /// The shard file name inside `weights/`.
    pub file: String,
    /// `[start, end)` of the chunk's bytes, absolute within the file.
    pub byte_range: [u64; 2],
    /// CRC-32C of each `block_size` block of the chunk's bytes (the last block may be shorter).
    pub block_crc32c: Vec<u32>,
}

/// The trainer state slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The caller's serde value (`null` when none was given).
    #[serde(default)]
    pub user: serde_json::Value,
    /// Reserved for waypoint itself: the checkpoint policy's state, the run's facts, pending
    /// deletions, the loggers' resume states.
    #[serde(default)]
    pub waypoint: super::Reserved,
}

impl ChunkEntry {
    /// Number of bytes of the chunk.
    pub fn byte_len(&self) -> u64 {
        self.byte_range[1] - self.byte_range[0]
    }
}

impl CommitRecord {
    /// Parses and validates a record read from `path` (used in error messages only).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() as u64 > MAX_RECORD_LEN {
            return Err(Error::record(
                path,
                format!("{} bytes is larger than the 1 GiB limit", bytes.len()),
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::record(path, format!("not valid JSON: {e}")))?;
        check_header_keys(&value, path)?;
        let record: CommitRecord = serde_json::from_value(value)
            .map_err(|e| Error::record(path, format!("unexpected structure: {e}")))?;
        record.validate(path)?;
        Ok(record)
    }

    /// Serialises the record (pretty-printed, so that people can read it).
    pub fn to_json(&self) -> Vec<u8> {
        // A record only holds strings, integers and serde_json values: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks every invariant of docs/FORMAT.md: file names, ranks, sizes, that chunks tile their
    /// tensor and the byte ranges tile each file's data section, checksum counts.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::record(path, reason);
        if self.block_size == 0 || self.block_size > 1 << 30 {
            return Err(bad(format!(
                "block_size {} is not in 1..=2^30",
                self.block_size
            )));
        }
        if self.world_size == 0 {
            return Err(bad("world_size must be at least 1".into()));
        }
        for (name, file) in &self.files {
            let Some((rank, _)) = parse_shard_file_name(name) else {
                return Err(bad(format!(
                    "file name {name:?} is not of the form __<rank>_<i>.safetensors"
                )));
            };
            if rank != file.rank || rank >= self.world_size {
                return Err(bad(format!(
                    "file {name:?}: rank {} disagrees with its name or world_size {}",
                    file.rank, self.world_size
                )));
            }
            if file.header_len < 10
                || file.header_len > 8 + MAX_HEADER_LEN
                || file.header_len > file.size
            {
                return Err(bad(format!(
                    "file {name:?}: header_len {} is out of range for a file of {} bytes",
                    file.header_len, file.size
                )));
            }
        }
        // Per file: the byte ranges of its chunks, to check they tile the data section.
        let mut ranges: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();
        for (name, tensor) in &self.tensors {
            validate_tensor(self, name, tensor, path, &mut ranges)?;
        }
        for (name, file) in &self.files {
            let mut list = ranges.remove(name.as_str()).unwrap_or_default();
            list.sort_unstable();
            let mut cursor = file.header_len;
            for (start, end, tensor) in list {
                if start != cursor {
                    return Err(bad(format!(
                        "file {name:?}: tensor {tensor:?} starts at byte {start}, expected {cursor} (overlap or hole)"
                    )));
                }
                cursor = end;
            }
            if cursor != file.size {
                return Err(bad(format!(
                    "file {name:?}: data ends at byte {cursor} but the file has {} bytes",
                    file.size
                )));
            }
        }
        Ok(())
    }

    /// Total bytes of tensor data in the checkpoint.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .flat_map(|t| &t.chunks)
            .map(|c| c.byte_len())
            .sum()
    }
}

/// Checks the top-level keys before serde, so the error names the key and the version rule runs
/// even on records whose other fields a future version changed.
fn check_header_keys(value: &serde_json::Value, path: &Path) -> Result<()> {
    let Some(obj) = value.as_object() else {
        return Err(Error::record(path, "the top level is not a JSON object"));
    };
    match obj.get("format").and_then(|v| v.as_str()) {
        Some(FORMAT_NAME) => {}
        Some(other) => {
            return Err(Error::record(
                path,
                format!("format is {other:?}, expected {FORMAT_NAME:?}"),
            ));
        }
        None => return Err(Error::record(path, "missing string key `format`")),
    }
    let Some(version) = obj.get("format_version").and_then(|v| v.as_u64()) else {
        return Err(Error::record(path, "missing integer key `format_version`"));
    };
    if version == 0 {
        return Err(Error::record(path, "format_version 0 does not exist"));
    }
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

fn validate_tensor<'r>(
    record: &'r CommitRecord,
    name: &'r str,
    tensor: &'r TensorEntry,
    path: &Path,
    ranges: &mut BTreeMap<&'r str, Vec<(u64, u64, &'r str)>>,
) -> Result<()> {
    let bad = |reason: String| Error::record(path, format!("tensor {name:?}: {reason}"));
    let total = tensor_element_count(name, tensor, &bad)?;
    let mut covered: u64 = 0;
    let mut files_seen: BTreeSet<&str> = BTreeSet::new();
    for (i, chunk) in tensor.chunks.iter().enumerate() {
        let cbad = |reason: String| bad(format!("chunk {i}: {reason}"));
        let (elements, bytes) = chunk_extent(tensor, chunk, &cbad)?;
        let [start, end] = chunk.byte_range;
        check_chunk_placement(record, tensor, chunk, &cbad)?;
        if !files_seen.insert(chunk.file.as_str()) {
            return Err(cbad(format!(
                "a second chunk of the tensor in {:?}",
                chunk.file
            )));
        }
        let blocks = bytes.div_ceil(record.block_size);
        if chunk.block_crc32c.len() as u64 != blocks {
            return Err(cbad(format!(
                "{} block checksums for {bytes} bytes in blocks of {} (expected {blocks})",
                chunk.block_crc32c.len(),
                record.block_size
            )));
        }
        covered = covered
            .checked_add(elements)
            .ok_or_else(|| cbad("element count overflows".into()))?;
        ranges
            .entry(chunk.file.as_str())
            .or_default()
            .push((start, end, name));
    }
    if let Some((a, b)) = first_overlap(&tensor.chunks) {
        return Err(bad(format!("chunk {b} overlaps chunk {a}")));
    }
    if covered != total {
        return Err(bad(format!(
            "its chunks cover {covered} of {total} elements"
        )));
    }
    Ok(())
}

/// Checks the tensor's name, rank and shape; returns its element count.
fn tensor_element_count(
    name: &str,
    tensor: &TensorEntry,
    bad: &dyn Fn(String) -> Error,
) -> Result<u64> {
    if let Some(problem) = tensor_name_problem(name) {
        return Err(bad(problem.into()));
    }
    if tensor.shape.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions is more than {MAX_DIMS}",
            tensor.shape.len()
        )));
    }
    let total = element_count(&tensor.shape)
        .ok_or_else(|| bad("the element count of its shape overflows".into()))?;
    tensor.dtype.byte_len(total).ok_or_else(|| {
        bad(format!(
            "{total} elements of {} is not a whole number of bytes",
            tensor.dtype
        ))
    })?;
    Ok(total)
}

/// Checks that the chunk's box lies within the tensor and that its byte range holds exactly its
/// elements; returns its element and byte counts.
fn chunk_extent(
    tensor: &TensorEntry,
    chunk: &ChunkEntry,
    cbad: &dyn Fn(String) -> Error,
) -> Result<(u64, u64)> {
    if chunk.offsets.len() != tensor.shape.len() || chunk.sizes.len() != tensor.shape.len() {
        return Err(cbad(
            "offsets and sizes must have one entry per dimension".into(),
        ));
    }
    for d in 0..tensor.shape.len() {
        let end = chunk.offsets[d].checked_add(chunk.sizes[d]);
        if end.is_none_or(|e| e > tensor.shape[d]) {
            return Err(cbad(format!(
                "offset {} + size {} exceeds dimension {d} of size {}",
                chunk.offsets[d], chunk.sizes[d], tensor.shape[d]
            )));
        }
    }
    let elements =
        element_count(&chunk.sizes).ok_or_else(|| cbad("element count overflows".into()))?;
    let bytes = tensor.dtype.byte_len(elements).ok_or_else(|| {
        cbad(format!(
            "{elements} elements of {} is not whole bytes",
            tensor.dtype
        ))
    })?;
    let [start, end] = chunk.byte_range;
    if end < start || end - start != bytes {
        return Err(cbad(format!(
            "byte_range {start}..{end} does not hold {bytes} bytes ({elements} × {})",
            tensor.dtype
        )));
    }
    Ok((elements, bytes))
}

/// Checks that the chunk's file is listed and that its byte range lies, aligned, in that file's
/// data section.
fn check_chunk_placement(
    record: &CommitRecord,
    tensor: &TensorEntry,
    chunk: &ChunkEntry,
    cbad: &dyn Fn(String) -> Error,
) -> Result<()> {
    let [start, end] = chunk.byte_range;
    let Some(file) = record.files.get(&chunk.file) else {
        return Err(cbad(format!(
            "file {:?} is not listed in `files`",
            chunk.file
        )));
    };
    if start < file.header_len || end > file.size {
        return Err(cbad(format!(
            "byte_range {start}..{end} lies outside the data section {}..{} of {:?}",
            file.header_len, file.size, chunk.file
        )));
    }
    if start % tensor.dtype.alignment() != (file.header_len % tensor.dtype.alignment()) {
        return Err(cbad(format!(
            "byte_range start {start} is not aligned to {}",
            tensor.dtype.alignment()
        )));
    }
    Ok(())
}

/// The first pair of chunks that share an element, found by a sweep along the dimension with the
/// most distinct offsets: only chunks whose extents overlap along it are compared, so usual
/// shardings (rows, columns, blocks) cost O(n log n) instead of comparing every pair.
fn first_overlap(chunks: &[ChunkEntry]) -> Option<(usize, usize)> {
    let live: Vec<usize> = (0..chunks.len())
        .filter(|&i| !chunks[i].sizes.contains(&0))
        .collect();
    let dims = chunks.first().map_or(0, |c| c.offsets.len());
    if dims == 0 {
        // 0-d: every non-empty chunk is the single element.
        return (live.len() > 1).then(|| (live[0], live[1]));
    }
    let axis = (0..dims)
        .max_by_key(|&d| {
            live.iter()
                .map(|&i| chunks[i].offsets[d])
                .collect::<BTreeSet<_>>()
                .len()
        })
        .unwrap_or(0);
    let mut order = live;
    order.sort_by_key(|&i| chunks[i].offsets[axis]);
    let mut active: Vec<usize> = Vec::new();
    for &i in &order {
        let start = chunks[i].offsets[axis];
        active.retain(|&j| chunks[j].offsets[axis] + chunks[j].sizes[axis] > start);
        if let Some(&j) = active
            .iter()
            .find(|&&j| boxes_overlap(&chunks[j], &chunks[i]))
        {
            return Some((j.min(i), j.max(i)));
        }
        active.push(i);
    }
    None
}

/// Whether two chunks of the same tensor share an element. Empty chunks overlap nothing.
fn boxes_overlap(a: &ChunkEntry, b: &ChunkEntry) -> bool {
    let empty = |c: &ChunkEntry| c.sizes.contains(&0);
    if empty(a) || empty(b) {
        return false;
    }
    (0..a.offsets.len()).all(|d| {
        let (a0, a1) = (a.offsets[d], a.offsets[d] + a.sizes[d]);
        let (b0, b1) = (b.offsets[d], b.offsets[d] + b.sizes[d]);
        a0 < b1 && b0 < a1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "format": FORMAT_NAME, "format_version": 1, "producer": "test", "step": 7, "epoch": 1,
            "world_size": 1, "block_size": 8,
            "files": {"__0_0.safetensors": {"rank": 0, "size": 4096 + 24, "header_len": 4096, "header_crc32c": 1}},
            "tensors": {
                "a": {"dtype": "F32", "shape": [2, 2], "chunks": [
                    {"offsets": [0, 0], "sizes": [2, 2], "file": "__0_0.safetensors", "byte_range": [4096, 4112], "block_crc32c": [1, 2]}]},
                "b": {"dtype": "U8", "shape": [8], "chunks": [
                    {"offsets": [0], "sizes": [8], "file": "__0_0.safetensors", "byte_range": [4112, 4120], "block_crc32c": [3]}]}
            },
            "trainer_state": {"user": {"lr": 0.1}, "waypoint": {}}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<CommitRecord> {
        CommitRecord::from_json(
            &serde_json::to_vec(v).unwrap(),
            Path::new("weights/metadata.json"),
        )
    }

    #[test]
    fn sample_is_valid_and_round_trips() {
        let r = parse(&sample()).unwrap();
        assert_eq!(r.step, 7);
        assert_eq!(r.total_bytes(), 24);
        assert_eq!(
            CommitRecord::from_json(&r.to_json(), Path::new("m")).unwrap(),
            r
        );
    }

    #[test]
    fn big_integers_stay_exact() {
        let mut v = sample();
        v["step"] = json!(u64::MAX);
        assert_eq!(parse(&v).unwrap().step, u64::MAX);
    }

    /// Each mutation of the valid sample and a fragment of the error it must produce.
    #[test]
    fn invalid_records_table() {
        type Mutation = fn(&mut serde_json::Value);
        let table: Vec<(Mutation, &str)> = vec![
            (|v| v["format"] = json!("other"), "format is"),
            (|v| v["format_version"] = json!(2), "newer than"),
            (|v| v["format_version"] = json!(0), "does not exist"),
            (
                |v| {
                    v.as_object_mut().unwrap().remove("format_version");
                },
                "format_version",
            ),
            (|v| v["block_size"] = json!(0), "block_size"),
            (|v| v["world_size"] = json!(0), "world_size"),
            (
                |v| {
                    v["files"] =
                        json!({"../x": {"rank": 0, "size": 1, "header_len": 1, "header_crc32c": 0}})
                },
                "not of the form",
            ),
            (
                |v| v["files"] = json!({"/abs/__0_0.safetensors": {"rank": 0, "size": 1, "header_len": 1, "header_crc32c": 0}}),
                "not of the form",
            ),
            (
                |v| v["files"]["__0_0.safetensors"]["rank"] = json!(1),
                "rank",
            ),
            (
                |v| v["files"]["__0_0.safetensors"]["header_len"] = json!(9999),
                "header_len",
            ),
            (
                |v| v["files"]["__0_0.safetensors"]["size"] = json!(5000),
                "data ends at",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["byte_range"] = json!([4096, 4111]),
                "does not hold",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["byte_range"] = json!([4100, 4116]),
                "starts at",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["byte_range"] = json!([9000, 9016]),
                "outside the data section",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["offsets"] = json!([1, 0]),
                "exceeds dimension",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["offsets"] = json!([u64::MAX, 0]),
                "exceeds dimension",
            ),
            (
                |v| v["tensors"]["a"]["shape"] = json!([u64::MAX, 4]),
                "overflows",
            ),
            (
                |v| {
                    v["tensors"]["a"]["chunks"][0]["sizes"] = json!([1, 2]);
                    v["tensors"]["a"]["chunks"][0]["byte_range"] = json!([4096, 4104]);
                    v["tensors"]["a"]["chunks"][0]["block_crc32c"] = json!([1]);
                    v["tensors"]["b"]["chunks"][0]["byte_range"] = json!([4104, 4112]);
                    v["files"]["__0_0.safetensors"]["size"] = json!(4112);
                },
                "cover 2 of 4",
            ),
            (
                |v| v["tensors"]["a"]["dtype"] = json!("F16"),
                "does not hold",
            ),
            (
                |v| v["tensors"]["a"]["dtype"] = json!("F99"),
                "unexpected structure",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["file"] = json!("__0_1.safetensors"),
                "not listed",
            ),
            (
                |v| v["tensors"]["a"]["chunks"][0]["block_crc32c"] = json!([1]),
                "block checksums",
            ),
            (
                |v| {
                    let t = v["tensors"]["a"].clone();
                    v["tensors"]["__metadata__"] = t;
                },
                "reserved",
            ),
        ];
        for (i, (mutate, fragment)) in table.into_iter().enumerate() {
            let mut v = sample();
            mutate(&mut v);
            let err = parse(&v)
                .expect_err(&format!("case {i} should fail"))
                .to_string();
            assert!(
                err.contains(fragment),
                "case {i}: {err:?} lacks {fragment:?}"
            );
            assert!(
                err.contains("metadata.json"),
                "case {i}: {err:?} does not name the file"
            );
        }
    }

    #[test]
    fn not_json_is_refused_with_the_path() {
        let err = CommitRecord::from_json(b"{not json", Path::new("ck/weights/metadata.json"))
            .unwrap_err();
        assert!(err.to_string().contains("ck/weights/metadata.json"));
        assert!(err.to_string().contains("not valid JSON"));
    }

    #[test]
    fn overlapping_chunks_are_refused() {
        let mut v = sample();
        v["files"]["__0_1.safetensors"] =
            json!({"rank": 0, "size": 4096 + 8, "header_len": 4096, "header_crc32c": 0});
        v["tensors"]["b"]["shape"] = json!([16]);
        v["tensors"]["b"]["chunks"] = json!([
            {"offsets": [0], "sizes": [8], "file": "__0_0.safetensors", "byte_range": [4112, 4120], "block_crc32c": [3]},
            {"offsets": [4], "sizes": [8], "file": "__0_1.safetensors", "byte_range": [4096, 4104], "block_crc32c": [3]}
        ]);
        let err = parse(&v).unwrap_err().to_string();
        assert!(err.contains("overlaps"), "{err}");
    }

    fn chunk(offsets: &[u64], sizes: &[u64]) -> ChunkEntry {
        ChunkEntry {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            file: String::new(),
            byte_range: [0, 0],
            block_crc32c: Vec::new(),
        }
    }

    #[test]
    fn overlap_sweep_table() {
        type Case = (Vec<ChunkEntry>, Option<(usize, usize)>);
        let table: Vec<Case> = vec![
            (vec![chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[2, 4])], None),
            (vec![chunk(&[0, 0], &[4, 2]), chunk(&[0, 2], &[4, 2])], None),
            (
                vec![chunk(&[0, 0], &[3, 4]), chunk(&[2, 0], &[2, 4])],
                Some((0, 1)),
            ),
            (
                vec![
                    chunk(&[0, 0], &[2, 2]),
                    chunk(&[0, 2], &[2, 2]),
                    chunk(&[1, 1], &[2, 2]),
                ],
                Some((0, 2)),
            ),
            (vec![chunk(&[0], &[0]), chunk(&[0], &[4])], None),
            (vec![chunk(&[], &[]), chunk(&[], &[])], Some((0, 1))),
        ];
        for (i, (chunks, want)) in table.into_iter().enumerate() {
            assert_eq!(first_overlap(&chunks), want, "case {i}");
        }
    }

    /// A hostile record with very many chunks must not take quadratic time (found by fuzzing).
    #[test]
    fn many_chunks_are_checked_by_a_sweep() {
        let rows: Vec<ChunkEntry> = (0..200_000u64).map(|r| chunk(&[r, 0], &[1, 8])).collect();
        assert_eq!(first_overlap(&rows), None);
        let cols: Vec<ChunkEntry> = (0..200_000u64).map(|c| chunk(&[0, c], &[8, 1])).collect();
        assert_eq!(first_overlap(&cols), None);
    }
}
