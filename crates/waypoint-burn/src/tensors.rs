//! The bridge between burn's tensor transport and waypoint's: burn-store's
//! [`burn_pack::Tensor`](burn::store::burn_pack::Tensor) (what `ModuleSnapshot::collect` gives
//! and `apply` takes) and burnpack records (optimizer and scheduler state) as named, typed byte
//! buffers that a save borrows, and back.
//!
//! It owns the conversions only: it must not decide names beyond burn's own, nor save or load.
//!
//! The one copy: burn hands a tensor's bytes over as a [`Bytes`] read back from the backend
//! (`into_data`), a copy of the device buffer even on CPU backends; the save then borrows that
//! buffer without copying again. Loading goes the other way: waypoint fills a staging buffer,
//! which becomes the tensor's data (`from_data`, a copy into the backend's storage).

use crate::dtype::{to_burn, to_waypoint};
use crate::error::{Error, Result};
use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{self, Reader, Scalar, Writer};
use burn::tensor::Bytes;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use waypoint::{Dtype, TensorRef, serde_json};

/// One tensor read out of burn, owned until the save has written it.
pub(crate) struct Owned {
    /// Its name in the checkpoint.
    pub name: String,
    /// Its dtype in the checkpoint.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its little-endian bytes, row-major.
    pub bytes: Bytes,
    /// burn's parameter id (module parameters and optimizer state), if any.
    pub param_id: Option<u64>,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("param_id", &self.param_id)
            .finish()
    }
}

impl Owned {
    /// The tensor's bytes, lent to a save.
    pub fn tensor_ref(&self) -> TensorRef<'_> {
        TensorRef::whole(
            self.name.as_str(),
            self.dtype,
            self.shape.clone(),
            &self.bytes[..],
        )
    }

    /// Takes a burn-store tensor's bytes (producing them if deferred: the read-back copy).
    pub fn from_pack(tensor: burn_pack::Tensor) -> Result<Self> {
        let name = tensor.name.clone();
        let dtype = to_waypoint(tensor.dtype).ok_or_else(|| Error::UnsupportedDtype {
            tensor: name.clone(),
            dtype: format!("{:?}", tensor.dtype),
        })?;
        let (name, _, shape, param_id, bytes) =
            tensor.into_parts().map_err(|e| Error::burn(&name, e))?;
        Ok(Owned {
            name,
            dtype,
            shape: shape.iter().map(|&d| d as u64).collect(),
            bytes,
            param_id,
        })
    }

    /// The tensor as burn-store's, typed `dtype` on burn's side.
    pub fn into_pack(self, dtype: burn::tensor::DType) -> burn_pack::Tensor {
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        burn_pack::Tensor::new(self.name, dtype, shape, self.param_id, self.bytes)
    }
}

/// Every parameter and buffer of `module`, named by burn's module paths (`encoder.fc.weight`,
/// the names burn's `SafetensorsStore` and `BurnpackStore` use), with their param ids.
pub(crate) fn module_tensors<M: Module>(module: &M) -> Result<Vec<Owned>> {
    module
        .collect(None, None, false)
        .into_iter()
        .map(Owned::from_pack)
        .collect()
}

/// A burnpack record taken apart: its tensors, typed scalars and string metadata.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Its tensors, named as the record names them.
    pub tensors: Vec<Owned>,
    /// Its scalars (step counts, ranks, scheduler positions).
    pub scalars: BTreeMap<String, Scalar>,
    /// Its metadata (for optimizer records: param id → module path).
    pub metadata: BTreeMap<String, String>,
}

impl Record {
    /// Takes a burnpack buffer apart (`what` names it in errors).
    pub fn read(bytes: Bytes, what: &str) -> Result<Self> {
        let reader = Reader::from_bytes(bytes).map_err(|e| Error::burn(what, e))?;
        let scalars = reader.scalars().clone();
        let metadata = reader.metadata().clone();
        let tensors = reader
            .into_tensors()
            .map_err(|e| Error::burn(what, e))?
            .into_iter()
            .map(Owned::from_pack)
            .collect::<Result<Vec<_>>>()?;
        Ok(Record {
            tensors,
            scalars,
            metadata,
        })
    }

