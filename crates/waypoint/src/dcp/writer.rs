//! Writing a torch distributed checkpoint directory that `torch.distributed.checkpoint.load`
//! (its default `FileSystemReader`) reads: one `__<rank>_0.distcp` file per saving rank, each
//! chunk one `torch.save` archive appended to it, objects as pickled JSON values, and the
//! `.metadata` pickle, produced (never executed) and checked by this crate's own reader before it
//! is renamed into place.
//!
//! It owns the files of the directory it creates; the caller feeds it chunks one at a time
//! (memory stays bounded by one chunk).

use super::archive;
use super::metadata::{self, DcpChunk, DcpItem, DcpMetadata, DcpTensor};
use super::pickle::{self, Limits};
use super::write_pickle::{
    APPEND, BUILD, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, FALSE, MARK, NEWOBJ, NONE, PickleWriter,
    REDUCE, SETITEM, TUPLE, TUPLE1,
};
use crate::engine::TensorRef;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const META: &str = "torch.distributed.checkpoint.metadata";

/// Writes a DCP checkpoint directory, chunk by chunk.
#[derive(Debug)]
pub struct DcpWriter {
    dir: PathBuf,
    files: BTreeMap<u64, (File, u64)>,
    tensors: BTreeMap<String, DcpTensor>,
    objects: Vec<String>,
    items: Vec<DcpItem>,
}

fn dcp_err(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
    Error::Dcp {
        path: path.into(),
        reason: reason.into(),
    }
}

impl DcpWriter {
    /// Creates `dir` (which must not exist) for a new checkpoint.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir(dir).map_err(|e| Error::io("create directory", dir, e))?;
        Ok(DcpWriter {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            tensors: BTreeMap::new(),
            objects: Vec::new(),
            items: Vec::new(),
        })
    }

    /// Appends `bytes` as one item to rank `rank`'s file; returns where it went.
    fn append(
        &mut self,
        rank: u64,
        fqn: &str,
        offsets: Option<Vec<u64>>,
        bytes: &[u8],
    ) -> Result<()> {
        let name = format!("__{rank}_0.distcp");
        let path = self.dir.join(&name);
        let (file, pos) = match self.files.entry(rank) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let file = File::create_new(&path).map_err(|e| Error::io("create", &path, e))?;
                v.insert((file, 0))
            }
        };
        file.write_all(bytes)
            .map_err(|e| Error::io("write", &path, e))?;
        self.items.push(DcpItem {
            fqn: fqn.to_owned(),
            chunk_offsets: offsets,
            file: name,
            offset: *pos,
            length: bytes.len() as u64,
        });
        *pos += bytes.len() as u64;
        Ok(())
    }

    /// Adds one chunk of a tensor (a [`TensorRef`]: name, dtype, global shape, the box's
    /// offsets and shape, its row-major little-endian bytes), written into rank `rank`'s file.
    pub fn add_chunk(&mut self, rank: u64, chunk: &TensorRef<'_>) -> Result<()> {
        let (fqn, dtype, shape) = (chunk.name.as_ref(), chunk.dtype, &chunk.global_shape[..]);
        let (offsets, sizes, data) = (&chunk.offsets[..], &chunk.shape[..], chunk.data.as_slice());
        let expected = crate::format::element_count(sizes).and_then(|n| dtype.byte_len(n));
        if expected != Some(data.len() as u64) {
            return Err(Error::tensor(
                fqn,
                format!("chunk of size {sizes:?} given {} bytes", data.len()),
            ));
        }
        let entry = self
            .tensors
            .entry(fqn.to_owned())
            .or_insert_with(|| DcpTensor {
                dtype,
                shape: shape.to_vec(),
                chunks: Vec::new(),
            });
        if entry.dtype != dtype || entry.shape != shape {
            return Err(Error::tensor(fqn, "chunks disagree on dtype or shape"));
        }
        entry.chunks.push(DcpChunk {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
        });
        let bytes = archive::write_tensor("archive", dtype, sizes, data)
            .map_err(|e| Error::tensor(fqn, e))?;
        self.append(rank, fqn, Some(offsets.to_vec()), &bytes)
    }

    /// Adds object `fqn` (a BYTE_IO item, written by rank 0): a JSON value pickled as Python
    /// `None`/`bool`/`int`/`float`/`str`/`list`/`dict`, in a `torch.save` archive.
    pub fn add_object(&mut self, fqn: &str, value: &serde_json::Value) -> Result<()> {
        let mut w = PickleWriter::new();
        json_pickle(&mut w, value, 0).map_err(|e| Error::tensor(fqn, e))?;
        let mut zip = super::zip::ZipWriter::new();
        zip.add("archive/data.pkl", &w.finish());
        zip.add("archive/.format_version", b"1");
        zip.add("archive/.storage_alignment", b"64");
        zip.add("archive/byteorder", b"little");
        zip.add("archive/version", b"3\n");
        let bytes = zip.finish().map_err(|e| Error::tensor(fqn, e))?;
        self.objects.push(fqn.to_owned());
        self.append(0, fqn, None, &bytes)
    }

    /// Writes `.metadata` (checked by parsing it back with the safe reader: chunks tile every
    /// tensor) and makes every file durable. Until this returns the directory has no
    /// `.metadata`, so torch does not take it for a checkpoint.
    pub fn finish(self) -> Result<DcpMetadata> {
        let meta = DcpMetadata {
            tensors: self.tensors,
            objects: self.objects,
            items: self.items,
            version: Some("1.0.0".into()),
            class: format!("{META}.Metadata"),
        };
        let bytes = metadata_pickle(&meta).map_err(|e| dcp_err(&self.dir, e))?;
        let path = self.dir.join(".metadata");
        let parsed = pickle::parse(&bytes, &Limits::default())
            .map_err(|e| dcp_err(&path, format!("the metadata written does not parse: {e}")))?;
        let back = metadata::from_pickle(&parsed).map_err(|e| dcp_err(&path, e))?;
        for (rank, (file, _)) in &self.files {
            file.sync_all()
                .map_err(|e| Error::io("fsync", self.dir.join(format!("__{rank}_0.distcp")), e))?;
        }
        let tmp = self.dir.join(".metadata.tmp");
        let mut file = File::create_new(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(&bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", &self.dir, e))?;
        Ok(back)
    }
}

/// Pickles a JSON value as the Python value it reads as.
fn json_pickle(
    w: &mut PickleWriter,
    value: &serde_json::Value,
    depth: usize,
) -> Result<(), String> {
    use serde_json::Value;
    if depth > pickle::MAX_JSON_DEPTH {
        return Err("the value is nested too deeply".into());
    }
    match value {
        Value::Null => {
            w.op(NONE);
        }
        Value::Bool(b) => {
            w.op(if *b { 0x88 } else { FALSE });
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                w.int(i);
            } else if let Some(f) = n.as_f64() {
                w.op(b'G');
                w.raw(&f.to_be_bytes());
            }
        }
        Value::String(s) => {
            w.str(s);
        }
        Value::Array(items) => {
            w.op(EMPTY_LIST);
            for item in items {
                json_pickle(w, item, depth + 1)?;
                w.op(APPEND);
            }
        }
        Value::Object(map) => {
            w.op(EMPTY_DICT);
            for (k, v) in map {
                w.str(k);
                json_pickle(w, v, depth + 1)?;
                w.op(SETITEM);
            }
        }
    }
    Ok(())
}

