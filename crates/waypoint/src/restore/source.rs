//! Restore sources: where another run's tensors come from ([`RestoreSource`]); `open.rs`
//! recognises what a path holds. A waypoint checkpoint (local or an
//! object-store URL) is read through the engine's [`CheckpointReader`]; plain safetensors files
//! and Hugging Face directories through `safetensors.rs`; torch DCP and NeMo directories through
//! `dcp.rs`.
//!
//! A new kind of source is one more implementation of the trait and
//! one more arm in `open.rs`'s `open_source`. It must not decide which tensors are loaded or how names map
//! (the caller does, in `mod.rs`), and never writes.

use crate::engine::{CheckpointReader, Checkpointer, LoadOptions, RegionSlot, SinkSlot};
use crate::error::{Error, Result};
use crate::format::{CONTEXT_DIR, Dtype};
use crate::storage::{EntryKind, SharedStorage, StoragePath, open_dir, read_to_vec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest `context/` file a restore copies (a tokenizer, a configuration).
pub const MAX_CONTEXT_FILE: u64 = 256 << 20;

/// A tensor a source holds: its element type and global shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Global shape.
    pub shape: Vec<u64>,
}

/// The files directly under a local `context/` directory (name, bytes), sorted by name; none when
/// `dir` is `None` or absent. Hidden files, sub-directories and names that are not UTF-8 are
/// skipped; a file over [`MAX_CONTEXT_FILE`] is an error naming `knob`. Shared by the local
/// sources (DCP/NeMo, safetensors).
pub(super) fn read_local_context(
    dir: Option<&Path>,
    knob: &'static str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        if !meta.is_file() || name.starts_with('.') {
            continue;
        }
        if meta.len() > MAX_CONTEXT_FILE {
            return Err(Error::InvalidArgument {
                name: knob,
                reason: format!(
                    "{} is {} bytes, more than the {MAX_CONTEXT_FILE}-byte limit",
                    entry.path().display(),
                    meta.len()
                ),
            });
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| Error::io("read", entry.path(), e))?;
        files.push((name, bytes));
    }
    files.sort();
    Ok(files)
}

/// Where a restore's tensors come from: another run's checkpoint, a safetensors file, a Hugging
/// Face directory. Names are the source's own; the caller maps them.
pub trait RestoreSource: std::fmt::Debug + Send + Sync {
    /// Where it is, for messages and the report.
    fn location(&self) -> PathBuf;
    /// Every tensor it holds, by its name in the source.
    fn tensors(&self) -> &BTreeMap<String, SourceTensor>;
    /// Fills whole tensors; each slot names a tensor of the source whose dtype and shape the
    /// caller has checked.
    fn load(&self, slots: &mut Vec<SinkSlot<'_>>) -> Result<()>;
    /// Fills regions of tensors (a rank's shards).
    fn load_regions(&self, slots: &mut [RegionSlot<'_>]) -> Result<()>;
    /// The files directly under the source's `context/` (name, bytes); none when it has none.
    fn context_files(&self) -> Result<Vec<(String, Vec<u8>)>>;
}

/// A committed waypoint checkpoint of another run, local or on an object store.
#[derive(Debug)]
pub struct WaypointSource {
    path: PathBuf,
    storage: SharedStorage,
    dir: StoragePath,
    reader: CheckpointReader,
    tensors: BTreeMap<String, SourceTensor>,
}

impl WaypointSource {
    /// Opens the checkpoint directory `path` (its record validated, as every reader does).
    pub fn open(path: &Path) -> Result<Self> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(Error::InvalidArgument {
                name: "restore_config.path",
                reason: format!("{} is not a checkpoint directory", path.display()),
            });
        };
        let storage = open_dir(parent)?;
        let dir = StoragePath::new(name)?;
        let reader = Checkpointer::new(storage.clone()).open(&dir)?;
        let tensors = reader
            .record()
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
        Ok(WaypointSource {
            path: path.to_path_buf(),
            storage,
            dir,
            reader,
            tensors,
        })
    }
}

impl RestoreSource for WaypointSource {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn tensors(&self) -> &BTreeMap<String, SourceTensor> {
        &self.tensors
    }

    fn load(&self, slots: &mut Vec<SinkSlot<'_>>) -> Result<()> {
        self.reader.load_into(slots, &LoadOptions::default())
    }

    fn load_regions(&self, slots: &mut [RegionSlot<'_>]) -> Result<()> {
        self.reader.load_regions(slots, &LoadOptions::default())
    }

    fn context_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let context = self.dir.join(CONTEXT_DIR)?;
        let entries = match self.storage.list(&context) {
            Ok(entries) => entries,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries {
            if entry.kind != EntryKind::File || entry.name.starts_with('.') {
                continue;
            }
            let path = context.join(&entry.name)?;
            let bytes = read_to_vec(self.storage.as_ref(), &path, MAX_CONTEXT_FILE)?;
            files.push((entry.name, bytes));
        }
        Ok(files)
    }
}
