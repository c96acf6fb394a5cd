//! One `torch.save` archive (a `.distcp` item, `common.pt`): its `data.pkl` read by the safe
//! pickle machine, a tensor's storage found and checked, and its elements copied out in
//! row-major order honouring stride and storage offset. Objects (BYTE_IO items) come out as
//! JSON.
//!
//! It owns the layout of a tensor archive; it must not know about DCP's metadata or files.

use super::dtype;
use super::pickle::{self, Limits, Node, NodeId, Pickle};
use super::zip::{self, ZipIndex};
use crate::format::Dtype;

type R<T> = Result<T, String>;

/// The most a `data.pkl` may hold (a tensor's is ~300 bytes; objects may be larger).
const MAX_PICKLE: usize = 256 << 20;

/// A tensor as `torch.save` describes it: a view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<u64>,
    /// The stride of each dimension, in elements.
    pub stride: Vec<u64>,
    /// The first element of the view in the storage, in elements.
    pub storage_offset: u64,
    /// The storage's key (`data/<key>`).
    pub key: String,
    /// The storage's length in bytes.
    pub storage_bytes: u64,
}

/// Reads the `data.pkl` of archive `item`.
fn data_pkl(item: &[u8], index: &ZipIndex) -> R<Pickle> {
    let entry = index
        .find("data.pkl")
        .ok_or("the archive has no data.pkl")?;
    let bytes = index.read(item, entry)?;
    let limits = Limits {
        max_input: MAX_PICKLE,
        ..Limits::default()
    };
    pickle::parse(bytes, &limits).map_err(|e| format!("data.pkl: {e}"))
}

/// Checks the archive's `byteorder` record (absent: little, as torch assumes on x86).
fn check_byteorder(item: &[u8], index: &ZipIndex) -> R<()> {
    if let Some(entry) = index.find("byteorder") {
        let order = index.read(item, entry)?;
        if order != b"little" {
            return Err(format!(
                "byteorder is {:?}; only little-endian archives are read",
                String::from_utf8_lossy(order)
            ));
        }
    }
    Ok(())
}

/// Reads the tensor archive `item` and returns its elements, row-major, with its description.
pub fn read_tensor(item: &[u8]) -> R<(StoredTensor, Vec<u8>)> {
    let (tensor, range) = locate(item, true)?;
    let data = gather(&tensor, &item[range])?;
    Ok((tensor, data))
}

/// [`read_tensor`] on an owned item: a contiguous tensor's bytes are moved to the front of the
/// item's own buffer (no second buffer); a strided one is gathered. `check_crc: false` skips the
/// CRC-32 of the tensor's data (torch's own reader never checks it); every structural check stays.
pub fn read_tensor_owned(mut item: Vec<u8>, check_crc: bool) -> R<(StoredTensor, Vec<u8>)> {
    let (tensor, range) = locate(&item, check_crc)?;
    if let Some(bytes) = contiguous_range(&tensor)? {
        let start = range.start + bytes.start;
        let end = range.start + bytes.end;
        item.truncate(end);
        item.drain(..start);
        return Ok((tensor, item));
    }
    let data = gather(&tensor, &item[range])?;
    Ok((tensor, data))
}

/// Parses and checks a tensor archive: its description and its storage's byte range in `item`
/// (CRC-32 checked when asked, length equal to what the pickle says).
fn locate(item: &[u8], check_crc: bool) -> R<(StoredTensor, std::ops::Range<usize>)> {
    let index = zip::read_index(item)?;
    check_byteorder(item, &index)?;
    let p = data_pkl(item, &index)?;
    if let Some(global) = p.first_refused_global() {
        return Err(format!(
            "data.pkl refers to {global}, which a tensor archive may not: refused (nothing was \
             executed)"
        ));
    }
    let tensor = describe(&p)?;
    let entry = index
        .find(&format!("data/{}", tensor.key))
        .ok_or_else(|| format!("the archive has no data/{}", tensor.key))?;
    let storage = if check_crc {
        index.read(item, entry)?
    } else {
        index.slice(item, entry)?
    };
    if storage.len() as u64 != tensor.storage_bytes {
        return Err(format!(
            "data/{} holds {} bytes, its pickle says {}",
            tensor.key,
            storage.len(),
            tensor.storage_bytes
        ));
    }
    check_extent(&tensor, storage.len())?;
    Ok((tensor, entry.start..entry.start + entry.len))
}

