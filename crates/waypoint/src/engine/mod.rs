//! The engine: moves tensor bytes between the caller's buffers and storage. It owns the save
//! (layout, streaming parallel writes, checksums, commit) and the load (validation, checksums,
//! subsets, regions, in-place and zero-copy). It decides nothing about *when* to save or *what* to
//! keep: that is the policy's job.
//!
//! Files by job: `save/` (plan, write, the single-rank and the multi-rank protocols), `load/`
//! (open, read, verify), `background.rs` (staging and background jobs), `queue.rs` (the bounded
//! queue of background saves a run holds), `deletions.rs` (deleting checkpoints).

mod background;
mod deletions;
mod load;
mod pool;
mod queue;
mod region;
mod save;
mod tensors;

pub(crate) use background::{JobOutcome, JobResult, JobSave, run_saves};
pub(crate) use deletions::Deleted;
pub use deletions::delete_checkpoint;
pub use load::{CheckpointReader, LoadOptions, VerifyReport};
pub(crate) use queue::{Admission, Finished, SaveQueue};
pub use save::{MIN_BLOCK_SIZE, SaveHistory, SaveOptions, SaveReport};
pub use tensors::{RegionSlot, SinkSlot, Tensor, TensorData, TensorRef, TensorSink, TensorSource};

/// The byte runs copying a box (`reg_off`, `reg_sizes`) out of a stored box (`chunk_off`,
/// `chunk_sizes`) of elements of `bits` bits, for sources outside the engine's own reader.
pub(crate) fn region_runs(
    bits: u64,
    chunk_off: &[u64],
    chunk_sizes: &[u64],
    reg_off: &[u64],
    reg_sizes: &[u64],
) -> std::result::Result<Vec<region::Run>, String> {
    region::chunk_runs(bits, chunk_off, chunk_sizes, reg_off, reg_sizes)
        .map_err(|_| "the region starts or ends inside a byte of a sub-byte dtype".to_owned())
}

use crate::dist::{SharedCoordinator, SingleProcess};
use crate::error::Result;
use crate::format::{RECORD_FILE, WEIGHTS_DIR};
use crate::storage::{SharedStorage, StoragePath};

/// What the commit record says about a checkpoint besides its tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointMeta {
    /// The global step.
    pub step: u64,
    /// The epoch.
    pub epoch: u64,
    /// waypoint's own reserved trainer-state slot (policy, run facts, pending deletes, loggers).
    pub waypoint: crate::format::Reserved,
    /// Files written under `<ckpt>/context/` (file name → bytes), inside the same commit: the
    /// run's configuration (`io.json`, `model.yaml`).
    pub context: Vec<(String, Vec<u8>)>,
}

impl CheckpointMeta {
    /// Metadata for a checkpoint at `step` in epoch 0.
    pub fn at_step(step: u64) -> Self {
        CheckpointMeta {
            step,
            ..Default::default()
        }
    }
}

/// Saves and opens checkpoints on one storage.
///
/// A checkpoint is a directory `<dir>/weights/` holding shard files and the commit record
/// `metadata.json`; see docs/FORMAT.md. Saving is atomic: the directory appears complete or not
/// at all.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    storage: SharedStorage,
    options: SaveOptions,
    coordinator: SharedCoordinator,
}

impl Checkpointer {
    /// A checkpointer with default [`SaveOptions`].
    pub fn new(storage: SharedStorage) -> Self {
        Checkpointer {
            storage,
            options: SaveOptions::default(),
            coordinator: std::sync::Arc::new(SingleProcess),
        }
    }

