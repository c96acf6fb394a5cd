//! The reader's arm for a torch distributed checkpoint (a DCP directory, or a NeMo 2.0 checkpoint
//! holding `weights/.metadata`) on a local disk, so that [`super::CheckpointReader`]'s callers
//! need not care which format they read. The directory is opened by [`DcpReader`] (the safe
//! pickle reader: nothing is executed); the reader's record is *described* from `.metadata`
//! (tensors and their chunks, each chunk's file and item range, the `.distcp` files with their
//! sizes and ranks, the objects and `common.pt` as the trainer state, the step from an object
//! `global_step`/`step`); loads go through `DcpReader` (every item sliced from its file, its
//! CRC-32 checked unless the caller opts out) and are copied into the caller's buffers.
//!
//! The described record has no block checksums (DCP has none: its items carry zip CRC-32s) and
//! `format` [`DCP_FORMAT`]. It owns that description and the dispatch of reads; it must not read
//! waypoint's own files nor plan waypoint regions ([`super::read`]).

use crate::dcp::{DcpReader, is_dcp_dir};
use crate::error::{Error, Result};
use crate::format::{
    ChunkEntry, CommitRecord, DEFAULT_BLOCK_SIZE, FileEntry, TensorEntry, TrainerState,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` of a record described from a torch distributed checkpoint.
pub const DCP_FORMAT: &str = "torch.distributed.checkpoint";

/// An open DCP checkpoint: readers with and without the data CRC-32 check.
pub(super) struct Dcp {
    checked: DcpReader,
    unchecked: DcpReader,
}

impl Dcp {
    /// Opens `dir` when it is a DCP directory (or holds `weights/.metadata`) with no waypoint
    /// record; `Ok(None)` when it is not one.
    pub(super) fn open(dir: &Path) -> Result<Option<(Self, CommitRecord)>> {
        let record = dir
            .join(crate::format::WEIGHTS_DIR)
            .join(crate::format::RECORD_FILE);
        if is_dcp_dir(dir).is_none() || record.exists() {
            return Ok(None);
        }
        let checked = DcpReader::open(dir)?;
        let record = describe(&checked)?;
        let unchecked = checked.clone().with_checksums(false);
        Ok(Some((Dcp { checked, unchecked }, record)))
    }

    /// Reads the box `offsets`/`sizes` of `name` into `out` (its exact byte size, checked by the
    /// caller).
    pub(super) fn read_region(
        &self,
        name: &str,
        offsets: &[u64],
        sizes: &[u64],
        out: &mut [u8],
        verify: bool,
    ) -> Result<()> {
        let reader = if verify {
            &self.checked
        } else {
            &self.unchecked
        };
        let tensor = reader.load_region(name, offsets, sizes)?;
        if tensor.data.len() != out.len() {
            return Err(Error::tensor(
                name,
                format!(
                    "read {} bytes for a region of {} bytes",
                    tensor.data.len(),
                    out.len()
                ),
            ));
        }
        out.copy_from_slice(&tensor.data);
        Ok(())
    }

    /// Loads the whole tensor `name` without a further copy.
    pub(super) fn load_tensor(&self, name: &str, verify: bool) -> Result<crate::engine::Tensor> {
        match verify {
            true => self.checked.load_tensor(name),
            false => self.unchecked.load_tensor(name),
        }
    }
}

/// The record of a DCP checkpoint, described from its metadata (see the module comment).
fn describe(reader: &DcpReader) -> Result<CommitRecord> {
    let meta = reader.metadata();
    let mut files = BTreeMap::new();
    for item in &meta.items {
        if files.contains_key(&item.file) {
            continue;
        }
        let path = reader.dir().join(&item.file);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let rank = distcp_rank(&item.file).unwrap_or(0);
        let entry = FileEntry {
            rank,
            size,
            header_len: 0,
            header_crc32c: 0,
            carried_from: None,
        };
        files.insert(item.file.clone(), entry);
    }
    let mut tensors = BTreeMap::new();
    for (name, t) in &meta.tensors {
        let mut chunks = Vec::with_capacity(t.chunks.len());
        for c in &t.chunks {
            let item = meta
                .item(name, Some(&c.offsets))
                .ok_or_else(|| Error::Dcp {
                    path: reader.dir().join(".metadata"),
                    reason: format!("tensor {name:?}: no item for its chunk at {:?}", c.offsets),
                })?;
            chunks.push(ChunkEntry {
                offsets: c.offsets.clone(),
                sizes: c.sizes.clone(),
                file: item.file.clone(),
                byte_range: [item.offset, item.offset.saturating_add(item.length)],
                block_crc32c: Vec::new(),
            });
        }
        let entry = TensorEntry {
            dtype: t.dtype,
            shape: t.shape.clone(),
            chunks,
        };
        tensors.insert(name.clone(), entry);
    }
    let mut user = serde_json::Map::new();
    for fqn in &meta.objects {
        user.insert(fqn.clone(), reader.load_object(fqn)?);
    }
    if let Some(common) = reader.common()? {
        user.insert("common.pt".into(), common);
    }
    let user = Value::Object(user);
    let number = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| user.get(*k).and_then(Value::as_u64))
    };
    let step = number(&["global_step", "step"])
        .or_else(|| user.get("common.pt")?.get("global_step")?.as_u64())
        .unwrap_or(0);
    let epoch = number(&["epoch"]).unwrap_or(0);
    let world_size = files.values().map(|f| f.rank + 1).max().unwrap_or(1);
    Ok(CommitRecord {
        format: DCP_FORMAT.to_owned(),
        format_version: 0,
        producer: meta
            .version
            .as_ref()
            .map_or_else(|| DCP_FORMAT.to_owned(), |v| format!("{DCP_FORMAT} {v}")),
        step,
        epoch,
        world_size,
        block_size: DEFAULT_BLOCK_SIZE,
        files,
        tensors,
        trainer_state: TrainerState {
            user,
            waypoint: Default::default(),
        },
    })
}

/// The rank in a `__<rank>_<i>.distcp` file name.
fn distcp_rank(file: &str) -> Option<u64> {
    let rest = file.strip_prefix("__")?.strip_suffix(".distcp")?;
    rest.split_once('_')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::distcp_rank;

    #[test]
    fn ranks_come_from_distcp_names() {
        for (name, rank) in [
            ("__0_0.distcp", Some(0)),
            ("__12_3.distcp", Some(12)),
            ("__x_0.distcp", None),
            ("0_0.distcp", None),
            ("__1_0.safetensors", None),
        ] {
            assert_eq!(distcp_rank(name), rank, "{name}");
        }
    }
}
