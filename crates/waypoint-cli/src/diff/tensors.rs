//! Comparing the values of one tensor that both checkpoints hold with the same dtype and shape.
//!
//! When both records use the same checksum block size and cut the tensor into the same chunks,
//! chunks whose block CRC-32Cs are all equal are taken as identical without reading a byte (a
//! CRC match is a fast path, not a proof; a mismatch always reads). Every other chunk, or the
//! whole tensor when the chunking differs (e.g. 4 ranks against 1), is read from both
//! checkpoints in pieces of at most [`PIECE_BYTES`] per side along the first dimension, with
//! checksums verified, and compared element by element ([`super::values`]). It never writes.

use super::values::{Kind, PieceStats, compare};
use crate::cli::Tolerance;
use anyhow::Context;
use waypoint::format::{CommitRecord, TensorEntry, element_count};
use waypoint::{CheckpointReader, LoadOptions};

/// Bytes read per side and piece (at least one row along the first dimension is read).
pub const PIECE_BYTES: u64 = 16 << 20;

/// One checkpoint's view of the tensor being compared.
pub struct Side<'a> {
    /// The opened checkpoint.
    pub reader: &'a CheckpointReader,
    /// The tensor's entry in its record.
    pub entry: &'a TensorEntry,
}

/// What comparing a tensor's values found.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueDiff {
    /// How the elements were compared.
    pub kind: Kind,
    /// Elements of the tensor (bytes for sub-byte dtypes).
    pub units: u64,
    /// Elements not equal under the tolerance.
    pub differing: u64,
    /// Elements whose bits differ.
    pub bit_differing: u64,
    /// The first element (row-major) not equal under the tolerance.
    pub first_index: Option<Vec<u64>>,
    /// Largest |a - b| (floats).
    pub max_abs: f64,
    /// Largest |a - b| / |b| (floats).
    pub max_rel: f64,
    /// Bytes read from each checkpoint (0: settled by block checksums alone).
    pub bytes_read: u64,
}

/// A box of the tensor: offsets and sizes per dimension.
type Region = (Vec<u64>, Vec<u64>);

/// Compares the tensor `name` in `a` and `b` (same dtype and shape).
pub fn compare_tensor(
    name: &str,
    a: &Side<'_>,
    b: &Side<'_>,
    tolerance: Tolerance,
) -> anyhow::Result<ValueDiff> {
    let kind = Kind::of(a.entry.dtype);
    let shape = &a.entry.shape;
    let units = match kind {
        Kind::Bytes => element_count(shape).and_then(|n| a.entry.dtype.byte_len(n)),
        _ => element_count(shape),
    }
    .with_context(|| format!("tensor {name:?}: its size overflows"))?;
    let mut diff = ValueDiff {
        kind,
        units,
        differing: 0,
        bit_differing: 0,
        first_index: None,
        max_abs: 0.0,
        max_rel: 0.0,
        bytes_read: 0,
    };
    let whole = (vec![0; shape.len()], shape.clone());
    let regions = match kind {
        // Sub-byte rows need not end on a byte: read those whole.
        Kind::Bytes => vec![whole],
        _ => differing_chunks(a.reader.record(), a.entry, b.reader.record(), b.entry)
            .unwrap_or_else(|| vec![whole]),
    };
    let mut first_flat: Option<u64> = None;
    for region in &regions {
        for piece in pieces(region, kind) {
            let stats = compare_piece(name, a, b, &piece, kind, tolerance, &mut diff.bytes_read)?;
            diff.differing += stats.differing;
            diff.bit_differing += stats.bit_differing;
            diff.max_abs = diff.max_abs.max(stats.max_abs);
            diff.max_rel = diff.max_rel.max(stats.max_rel);
            if let Some(local) = stats.first {
                let index = global_index(&piece, local, kind);
                let flat = flat_index(&index, shape, kind);
                if first_flat.is_none_or(|f| flat < f) {
                    first_flat = Some(flat);
                    diff.first_index = Some(index);
                }
            }
        }
    }
    Ok(diff)
}

/// When both records chunk the tensor alike with the same block size: the chunks whose block
/// checksums differ (possibly none). `None` when the chunking differs.
fn differing_chunks(
    ra: &CommitRecord,
    ea: &TensorEntry,
    rb: &CommitRecord,
    eb: &TensorEntry,
) -> Option<Vec<Region>> {
    if ra.block_size != rb.block_size || ea.chunks.len() != eb.chunks.len() {
        return None;
    }
    let mut ca: Vec<_> = ea.chunks.iter().collect();
    let mut cb: Vec<_> = eb.chunks.iter().collect();
    ca.sort_by(|x, y| x.offsets.cmp(&y.offsets));
    cb.sort_by(|x, y| x.offsets.cmp(&y.offsets));
    let mut regions = Vec::new();
    for (x, y) in ca.iter().zip(&cb) {
        if x.offsets != y.offsets || x.sizes != y.sizes {
            return None;
        }
        if x.block_crc32c != y.block_crc32c {
            regions.push((x.offsets.clone(), x.sizes.clone()));
        }
    }
    Some(regions)
}

