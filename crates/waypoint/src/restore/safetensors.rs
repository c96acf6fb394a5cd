//! Plain safetensors as a restore source: one `.safetensors` file (as Python's
//! `safetensors.numpy.save_file` or `torch.save_file` writes it), or a Hugging Face model
//! directory, sharded (`model.safetensors.index.json` naming each tensor's file) or not (one
//! `model.safetensors`). Headers are parsed and checked by the format's own parser (every
//! tensor inside its file, the data section tiled exactly); bytes are read with positioned reads
//! straight into the caller's buffers.
//!
//! Read-only. It must not follow the index outside its directory (file names are single
//! components) nor read a tensor whose header does not agree with the index.

use super::source::{RestoreSource, SourceTensor, read_local_context};
use crate::engine::{RegionSlot, SinkSlot};
use crate::error::{Error, Result};
use crate::format::{CONTEXT_DIR, header_len_from_prefix, parse_header};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The index of a sharded Hugging Face model.
pub const HF_INDEX: &str = "model.safetensors.index.json";
/// The one file of an unsharded Hugging Face model.
pub const HF_SINGLE: &str = "model.safetensors";
/// The largest index file read.
const MAX_INDEX_LEN: u64 = 64 << 20;

/// Where one tensor's bytes are.
#[derive(Debug)]
struct Placement {
    file: usize,
    /// Absolute offset of its first byte in the file.
    start: u64,
}

/// One safetensors file, or the shards of a Hugging Face directory.
#[derive(Debug)]
pub struct SafetensorsSource {
    location: PathBuf,
    files: Vec<(PathBuf, File)>,
    tensors: BTreeMap<String, SourceTensor>,
    placements: BTreeMap<String, Placement>,
    context_dir: Option<PathBuf>,
}

/// A file's parsed header.
fn read_header(path: &Path, file: &File) -> Result<crate::format::ParsedHeader> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let mut prefix = [0u8; 8];
    file.read_exact_at(&mut prefix, 0)
        .map_err(|e| Error::io("read safetensors header", path, e))?;
    let header_len = header_len_from_prefix(prefix, len).map_err(|r| Error::shard(path, r))?;
    let mut bytes = vec![0u8; header_len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("read safetensors header", path, e))?;
    parse_header(&bytes, len).map_err(|r| Error::shard(path, r))
}

impl SafetensorsSource {
    fn empty(location: &Path) -> Self {
        SafetensorsSource {
            location: location.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            placements: BTreeMap::new(),
            context_dir: None,
        }
    }

    /// Adds the file at `path`; with `only`, just the tensors the index places there (each must
    /// be in the header).
    fn add_file(&mut self, path: &Path, only: Option<&[&str]>) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let header = read_header(path, &file)?;
        let index = self.files.len();
        let mut take = |name: &str, t: &crate::format::HeaderTensor| {
            let tensor = SourceTensor {
                dtype: t.dtype,
                shape: t.shape.clone(),
            };
            let start = header.header_len + t.data_offsets[0];
            self.tensors.insert(name.to_owned(), tensor);
            self.placements
                .insert(name.to_owned(), Placement { file: index, start });
        };
        match only {
            None => header.tensors.iter().for_each(|(n, t)| take(n, t)),
            Some(names) => {
                for name in names {
                    let t = header.tensors.get(*name).ok_or_else(|| {
                        Error::shard(
                            path,
                            format!("{HF_INDEX} places tensor {name:?} in this file, its header does not hold it"),
                        )
                    })?;
                    take(name, t);
                }
            }
        }
        self.files.push((path.to_path_buf(), file));
        Ok(())
    }

    /// One `.safetensors` file.
    pub fn file(path: &Path) -> Result<Self> {
        let mut source = SafetensorsSource::empty(path);
        source.add_file(path, None)?;
        if let Some(dir) = path.parent().map(|p| p.join(CONTEXT_DIR))
            && path.file_name().and_then(|n| n.to_str()) == Some(HF_SINGLE)
        {
            source.context_dir = Some(dir);
        }
        Ok(source)
    }

    /// A sharded Hugging Face directory: `model.safetensors.index.json`'s `weight_map` names
    /// each tensor's file.
    pub fn hf_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join(HF_INDEX);
        let bad = |reason: String| Error::InvalidArgument {
            name: "restore_config.path",
            reason: format!("{}: {reason}", index_path.display()),
        };
        let len = std::fs::metadata(&index_path)
            .map_err(|e| Error::io("stat", &index_path, e))?
            .len();
        if len > MAX_INDEX_LEN {
            return Err(bad(format!(
                "{len} bytes, more than the {MAX_INDEX_LEN}-byte limit"
            )));
        }
        let text = std::fs::read(&index_path).map_err(|e| Error::io("read", &index_path, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let index: Index = serde_json::from_slice(&text).map_err(|e| {
            bad(format!(
                "not a safetensors index (a weight_map object): {e}"
            ))
        })?;
        let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, file) in &index.weight_map {
            if file.is_empty() || file.contains('/') || file.starts_with('.') {
                return Err(bad(format!(
                    "tensor {tensor:?} is placed in {file:?}: a file name is one component in the index's directory"
                )));
            }
            by_file
                .entry(file.as_str())
                .or_default()
                .push(tensor.as_str());
        }
        let mut source = SafetensorsSource::empty(dir);
        for (file, names) in by_file {
            source.add_file(&dir.join(file), Some(&names))?;
        }
        source.context_dir = Some(dir.join(CONTEXT_DIR));
        Ok(source)
    }

    fn file_of(&self, name: &str) -> Result<(&Path, &File, u64)> {
        let placement = self
            .placements
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                tensor: name.to_owned(),
                path: self.location.clone(),
            })?;
        let (path, file) = &self.files[placement.file];
        Ok((path, file, placement.start))
    }

    fn check(&self, name: &str, dtype: crate::Dtype, shape: &[u64]) -> Result<()> {
        match self.tensors.get(name) {
            Some(t) if t.dtype == dtype && t.shape == shape => Ok(()),
            Some(t) => Err(Error::TensorMismatch {
                tensor: name.to_owned(),
                path: self.location.clone(),
                expected: format!("{dtype} {shape:?}"),
                found: format!("{} {:?}", t.dtype, t.shape),
            }),
            None => Err(Error::MissingTensor {
                tensor: name.to_owned(),
                path: self.location.clone(),
            }),
        }
    }
}

