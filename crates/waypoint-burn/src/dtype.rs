//! burn's [`DType`] ↔ waypoint's [`Dtype`].
//!
//! It owns the mapping only: converting values between dtypes is not done here (a tensor is
//! saved and loaded in its own dtype).

use burn::tensor::{BoolStore, DType};
use waypoint::Dtype;

/// The waypoint dtype a burn tensor of `dtype` is saved as, or `None` where the format has no
/// counterpart: quantized tensors (`QFloat`), and booleans stored four bytes per element
/// (`Bool(U32)`, which some GPU backends use; move such a module to a CPU device first).
///
/// `Flex32` (a 32-bit float whose arithmetic may run in lower precision) is saved as `F32`;
/// booleans stored one byte per element (`Bool(Native)`, `Bool(U8)`) as `BOOL`.
///
/// ```
/// use burn::tensor::DType;
/// assert_eq!(waypoint_burn::dtype::to_waypoint(DType::BF16), Some(waypoint::Dtype::BF16));
/// ```
pub fn to_waypoint(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 | DType::Flex32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool(BoolStore::Native | BoolStore::U8) => Dtype::BOOL,
        DType::Bool(BoolStore::U32) | DType::QFloat(_) => return None,
    })
}

/// The burn dtype a waypoint tensor of `dtype` is read back as where no burn tensor says which
/// (optimizer state): the inverse of [`to_waypoint`] (`BOOL` as `Bool(Native)`), `None` for the
/// format's dtypes burn has no type for (complex, 8-bit and smaller floats).
pub fn to_burn(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U16 => DType::U16,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool(BoolStore::Native),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_burn_and_waypoint_share_maps_both_ways() {
        let shared = [
            DType::F64,
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U64,
            DType::U32,
            DType::U16,
            DType::U8,
            DType::Bool(BoolStore::Native),
        ];
        for dtype in shared {
            let ours = to_waypoint(dtype);
            assert_eq!(ours.and_then(to_burn), Some(dtype), "{dtype:?}");
            assert_eq!(ours.map(|d| d.bits()), Some(dtype.size() as u64 * 8));
        }
        assert_eq!(to_waypoint(DType::Flex32), Some(Dtype::F32));
        assert_eq!(to_waypoint(DType::Bool(BoolStore::U8)), Some(Dtype::BOOL));
        assert_eq!(to_waypoint(DType::Bool(BoolStore::U32)), None);
        assert_eq!(to_burn(Dtype::C64), None);
        assert_eq!(to_burn(Dtype::F8_E4M3), None);
    }
}
