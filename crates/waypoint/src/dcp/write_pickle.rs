//! Producing pickles (never executing one): a tiny writer of the opcodes torch itself reads, and
//! the two pickles a DCP checkpoint needs: a tensor archive's `data.pkl` and the `.metadata`.
//!
//! It owns the bytes; what goes into them (names, chunks, files) is the caller's.

use super::dtype;
use crate::format::Dtype;

type R<T> = Result<T, String>;

/// A protocol-2 pickle being written.
#[derive(Debug, Default)]
pub struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    /// A pickle that starts with `PROTO 2`.
    pub fn new() -> Self {
        PickleWriter { out: vec![0x80, 2] }
    }

    /// `GLOBAL module name`.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
        self
    }

    /// An integer, in the shortest opcode.
    pub fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.out.push(b'K');
            self.out.push(v as u8);
        } else if (0..65536).contains(&v) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(small) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend_from_slice(&small.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// An unsigned integer (sizes, offsets).
    pub fn uint(&mut self, v: u64) -> R<&mut Self> {
        let v = i64::try_from(v).map_err(|_| format!("{v} does not fit a pickle integer here"))?;
        Ok(self.int(v))
    }

    /// A text string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    /// An opcode with no argument (`MARK`, `TUPLE`, `REDUCE`, `NONE`, …).
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.out.push(op);
        self
    }

    /// A tuple of unsigned integers.
    pub fn uint_tuple(&mut self, values: &[u64]) -> R<&mut Self> {
        self.op(MARK);
        for &v in values {
            self.uint(v)?;
        }
        Ok(self.op(TUPLE))
    }

    /// `torch.Size(values)`.
    pub fn size(&mut self, values: &[u64]) -> R<&mut Self> {
        self.global("torch", "Size");
        self.uint_tuple(values)?;
        Ok(self.op(TUPLE1).op(REDUCE))
    }

    /// Raw bytes (an opcode's argument).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// Ends the pickle with `STOP` and returns it.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }
}

/// `MARK`.
pub const MARK: u8 = b'(';
/// `TUPLE` (to the last mark).
pub const TUPLE: u8 = b't';
/// `TUPLE1`.
pub const TUPLE1: u8 = 0x85;
/// `EMPTY_TUPLE`.
pub const EMPTY_TUPLE: u8 = b')';
/// `REDUCE`.
pub const REDUCE: u8 = b'R';
/// `NEWOBJ`.
pub const NEWOBJ: u8 = 0x81;
/// `BUILD`.
pub const BUILD: u8 = b'b';
/// `NONE`.
pub const NONE: u8 = b'N';
/// `NEWFALSE`.
pub const FALSE: u8 = 0x89;
/// `EMPTY_DICT`.
pub const EMPTY_DICT: u8 = b'}';
/// `EMPTY_LIST`.
pub const EMPTY_LIST: u8 = b']';
/// `SETITEM`.
pub const SETITEM: u8 = b's';
/// `APPEND`.
pub const APPEND: u8 = b'a';
/// `BINPERSID`.
pub const BINPERSID: u8 = b'Q';

/// The `data.pkl` of a contiguous tensor whose storage is `data/0`: what `torch.save` writes
/// (`_rebuild_tensor_v2` with a typed storage, or `_rebuild_tensor_v3` with an untyped one for
/// the newer dtypes).
pub fn tensor_pickle(dtype: Dtype, shape: &[u64]) -> R<Vec<u8>> {
    let name = dtype::torch_name(dtype)
        .ok_or_else(|| format!("dtype {} has no torch equivalent", dtype.name()))?;
    let numel = crate::format::element_count(shape).ok_or("the shape overflows")?;
    let class = dtype::storage_class(dtype);
    let mut w = PickleWriter::new();
    let func = if class.is_some() {
        "_rebuild_tensor_v2"
    } else {
        "_rebuild_tensor_v3"
    };
    w.global("torch._utils", func).op(MARK);
    w.op(MARK).str("storage");
    match class {
        Some(class) => {
            w.global("torch", class).str("0").str("cpu").uint(numel)?;
        }
        None => {
            let bytes = dtype.byte_len(numel).ok_or("the tensor's size overflows")?;
            w.global("torch.storage", "UntypedStorage")
                .str("0")
                .str("cpu")
                .uint(bytes)?;
        }
    }
    w.op(TUPLE).op(BINPERSID).int(0);
    w.uint_tuple(shape)?;
    let mut stride = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * shape[d + 1].max(1);
    }
    w.uint_tuple(&stride)?;
    w.op(FALSE)
        .global("collections", "OrderedDict")
        .op(EMPTY_TUPLE)
        .op(REDUCE);
    if class.is_none() {
        w.global("torch", name);
    }
    w.op(TUPLE).op(REDUCE);
    Ok(w.finish())
}
