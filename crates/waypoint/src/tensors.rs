//! The user's side of the engine (re-exported by [`crate::engine`]): how tensors are handed over for saving ([`TensorRef`],
//! [`TensorSource`]) and received on load ([`Tensor`], [`TensorSink`]).
//!
//! It owns these types and the checks of a tensor handed over (`TensorRef::validate`: name, shape,
//! chunk bounds, byte length), trusting nothing the user gives. It must not write, read or lay out
//! any file: saving and loading are `save`'s and `load`'s.

use crate::error::{Error, Result};
use crate::format::{Dtype, MAX_DIMS, element_count, tensor_name_problem};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The bytes of a tensor handed to a save.
///
/// - `Borrowed`: the caller's own buffer. A synchronous save writes straight from it; an
///   asynchronous save copies it into a staging buffer first (the caller may mutate it as soon as
///   the save call returns, as a training loop does with its parameters).
/// - `Owned`: bytes the caller produced for the save (a device tensor copied to the host); moved
///   to the background writer without another copy.
/// - `Shared`: an immutable buffer the caller promises not to mutate; an asynchronous save keeps a
///   reference and writes from it without a copy. Never use it for tensors updated in place.
#[derive(Debug, Clone)]
pub enum TensorData<'a> {
    /// The caller's buffer, borrowed for the duration of the call.
    Borrowed(&'a [u8]),
    /// Bytes handed over.
    Owned(Vec<u8>),
    /// An immutable shared buffer.
    Shared(Arc<[u8]>),
}

impl TensorData<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TensorData::Borrowed(b) => b,
            TensorData::Owned(v) => v,
            TensorData::Shared(a) => a,
        }
    }

    /// A borrowed view of the same bytes.
    pub fn borrowed(&self) -> TensorData<'_> {
        TensorData::Borrowed(self.as_slice())
    }
}

impl std::ops::Deref for TensorData<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for TensorData<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<'a> From<&'a [u8]> for TensorData<'a> {
    fn from(b: &'a [u8]) -> Self {
        TensorData::Borrowed(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for TensorData<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        TensorData::Borrowed(b)
    }
}

impl<'a> From<&'a Vec<u8>> for TensorData<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        TensorData::Borrowed(b)
    }
}

impl From<Vec<u8>> for TensorData<'_> {
    fn from(v: Vec<u8>) -> Self {
        TensorData::Owned(v)
    }
}

impl From<Arc<[u8]>> for TensorData<'_> {
    fn from(a: Arc<[u8]>) -> Self {
        TensorData::Shared(a)
    }
}

impl<'a> From<Cow<'a, [u8]>> for TensorData<'a> {
    fn from(c: Cow<'a, [u8]>) -> Self {
        match c {
            Cow::Borrowed(b) => TensorData::Borrowed(b),
            Cow::Owned(v) => TensorData::Owned(v),
        }
    }
}

/// One tensor, or one chunk of a larger (sharded) tensor, handed to a save.
///
/// The bytes are borrowed where the caller can lend them (no copy is made: the engine writes
/// straight from them), owned where the caller had to produce them (a device tensor copied to
/// the host), or shared and immutable ([`TensorData`]), in the spirit of safetensors' `View`.
/// Bytes are little-endian, row-major, no strides.
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    /// The tensor's name (dots, slashes and unicode are fine; `__metadata__` is refused).
    pub name: Cow<'a, str>,
    /// Element type.
    pub dtype: Dtype,
    /// Shape of the whole (global) tensor.
    pub global_shape: Vec<u64>,
    /// Where this chunk starts within the global tensor, per dimension.
    pub offsets: Vec<u64>,
    /// Shape of this chunk (equal to `global_shape` for a whole tensor).
    pub shape: Vec<u64>,
    /// The chunk's bytes.
    pub data: TensorData<'a>,
}

impl<'a> TensorRef<'a> {
    /// A whole tensor.
    ///
    /// ```
    /// use waypoint::{Dtype, TensorRef};
    /// let t = TensorRef::whole("bias", Dtype::U8, vec![3], &[1, 2, 3]);
    /// assert_eq!(t.offsets, vec![0]);
    /// ```
    pub fn whole(
        name: impl Into<Cow<'a, str>>,
        dtype: Dtype,
        shape: Vec<u64>,
        data: impl Into<TensorData<'a>>,
    ) -> Self {
        Self::chunk(
            name,
            dtype,
            shape.clone(),
            vec![0; shape.len()],
            shape,
            data,
        )
    }

    /// A chunk of a tensor of `global_shape`, starting at `offsets`, of shape `shape`.
    pub fn chunk(
        name: impl Into<Cow<'a, str>>,
        dtype: Dtype,
        global_shape: Vec<u64>,
        offsets: Vec<u64>,
        shape: Vec<u64>,
        data: impl Into<TensorData<'a>>,
    ) -> Self {
        TensorRef {
            name: name.into(),
            dtype,
            global_shape,
            offsets,
            shape,
            data: data.into(),
        }
    }

