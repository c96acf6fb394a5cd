//! A torch distributed checkpoint directory, read: its `.metadata` parsed safely, each item
//! read as a byte range of its `.distcp` file and opened as a `torch.save` archive, tensors
//! assembled from their chunks (whole or any region, whatever the saving ranks were), objects as
//! JSON, and a verify pass that reads everything and lists each problem.
//!
//! It owns reading a local directory; it must not write anything.

use super::archive;
use super::metadata::{self, DcpItem, DcpMetadata, DcpTensor};
use super::pickle::{self, Limits};
use crate::engine::Tensor;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The largest `.metadata` file read.
const MAX_METADATA: u64 = 1 << 30;

/// The directory holding a DCP `.metadata` for `dir`: `dir` itself, or `dir/weights` (a NeMo 2.0
/// checkpoint). `None` when neither has one.
pub fn is_dcp_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("weights")]
        .into_iter()
        .find(|d| d.join(".metadata").is_file())
}

/// An open DCP checkpoint directory.
#[derive(Debug, Clone)]
pub struct DcpReader {
    dir: PathBuf,
    meta: DcpMetadata,
    check_crc: bool,
    /// `(fqn, chunk offsets)` → index in `meta.items`.
    index: HashMap<(String, Option<Vec<u64>>), usize>,
}

/// One problem [`DcpReader::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpProblem {
    /// The tensor or object.
    pub fqn: String,
    /// The error, naming the file.
    pub message: String,
}

fn dcp_err(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
    Error::Dcp {
        path: path.into(),
        reason: reason.into(),
    }
}

