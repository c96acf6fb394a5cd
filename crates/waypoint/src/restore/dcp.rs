//! A torch distributed checkpoint (DCP) or NeMo 2.0 checkpoint directory as a restore source:
//! [`DcpSource`] over [`DcpReader`] (the safe pickle reader; nothing in the files is executed).
//!
//! It owns only the adaptation (tensor list, whole tensors and regions copied into the caller's
//! buffers, NeMo's `context/` files); it must not parse DCP files itself (that is `crate::dcp`)
//! nor decide names or strictness (the caller does).

use super::source::{RestoreSource, SourceTensor, read_local_context};
use crate::dcp::DcpReader;
use crate::engine::{RegionSlot, SinkSlot};
use crate::error::{Error, Result};
use crate::format::{CONTEXT_DIR, Dtype};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A DCP directory (`.metadata` plus `.distcp` files), or a NeMo checkpoint whose `weights/` is
/// one (its `context/` is then offered to the restore).
#[derive(Debug)]
pub struct DcpSource {
    path: PathBuf,
    reader: DcpReader,
    tensors: BTreeMap<String, SourceTensor>,
    /// `path/context` when `path/weights` held the DCP files (NeMo's layout).
    context: Option<PathBuf>,
}

impl DcpSource {
    /// Opens `path` (a DCP directory, or a NeMo checkpoint with `weights/.metadata`).
    pub fn open(path: &Path) -> Result<Self> {
        let reader = DcpReader::open(path)?;
        let tensors = reader
            .metadata()
            .tensors
            .iter()
            .map(|(name, t)| {
                let tensor = SourceTensor {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                };
                (name.clone(), tensor)
            })
            .collect();
        let context = (reader.dir() != path).then(|| path.join(CONTEXT_DIR));
        Ok(DcpSource {
            path: path.to_path_buf(),
            reader,
            tensors,
            context,
        })
    }

    /// Checks that `name` exists with the dtype and global shape the caller expects.
    fn check(&self, name: &str, dtype: Dtype, shape: &[u64]) -> Result<()> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_owned(),
            path: self.path.clone(),
        })?;
        if t.dtype != dtype || t.shape != shape {
            return Err(Error::tensor(
                name,
                format!(
                    "the DCP checkpoint holds {:?} {:?}, the run expects {dtype:?} {shape:?}",
                    t.dtype, t.shape
                ),
            ));
        }
        Ok(())
    }

    /// Reads the region into `out` (one copy: DCP items are zip archives read into memory).
    fn fill(&self, name: &str, offsets: &[u64], shape: &[u64], out: &mut [u8]) -> Result<()> {
        let tensor = self.reader.load_region(name, offsets, shape)?;
        if tensor.data.len() != out.len() {
            return Err(Error::tensor(
                name,
                format!(
                    "the region holds {} bytes, the run's buffer {}",
                    tensor.data.len(),
                    out.len()
                ),
            ));
        }
        out.copy_from_slice(&tensor.data);
        Ok(())
    }
}

impl RestoreSource for DcpSource {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn tensors(&self) -> &BTreeMap<String, SourceTensor> {
        &self.tensors
    }

    fn load(&self, slots: &mut Vec<SinkSlot<'_>>) -> Result<()> {
        for slot in slots.iter_mut() {
            self.check(slot.name, slot.dtype, slot.shape)?;
            let zeros = vec![0; slot.shape.len()];
            self.fill(slot.name, &zeros, slot.shape, slot.data)?;
        }
        Ok(())
    }

    fn load_regions(&self, slots: &mut [RegionSlot<'_>]) -> Result<()> {
        for slot in slots.iter_mut() {
            self.check(slot.name, slot.dtype, slot.global_shape)?;
            self.fill(slot.name, slot.offsets, slot.shape, slot.data)?;
        }
        Ok(())
    }

    fn context_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        read_local_context(self.context.as_deref(), "restore_config.path")
    }
}
