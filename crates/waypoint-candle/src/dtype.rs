//! Element types: candle's [`DType`] and waypoint's [`Dtype`] name the same layouts (little-endian,
//! row-major); this module maps one onto the other.
//!
//! It must not convert any bytes: the layouts already agree, so only the names map. A type one side
//! lacks maps to `None`, never to a neighbour; what to do then is the caller's.

use candle_core::DType;
use waypoint::Dtype;

/// waypoint's name for candle's `dtype`; `None` for the candle types waypoint-candle does not
/// carry: `F8E4M3` (its element type exposes no byte view in candle) and the sub-byte `F6E2M3`,
/// `F6E3M2`, `F4` (candle gives them no byte size, so their packing is not defined).
///
/// ```
/// use waypoint_candle::dtype::to_waypoint;
/// assert_eq!(to_waypoint(candle_core::DType::BF16), Some(waypoint::Dtype::BF16));
/// ```
pub fn to_waypoint(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I16 => Dtype::I16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F8E8M0 => Dtype::F8_E8M0,
        // And any type a later candle adds (DType is non-exhaustive).
        _ => return None,
    })
}

/// candle's name for waypoint's `dtype`; `None` where candle has no such type (`BOOL`, `I8`,
/// `U16`, most 8-bit floats, complex numbers).
pub fn to_candle(dtype: Dtype) -> Option<DType> {
    [
        DType::U8,
        DType::U32,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::BF16,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::F8E8M0,
    ]
    .into_iter()
    .find(|&d| to_waypoint(d) == Some(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_a_bijection_where_defined() {
        let table = [
            (DType::U8, Some(Dtype::U8)),
            (DType::U32, Some(Dtype::U32)),
            (DType::I16, Some(Dtype::I16)),
            (DType::I32, Some(Dtype::I32)),
            (DType::I64, Some(Dtype::I64)),
            (DType::BF16, Some(Dtype::BF16)),
            (DType::F16, Some(Dtype::F16)),
            (DType::F32, Some(Dtype::F32)),
            (DType::F64, Some(Dtype::F64)),
            (DType::F8E8M0, Some(Dtype::F8_E8M0)),
            (DType::F8E4M3, None),
            (DType::F6E2M3, None),
            (DType::F6E3M2, None),
            (DType::F4, None),
        ];
        for (candle, waypoint) in table {
            assert_eq!(to_waypoint(candle), waypoint, "{candle:?}");
            if let Some(w) = waypoint {
                assert_eq!(to_candle(w), Some(candle), "{w:?}");
            }
        }
        for w in [
            Dtype::BOOL,
            Dtype::I8,
            Dtype::U16,
            Dtype::C64,
            Dtype::F8_E4M3,
            Dtype::F4,
        ] {
            assert_eq!(to_candle(w), None, "{w:?}");
        }
    }
}
