//! Loading a checkpoint: the commit record is read and validated first; the `weights/` listing is
//! checked against it; each shard's header is verified (CRC-32C and agreement with the record)
//! when first used; tensor bytes are read in parallel straight into their destination and their
//! block checksums verified (unless the caller opts out). Whole tensors, subsets, regions,
//! caller-owned buffers and zero-copy views all go through the same path.
//!
//! This module owns the reader, its options and the public loading API; the steps live apart:
//! [`open`] (record, listing, shard headers), [`read`] (region planning and the parallel reads)
//! and [`verify`] (checksums, [`VerifyReport`]). Nothing here writes to storage.

use crate::engine::tensors::{RegionSlot, Tensor, TensorSink};
use crate::error::{Error, Result};
use crate::format::{CommitRecord, TensorEntry, WEIGHTS_DIR, element_count};
use crate::storage::{ReadHandle, SharedStorage, StoragePath};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

mod open;
mod read;
mod verify;

pub use verify::VerifyReport;

use read::{OutPtr, plan_region, row_ordered};

/// How a load reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Verify each block's CRC-32C (default `true`). Turning it off is an explicit opt-out for
    /// speed on trusted storage; headers are verified regardless.
    pub verify_checksums: bool,
    /// Reader threads; 0 picks the number of CPUs, at most 8.
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify_checksums: true,
            threads: 0,
        }
    }
}

/// An opened, committed checkpoint.
pub struct CheckpointReader {
    storage: SharedStorage,
    dir: StoragePath,
    record: CommitRecord,
    record_path: PathBuf,
    handles: BTreeMap<String, OnceLock<Box<dyn ReadHandle>>>,
    /// Shard files found in the listing with the recorded size.
    present: BTreeSet<String>,
    /// Per shard file, the chunks the record places there: (tensor, chunk index).
    by_file: HashMap<String, Vec<(Arc<str>, usize)>>,
    /// The tensors whose chunks are in row order (`read::row_ordered`): their regions are
    /// planned by binary search.
    row_ordered: BTreeSet<String>,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("dir", &self.dir)
            .field("step", &self.record.step)
            .finish_non_exhaustive()
    }
}

impl CheckpointReader {
    /// The validated commit record.
    pub fn record(&self) -> &CommitRecord {
        &self.record
    }

    /// The validated commit record, without a copy (a record may be up to 1 GiB).
    pub(crate) fn into_record(self) -> CommitRecord {
        self.record
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &StoragePath {
        &self.dir
    }

    /// The caller's trainer state, deserialised (non-finite floats included: see
    /// [`crate::format::user_state_from_value`]).
    pub fn user_state<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let user = self.record.trainer_state.user.clone();
        crate::format::user_state_from_value(user).map_err(|source| Error::TrainerState {
            path: self.record_path.clone(),
            source,
        })
    }

