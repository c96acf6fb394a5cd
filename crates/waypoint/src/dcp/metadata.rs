//! The typed `.metadata` of a torch distributed checkpoint: DCP's `Metadata` dataclass (or
//! Megatron's `MCoreMetadata` subclass) read from the safe pickle machine's nodes onto Rust
//! structs. Every global outside the allow-list is refused by name before anything is read;
//! unknown dataclass fields (Megatron's `mcore_data`, `planner_data`) are ignored.
//!
//! It owns the shape of the metadata and its checks (plain file names, no transforms, chunks that
//! tile their tensor); it must not read `.distcp` files (the reader's job).

use super::dtype;
use super::pickle::{NodeId, Pickle};
use crate::format::Dtype;
use std::collections::BTreeMap;

/// What a DCP checkpoint holds under each fully qualified name (fqn).
#[derive(Debug, Clone, PartialEq)]
pub struct DcpMetadata {
    /// Tensors by fqn.
    pub tensors: BTreeMap<String, DcpTensor>,
    /// Names of the non-tensor (BYTE_IO) items: objects saved with `torch.save`.
    pub objects: Vec<String>,
    /// Where each item's bytes are.
    pub items: Vec<DcpItem>,
    /// The metadata's `version` field, when present.
    pub version: Option<String>,
    /// The top-level class, `module.name` (`…metadata.Metadata` or Megatron's `MCoreMetadata`).
    pub class: String,
}

/// A tensor of the checkpoint: global dtype and shape, and the chunks that tile it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpTensor {
    /// The element type.
    pub dtype: Dtype,
    /// The global shape.
    pub shape: Vec<u64>,
    /// The chunks, each stored as one item.
    pub chunks: Vec<DcpChunk>,
}

/// One chunk of a tensor: a box of the global tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpChunk {
    /// The box's first index in each dimension.
    pub offsets: Vec<u64>,
    /// The box's extent in each dimension.
    pub sizes: Vec<u64>,
}

/// Where one stored item is: a byte range of a file of the checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcpItem {
    /// The fqn the item belongs to.
    pub fqn: String,
    /// The chunk's offsets for a tensor chunk; `None` for an object.
    pub chunk_offsets: Option<Vec<u64>>,
    /// The file, a plain name inside the checkpoint directory (`__0_0.distcp`).
    pub file: String,
    /// First byte of the item in the file.
    pub offset: u64,
    /// Length of the item in bytes.
    pub length: u64,
}

const META: &str = "torch.distributed.checkpoint.metadata";

type R<T> = Result<T, String>;

/// A dataclass instance's fields: the `BUILD` state (a dict, or `(dict, slots)`).
struct Fields<'p> {
    p: &'p Pickle,
    dicts: Vec<NodeId>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<NodeId> {
        self.dicts.iter().find_map(|&d| self.p.get(d, key))
    }

    fn need(&self, key: &str, what: &str) -> R<NodeId> {
        self.get(key)
            .ok_or_else(|| format!("{what} has no field {key:?}"))
    }
}

