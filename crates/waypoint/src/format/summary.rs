//! The checkpoint summary, `<ckpt>/summary.json`: the few facts a listing and AutoResume's
//! choice need (step, epoch, sizes, run facts, the listing's part of the policy state), a few
//! hundred bytes written inside the checkpoint before its commit record, so that finding the
//! newest of 10,000 checkpoints reads 10,000 small files instead of 10,000 records. Its codec:
//! [`Summary::of`] (from the record and its exact bytes), [`Summary::to_json`] and
//! [`Summary::from_json`] (the one parse every reader runs). Pure: no I/O.
//!
//! A summary is a hint, never the commit point: it must not make a checkpoint exist (the record
//! does, docs/FORMAT.md) and a reader must be able to do without it (checkpoints written before
//! it, or by other tools, have none). It is bound to its record by the record's length and
//! CRC-32C ([`RecordBinding`]), and checks itself with a CRC-32C trailer, so that a damaged or
//! edited summary is refused instead of believed. It must not interpret the policy's state: it
//! copies the keys a listing reads ([`POLICY_KEYS`]) as the policy wrote them.

use super::record::{CommitRecord, MAX_RECORD_LEN};
use super::reserved::RunFacts;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The summary's file name, directly inside the checkpoint directory (not in `weights/`, whose
/// content the record lists exactly).
pub const SUMMARY_FILE: &str = "summary.json";
/// The value of the summary's `format` key.
pub const SUMMARY_FORMAT_NAME: &str = "waypoint-summary";
/// The summary version this build writes and the newest it reads.
pub const SUMMARY_VERSION: u64 = 1;
/// Largest summary a reader accepts (64 KiB): a bound on what a listing reads per checkpoint.
pub const MAX_SUMMARY_LEN: u64 = 64 << 10;
/// The keys of the policy state (`trainer_state.waypoint.model_checkpoint`) a summary copies:
/// what `waypoint ls` shows (the monitor, its mode, the top-k with scores, the `-last`).
pub const POLICY_KEYS: [&str; 4] = ["monitor", "mode", "top_k", "last_model_path"];
/// Above this many bytes of JSON the policy keys are left out (`model_checkpoint_omitted`), so
/// that a summary stays small whatever `save_top_k` is.
const POLICY_BUDGET: usize = 16 << 10;
/// What precedes the CRC-32C at the end of a summary; the checksum covers every byte before it.
const TRAILER: &[u8] = b",\"crc32c\":";

/// What ties a summary to the one record it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordBinding {
    /// The record's length in bytes.
    pub record_len: u64,
    /// The CRC-32C of the record's bytes.
    pub record_crc32c: u32,
}

impl RecordBinding {
    /// The binding of the record `bytes`.
    pub fn of(bytes: &[u8]) -> RecordBinding {
        RecordBinding {
            record_len: bytes.len() as u64,
            record_crc32c: crc32c::crc32c(bytes),
        }
    }
}

/// A checkpoint's summary. See docs/FORMAT.md, "The summary".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Always [`SUMMARY_FORMAT_NAME`].
    pub format: String,
    /// [`SUMMARY_VERSION`]; a reader ignores summaries of versions it does not know.
    pub format_version: u64,
    /// The record's step.
    pub step: u64,
    /// The record's epoch.
    pub epoch: u64,
    /// The record's world size.
    pub world_size: u64,
    /// How many shard files the record lists.
    pub files: u64,
    /// The sum of their sizes.
    pub file_bytes: u64,
    /// How many tensors the record holds.
    pub tensors: u64,
    /// The bytes of tensor data.
    pub tensor_bytes: u64,
    /// The record's run facts (`trainer_state.waypoint.run`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunFacts>,
    /// The [`POLICY_KEYS`] of the record's policy state, as the policy wrote them; `None` when the
    /// record has no policy state (or they were left out, see `model_checkpoint_omitted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_checkpoint: Option<serde_json::Map<String, serde_json::Value>>,
    /// The record has a policy state, but its listed keys were too large to copy: a reader that
    /// needs them reads the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub model_checkpoint_omitted: bool,
    /// The record's length in bytes ([`RecordBinding`]).
    pub record_len: u64,
    /// The CRC-32C of the record's bytes ([`RecordBinding`]).
    pub record_crc32c: u32,
}

