//! torch's dtype names and storage classes, and waypoint's [`Dtype`] for each. The one table
//! both directions (reading a DCP checkpoint, writing one) use.

use crate::format::Dtype;

/// `(torch dtype name, waypoint dtype, legacy storage class)`. A dtype without a storage class is
/// one torch pickles through `_rebuild_tensor_v3` with an `UntypedStorage` (numel in bytes).
const TABLE: &[(&str, Dtype, Option<&str>)] = &[
    ("float64", Dtype::F64, Some("DoubleStorage")),
    ("float32", Dtype::F32, Some("FloatStorage")),
    ("float16", Dtype::F16, Some("HalfStorage")),
    ("bfloat16", Dtype::BF16, Some("BFloat16Storage")),
    ("int64", Dtype::I64, Some("LongStorage")),
    ("int32", Dtype::I32, Some("IntStorage")),
    ("int16", Dtype::I16, Some("ShortStorage")),
    ("int8", Dtype::I8, Some("CharStorage")),
    ("uint8", Dtype::U8, Some("ByteStorage")),
    ("bool", Dtype::BOOL, Some("BoolStorage")),
    ("complex64", Dtype::C64, Some("ComplexFloatStorage")),
    ("uint16", Dtype::U16, None),
    ("uint32", Dtype::U32, None),
    ("uint64", Dtype::U64, None),
    ("float8_e4m3fn", Dtype::F8_E4M3, None),
    ("float8_e5m2", Dtype::F8_E5M2, None),
    ("float8_e4m3fnuz", Dtype::F8_E4M3FNUZ, None),
    ("float8_e5m2fnuz", Dtype::F8_E5M2FNUZ, None),
    ("float8_e8m0fnu", Dtype::F8_E8M0, None),
];

/// torch dtypes that exist but have no waypoint dtype (refused with their name).
const NO_WAYPOINT_DTYPE: &[&str] = &[
    "complex128",
    "complex32",
    "float4_e2m1fn_x2",
    "qint8",
    "qint32",
    "quint8",
    "quint4x2",
    "quint2x4",
];

/// The waypoint dtype of torch dtype `torch.<name>` (`"float32"` → F32).
pub fn from_torch_name(name: &str) -> Option<Dtype> {
    TABLE.iter().find(|(n, ..)| *n == name).map(|(_, d, _)| *d)
}

/// Whether `torch.<name>` is a dtype torch has but waypoint does not (for a clearer refusal).
pub fn is_unsupported_torch_dtype(name: &str) -> bool {
    NO_WAYPOINT_DTYPE.contains(&name) || name == "ComplexDoubleStorage"
}

/// The waypoint dtype of legacy storage class `torch.<name>` (`"FloatStorage"` → F32).
pub fn from_storage_class(name: &str) -> Option<Dtype> {
    TABLE
        .iter()
        .find(|(_, _, s)| *s == Some(name))
        .map(|(_, d, _)| *d)
}

/// torch's name for `dtype`, if torch has it (F4 and F6 it has not).
pub fn torch_name(dtype: Dtype) -> Option<&'static str> {
    TABLE.iter().find(|(_, d, _)| *d == dtype).map(|(n, ..)| *n)
}

/// The legacy storage class torch pickles `dtype` with, or `None` for a `_rebuild_tensor_v3`
/// dtype.
pub fn storage_class(dtype: Dtype) -> Option<&'static str> {
    TABLE
        .iter()
        .find(|(_, d, _)| *d == dtype)
        .and_then(|(.., s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, dtype, class) in TABLE {
            assert_eq!(from_torch_name(name), Some(*dtype));
            assert_eq!(torch_name(*dtype), Some(*name));
            assert_eq!(storage_class(*dtype), *class);
            if let Some(class) = class {
                assert_eq!(from_storage_class(class), Some(*dtype));
            }
        }
        assert_eq!(from_torch_name("complex128"), None);
        assert!(is_unsupported_torch_dtype("complex128"));
    }
}
