//! Named candle variables handed to waypoint without a copy, and loaded back into the same vars.
//!
//! - Saving: [`NamedVars::lock`] takes a read lock on every var's storage and lends its bytes as
//!   [`TensorRef`]s (`TensorData::Borrowed`): a synchronous save writes straight from candle's
//!   memory; an asynchronous save copies them into its staging buffers before the save call
//!   returns, which it must, since vars are updated in place by the next optimizer step.
//! - Loading: [`NamedVars::staging`] allocates one buffer per var, typed like it; waypoint fills
//!   them ([`VarStaging::slots`], checked against the checkpoint's dtype and shape), and
//!   [`VarStaging::apply`] moves each buffer into a tensor (no copy) and writes it into the var's
//!   own storage with `Var::set`, so every clone of the var (the model's layers, an optimizer)
//!   sees the loaded values.

use crate::dtype::to_waypoint;
use crate::error::{Error, Result};
use candle_core::{CpuStorage, DType, Device, Layout, Storage, StorageRef, Tensor, Var};
use waypoint::{Dtype, SinkSlot, TensorRef};
use zerocopy::IntoBytes;

#[cfg(target_endian = "big")]
compile_error!(
    "waypoint-candle lends candle's native-endian memory as waypoint's little-endian tensor data"
);

/// Variables by name, kept sorted by name (byte order), the order they are saved in.
#[derive(Debug, Clone, Default)]
pub struct NamedVars {
    entries: Vec<(String, Var)>,
}

impl NamedVars {
    /// No variables.
    pub fn new() -> Self {
        NamedVars::default()
    }

    /// The vars of a candle-nn `VarMap` under their own names, each prefixed by `prefix` (for
    /// example `"model."`). The vars are shared, not copied: training through the `VarMap`
    /// changes what is saved next.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let _layer = candle_nn::linear(4, 2, vb.pp("fc")).unwrap();
    /// let vars = waypoint_candle::NamedVars::from_varmap(&varmap, "model.").unwrap();
    /// assert_eq!(vars.names().collect::<Vec<_>>(), ["model.fc.bias", "model.fc.weight"]);
    /// ```
    pub fn from_varmap(varmap: &candle_nn::VarMap, prefix: &str) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut vars = NamedVars::new();
        for (name, var) in data.iter() {
            vars.insert(format!("{prefix}{name}"), var.clone())?;
        }
        Ok(vars)
    }

    /// Adds `var` under `name`; refuses a name already present.
    pub fn insert(&mut self, name: impl Into<String>, var: Var) -> Result<()> {
        let name = name.into();
        match self
            .entries
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
        {
            Ok(_) => Err(Error::DuplicateName { tensor: name }),
            Err(at) => {
                self.entries.insert(at, (name, var));
                Ok(())
            }
        }
    }

    /// The var named `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, var)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// How many vars.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Elements in all vars together.
    pub fn elem_count(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Read-locks every var's storage, checking that each is a contiguous CPU tensor of a dtype
    /// waypoint carries. Hold the result only for the save call: the vars cannot be updated
    /// while it lives (an update from this thread would deadlock).
    pub fn lock(&self) -> Result<LockedVars<'_>> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (name, var) in &self.entries {
            let dtype = to_waypoint(var.dtype()).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.clone(),
                dtype: format!("{:?}", var.dtype()),
            })?;
            let (storage, layout) = var.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Err(Error::NotOnCpu {
                    tensor: name.clone(),
                    device: format!("{:?}", var.device().location()),
                });
            };
            if !layout.is_contiguous() || cpu_bytes(cpu).is_none() {
                return Err(Error::NotContiguous {
                    tensor: name.clone(),
                });
            }
            entries.push(Locked {
                name,
                storage,
                layout,
                dtype,
                elem_size: var.dtype().size_in_bytes(),
            });
        }
        Ok(LockedVars { entries })
    }

    /// Empty buffers, typed and shaped like the vars, for a load to fill; see [`VarStaging`].
    pub fn staging(&self) -> Result<VarStaging> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (name, var) in &self.entries {
            let unsupported = || Error::UnsupportedDtype {
                tensor: name.clone(),
                dtype: format!("{:?}", var.dtype()),
            };
            let dtype = to_waypoint(var.dtype()).ok_or_else(unsupported)?;
            let buffer = zeroed(var.dtype(), var.elem_count()).ok_or_else(unsupported)?;
            entries.push(Staged {
                name: name.clone(),
                var: var.clone(),
                dtype,
                shape: var.dims().iter().map(|&d| d as u64).collect(),
                buffer,
            });
        }
        Ok(VarStaging { entries })
    }
}

/// One read-locked var.
struct Locked<'a> {
    name: &'a str,
    storage: StorageRef<'a>,
    layout: &'a Layout,
    dtype: Dtype,
    elem_size: usize,
}

/// Vars whose storage is read-locked, so that their bytes can be lent to a save
/// ([`NamedVars::lock`]).
pub struct LockedVars<'a> {
    entries: Vec<Locked<'a>>,
}

impl std::fmt::Debug for LockedVars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.name))
            .finish()
    }
}

impl LockedVars<'_> {
    /// Every var as a whole tensor whose bytes are borrowed from candle's storage (no copy).
    pub fn tensor_refs(&self) -> Vec<TensorRef<'_>> {
        self.entries
            .iter()
            .filter_map(|e| {
                let Storage::Cpu(cpu) = &*e.storage else {
                    return None;
                };
                let bytes = cpu_bytes(cpu)?;
                let size = e.elem_size;
                let start = e.layout.start_offset() * size;
                let len = e.layout.shape().elem_count() * size;
                let data = bytes.get(start..start + len)?;
                let shape = e.layout.dims().iter().map(|&d| d as u64).collect();
                Some(TensorRef::whole(e.name, e.dtype, shape, data))
            })
            .collect()
    }
}