impl RestoreSource for SafetensorsSource {
    fn location(&self) -> PathBuf {
        self.location.clone()
    }

    fn tensors(&self) -> &BTreeMap<String, SourceTensor> {
        &self.tensors
    }

    fn load(&self, slots: &mut Vec<SinkSlot<'_>>) -> Result<()> {
        for slot in slots.iter_mut() {
            self.check(slot.name, slot.dtype, slot.shape)?;
            let (path, file, start) = self.file_of(slot.name)?;
            file.read_exact_at(slot.data, start)
                .map_err(|e| Error::io("read tensor", path, e))?;
        }
        Ok(())
    }

    fn load_regions(&self, slots: &mut [RegionSlot<'_>]) -> Result<()> {
        for slot in slots.iter_mut() {
            self.check(slot.name, slot.dtype, slot.global_shape)?;
            let inside = slot.offsets.len() == slot.global_shape.len()
                && slot.shape.len() == slot.global_shape.len()
                && (slot.offsets.iter().zip(slot.shape).zip(slot.global_shape))
                    .all(|((o, s), g)| o.checked_add(*s).is_some_and(|end| end <= *g));
            let bytes =
                crate::format::element_count(slot.shape).and_then(|n| slot.dtype.byte_len(n));
            if !inside || bytes != Some(slot.data.len() as u64) {
                return Err(Error::tensor(
                    slot.name,
                    format!(
                        "region at {:?} of {:?} does not fit the tensor's {:?} or its {}-byte buffer",
                        slot.offsets,
                        slot.shape,
                        slot.global_shape,
                        slot.data.len()
                    ),
                ));
            }
            let (path, file, start) = self.file_of(slot.name)?;
            let zeros = vec![0; slot.global_shape.len()];
            let runs = crate::engine::region_runs(
                slot.dtype.bits(),
                &zeros,
                slot.global_shape,
                slot.offsets,
                slot.shape,
            )
            .map_err(|reason| Error::tensor(slot.name, reason))?;
            for run in runs {
                let out = usize::try_from(run.dst)
                    .ok()
                    .zip(usize::try_from(run.dst + run.len).ok())
                    .and_then(|(a, b)| slot.data.get_mut(a..b))
                    .ok_or_else(|| {
                        Error::tensor(slot.name, "the region's buffer is smaller than the region")
                    })?;
                file.read_exact_at(out, start + run.src)
                    .map_err(|e| Error::io("read tensor", path, e))?;
            }
        }
        Ok(())
    }

    fn context_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        read_local_context(self.context_dir.as_deref(), "restore_config.load_artifacts")
    }
}