    /// The tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.record.tensors.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.record
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                tensor: name.to_owned(),
                path: self.storage.describe(&self.dir),
            })
    }

    fn file_path(&self, file: &str) -> PathBuf {
        match self.dir.join(WEIGHTS_DIR).and_then(|w| w.join(file)) {
            Ok(p) => self.storage.describe(&p),
            Err(_) => PathBuf::from(file),
        }
    }

    /// Loads one whole tensor.
    pub fn load_tensor(&self, name: &str, options: &LoadOptions) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let mut data = zeroed(name, tensor_bytes(name, entry)?)?;
        let offsets = vec![0; entry.shape.len()];
        self.read_region(name, &offsets, &entry.shape, &mut data, options)?;
        Ok(Tensor {
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            data,
        })
    }

    /// Loads every tensor.
    pub fn load_all(&self, options: &LoadOptions) -> Result<BTreeMap<String, Tensor>> {
        let names: Vec<&str> = self.tensor_names().collect();
        self.load_subset(&names, options)
    }

    /// Loads the named tensors (each must exist).
    pub fn load_subset(
        &self,
        names: &[&str],
        options: &LoadOptions,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for &name in names {
            let entry = self.entry(name)?;
            out.insert(
                name.to_owned(),
                Tensor {
                    dtype: entry.dtype,
                    shape: entry.shape.clone(),
                    data: zeroed(name, tensor_bytes(name, entry)?)?,
                },
            );
        }
        self.load_into(&mut out, options)?;
        Ok(out)
    }

    /// Loads into buffers the caller owns. Every slot the sink offers must name a tensor of the
    /// checkpoint with the same dtype and shape.
    pub fn load_into(&self, sink: &mut dyn TensorSink, options: &LoadOptions) -> Result<()> {
        let mut works = Vec::new();
        for slot in sink.slots() {
            let entry = self.entry(slot.name)?;
            if entry.dtype != slot.dtype || entry.shape != slot.shape {
                return Err(Error::tensor(
                    slot.name,
                    format!(
                        "the checkpoint holds {} {:?}, the buffer expects {} {:?}",
                        entry.dtype, entry.shape, slot.dtype, slot.shape
                    ),
                ));
            }
            let want = tensor_bytes(slot.name, entry)?;
            if slot.data.len() as u64 != want {
                return Err(Error::tensor(
                    slot.name,
                    format!("buffer has {} bytes, the tensor {want}", slot.data.len()),
                ));
            }
            let name = self
                .record
                .tensors
                .get_key_value(slot.name)
                .map_or("", |(k, _)| k.as_str());
            let offsets = vec![0; entry.shape.len()];
            plan_region(
                name,
                entry,
                self.row_ordered.contains(name),
                &offsets,
                &entry.shape,
                OutPtr::new(slot.data),
                self.record.block_size,
                &mut works,
            )?;
        }
        self.run(works, options)
    }

    /// Loads regions of tensors into buffers the caller owns (a rank's shards, resharded from
    /// whatever partition the checkpoint was saved with). Each slot's dtype and global shape
    /// must match the checkpoint; only the blocks overlapping each region are read.
    pub fn load_regions(&self, slots: &mut [RegionSlot<'_>], options: &LoadOptions) -> Result<()> {
        for slot in slots.iter_mut() {
            let entry = self.entry(slot.name)?;
            if entry.dtype != slot.dtype || entry.shape != slot.global_shape {
                return Err(Error::tensor(
                    slot.name,
                    format!(
                        "the checkpoint holds {} {:?}, the buffer expects a region of {} {:?}",
                        entry.dtype, entry.shape, slot.dtype, slot.global_shape
                    ),
                ));
            }
            self.read_region(slot.name, slot.offsets, slot.shape, slot.data, options)?;
        }
        Ok(())
    }

    /// Reads the box `offsets`/`sizes` of tensor `name` into `out` (row-major, exactly the box's
    /// byte size). Only the blocks overlapping the box are read and verified.
    pub fn read_region(
        &self,
        name: &str,
        offsets: &[u64],
        sizes: &[u64],
        out: &mut [u8],
        options: &LoadOptions,
    ) -> Result<()> {
        let entry = self.entry(name)?;
        if offsets.len() != entry.shape.len() || sizes.len() != entry.shape.len() {
            return Err(Error::tensor(
                name,
                format!("region needs {} dimensions", entry.shape.len()),
            ));
        }
        for d in 0..offsets.len() {
            if offsets[d]
                .checked_add(sizes[d])
                .is_none_or(|e| e > entry.shape[d])
            {
                return Err(Error::tensor(
                    name,
                    format!(
                        "region {offsets:?}+{sizes:?} exceeds shape {:?}",
                        entry.shape
                    ),
                ));
            }
        }
        let want = element_count(sizes)
            .and_then(|n| entry.dtype.byte_len(n))
            .ok_or_else(|| Error::tensor(name, "the region is not a whole number of bytes"))?;
        if out.len() as u64 != want {
            return Err(Error::tensor(
                name,
                format!("buffer has {} bytes, the region {want}", out.len()),
            ));
        }
        let mut works = Vec::new();
        plan_region(
            name,
            entry,
            self.row_ordered.contains(name),
            offsets,
            sizes,
            OutPtr::new(out),
            self.record.block_size,
            &mut works,
        )?;
        self.run(works, options)
    }

    /// A tensor's bytes without a copy when the storage maps files and the tensor is one chunk;
    /// otherwise an owned copy. Checksums are verified as `options` says.
    pub fn view(&self, name: &str, options: &LoadOptions) -> Result<Cow<'_, [u8]>> {
        let entry = self.entry(name)?;
        if let [chunk] = entry.chunks.as_slice()
            && let Some(map) = self.handle(&chunk.file)?.mapped()
        {
            let [start, end] = chunk.byte_range;
            let bytes = map.get(start as usize..end as usize).ok_or_else(|| {
                Error::shard(
                    self.file_path(&chunk.file),
                    "mapping is shorter than the record says",
                )
            })?;
            if options.verify_checksums {
                for (b, block) in bytes.chunks(self.record.block_size as usize).enumerate() {
                    self.check_block(name, chunk, b, block)?;
                }
            }
            return Ok(Cow::Borrowed(bytes));
        }
        Ok(Cow::Owned(self.load_tensor(name, options)?.data))
    }
}

/// A zeroed buffer for a tensor of `bytes`, or an error naming the tensor when the memory cannot
/// be had (a record may claim a tensor of any size a sparse shard can back).
fn zeroed(name: &str, bytes: u64) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let reserved = usize::try_from(bytes)
        .ok()
        .filter(|&len| data.try_reserve_exact(len).is_ok());
    let Some(len) = reserved else {
        return Err(Error::tensor(
            name,
            format!(
                "cannot allocate {bytes} bytes to load it into: load it by regions into \
                 buffers of your own (read_region, load_regions)"
            ),
        ));
    };
    data.resize(len, 0);
    Ok(data)
}

fn tensor_bytes(name: &str, entry: &TensorEntry) -> Result<u64> {
    element_count(&entry.shape)
        .and_then(|n| entry.dtype.byte_len(n))
        .ok_or_else(|| Error::tensor(name, "byte size overflows"))
}
