//! Element types: the safetensors dtype names, their sizes in bits, and byte-size arithmetic that
//! never overflows silently.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An element type, named as safetensors names it.
///
/// ```
/// use waypoint::Dtype;
/// assert_eq!(Dtype::BF16.bits(), 16);
/// assert_eq!("F8_E4M3".parse::<Dtype>().unwrap(), Dtype::F8_E4M3);
/// assert_eq!(Dtype::F4.byte_len(6).unwrap(), 3);
/// ```
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte per element.
    BOOL,
    /// 4-bit float (E2M1), two elements per byte.
    F4,
    /// 6-bit float, E2M3.
    F6_E2M3,
    /// 6-bit float, E3M2.
    F6_E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, E5M2.
    F8_E5M2,
    /// 8-bit float, E4M3.
    F8_E4M3,
    /// 8-bit exponent-only float (MX scales).
    F8_E8M0,
    /// 8-bit float, E4M3 without negative zero / infinities.
    F8_E4M3FNUZ,
    /// 8-bit float, E5M2 without negative zero / infinities.
    F8_E5M2FNUZ,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex of two F32.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, in the order of safetensors' list.
    pub const ALL: [Dtype; 22] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Size of one element in bits.
    pub const fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// Alignment in bytes that a tensor of this dtype gets inside a shard's data section: its
    /// element size, and 1 for sub-byte kinds.
    pub const fn alignment(self) -> u64 {
        let bytes = self.bits() / 8;
        if bytes == 0 { 1 } else { bytes }
    }

    /// Whether elements are smaller than a byte (F4, F6): such tensors must hold a whole number of
    /// bytes, and so must every chunk of them.
    pub const fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }

    /// The safetensors name, e.g. `"BF16"`.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::F8_E4M3FNUZ => "F8_E4M3FNUZ",
            Dtype::F8_E5M2FNUZ => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes taken by `elements` elements, or `None` when that overflows `u64` or, for sub-byte
    /// kinds, is not a whole number of bytes.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let bits = elements.checked_mul(self.bits())?;
        if bits % 8 != 0 {
            return None;
        }
        Some(bits / 8)
    }
}

/// Number of elements of a shape, or `None` on overflow. The empty shape (a 0-d tensor) has one.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an unknown dtype name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype {0:?}; expected one of the safetensors names (F32, BF16, F8_E4M3, …)")]
pub struct UnknownDtype(pub String);

impl FromStr for Dtype {
    type Err = UnknownDtype;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDtype(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for d in Dtype::ALL {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<Dtype>(&json).unwrap(), d);
            assert_eq!(d.name().parse::<Dtype>().unwrap(), d);
        }
        assert!("f32".parse::<Dtype>().is_err());
    }

    #[test]
    fn byte_lengths_table() {
        let table = [
            (Dtype::F32, 3, Some(12)),
            (Dtype::BOOL, 5, Some(5)),
            (Dtype::F4, 2, Some(1)),
            (Dtype::F4, 3, None),
            (Dtype::F6_E2M3, 4, Some(3)),
            (Dtype::F6_E3M2, 1, None),
            (Dtype::C64, 2, Some(16)),
            (Dtype::U64, u64::MAX, None),
            (Dtype::F16, 0, Some(0)),
        ];
        for (d, n, want) in table {
            assert_eq!(d.byte_len(n), want, "{d} × {n}");
        }
    }

    #[test]
    fn element_counts() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[2, 0, 5]), Some(0));
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
    }
}
