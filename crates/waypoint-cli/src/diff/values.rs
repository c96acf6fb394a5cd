//! Element-wise comparison of two equally long pieces of one tensor (same dtype, same elements):
//! floats (F16, BF16, F32, F64) by value under a [`Tolerance`], every other dtype exactly, element
//! by element (sub-byte dtypes byte by byte). Pure code over byte slices: it reads nothing.

use crate::cli::Tolerance;
use waypoint::Dtype;

/// How a dtype's elements are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Little-endian floats, compared by value.
    Float(Float),
    /// Integers and other whole-byte dtypes (BOOL, FP8, C64): equal only when bit-identical.
    Exact(usize),
    /// Sub-byte dtypes (F4, F6): compared byte by byte; indices are byte indices.
    Bytes,
}

impl Kind {
    /// The comparison for `dtype`.
    pub fn of(dtype: Dtype) -> Kind {
        match dtype {
            Dtype::F16 => Kind::Float(Float::F16),
            Dtype::BF16 => Kind::Float(Float::BF16),
            Dtype::F32 => Kind::Float(Float::F32),
            Dtype::F64 => Kind::Float(Float::F64),
            d if d.is_sub_byte() => Kind::Bytes,
            d => Kind::Exact(usize::try_from(d.bits() / 8).unwrap_or(1).max(1)),
        }
    }

    /// The name of the comparison in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Float(..) => "float",
            Kind::Exact(_) => "exact",
            Kind::Bytes => "bytes",
        }
    }

    /// Bytes of one compared unit (an element, or a byte for [`Kind::Bytes`]).
    pub fn unit_bytes(self) -> usize {
        match self {
            Kind::Float(Float::F16 | Float::BF16) => 2,
            Kind::Float(Float::F32) => 4,
            Kind::Float(Float::F64) => 8,
            Kind::Exact(width) => width,
            Kind::Bytes => 1,
        }
    }
}

/// The float dtypes compared by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl Float {
    /// One element's value.
    fn decode(self, bytes: &[u8]) -> f64 {
        match self {
            Float::F16 => f16(bytes),
            Float::BF16 => bf16(bytes),
            Float::F32 => f32(bytes),
            Float::F64 => f64(bytes),
        }
    }
}

fn f16(b: &[u8]) -> f64 {
    half::f16::from_le_bytes(two(b)).to_f64()
}

fn bf16(b: &[u8]) -> f64 {
    half::bf16::from_le_bytes(two(b)).to_f64()
}

fn f32(b: &[u8]) -> f64 {
    let mut bytes = [0u8; 4];
    copy(&mut bytes, b);
    f64::from(f32::from_le_bytes(bytes))
}

fn f64(b: &[u8]) -> f64 {
    let mut bytes = [0u8; 8];
    copy(&mut bytes, b);
    f64::from_le_bytes(bytes)
}

fn two(b: &[u8]) -> [u8; 2] {
    let mut bytes = [0u8; 2];
    copy(&mut bytes, b);
    bytes
}

/// Copies as many bytes as both hold (the callers pass exactly one element).
fn copy(to: &mut [u8], from: &[u8]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = *f;
    }
}

/// What comparing one piece found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PieceStats {
    /// Units not equal under the tolerance.
    pub differing: u64,
    /// Units whose bits differ (within the tolerance or not).
    pub bit_differing: u64,
    /// The first unit (index within the piece) not equal under the tolerance.
    pub first: Option<u64>,
    /// Largest |a - b| over the piece (floats; infinite when a NaN or an infinity differs).
    pub max_abs: f64,
    /// Largest |a - b| / |b| over the differing elements (floats; infinite when b is 0).
    pub max_rel: f64,
}

/// Compares piece `a` with piece `b` (same length, whole units of `kind`).
pub fn compare(kind: Kind, a: &[u8], b: &[u8], tolerance: Tolerance) -> PieceStats {
    let width = kind.unit_bytes();
    let mut stats = PieceStats::default();
    for (i, (x, y)) in a.chunks_exact(width).zip(b.chunks_exact(width)).enumerate() {
        if x == y {
            continue;
        }
        stats.bit_differing += 1;
        let close = match kind {
            Kind::Float(float) => {
                float_pair(float.decode(x), float.decode(y), tolerance, &mut stats)
            }
            Kind::Exact(_) | Kind::Bytes => false,
        };
        if !close {
            stats.differing += 1;
            stats.first.get_or_insert(i as u64);
        }
    }
    stats
}