/// Reads an object archive (a BYTE_IO item, `common.pt`) as JSON: globals outside the
/// allow-list are named, never run (see [`Pickle::to_json_at`]).
pub fn read_object(item: &[u8]) -> R<serde_json::Value> {
    let index = zip::read_index(item)?;
    check_byteorder(item, &index)?;
    data_pkl(item, &index)?.to_json()
}

/// The tensor a tensor archive's `data.pkl` rebuilds.
pub fn describe(p: &Pickle) -> R<StoredTensor> {
    let mut root = p.root;
    if let Some((("torch._utils", "_rebuild_parameter"), args, _)) = p.call(root) {
        root = *args.first().ok_or("_rebuild_parameter without arguments")?;
    }
    let (func, args) = match p.call(root) {
        Some(((module, name), args, _)) => ((module, name), args),
        None => return Err("data.pkl does not rebuild a tensor".into()),
    };
    let v3 = match func {
        ("torch._utils", "_rebuild_tensor_v2") => false,
        ("torch._utils", "_rebuild_tensor_v3") => true,
        (m, n) => return Err(format!("data.pkl calls {m}.{n}, not a tensor rebuild")),
    };
    if args.len() < if v3 { 7 } else { 6 } {
        return Err(format!("{} has too few arguments", func.1));
    }
    let int = |id: NodeId, what: &str| -> R<u64> {
        p.int(id)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| format!("the {what} is not a non-negative integer"))
    };
    let (class, key, numel) = storage_ref(p, args[0])?;
    let dtype = if v3 {
        match p.global(args[6]) {
            Some(("torch", name)) => dtype_named(name)?,
            _ => return Err("_rebuild_tensor_v3's dtype is not a torch dtype".into()),
        }
    } else {
        dtype::from_storage_class(class).ok_or_else(|| unsupported(class))?
    };
    let storage_bytes = if class == "UntypedStorage" {
        numel
    } else {
        dtype
            .byte_len(numel)
            .ok_or("the storage's byte length overflows")?
    };
    let shape = p.shape(args[2]).ok_or("the size is not a tuple of sizes")?;
    let stride = p.shape(args[3]).ok_or("the stride is not a tuple")?;
    if stride.len() != shape.len() {
        return Err("the stride and the size have different ranks".into());
    }
    Ok(StoredTensor {
        dtype,
        shape,
        stride,
        storage_offset: int(args[1], "storage offset")?,
        key: key.to_owned(),
        storage_bytes,
    })
}

fn dtype_named(name: &str) -> R<Dtype> {
    dtype::from_torch_name(name).ok_or_else(|| unsupported(name))
}

fn unsupported(name: &str) -> String {
    if dtype::is_unsupported_torch_dtype(name) {
        format!("torch.{name} has no waypoint dtype; convert it (e.g. to float32) before saving")
    } else {
        format!("torch.{name} is not a storage or dtype this reader knows")
    }
}

/// `("storage", torch.<Class>, key, location, numel)` behind a BINPERSID.
fn storage_ref(p: &Pickle, id: NodeId) -> R<(&str, &str, u64)> {
    let Node::PersId(pid) = p.node(id) else {
        return Err("the tensor's storage is not a persistent id".into());
    };
    let parts = p.seq(*pid).ok_or("the persistent id is not a tuple")?;
    let [tag, class, key, _location, numel] = parts else {
        return Err("the persistent id is not (\"storage\", type, key, location, numel)".into());
    };
    if p.str(*tag) != Some("storage") {
        return Err("the persistent id is not a storage".into());
    }
    let class = match p.global(*class) {
        Some(("torch" | "torch.storage", name)) => name,
        _ => return Err("the storage type is not a torch storage class".into()),
    };
    let key = p.str(*key).ok_or("the storage key is not a string")?;
    if !super::metadata::is_plain_name(key) {
        return Err(format!("storage key {key:?} is not a plain name"));
    }
    let numel = p
        .int(*numel)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("the storage's numel is not a non-negative integer")?;
    Ok((class, key, numel))
}