    /// Checks the name, the shapes and that the data has exactly the chunk's byte length.
    pub fn validate(&self) -> Result<()> {
        let name = self.name.as_ref();
        if let Some(problem) = tensor_name_problem(name) {
            return Err(Error::tensor(name, problem));
        }
        let dims = self.global_shape.len();
        if dims > MAX_DIMS || self.offsets.len() != dims || self.shape.len() != dims {
            return Err(Error::tensor(
                name,
                format!(
                    "global shape {:?}, offsets {:?} and shape {:?} need the same number (≤ {MAX_DIMS}) of dimensions",
                    self.global_shape, self.offsets, self.shape
                ),
            ));
        }
        for d in 0..dims {
            if self.offsets[d]
                .checked_add(self.shape[d])
                .is_none_or(|e| e > self.global_shape[d])
            {
                return Err(Error::tensor(
                    name,
                    format!(
                        "chunk {:?} at {:?} does not fit in {:?}",
                        self.shape, self.offsets, self.global_shape
                    ),
                ));
            }
        }
        element_count(&self.global_shape)
            .and_then(|n| self.dtype.byte_len(n))
            .ok_or_else(|| {
                Error::tensor(
                    name,
                    format!(
                        "shape {:?} of {} has no valid byte size",
                        self.global_shape, self.dtype
                    ),
                )
            })?;
        let want = element_count(&self.shape).and_then(|n| self.dtype.byte_len(n)).ok_or_else(|| {
            Error::tensor(
                name,
                format!("chunk shape {:?} of {} is not a whole number of bytes (sub-byte dtypes need byte-aligned chunks)", self.shape, self.dtype),
            )
        })?;
        if self.data.len() as u64 != want {
            return Err(Error::tensor(
                name,
                format!(
                    "has {} bytes of data but {:?} × {} needs {want}",
                    self.data.len(),
                    self.shape,
                    self.dtype
                ),
            ));
        }
        Ok(())
    }

    /// Whether this is the whole tensor rather than a chunk.
    pub fn is_whole(&self) -> bool {
        self.shape == self.global_shape
    }
}

/// Anything that can hand tensors over for a save.
pub trait TensorSource {
    /// The tensors (or chunks) to save. Called once per save.
    fn tensors(&self) -> Vec<TensorRef<'_>>;
}

impl TensorSource for [TensorRef<'_>] {
    fn tensors(&self) -> Vec<TensorRef<'_>> {
        self.iter()
            .map(|t| TensorRef {
                name: Cow::Borrowed(t.name.as_ref()),
                dtype: t.dtype,
                global_shape: t.global_shape.clone(),
                offsets: t.offsets.clone(),
                shape: t.shape.clone(),
                data: t.data.borrowed(),
            })
            .collect()
    }
}

impl TensorSource for Vec<TensorRef<'_>> {
    fn tensors(&self) -> Vec<TensorRef<'_>> {
        self.as_slice().tensors()
    }
}

impl TensorSource for BTreeMap<String, Tensor> {
    fn tensors(&self) -> Vec<TensorRef<'_>> {
        self.iter()
            .map(|(name, t)| {
                TensorRef::whole(name.as_str(), t.dtype, t.shape.clone(), t.data.as_slice())
            })
            .collect()
    }
}

/// An owned tensor, as returned by a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Little-endian, row-major bytes.
    pub data: Vec<u8>,
}

/// One caller-owned buffer offered to a load: the tensor's name, the dtype and shape the caller
/// expects (checked against the checkpoint), and the bytes to fill.
#[derive(Debug)]
pub struct SinkSlot<'a> {
    /// The tensor's name in the checkpoint.
    pub name: &'a str,
    /// The dtype the caller expects.
    pub dtype: Dtype,
    /// The shape the caller expects.
    pub shape: &'a [u64],
    /// Where the tensor's bytes go (exactly its byte size).
    pub data: &'a mut [u8],
}

/// One caller-owned buffer for a *region* of a tensor: a rank's shard, whatever partition the
/// checkpoint was saved with (resharding). Only the bytes overlapping the region are read.
#[derive(Debug)]
pub struct RegionSlot<'a> {
    /// The tensor's name in the checkpoint.
    pub name: &'a str,
    /// The dtype the caller expects.
    pub dtype: Dtype,
    /// The global shape the caller expects.
    pub global_shape: &'a [u64],
    /// Where the region starts, per dimension.
    pub offsets: &'a [u64],
    /// The region's extent, per dimension.
    pub shape: &'a [u64],
    /// Where the region's bytes go, row-major (exactly its byte size).
    pub data: &'a mut [u8],
}

/// Receives tensors on load, into buffers the caller owns (for example a model's parameters).
///
/// All buffers are handed over at once, so the borrow checker guarantees they are distinct and
/// the engine can fill them in parallel.
pub trait TensorSink {
    /// The buffers to fill. Every named tensor must exist in the checkpoint with the given dtype
    /// and shape; tensors of the checkpoint that are not named are not read.
    fn slots(&mut self) -> Vec<SinkSlot<'_>>;
}

impl TensorSink for BTreeMap<String, Tensor> {
    fn slots(&mut self) -> Vec<SinkSlot<'_>> {
        self.iter_mut()
            .map(|(name, t)| SinkSlot {
                name: name.as_str(),
                dtype: t.dtype,
                shape: &t.shape,
                data: t.data.as_mut_slice(),
            })
            .collect()
    }
}

impl TensorSink for Vec<SinkSlot<'_>> {
    fn slots(&mut self) -> Vec<SinkSlot<'_>> {
        self.iter_mut()
            .map(|s| SinkSlot {
                name: s.name,
                dtype: s.dtype,
                shape: s.shape,
                data: &mut *s.data,
            })
            .collect()
    }
}
