//! Saving a checkpoint: validate what the caller hands over, lay out the shard files, write tensor
//! bytes straight from the caller's buffers through a pool of writer threads (checksumming as they
//! go), then commit through the storage's transaction. Extra memory is bounded by the number of
//! writer threads times one gather buffer, whatever the state size.
//!
//! This module owns the save's options, its report and the entry point, which picks the protocol:
//! [`single`] for one rank, [`ranks`] for several. The steps they share live apart: [`plan`]
//! (chunks to files, headers, the record), [`mod@write`] (the streaming parallel write) and, for
//! several ranks, [`assign`] (who writes which bytes). The two protocols never import each other.
//! Nothing here decides when to save or what to keep: that is the policy's job.

use crate::dist::Coordinator;
use crate::engine::CheckpointMeta;
use crate::engine::tensors::TensorRef;
use crate::error::{Error, Result};
use crate::format::DEFAULT_BLOCK_SIZE;
use crate::storage::{Storage, StoragePath, Transaction};
use std::collections::BTreeSet;
use std::time::Duration;

pub use incremental::SaveHistory;

mod assign;
mod check;
mod incremental;
mod plan;
mod ranks;
mod single;
mod write;

/// How a save lays out and writes its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    /// Size of the blocks each chunk's CRC-32C covers (default 1 MiB), up to 1 GiB, at least
    /// [`MIN_BLOCK_SIZE`] (4 KiB) for a run. Smaller blocks make partial reads verify less;
    /// larger ones make the record smaller (about 11 bytes per block).
    pub block_size: u64,
    /// A new shard file is started when the current one would grow past this (default 2 GiB).
    /// A single chunk larger than this gets a file of its own.
    pub max_shard_bytes: u64,
    /// Writer threads; 0 picks the number of CPUs, at most 8.
    pub threads: usize,
    /// Incremental saves (default on): a shard file of the previous save (see `history`) whose
    /// tensors are all unchanged is not written again but carried over (a hard link on a local
    /// disk, a server-side copy on an object store), and tensors that do not change are kept in
    /// files apart from those that do. A tensor is unchanged when it is in `frozen`, or when its
    /// block checksums, computed before writing, equal the previous record's (only with
    /// `detect_unchanged`). Each checkpoint stays self-contained; the record names carried files
    /// (`carried_from`, docs/FORMAT.md). Off: every file is written, laid out as before.
    /// Single-rank saves only.
    pub incremental: bool,
    /// Also find unchanged tensors that are not in `frozen` by comparing their block checksums
    /// (CRC-32C) with the previous record's (default off). Opt-in because a checksum is not the
    /// bytes: a changed block whose CRC-32C happens to equal the old one (a chance of 2^-32 per
    /// changed block) would keep the old bytes, and `verify` could not tell. Marking a frozen
    /// base in `frozen` is exact and skips the checksum pass.
    pub detect_unchanged: bool,
    /// Tensors the caller promises are unchanged since the previous save (a frozen base model,
    /// embeddings under LoRA): carried over without checksumming their bytes. A wrong promise
    /// makes a checkpoint whose checksums fail `verify`; unlisted tensors are compared.
    pub frozen: BTreeSet<String>,
    /// The previous committed save, which an incremental save carries files from; clones share
    /// it (leave it as `Default` gives it).
    pub history: SaveHistory,
    /// Write local files around the page cache (`O_DIRECT`, default on) where the file system
    /// allows it: whole 1 MiB parts assembled in page-aligned buffers go straight to the device,
    /// so a save neither fills the page cache with gigabytes of dirty pages nor waits behind
    /// other writers' writeback; the rest (a file's last part) through the page cache. Off:
    /// every byte through the page cache. No effect on other storages.
    pub direct_io: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            max_shard_bytes: 2 << 30,
            threads: 0,
            incremental: true,
            detect_unchanged: false,
            frozen: BTreeSet::new(),
            history: SaveHistory::new(),
            direct_io: true,
        }
    }
}

/// The smallest `block_size` a run accepts (4 KiB, a page: reads are no finer), checked when
/// [`crate::RunBuilder`] or [`crate::ExperimentLogger`] is built. A bare [`crate::Checkpointer`]
/// accepts down to 1 byte (tests exercise many blocks on small tensors that way); readers accept
/// any block size of 1 byte or more.
pub const MIN_BLOCK_SIZE: u64 = 4096;

impl SaveOptions {
    /// Checks the options as a run's knobs: those of every save, and a `block_size` of at least
    /// [`MIN_BLOCK_SIZE`] (below it the commit record grows past a sixth of the data it checks,
    /// about 11 bytes per block).
    pub fn check(&self) -> Result<()> {
        self.validate()?;
        if self.block_size < MIN_BLOCK_SIZE {
            return Err(Error::InvalidArgument {
                name: "block_size",
                reason: format!(
                    "{} is less than 4 KiB ({MIN_BLOCK_SIZE}): smaller blocks make the commit \
                     record large next to the data it checks",
                    self.block_size
                ),
            });
        }
        Ok(())
    }

    /// Checks the options of one save: `block_size` in 1..=1 GiB, `max_shard_bytes` at least 1.
    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidArgument {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.block_size == 0 || self.block_size > 1 << 30 {
            return bad("block_size", "must be between 1 byte and 1 GiB");
        }
        if self.max_shard_bytes == 0 {
            return bad("max_shard_bytes", "must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn thread_count(&self, work: usize) -> usize {
        crate::engine::pool::thread_count(self.threads, work)
    }
}

/// What a save did. With several ranks, the counts are this rank's files and chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The committed checkpoint.
    pub dir: StoragePath,
    /// Its step.
    pub step: u64,
    /// Tensor bytes written.
    pub tensor_bytes: u64,
    /// Bytes written in shard files (headers included).
    pub file_bytes: u64,
    /// Shard files written.
    pub files: usize,
    /// Tensor chunks written.
    pub chunks: usize,
    /// Bytes of buffers the save allocated for gathering small pieces (its memory beyond the
    /// caller's tensors, headers and record excepted).
    pub buffer_bytes: u64,
    /// Shard files carried over from the previous save instead of written (incremental saves).
    pub carried_files: usize,
    /// Their bytes (headers included), part of `file_bytes` but not sent to the storage again.
    pub carried_bytes: u64,
    /// Wall time of the whole save, commit included.
    pub elapsed: Duration,
}

/// Saves `tensors` as checkpoint `dir`: alone when `coordinator` has one rank, otherwise together
/// with the other ranks ([`ranks`]). With `replace`, the commit swaps out what is at `dir`
/// ([`Storage::begin_replace`]); otherwise a `dir` that exists fails the save.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    tensors: &[TensorRef<'_>],
    user: serde_json::Value,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
    replace: bool,
) -> Result<SaveReport> {
    if coordinator.world_size() > 1 {
        return ranks::save(
            storage,
            dir,
            meta,
            tensors,
            user,
            options,
            coordinator,
            replace,
        );
    }
    single::save(storage, dir, meta, tensors, user, options, replace)
}

/// Begins the transaction of a save of `dir`: a new one, or one replacing what is there.
fn begin(storage: &dyn Storage, dir: &StoragePath, replace: bool) -> Result<Box<dyn Transaction>> {
    match replace {
        true => storage.begin_replace(dir),
        false => storage.begin(dir),
    }
}