    /// Saves together with the other ranks of `coordinator`: every rank calls
    /// [`Checkpointer::save`] for the same `dir` with its own tensors (sharded chunks, and
    /// replicated tensors, which are written once), and rank 0 commits once all have written.
    /// Every rank returns the same outcome.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use waypoint::dist::{Coordinator, ThreadGroup};
    /// use waypoint::storage::{FsStorage, MemoryFs, StoragePath};
    /// use waypoint::{CheckpointMeta, Checkpointer, Dtype, TensorRef};
    ///
    /// let storage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    /// let dir = StoragePath::new("step-1").unwrap();
    /// std::thread::scope(|s| {
    ///     for group in ThreadGroup::new(2) {
    ///         let (storage, dir) = (storage.clone(), dir.clone());
    ///         s.spawn(move || {
    ///             let rank = group.rank();
    ///             let rows = [rank as u8; 4]; // this rank's two rows of a 4x2 tensor
    ///             let mut chunk = TensorRef::whole("w", Dtype::U8, vec![2, 2], &rows);
    ///             chunk.global_shape = vec![4, 2];
    ///             chunk.offsets = vec![2 * rank, 0];
    ///             let checkpointer = Checkpointer::new(storage).with_coordinator(Arc::new(group));
    ///             checkpointer.save(&dir, &CheckpointMeta::at_step(1), &vec![chunk], &()).unwrap();
    ///         });
    ///     }
    /// });
    /// let reader = Checkpointer::new(storage).open(&dir).unwrap();
    /// let w = reader.load_tensor("w", &Default::default()).unwrap();
    /// assert_eq!(w.data, [0, 0, 0, 0, 1, 1, 1, 1]);
    /// assert_eq!(reader.record().world_size, 2);
    /// ```
    pub fn with_coordinator(mut self, coordinator: SharedCoordinator) -> Self {
        self.coordinator = coordinator;
        self
    }

    /// The coordinator (a single process unless set).
    pub fn coordinator(&self) -> &SharedCoordinator {
        &self.coordinator
    }

    /// Replaces the save options.
    pub fn with_options(mut self, options: SaveOptions) -> Self {
        self.options = options;
        self
    }

    /// The storage.
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// The save options.
    pub fn options(&self) -> &SaveOptions {
        &self.options
    }

    /// Saves `tensors` and the caller's `user_state` as the checkpoint `dir`, which must not exist.
    /// Non-finite floats in the state are kept (see [`crate::format::user_state_to_value`]).
    ///
    /// Tensor bytes are written straight from the caller's buffers by a pool of writer threads;
    /// the extra memory is the headers, the checksums and the commit record, whatever the state
    /// size. On error nothing is visible under `dir` and the temporaries are removed.
    pub fn save<S: serde::Serialize + ?Sized>(
        &self,
        dir: &StoragePath,
        meta: &CheckpointMeta,
        tensors: &dyn TensorSource,
        user_state: &S,
    ) -> Result<SaveReport> {
        let described = self.storage.describe(dir);
        let user = crate::format::user_state_to_value(user_state).map_err(|source| {
            crate::Error::TrainerState {
                path: described,
                source,
            }
        })?;
        save::save(
            self.storage.as_ref(),
            dir,
            meta,
            &tensors.tensors(),
            user,
            &self.options,
            self.coordinator.as_ref(),
            false,
        )
    }

    /// Opens the committed checkpoint `dir`: reads and validates its commit record.
    pub fn open(&self, dir: &StoragePath) -> Result<CheckpointReader> {
        CheckpointReader::open(self.storage.clone(), dir.clone())
    }

    /// Checks everything about the checkpoint `dir`: the commit record, the `weights/` listing
    /// (missing, resized, unexpected or linked files), every shard header and every block
    /// checksum. Problems are collected, not returned at the first; an `Err` means verification
    /// could not start (no valid commit record). `progress` receives the data bytes checked so far
    /// (out of `record.total_bytes()`).
    pub fn verify(&self, dir: &StoragePath, progress: &mut dyn FnMut(u64)) -> Result<VerifyReport> {
        let (reader, mut problems) =
            CheckpointReader::open_lenient(self.storage.clone(), dir.clone())?;
        let (more, bytes_checked) = reader.verify_with_progress(progress);
        problems.extend(more);
        Ok(VerifyReport {
            record: reader.into_record(),
            problems,
            bytes_checked,
        })
    }

    /// Removes the temporaries of crashed saves directly under `parent`; returns their names.
    pub fn cleanup_temporaries(&self, parent: &StoragePath) -> Result<Vec<String>> {
        self.storage.cleanup_temporaries(parent)
    }
}

/// The path of the commit record of checkpoint `dir`.
pub(crate) fn record_path(dir: &StoragePath) -> Result<StoragePath> {
    dir.join(WEIGHTS_DIR)?.join(RECORD_FILE)
}