impl DcpReader {
    /// Opens `dir` (or `dir/weights`, as NeMo lays it out) and parses its `.metadata` with the
    /// safe pickle reader. Nothing in the file is executed; a global outside the allow-list is an
    /// error naming it.
    pub fn open(dir: &Path) -> Result<Self> {
        let dir = is_dcp_dir(dir).ok_or_else(|| {
            dcp_err(
                dir,
                "no .metadata here or in weights/: not a torch distributed checkpoint",
            )
        })?;
        let path = dir.join(".metadata");
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if len > MAX_METADATA {
            return Err(dcp_err(
                &path,
                format!("{len} bytes is too large for a .metadata"),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let limits = Limits {
            max_input: MAX_METADATA as usize,
            ..Limits::default()
        };
        let parsed = pickle::parse(&bytes, &limits).map_err(|e| dcp_err(&path, e.to_string()))?;
        let meta = metadata::from_pickle(&parsed).map_err(|e| dcp_err(&path, e))?;
        let index = meta
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| ((item.fqn.clone(), item.chunk_offsets.clone()), i))
            .collect();
        Ok(DcpReader {
            dir,
            meta,
            check_crc: true,
            index,
        })
    }

    /// Whether loads check the CRC-32 of each tensor's data (on by default). torch's own reader
    /// never checks it; turning it off skips one pass over the bytes. Every structural check
    /// stays, and [`DcpReader::verify`] always checks.
    pub fn with_checksums(mut self, on: bool) -> Self {
        self.check_crc = on;
        self
    }

    /// The directory holding `.metadata` and the `.distcp` files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed metadata.
    pub fn metadata(&self) -> &DcpMetadata {
        &self.meta
    }

    /// The item of `fqn`'s chunk at `offsets` (`None`: the object `fqn`), in constant time.
    fn item(&self, fqn: &str, offsets: Option<&[u64]>) -> Option<&DcpItem> {
        let key = (fqn.to_owned(), offsets.map(<[u64]>::to_vec));
        self.index.get(&key).and_then(|&i| self.meta.items.get(i))
    }

    /// The tensor `fqn`'s metadata.
    pub fn tensor(&self, fqn: &str) -> Result<&DcpTensor> {
        self.meta
            .tensors
            .get(fqn)
            .ok_or_else(|| Error::MissingTensor {
                tensor: fqn.to_owned(),
                path: self.dir.clone(),
            })
    }

    /// Reads one item's bytes: its byte range of its file, checked to lie inside the file and to
    /// start with a zip header (DCP's safetensors serialization is not read).
    pub fn read_item(&self, item: &DcpItem) -> Result<Vec<u8>> {
        let path = self.dir.join(&item.file);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let end = item.offset.saturating_add(item.length);
        if end > size {
            return Err(dcp_err(
                &path,
                format!(
                    "item {:?} spans bytes {}..{end}, the file has {size}: truncated?",
                    item.fqn, item.offset
                ),
            ));
        }
        let len = usize::try_from(item.length)
            .map_err(|_| dcp_err(&path, format!("item {:?} is too large", item.fqn)))?;
        // Read into reserved, not zeroed, memory.
        let mut buf = Vec::with_capacity(len);
        let mut file = file;
        file.seek(SeekFrom::Start(item.offset))
            .map_err(|e| Error::io("seek", &path, e))?;
        file.take(item.length)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read", &path, e))?;
        if buf.len() != len {
            return Err(dcp_err(&path, format!("item {:?}: short read", item.fqn)));
        }
        if !buf.starts_with(b"PK\x03\x04") {
            return Err(dcp_err(
                &path,
                format!(
                    "item {:?} at byte {} is not a torch.save archive (a DCP saved with \
                     serialization_format=SAFETENSORS is not read)",
                    item.fqn, item.offset
                ),
            ));
        }
        Ok(buf)
    }

    /// Loads the whole tensor `fqn`, assembled from its chunks.
    pub fn load_tensor(&self, fqn: &str) -> Result<Tensor> {
        let t = self.tensor(fqn)?;
        let zeros = vec![0; t.shape.len()];
        let shape = t.shape.clone();
        self.load_region(fqn, &zeros, &shape)
    }

    /// Loads the box of tensor `fqn` starting at `offsets` with extent `sizes`, reading only the
    /// chunks that overlap it (whatever partition the checkpoint was saved with).
    pub fn load_region(&self, fqn: &str, offsets: &[u64], sizes: &[u64]) -> Result<Tensor> {
        let t = self.tensor(fqn)?;
        let rank = t.shape.len();
        if offsets.len() != rank
            || sizes.len() != rank
            || (0..rank).any(|d| {
                offsets[d]
                    .checked_add(sizes[d])
                    .is_none_or(|e| e > t.shape[d])
            })
        {
            return Err(Error::tensor(
                fqn,
                format!(
                    "region at {offsets:?} of size {sizes:?} is not inside shape {:?}",
                    t.shape
                ),
            ));
        }
        let numel = crate::format::element_count(sizes)
            .ok_or_else(|| Error::tensor(fqn, "the region's size overflows"))?;
        let bytes = t
            .dtype
            .byte_len(numel)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::tensor(fqn, "the region does not fit in memory"))?;
        let whole_chunk = t
            .chunks
            .iter()
            .any(|c| c.offsets == offsets && c.sizes == sizes);
        let mut out = if whole_chunk {
            Vec::new()
        } else {
            vec![0u8; bytes]
        };
        let elem = t.dtype.alignment() as usize;
        for chunk in &t.chunks {
            let overlap: Option<Vec<(u64, u64)>> = (0..rank)
                .map(|d| {
                    let lo = offsets[d].max(chunk.offsets[d]);
                    let hi = (offsets[d] + sizes[d]).min(chunk.offsets[d] + chunk.sizes[d]);
                    (lo < hi).then_some((lo, hi))
                })
                .collect();
            let Some(overlap) = overlap else { continue };
            if numel == 0 {
                continue;
            }
            let data = self.load_chunk(fqn, t, &chunk.offsets, &chunk.sizes, self.check_crc)?;
            if chunk.offsets == offsets && chunk.sizes == sizes {
                out = data;
                break;
            }
            copy_box(
                &data,
                &chunk.sizes,
                &chunk.offsets,
                &mut out,
                sizes,
                offsets,
                &overlap,
                elem,
            );
        }
        Ok(Tensor {
            dtype: t.dtype,
            shape: sizes.to_vec(),
            data: out,
        })
    }

    /// Reads one chunk's item and returns its elements row-major, checked against the metadata.
    fn load_chunk(
        &self,
        fqn: &str,
        t: &DcpTensor,
        offsets: &[u64],
        sizes: &[u64],
        check_crc: bool,
    ) -> Result<Vec<u8>> {
        let item = self.item(fqn, Some(offsets)).ok_or_else(|| {
            dcp_err(
                self.dir.join(".metadata"),
                format!("tensor {fqn:?}: no item for its chunk at {offsets:?}"),
            )
        })?;
        let bytes = self.read_item(item)?;
        let path = self.dir.join(&item.file);
        let (stored, data) = archive::read_tensor_owned(bytes, check_crc).map_err(|e| {
            dcp_err(
                &path,
                format!("tensor {fqn:?}, item at byte {}: {e}", item.offset),
            )
        })?;
        if stored.dtype != t.dtype || stored.shape != sizes {
            return Err(dcp_err(
                &path,
                format!(
                    "tensor {fqn:?}: the item holds {} {:?}, the metadata says {} {sizes:?}",
                    stored.dtype.name(),
                    stored.shape,
                    t.dtype.name()
                ),
            ));
        }
        Ok(data)
    }

    /// Reads the object (BYTE_IO item) `fqn` as JSON; globals in it are named, never run.
    pub fn load_object(&self, fqn: &str) -> Result<serde_json::Value> {
        let item = self
            .meta
            .objects
            .iter()
            .find(|o| *o == fqn)
            .and_then(|o| self.item(o, None))
            .ok_or_else(|| Error::MissingTensor {
                tensor: fqn.to_owned(),
                path: self.dir.clone(),
            })?;
        let bytes = self.read_item(item)?;
        archive::read_object(&bytes).map_err(|e| {
            dcp_err(
                self.dir.join(&item.file),
                format!("object {fqn:?}, item at byte {}: {e}", item.offset),
            )
        })
    }

    /// `common.pt` next to the weights (Megatron's common state), as JSON; `None` when absent.
    pub fn common(&self) -> Result<Option<serde_json::Value>> {
        let path = self.dir.join("common.pt");
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        archive::read_object(&bytes)
            .map(Some)
            .map_err(|e| dcp_err(&path, e))
    }

    /// Reads every tensor chunk and object and lists each problem found (an empty list: all of
    /// it reads back, every CRC-32 matches, every chunk agrees with the metadata).
    pub fn verify(&self) -> Vec<DcpProblem> {
        let mut problems = Vec::new();
        for (fqn, t) in &self.meta.tensors {
            for c in &t.chunks {
                if let Err(e) = self.load_chunk(fqn, t, &c.offsets, &c.sizes, true) {
                    problems.push(DcpProblem {
                        fqn: fqn.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        for fqn in &self.meta.objects {
            if let Err(e) = self.load_object(fqn) {
                problems.push(DcpProblem {
                    fqn: fqn.clone(),
                    message: e.to_string(),
                });
            }
        }
        if let Err(e) = self.common() {
            problems.push(DcpProblem {
                fqn: "common.pt".into(),
                message: e.to_string(),
            });
        }
        problems
    }
}

/// Copies the box `overlap` (global `[lo, hi)` per dimension) from `src` (a row-major box of
/// shape `src_shape` at global `src_origin`) into `dst` (likewise), `elem` bytes per element.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    src: &[u8],
    src_shape: &[u64],
    src_origin: &[u64],
    dst: &mut [u8],
    dst_shape: &[u64],
    dst_origin: &[u64],
    overlap: &[(u64, u64)],
    elem: usize,
) {
    let rank = overlap.len();
    if rank == 0 {
        dst[..elem].copy_from_slice(&src[..elem]);
        return;
    }
    let strides = |shape: &[u64]| {
        let mut s = vec![1u64; rank];
        for d in (0..rank - 1).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let run = ((overlap[rank - 1].1 - overlap[rank - 1].0) as usize) * elem;
    let mut idx: Vec<u64> = overlap.iter().map(|(lo, _)| *lo).collect();
    loop {
        let at = |origin: &[u64], strides: &[u64]| -> usize {
            (0..rank)
                .map(|d| (idx[d] - origin[d]) * strides[d])
                .sum::<u64>() as usize
                * elem
        };
        let (s, d) = (at(src_origin, &ss), at(dst_origin, &ds));
        dst[d..d + run].copy_from_slice(&src[s..s + run]);
        let mut dim = rank - 1;
        loop {
            if dim == 0 {
                return;
            }
            dim -= 1;
            idx[dim] += 1;
            if idx[dim] < overlap[dim].1 {
                break;
            }
            idx[dim] = overlap[dim].0;
        }
    }
}