/// `region` cut along its first dimension into pieces of at most [`PIECE_BYTES`] (one row at
/// least); sub-byte tensors stay whole. Empty regions give no piece.
fn pieces(region: &Region, kind: Kind) -> Vec<Region> {
    let (offsets, sizes) = region;
    if sizes.contains(&0) {
        return Vec::new();
    }
    let (Some(&rows), false) = (sizes.first(), matches!(kind, Kind::Bytes)) else {
        return vec![region.clone()];
    };
    let row_units = element_count(sizes.get(1..).unwrap_or(&[])).unwrap_or(u64::MAX);
    let row_bytes = row_units.saturating_mul(kind.unit_bytes() as u64).max(1);
    let step = (PIECE_BYTES / row_bytes).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let take = step.min(rows - start);
        let mut o = offsets.clone();
        let mut s = sizes.clone();
        if let (Some(o0), Some(s0)) = (o.first_mut(), s.first_mut()) {
            *o0 += start;
            *s0 = take;
        }
        out.push((o, s));
        start += take;
    }
    out
}

/// Reads `piece` from both sides and compares it.
fn compare_piece(
    name: &str,
    a: &Side<'_>,
    b: &Side<'_>,
    piece: &Region,
    kind: Kind,
    tolerance: Tolerance,
    bytes_read: &mut u64,
) -> anyhow::Result<PieceStats> {
    let (offsets, sizes) = piece;
    let len = element_count(sizes)
        .and_then(|n| a.entry.dtype.byte_len(n))
        .and_then(|n| usize::try_from(n).ok())
        .with_context(|| format!("tensor {name:?}: a piece's size overflows"))?;
    let options = LoadOptions::default();
    let mut bytes_a = vec![0u8; len];
    let mut bytes_b = vec![0u8; len];
    a.reader
        .read_region(name, offsets, sizes, &mut bytes_a, &options)
        .with_context(|| format!("cannot read tensor {name:?} of the first checkpoint"))?;
    b.reader
        .read_region(name, offsets, sizes, &mut bytes_b, &options)
        .with_context(|| format!("cannot read tensor {name:?} of the second checkpoint"))?;
    *bytes_read += len as u64;
    Ok(compare(kind, &bytes_a, &bytes_b, tolerance))
}

/// The tensor index of unit `local` of `piece` (row-major within the piece); for sub-byte
/// dtypes, `[byte offset]`.
fn global_index(piece: &Region, local: u64, kind: Kind) -> Vec<u64> {
    if matches!(kind, Kind::Bytes) {
        return vec![local];
    }
    let (offsets, sizes) = piece;
    let mut index = vec![0; sizes.len()];
    let mut rest = local;
    for d in (0..sizes.len()).rev() {
        let size = sizes.get(d).copied().unwrap_or(1).max(1);
        let offset = offsets.get(d).copied().unwrap_or(0);
        if let Some(slot) = index.get_mut(d) {
            *slot = offset + rest % size;
        }
        rest /= size;
    }
    index
}

/// The row-major position of `index` in `shape` (the byte offset itself for sub-byte dtypes).
fn flat_index(index: &[u64], shape: &[u64], kind: Kind) -> u64 {
    if matches!(kind, Kind::Bytes) {
        return index.first().copied().unwrap_or(0);
    }
    index.iter().zip(shape).fold(0u64, |acc, (&i, &d)| {
        acc.saturating_mul(d).saturating_add(i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypoint::Dtype;

    #[test]
    fn large_regions_are_cut_into_row_pieces() {
        let kind = Kind::of(Dtype::F32);
        let row = PIECE_BYTES / 4 / 2; // two rows per piece
        let region = (vec![0, 0], vec![5, row]);
        let got = pieces(&region, kind);
        let want: Vec<Region> = vec![
            (vec![0, 0], vec![2, row]),
            (vec![2, 0], vec![2, row]),
            (vec![4, 0], vec![1, row]),
        ];
        assert_eq!(got, want);
        assert_eq!(pieces(&(vec![], vec![]), kind).len(), 1);
        assert!(pieces(&(vec![0], vec![0]), kind).is_empty());
    }

    #[test]
    fn indices_map_from_a_piece_to_the_tensor() {
        let kind = Kind::of(Dtype::F32);
        let piece = (vec![4, 2], vec![2, 3]);
        assert_eq!(global_index(&piece, 4, kind), vec![5, 3]);
        assert_eq!(flat_index(&[5, 3], &[8, 6], kind), 33);
        assert_eq!(global_index(&(vec![], vec![]), 0, kind), Vec::<u64>::new());
    }
}