/// The view's size in bytes, checked.
fn view_bytes(t: &StoredTensor) -> R<usize> {
    if t.dtype.is_sub_byte() {
        return Err("sub-byte dtypes are not stored by torch".into());
    }
    let numel = crate::format::element_count(&t.shape).ok_or("the shape overflows")?;
    let bytes = t
        .dtype
        .byte_len(numel)
        .ok_or("the tensor's size overflows")?;
    usize::try_from(bytes).map_err(|_| "the tensor does not fit in memory".into())
}

/// Checks that every element the view reaches lies inside a storage of `storage_len` bytes.
fn check_extent(t: &StoredTensor, storage_len: usize) -> R<()> {
    let elem = t.dtype.alignment() as usize;
    if view_bytes(t)? == 0 {
        return Ok(());
    }
    let mut last = t.storage_offset;
    for (s, st) in t.shape.iter().zip(&t.stride) {
        last = (s - 1)
            .checked_mul(*st)
            .and_then(|x| last.checked_add(x))
            .ok_or("the view's extent overflows")?;
    }
    let storage_elems = storage_len / elem;
    if last >= storage_elems as u64 {
        return Err(format!(
            "the view reaches element {last}, the storage holds {storage_elems}"
        ));
    }
    Ok(())
}

/// The byte range of the view in its storage when it is row-major contiguous, else `None`.
fn contiguous_range(t: &StoredTensor) -> R<Option<std::ops::Range<usize>>> {
    let len = view_bytes(t)?;
    let mut expect = 1u64;
    for d in (0..t.shape.len()).rev() {
        if t.shape[d] != 1 && t.stride[d] != expect {
            return Ok(None);
        }
        expect = expect.saturating_mul(t.shape[d]);
    }
    let start = if len == 0 {
        0
    } else {
        t.storage_offset as usize * t.dtype.alignment() as usize
    };
    Ok(Some(start..start + len))
}

/// Copies the view `t` of `storage` into a new row-major buffer (its extent checked first).
pub fn gather(t: &StoredTensor, storage: &[u8]) -> R<Vec<u8>> {
    check_extent(t, storage.len())?;
    if let Some(range) = contiguous_range(t)? {
        return Ok(storage[range].to_vec());
    }
    let elem = t.dtype.alignment() as usize;
    let mut out = Vec::with_capacity(view_bytes(t)?);
    let rank = t.shape.len();
    let (inner, inner_stride) = (t.shape[rank - 1] as usize, t.stride[rank - 1] as usize);
    let mut idx = vec![0u64; rank - 1];
    loop {
        let base = t.storage_offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let base = base as usize;
        if inner_stride == 1 {
            out.extend_from_slice(&storage[base * elem..(base + inner) * elem]);
        } else {
            for i in 0..inner {
                let at = (base + i * inner_stride) * elem;
                out.extend_from_slice(&storage[at..at + elem]);
            }
        }
        // Advance the outer index, last dimension first.
        let mut d = idx.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Builds a `torch.save` archive of one contiguous tensor (what DCP writes as a tensor item).
/// `prefix` is the entry prefix (`archive` for a buffer, as DCP uses).
pub fn write_tensor(prefix: &str, dtype: Dtype, shape: &[u64], data: &[u8]) -> R<Vec<u8>> {
    let pkl = super::write_pickle::tensor_pickle(dtype, shape)?;
    let mut w = zip::ZipWriter::new();
    w.add(&format!("{prefix}/data.pkl"), &pkl);
    w.add(&format!("{prefix}/.format_version"), b"1");
    w.add(&format!("{prefix}/.storage_alignment"), b"64");
    w.add(&format!("{prefix}/byteorder"), b"little");
    w.add(&format!("{prefix}/data/0"), data);
    w.add(&format!("{prefix}/version"), b"3\n");
    w.add(
        &format!("{prefix}/.data/serialization_id"),
        b"0000000000000000000000000000000000000000",
    );
    w.finish()
}