/// Buffers typed and shaped like some vars, which a load fills and [`VarStaging::apply`] writes
/// into the vars.
#[derive(Debug)]
pub struct VarStaging {
    entries: Vec<Staged>,
}

/// One var's load buffer.
#[derive(Debug)]
struct Staged {
    name: String,
    var: Var,
    dtype: Dtype,
    shape: Vec<u64>,
    buffer: CpuStorage,
}

impl VarStaging {
    /// The buffers to fill, one per var, named, typed and shaped like it: waypoint checks the
    /// checkpoint's tensor against them and fails naming the tensor when they differ.
    pub fn slots(&mut self) -> Vec<SinkSlot<'_>> {
        self.entries
            .iter_mut()
            .filter_map(|e| {
                Some(SinkSlot {
                    name: e.name.as_str(),
                    dtype: e.dtype,
                    shape: e.shape.as_slice(),
                    data: cpu_bytes_mut(&mut e.buffer)?,
                })
            })
            .collect()
    }

    /// Writes each filled buffer into its var, in place (`Var::set`): the buffer becomes a
    /// tensor without a copy, then is copied once into the var's own storage.
    pub fn apply(self) -> Result<()> {
        for e in self.entries {
            let shape: Vec<usize> = e.var.dims().to_vec();
            let tensor =
                into_tensor(e.buffer, &shape).map_err(|err| Error::candle(&e.name, err))?;
            if tensor.dtype() != e.var.dtype() || tensor.dims() != e.var.dims() {
                return Err(Error::Mismatch {
                    tensor: e.name,
                    expected: format!("{:?} {:?}", e.var.dtype(), e.var.dims()),
                    found: format!("{:?} {:?}", tensor.dtype(), tensor.dims()),
                });
            }
            e.var
                .set(&tensor)
                .map_err(|err| Error::candle(&e.name, err))?;
        }
        Ok(())
    }
}

/// The bytes of a CPU storage (native order, little-endian here); `None` for the types without a
/// byte view.
fn cpu_bytes(storage: &CpuStorage) -> Option<&[u8]> {
    Some(match storage {
        CpuStorage::U8(v) | CpuStorage::F8E8M0(v) => v.as_slice(),
        CpuStorage::U32(v) => v.as_bytes(),
        CpuStorage::I16(v) => v.as_bytes(),
        CpuStorage::I32(v) => v.as_bytes(),
        CpuStorage::I64(v) => v.as_bytes(),
        CpuStorage::BF16(v) => v.as_bytes(),
        CpuStorage::F16(v) => v.as_bytes(),
        CpuStorage::F32(v) => v.as_bytes(),
        CpuStorage::F64(v) => v.as_bytes(),
        CpuStorage::F8E4M3(_)
        | CpuStorage::F6E2M3(_)
        | CpuStorage::F6E3M2(_)
        | CpuStorage::F4(_) => return None,
    })
}

/// The bytes of a CPU storage, writable.
fn cpu_bytes_mut(storage: &mut CpuStorage) -> Option<&mut [u8]> {
    Some(match storage {
        CpuStorage::U8(v) | CpuStorage::F8E8M0(v) => v.as_mut_slice(),
        CpuStorage::U32(v) => v.as_mut_bytes(),
        CpuStorage::I16(v) => v.as_mut_bytes(),
        CpuStorage::I32(v) => v.as_mut_bytes(),
        CpuStorage::I64(v) => v.as_mut_bytes(),
        CpuStorage::BF16(v) => v.as_mut_bytes(),
        CpuStorage::F16(v) => v.as_mut_bytes(),
        CpuStorage::F32(v) => v.as_mut_bytes(),
        CpuStorage::F64(v) => v.as_mut_bytes(),
        CpuStorage::F8E4M3(_)
        | CpuStorage::F6E2M3(_)
        | CpuStorage::F6E3M2(_)
        | CpuStorage::F4(_) => return None,
    })
}

/// A zeroed CPU storage of `n` elements of `dtype`.
fn zeroed(dtype: DType, n: usize) -> Option<CpuStorage> {
    Some(match dtype {
        DType::U8 => CpuStorage::U8(vec![0; n]),
        DType::F8E8M0 => CpuStorage::F8E8M0(vec![0; n]),
        DType::U32 => CpuStorage::U32(vec![0; n]),
        DType::I16 => CpuStorage::I16(vec![0; n]),
        DType::I32 => CpuStorage::I32(vec![0; n]),
        DType::I64 => CpuStorage::I64(vec![0; n]),
        DType::BF16 => CpuStorage::BF16(vec![Default::default(); n]),
        DType::F16 => CpuStorage::F16(vec![Default::default(); n]),
        DType::F32 => CpuStorage::F32(vec![0.0; n]),
        DType::F64 => CpuStorage::F64(vec![0.0; n]),
        _ => return None,
    })
}

/// A CPU tensor of `shape` owning `storage`'s buffer (moved, not copied; `F8E8M0`, which candle
/// builds only from bytes, is copied).
fn into_tensor(storage: CpuStorage, shape: &[usize]) -> candle_core::Result<Tensor> {
    let cpu = &Device::Cpu;
    match storage {
        CpuStorage::U8(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F8E8M0(v) => Tensor::from_raw_buffer(&v, DType::F8E8M0, shape, cpu),
        CpuStorage::U32(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::I16(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::I32(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::I64(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::BF16(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F16(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, cpu),
        _ => Err(candle_core::Error::Msg(
            "this dtype has no byte view in waypoint-candle".into(),
        )),
    }
}
