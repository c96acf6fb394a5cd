//! A checkpoint to read tensors from, whichever format it is in: a waypoint checkpoint (through
//! `CheckpointReader`) or a torch DCP directory (through `DcpReader`). `convert` and `export` read
//! through it one tensor (or chunk) at a time.

use crate::cli::CheckpointLocation;
use crate::dcp_show::is_dcp;
use anyhow::Context;
use std::path::Path;
use waypoint::dcp::DcpReader;
use waypoint::{CheckpointReader, Checkpointer, Dtype, LoadOptions};

/// An open source checkpoint.
pub enum Source {
    /// A waypoint checkpoint.
    Waypoint(Box<CheckpointReader>),
    /// A torch distributed checkpoint.
    Dcp(Box<DcpReader>),
}

/// One stored piece of a tensor: the box it covers and the index of the file that holds it.
pub struct Piece {
    /// The box's offsets.
    pub offsets: Vec<u64>,
    /// The box's sizes.
    pub sizes: Vec<u64>,
    /// Which file of the source holds it (files numbered in name order).
    pub file: usize,
}

/// A tensor of the source: its name, dtype, global shape and stored pieces.
pub struct SourceTensor {
    /// The name.
    pub name: String,
    /// The element type.
    pub dtype: Dtype,
    /// The global shape.
    pub shape: Vec<u64>,
    /// The stored pieces.
    pub pieces: Vec<Piece>,
}

impl Source {
    /// Opens `path`: a DCP directory when it holds `.metadata` (or `weights/.metadata`), a
    /// waypoint checkpoint otherwise.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if is_dcp(path) {
            let reader = DcpReader::open(path).with_context(|| {
                format!("{} is not a readable torch DCP checkpoint", path.display())
            })?;
            return Ok(Source::Dcp(Box::new(reader)));
        }
        let location = CheckpointLocation::resolve(path)?;
        let storage = waypoint::storage::open_dir(&location.root)?;
        let reader = Checkpointer::new(storage)
            .open(&location.dir)
            .with_context(|| format!("{} is not a valid checkpoint", location.path.display()))?;
        Ok(Source::Waypoint(Box::new(reader)))
    }

    /// Every tensor, in name order.
    pub fn tensors(&self) -> Vec<SourceTensor> {
        match self {
            Source::Waypoint(r) => {
                let files: Vec<&String> = r.record().files.keys().collect();
                r.record()
                    .tensors
                    .iter()
                    .map(|(name, t)| SourceTensor {
                        name: name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        pieces: t
                            .chunks
                            .iter()
                            .map(|c| Piece {
                                offsets: c.offsets.clone(),
                                sizes: c.sizes.clone(),
                                file: files.iter().position(|f| **f == c.file).unwrap_or(0),
                            })
                            .collect(),
                    })
                    .collect()
            }
            Source::Dcp(r) => {
                let meta = r.metadata();
                let mut files: Vec<&str> = meta.items.iter().map(|i| i.file.as_str()).collect();
                files.sort_unstable();
                files.dedup();
                meta.tensors
                    .iter()
                    .map(|(name, t)| SourceTensor {
                        name: name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        pieces: t
                            .chunks
                            .iter()
                            .map(|c| Piece {
                                offsets: c.offsets.clone(),
                                sizes: c.sizes.clone(),
                                file: meta
                                    .item(name, Some(&c.offsets))
                                    .and_then(|i| files.iter().position(|f| *f == i.file))
                                    .unwrap_or(0),
                            })
                            .collect(),
                    })
                    .collect()
            }
        }
    }

    /// The box `offsets`/`sizes` of tensor `name`, row-major little-endian bytes.
    pub fn region(&self, name: &str, offsets: &[u64], sizes: &[u64]) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Waypoint(r) => {
                let entry = r
                    .record()
                    .tensors
                    .get(name)
                    .with_context(|| format!("no tensor {name:?}"))?;
                let bytes = waypoint::format::element_count(sizes)
                    .and_then(|n| entry.dtype.byte_len(n))
                    .and_then(|b| usize::try_from(b).ok())
                    .with_context(|| format!("tensor {name:?}: the region is too large"))?;
                let mut out = vec![0u8; bytes];
                r.read_region(name, offsets, sizes, &mut out, &LoadOptions::default())?;
                Ok(out)
            }
            Source::Dcp(r) => Ok(r.load_region(name, offsets, sizes)?.data),
        }
    }

    /// The source's non-tensor state as JSON: a waypoint checkpoint's trainer state, or a DCP
    /// checkpoint's objects by name (and `common.pt` under `"common.pt"`, when present).
    pub fn state(&self) -> anyhow::Result<serde_json::Value> {
        match self {
            Source::Waypoint(r) => Ok(r.user_state::<serde_json::Value>()?),
            Source::Dcp(r) => {
                let mut map = serde_json::Map::new();
                for fqn in &r.metadata().objects {
                    map.insert(fqn.clone(), r.load_object(fqn)?);
                }
                if let Some(common) = r.common()? {
                    map.insert("common.pt".into(), common);
                }
                Ok(serde_json::Value::Object(map))
            }
        }
    }
}