/// The fields of the object at `id`, which must be an instance of one of `classes`.
fn object<'p>(p: &'p Pickle, id: NodeId, classes: &[(&str, &str)], what: &str) -> R<Fields<'p>> {
    let Some((class, _, state)) = p.call(id) else {
        return Err(format!("{what} is not an object"));
    };
    if !classes.contains(&class) {
        return Err(format!(
            "{what} is a {}.{}, expected {}",
            class.0,
            class.1,
            classes
                .iter()
                .map(|(m, n)| format!("{m}.{n}"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let mut dicts = Vec::new();
    if let Some(state) = state {
        if p.dict(state).is_some() {
            dicts.push(state);
        } else if let Some(parts) = p.seq(state) {
            dicts.extend(parts.iter().copied().filter(|&d| p.dict(d).is_some()));
        }
    }
    Ok(Fields { p, dicts })
}

/// Reads the typed metadata out of the parsed `.metadata` pickle.
pub fn from_pickle(p: &Pickle) -> R<DcpMetadata> {
    if let Some(global) = p.first_refused_global() {
        return Err(format!(
            "refers to {global}, which is not on the allow-list of a DCP .metadata file; \
             refused (nothing was executed)"
        ));
    }
    let classes = [
        (META, "Metadata"),
        (
            "megatron.core.dist_checkpointing.strategies.torch",
            "MCoreMetadata",
        ),
    ];
    let root = object(p, p.root, &classes, "the root object")?;
    let class = p
        .call(p.root)
        .map(|((m, n), ..)| format!("{m}.{n}"))
        .unwrap_or_default();
    let sdm = root.need("state_dict_metadata", "Metadata")?;
    let Some(entries) = p.dict(sdm) else {
        return Err("state_dict_metadata is not a dict".into());
    };
    let mut tensors = BTreeMap::new();
    let mut objects = Vec::new();
    for &(k, v) in entries {
        let fqn = p
            .str(k)
            .ok_or("a state_dict_metadata key is not a string")?;
        match p.call(v).map(|(c, ..)| c) {
            Some((META, "BytesStorageMetadata")) => objects.push(fqn.to_owned()),
            _ => {
                let tensor = tensor_meta(p, v).map_err(|e| format!("tensor {fqn:?}: {e}"))?;
                tensors.insert(fqn.to_owned(), tensor);
            }
        }
    }
    let sd = root.need("storage_data", "Metadata")?;
    let Some(storage) = p.dict(sd) else {
        return Err("storage_data is not a dict (None: no data was saved)".into());
    };
    let items = storage
        .iter()
        .map(|&(k, v)| item(p, k, v))
        .collect::<R<Vec<_>>>()?;
    let version = root
        .get("version")
        .and_then(|v| p.str(v))
        .map(str::to_owned);
    let meta = DcpMetadata {
        tensors,
        objects,
        items,
        version,
        class,
    };
    meta.check()?;
    Ok(meta)
}

fn tensor_meta(p: &Pickle, id: NodeId) -> R<DcpTensor> {
    let f = object(p, id, &[(META, "TensorStorageMetadata")], "the entry")?;
    let props_node = f.need("properties", "TensorStorageMetadata")?;
    let props = object(p, props_node, &[(META, "TensorProperties")], "properties")?;
    // TensorProperties pickles its state as a tuple (dtype, layout, …) in recent torch, as a
    // dict with a "dtype" field in older ones.
    let from_tuple = p
        .call(props_node)
        .and_then(|(_, _, state)| state)
        .and_then(|state| p.seq(state))
        .and_then(|t| t.first().copied())
        .filter(|&d| p.global(d).is_some());
    let dtype_node = from_tuple
        .or_else(|| props.get("dtype"))
        .ok_or("its properties carry no dtype")?;
    let dtype = match p.global(dtype_node) {
        Some(("torch", name)) => dtype::from_torch_name(name).ok_or_else(|| {
            format!("dtype torch.{name} has no waypoint dtype (supported: see docs/DCP.md)")
        })?,
        _ => return Err("its dtype is not a torch dtype".into()),
    };
    let size = f.need("size", "TensorStorageMetadata")?;
    let shape = p.shape(size).ok_or("its size is not a torch.Size")?;
    let chunks_id = f.need("chunks", "TensorStorageMetadata")?;
    let chunk_ids = p.seq(chunks_id).ok_or("its chunks are not a list")?;
    let mut chunks = Vec::with_capacity(chunk_ids.len());
    for &c in chunk_ids {
        let cf = object(p, c, &[(META, "ChunkStorageMetadata")], "a chunk")?;
        let offsets = p
            .shape(cf.need("offsets", "a chunk")?)
            .ok_or("a chunk's offsets are not a torch.Size")?;
        let sizes = p
            .shape(cf.need("sizes", "a chunk")?)
            .ok_or("a chunk's sizes are not a torch.Size")?;
        chunks.push(DcpChunk { offsets, sizes });
    }
    Ok(DcpTensor {
        dtype,
        shape,
        chunks,
    })
}

fn item(p: &Pickle, key: NodeId, value: NodeId) -> R<DcpItem> {
    let k = object(p, key, &[(META, "MetadataIndex")], "a storage_data key")?;
    let fqn = k
        .get("fqn")
        .and_then(|f| p.str(f))
        .ok_or("a MetadataIndex has no fqn")?
        .to_owned();
    let chunk_offsets = match k.get("offset") {
        Some(o) if p.shape(o).is_some() => p.shape(o),
        _ => None,
    };
    let v = object(
        p,
        value,
        &[("torch.distributed.checkpoint.filesystem", "_StorageInfo")],
        "a storage_data value",
    )?;
    let file = p
        .str(v.need("relative_path", "_StorageInfo")?)
        .ok_or("relative_path is not a string")?
        .to_owned();
    let num = |key: &str| -> R<u64> {
        let n = p
            .int(v.need(key, "_StorageInfo")?)
            .ok_or("not an integer")?;
        u64::try_from(n).map_err(|_| format!("{fqn:?}: negative {key}"))
    };
    if let Some(t) = v.get("transform_descriptors")
        && p.seq(t).is_some_and(|t| !t.is_empty())
    {
        return Err(format!(
            "item {fqn:?} is stored through transforms (e.g. compression: _extensions); \
             waypoint reads plain DCP items only"
        ));
    }
    Ok(DcpItem {
        offset: num("offset")?,
        length: num("length")?,
        fqn,
        chunk_offsets,
        file,
    })
}

impl DcpMetadata {
    /// Checks what the reader relies on: plain file names, every tensor's chunks tiling it
    /// exactly (inside the shape, no overlap, nothing missing), an item for every chunk.
    fn check(&self) -> R<()> {
        for item in &self.items {
            if !is_plain_name(&item.file) {
                return Err(format!(
                    "item {:?} names file {:?}, which is not a plain file name in the checkpoint \
                     directory",
                    item.fqn, item.file
                ));
            }
            item.offset
                .checked_add(item.length)
                .ok_or_else(|| format!("item {:?}: offset + length overflows", item.fqn))?;
        }
        let keys: std::collections::HashSet<(&str, Option<&[u64]>)> = self
            .items
            .iter()
            .map(|i| (i.fqn.as_str(), i.chunk_offsets.as_deref()))
            .collect();
        for (fqn, t) in &self.tensors {
            t.check_tiling()
                .map_err(|e| format!("tensor {fqn:?}: {e}"))?;
            for c in &t.chunks {
                if !keys.contains(&(fqn.as_str(), Some(c.offsets.as_slice()))) {
                    return Err(format!(
                        "tensor {fqn:?}: no storage item for its chunk at {:?}",
                        c.offsets
                    ));
                }
            }
        }
        for fqn in &self.objects {
            if !keys.contains(&(fqn.as_str(), None)) {
                return Err(format!("object {fqn:?} has no storage item"));
            }
        }
        Ok(())
    }

    /// The item of `fqn`'s chunk at `offsets` (`None` for an object).
    pub fn item(&self, fqn: &str, offsets: Option<&[u64]>) -> Option<&DcpItem> {
        self.items
            .iter()
            .find(|i| i.fqn == fqn && (offsets.is_none() || i.chunk_offsets.as_deref() == offsets))
    }
}

impl DcpTensor {
    /// The number of elements.
    pub fn numel(&self) -> Option<u64> {
        crate::format::element_count(&self.shape)
    }

    fn check_tiling(&self) -> R<()> {
        let rank = self.shape.len();
        let numel = self.numel().ok_or("its shape overflows")?;
        let mut total = 0u64;
        for c in &self.chunks {
            if c.offsets.len() != rank || c.sizes.len() != rank {
                return Err(format!("chunk {:?} has the wrong rank", c.offsets));
            }
            for d in 0..rank {
                if c.offsets[d]
                    .checked_add(c.sizes[d])
                    .is_none_or(|e| e > self.shape[d])
                {
                    return Err(format!("chunk at {:?} lies outside the shape", c.offsets));
                }
            }
            let n = crate::format::element_count(&c.sizes).ok_or("a chunk's size overflows")?;
            total = total.checked_add(n).ok_or("chunk sizes overflow")?;
        }
        if total != numel {
            return Err(format!(
                "its chunks hold {total} elements, its shape {numel}: they do not tile it"
            ));
        }
        for (i, a) in self.chunks.iter().enumerate() {
            for b in &self.chunks[i + 1..] {
                let overlap = (0..rank).all(|d| {
                    a.offsets[d] < b.offsets[d] + b.sizes[d]
                        && b.offsets[d] < a.offsets[d] + a.sizes[d]
                });
                let empty = a.sizes.contains(&0) || b.sizes.contains(&0);
                if overlap && !empty {
                    return Err(format!(
                        "chunks at {:?} and {:?} overlap",
                        a.offsets, b.offsets
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A single path component that is a normal file name.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}
