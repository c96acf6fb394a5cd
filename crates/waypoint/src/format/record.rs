//! The commit record, `weights/metadata.json`: its serde shape, the one parse every reader runs
//! (typed, straight from the bytes, then [`super::validate`]'s invariants), and the bytes a writer
//! commits (checked by that same parse). Pure: no I/O.

use super::dtype::Dtype;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Set when the file was carried over from an earlier checkpoint instead of written: a hard
    /// link or a server-side copy of that checkpoint's file, byte for byte (an incremental save,
    /// see docs/FORMAT.md). Informational only: the file is this checkpoint's own, checked like
    /// any other, and no reader follows this to another checkpoint. Absent in other files (and
    /// in records of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<CarriedFrom>,
}

/// Where a carried-over file came from ([`FileEntry::carried_from`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFrom {
    /// The checkpoint it came from, as the saving run named it (a sibling's name).
    pub checkpoint: String,
    /// The file's name in that checkpoint's `weights/`.
    pub file: String,
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
    /// Parses and validates a record read from `path` (used in error messages only): one typed
    /// parse of the bytes, then every invariant of docs/FORMAT.md (see [`Self::validate`]).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() as u64 > MAX_RECORD_LEN {
            return Err(Error::record(
                path,
                format!("{} bytes is larger than the 1 GiB limit", bytes.len()),
            ));
        }
        let record: CommitRecord = match serde_json::from_slice(bytes) {
            Ok(record) => record,
            // Only a refused record is read a second time, for an error in the reader's terms:
            // not JSON, not a waypoint record, a newer version, then its structure.
            Err(e) => return Err(explain_refusal(bytes, e, path)),
        };
        check_format(&record.format, record.format_version, path)?;
        record.validate(path)?;
        Ok(record)
    }

    /// Serialises the record as compact JSON (readers accept any JSON layout; the CLI's
    /// `waypoint show` is the readable view). Use [`Self::to_committed_json`] for bytes about to
    /// be committed.
    pub fn to_json(&self) -> Vec<u8> {
        // A record holds strings, integers and serde_json values (whose floats are finite):
        // serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The exact bytes to commit for this record, after the reader's own check of them
    /// ([`Self::from_json`]: the size limit, the parser's nesting limit, every invariant) and
    /// that they read back as this very record: a record that commits always opens.
    pub fn to_committed_json(&self, path: &Path) -> Result<Vec<u8>> {
        let bytes = self.to_json();
        let back = CommitRecord::from_json(&bytes, path)
            .map_err(|e| Error::record(path, format!("refusing to commit it: {e}")))?;
        if back != *self {
            return Err(Error::record(
                path,
                "refusing to commit it: it does not read back as written",
            ));
        }
        Ok(bytes)
    }

    /// Total bytes of tensor data in the checkpoint. Exact for a validated record (whose sizes
    /// add up within 64 bits); saturates on an unchecked one.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .flat_map(|t| &t.chunks)
            .fold(0u64, |sum, c| sum.saturating_add(c.byte_len()))
    }
}

/// The two keys read before anything else of a refused record.
#[derive(Deserialize)]
struct Head {
    format: Option<serde_json::Value>,
    format_version: Option<serde_json::Value>,
}

/// Why the typed parse refused `bytes`: not JSON at all, not a waypoint record, a version this
/// build does not know (whatever else a future version changed), or else its structure.
fn explain_refusal(bytes: &[u8], typed: serde_json::Error, path: &Path) -> Error {
    let not_json = |e: &serde_json::Error| Error::record(path, format!("not valid JSON: {e}"));
    if typed.is_syntax() || typed.is_eof() {
        return not_json(&typed);
    }
    let head: Head = match serde_json::from_slice(bytes) {
        Ok(head) if bytes.trim_ascii_start().starts_with(b"{") => head,
        Err(e) if e.is_syntax() || e.is_eof() => return not_json(&e),
        _ => return Error::record(path, "the top level is not a JSON object"),
    };
    let format = head.format.as_ref().and_then(|v| v.as_str());
    let Some(format) = format else {
        return Error::record(path, "missing string key `format`");
    };
    let Some(version) = head.format_version.as_ref().and_then(|v| v.as_u64()) else {
        return Error::record(path, "missing integer key `format_version`");
    };
    match check_format(format, version, path) {
        Err(e) => e,
        Ok(()) => Error::record(path, format!("unexpected structure: {typed}")),
    }
}

/// The format name and version rules of docs/FORMAT.md.
fn check_format(format: &str, version: u64, path: &Path) -> Result<()> {
    if format != FORMAT_NAME {
        return Err(Error::record(
            path,
            format!("format is {format:?}, expected {FORMAT_NAME:?}"),
        ));
    }
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
}