/// Records the differences of two float elements whose bits differ; whether they are equal
/// under the tolerance (`|a - b| <= atol + rtol * |b|`; NaN equals NaN, an infinity only
/// itself).
fn float_pair(a: f64, b: f64, tolerance: Tolerance, stats: &mut PieceStats) -> bool {
    let (abs, close) = if a.is_nan() && b.is_nan() {
        (0.0, true)
    } else if a == b {
        // Equal values with other bits (0.0 and -0.0).
        (0.0, true)
    } else if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
        (f64::INFINITY, false)
    } else {
        let abs = (a - b).abs();
        (abs, abs <= tolerance.atol + tolerance.rtol * b.abs())
    };
    stats.max_abs = stats.max_abs.max(abs);
    if abs > 0.0 {
        let rel = if b == 0.0 {
            f64::INFINITY
        } else {
            abs / b.abs()
        };
        stats.max_rel = stats.max_rel.max(rel);
    }
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(atol: f64, rtol: f64) -> Tolerance {
        Tolerance { atol, rtol }
    }

    fn bytes32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn float_rule_table() {
        // (a, b, tolerance, equal under it)
        let table = [
            (1.0, 1.0, tol(0.0, 0.0), true),
            (1.0, 1.5, tol(0.0, 0.0), false),
            (1.0, 1.5, tol(0.5, 0.0), true),
            (1.0, 1.5, tol(0.4, 0.0), false),
            (1.0, 2.0, tol(0.0, 0.5), true),
            (2.0, 1.0, tol(0.0, 0.5), false),
            (0.0, -0.0, tol(0.0, 0.0), true),
            (f32::NAN, f32::NAN, tol(0.0, 0.0), true),
            (f32::NAN, 1.0, tol(1e9, 1e9), false),
            (f32::INFINITY, f32::INFINITY, tol(0.0, 0.0), true),
            (1.0, f32::INFINITY, tol(1e9, 1e9), false),
            (f32::INFINITY, f32::NEG_INFINITY, tol(1e9, 1e9), false),
        ];
        for (a, b, tolerance, equal) in table {
            let stats = compare(
                Kind::of(Dtype::F32),
                &bytes32(&[a]),
                &bytes32(&[b]),
                tolerance,
            );
            assert_eq!(
                stats.differing == 0,
                equal,
                "{a} vs {b} under {tolerance:?}"
            );
        }
    }

    #[test]
    fn float_statistics() {
        let a = bytes32(&[1.0, 2.0, 3.0, 4.0]);
        let b = bytes32(&[1.0, 2.5, 3.0, 2.0]);
        let stats = compare(Kind::of(Dtype::F32), &a, &b, tol(0.0, 0.0));
        assert_eq!(
            (stats.differing, stats.bit_differing, stats.first),
            (2, 2, Some(1))
        );
        assert_eq!((stats.max_abs, stats.max_rel), (2.0, 1.0));
    }

    #[test]
    fn half_precision_floats_are_decoded() {
        let one = half::bf16::from_f32(1.0).to_le_bytes();
        let two = half::bf16::from_f32(2.0).to_le_bytes();
        let stats = compare(Kind::of(Dtype::BF16), &one, &two, tol(0.0, 0.0));
        assert_eq!((stats.differing, stats.max_abs), (1, 1.0));
        let a = half::f16::from_f32(0.5).to_le_bytes();
        let b = half::f16::from_f32(0.25).to_le_bytes();
        let stats = compare(Kind::of(Dtype::F16), &a, &b, tol(0.25, 0.0));
        assert_eq!((stats.differing, stats.bit_differing), (0, 1));
    }

    #[test]
    fn other_dtypes_compare_exactly() {
        let a: Vec<u8> = [1i32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [1i32, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let stats = compare(Kind::of(Dtype::I32), &a, &b, tol(100.0, 0.0));
        assert_eq!((stats.differing, stats.first), (2, Some(1)));
        assert_eq!(Kind::of(Dtype::F4), Kind::Bytes);
        assert_eq!(Kind::of(Dtype::C64), Kind::Exact(8));
        assert_eq!(Kind::of(Dtype::BOOL), Kind::Exact(1));
    }
}