impl Summary {
    /// The summary of `record`, whose exact committed bytes are `record_bytes`.
    pub fn of(record: &CommitRecord, record_bytes: &[u8]) -> Summary {
        let (model_checkpoint, omitted) =
            match record.trainer_state.waypoint.model_checkpoint.as_ref() {
                None => (None, false),
                Some(serde_json::Value::Object(state)) => {
                    let keys: serde_json::Map<String, serde_json::Value> = POLICY_KEYS
                        .iter()
                        .filter_map(|k| state.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                        .collect();
                    let len = serde_json::to_vec(&keys).map_or(usize::MAX, |v| v.len());
                    match len <= POLICY_BUDGET {
                        true => (Some(keys), false),
                        false => (None, true),
                    }
                }
                // Not the policy's shape: a listing reading it from the record finds no state
                // either, so there is nothing to copy.
                Some(_) => (None, false),
            };
        Summary {
            format: SUMMARY_FORMAT_NAME.to_owned(),
            format_version: SUMMARY_VERSION,
            step: record.step,
            epoch: record.epoch,
            world_size: record.world_size,
            files: record.files.len() as u64,
            file_bytes: record
                .files
                .values()
                .fold(0u64, |sum, f| sum.saturating_add(f.size)),
            tensors: record.tensors.len() as u64,
            tensor_bytes: record.total_bytes(),
            run: record.trainer_state.waypoint.run.clone(),
            model_checkpoint,
            model_checkpoint_omitted: omitted,
            record_len: record_bytes.len() as u64,
            record_crc32c: crc32c::crc32c(record_bytes),
        }
    }

    /// The record it was made from.
    pub fn binding(&self) -> RecordBinding {
        RecordBinding {
            record_len: self.record_len,
            record_crc32c: self.record_crc32c,
        }
    }

    /// Whether the run completed with this checkpoint (its run facts say so).
    pub fn completed(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.completed)
    }

    /// Whether the checkpoint leaves the optimizer out.
    pub fn weights_only(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.weights_only)
    }

    /// The file's bytes: compact JSON whose last member is `"crc32c"`, the CRC-32C of every byte
    /// before the `,"crc32c":` that introduces it.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and serde_json values (finite floats): serialising cannot fail.
        let mut body = serde_json::to_vec(self).unwrap_or_default();
        // `{...}` without its closing brace, then the trailer.
        body.pop();
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(TRAILER);
        body.extend_from_slice(format!("{crc}}}").as_bytes());
        body
    }

    /// Parses and checks a summary read from `path` (for messages): its size, its CRC-32C
    /// trailer, its shape, its format and version. Any refusal is
    /// [`Error::InvalidSummary`]: the reader then reads the record instead.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Summary> {
        let refuse = |reason: String| Error::InvalidSummary {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() as u64 > MAX_SUMMARY_LEN {
            return Err(refuse(format!(
                "{} bytes is larger than the {MAX_SUMMARY_LEN}-byte limit",
                bytes.len()
            )));
        }
        let text = bytes.trim_ascii_end();
        let at = text
            .windows(TRAILER.len())
            .rposition(|w| w == TRAILER)
            .ok_or_else(|| refuse("no \"crc32c\" at its end".into()))?;
        let (body, tail) = text.split_at(at);
        let digits = tail
            .get(TRAILER.len()..tail.len().saturating_sub(1))
            .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit) && tail.ends_with(b"}"))
            .ok_or_else(|| refuse("\"crc32c\" is not its last member".into()))?;
        let stored: Option<u32> = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok());
        let actual = crc32c::crc32c(body);
        if stored != Some(actual) {
            return Err(refuse(format!(
                "its CRC-32C is {actual}, its trailer says {}: damaged or edited",
                String::from_utf8_lossy(digits)
            )));
        }
        // Only the checked body is parsed (a closing brace ends it): the trailer is not a field.
        let mut object = body.to_vec();
        object.push(b'}');
        let summary: Summary =
            serde_json::from_slice(&object).map_err(|e| refuse(format!("not a summary: {e}")))?;
        if summary.format != SUMMARY_FORMAT_NAME {
            return Err(refuse(format!(
                "format is {:?}, not {SUMMARY_FORMAT_NAME:?}",
                summary.format
            )));
        }
        if summary.format_version == 0 || summary.format_version > SUMMARY_VERSION {
            return Err(refuse(format!(
                "format_version {} is not one this waypoint reads (1 to {SUMMARY_VERSION})",
                summary.format_version
            )));
        }
        if summary.record_len > MAX_RECORD_LEN {
            return Err(refuse(format!(
                "record_len {} is larger than any record",
                summary.record_len
            )));
        }
        Ok(summary)
    }

    /// The exact bytes to write next to the record `record_bytes`, after the reader's own check
    /// of them: they parse ([`Self::from_json`]) back to this very summary, which is the one
    /// [`Self::of`] makes of the record. `None` (with the reason) when they would not: the
    /// checkpoint is then committed without a summary, which every reader handles.
    pub fn committed_bytes(
        record: &CommitRecord,
        record_bytes: &[u8],
        path: &Path,
    ) -> std::result::Result<Vec<u8>, String> {
        let summary = Summary::of(record, record_bytes);
        let bytes = summary.to_json();
        match Summary::from_json(&bytes, path) {
            Ok(back) if back == summary => Ok(bytes),
            Ok(_) => Err("it does not read back as written".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
#[path = "summary_tests.rs"]
mod tests;