    /// Puts a burnpack buffer back together (`what` names it in errors).
    pub fn write(self, what: &str) -> Result<Bytes> {
        let tensors = self
            .tensors
            .into_iter()
            .map(|t| {
                let dtype = to_burn(t.dtype).ok_or_else(|| Error::UnsupportedDtype {
                    tensor: t.name.clone(),
                    dtype: t.dtype.name().to_owned(),
                })?;
                Ok(t.into_pack(dtype))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut writer = Writer::new(tensors);
        for (key, value) in &self.scalars {
            writer = writer.with_scalar(key, *value);
        }
        for (key, value) in &self.metadata {
            writer = writer.with_metadata(key, value);
        }
        writer.into_bytes().map_err(|e| Error::burn(what, e))
    }
}

/// A burnpack scalar as JSON, exactly (floats by their bits: JSON numbers cannot carry NaN or
/// infinities, and the step must continue bit for bit).
pub(crate) fn scalar_to_json(scalar: Scalar) -> Value {
    match scalar {
        Scalar::Int(v) => json!({ "int": v }),
        Scalar::UInt(v) => json!({ "uint": v }),
        Scalar::Float(v) => json!({ "f64_bits": v.to_bits() }),
        Scalar::Bool(v) => json!({ "bool": v }),
    }
}

/// The inverse of [`scalar_to_json`] (`key` names it in errors).
pub(crate) fn scalar_from_json(key: &str, value: &Value) -> Result<Scalar> {
    let bad = || Error::state(key, format!("{value} is not a scalar"));
    let object = value.as_object().ok_or_else(bad)?;
    let (kind, inner) = object.iter().next().ok_or_else(bad)?;
    Ok(match kind.as_str() {
        "int" => Scalar::Int(inner.as_i64().ok_or_else(bad)?),
        "uint" => Scalar::UInt(inner.as_u64().ok_or_else(bad)?),
        "f64_bits" => Scalar::Float(f64::from_bits(inner.as_u64().ok_or_else(bad)?)),
        "bool" => Scalar::Bool(inner.as_bool().ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// Scalars as a JSON object.
pub(crate) fn scalars_to_json(scalars: &BTreeMap<String, Scalar>) -> Value {
    Value::Object(
        scalars
            .iter()
            .map(|(k, v)| (k.clone(), scalar_to_json(*v)))
            .collect(),
    )
}

/// The inverse of [`scalars_to_json`] (`key` names the object in errors).
pub(crate) fn scalars_from_json(key: &str, value: &Value) -> Result<BTreeMap<String, Scalar>> {
    let Some(object) = value.as_object() else {
        return Err(Error::state(key, "not an object"));
    };
    object
        .iter()
        .map(|(k, v)| Ok((k.clone(), scalar_from_json(&format!("{key}.{k}"), v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip_through_json_exactly() {
        let cases = [
            Scalar::Int(-3),
            Scalar::UInt(u64::MAX),
            Scalar::Float(f64::NAN),
            Scalar::Float(-0.0),
            Scalar::Float(0.1),
            Scalar::Bool(true),
        ];
        for scalar in cases {
            let back = scalar_from_json("k", &scalar_to_json(scalar)).map(|s| match s {
                Scalar::Float(f) => Scalar::UInt(f.to_bits()),
                other => other,
            });
            let want = match scalar {
                Scalar::Float(f) => Scalar::UInt(f.to_bits()),
                other => other,
            };
            assert_eq!(back.ok(), Some(want), "{scalar:?}");
        }
        assert!(scalar_from_json("k", &json!({ "int": "x" })).is_err());
        assert!(scalar_from_json("k", &json!(3)).is_err());
    }
}