/// `NEWOBJ(module.class, ())`, leaving the object on the stack for a `BUILD`.
fn new_obj(w: &mut PickleWriter, module: &str, class: &str) {
    w.global(module, class).op(EMPTY_TUPLE).op(NEWOBJ);
}

/// The `.metadata` pickle of `meta`, as torch's `Metadata` dataclass pickles.
pub fn metadata_pickle(meta: &DcpMetadata) -> Result<Vec<u8>, String> {
    let mut w = PickleWriter::new();
    new_obj(&mut w, META, "Metadata");
    w.op(EMPTY_DICT).str("state_dict_metadata").op(EMPTY_DICT);
    for (fqn, t) in &meta.tensors {
        w.str(fqn);
        tensor_metadata(&mut w, t)?;
        w.op(SETITEM);
    }
    for fqn in &meta.objects {
        w.str(fqn);
        new_obj(&mut w, META, "BytesStorageMetadata");
        w.op(SETITEM);
    }
    w.op(SETITEM).str("planner_data").op(EMPTY_DICT);
    for fqn in meta.tensors.keys().chain(&meta.objects) {
        w.str(fqn).str(fqn).op(TUPLE1).op(SETITEM);
    }
    w.op(SETITEM).str("storage_data").op(EMPTY_DICT);
    for item in &meta.items {
        new_obj(&mut w, META, "MetadataIndex");
        w.op(EMPTY_DICT).str("fqn").str(&item.fqn).op(SETITEM);
        w.str("offset");
        match &item.chunk_offsets {
            Some(o) => {
                w.size(o)?;
            }
            None => {
                w.op(NONE);
            }
        }
        w.op(SETITEM).str("index");
        if item.chunk_offsets.is_some() {
            w.int(0);
        } else {
            w.op(NONE);
        }
        w.op(SETITEM).op(BUILD);
        new_obj(
            &mut w,
            "torch.distributed.checkpoint.filesystem",
            "_StorageInfo",
        );
        w.op(EMPTY_DICT)
            .str("relative_path")
            .str(&item.file)
            .op(SETITEM);
        w.str("offset").uint(item.offset)?.op(SETITEM);
        w.str("length").uint(item.length)?.op(SETITEM).op(BUILD);
        w.op(SETITEM);
    }
    w.op(SETITEM).str("storage_meta").op(NONE).op(SETITEM);
    w.str("version")
        .str(meta.version.as_deref().unwrap_or("1.0.0"))
        .op(SETITEM);
    w.op(BUILD);
    Ok(w.finish())
}

fn tensor_metadata(w: &mut PickleWriter, t: &DcpTensor) -> Result<(), String> {
    let dtype = super::dtype::torch_name(t.dtype)
        .ok_or_else(|| format!("dtype {} has no torch equivalent", t.dtype.name()))?;
    new_obj(w, META, "TensorStorageMetadata");
    w.op(EMPTY_DICT).str("properties");
    new_obj(w, META, "TensorProperties");
    w.op(MARK).global("torch", dtype);
    w.global("torch.serialization", "_get_layout")
        .str("torch.strided")
        .op(TUPLE1)
        .op(REDUCE);
    w.op(FALSE);
    w.global(META, "_MEM_FORMAT_ENCODING")
        .int(0)
        .op(TUPLE1)
        .op(REDUCE);
    w.op(FALSE).op(TUPLE).op(BUILD).op(SETITEM);
    w.str("size").size(&t.shape)?.op(SETITEM);
    w.str("chunks").op(EMPTY_LIST);
    for c in &t.chunks {
        new_obj(w, META, "ChunkStorageMetadata");
        w.op(EMPTY_DICT)
            .str("offsets")
            .size(&c.offsets)?
            .op(SETITEM);
        w.str("sizes").size(&c.sizes)?.op(SETITEM).op(BUILD);
        w.op(APPEND);
    }
    w.op(SETITEM).op(BUILD);
    Ok(())
}
