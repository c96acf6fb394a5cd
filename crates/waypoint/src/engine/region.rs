//! Box geometry, pure: which bytes of a stored chunk land where in a requested region of the same
//! tensor (both row-major). The building block of partial loads and resharding. It must not read
//! or copy bytes itself, only say which go where.

/// A contiguous copy: `len` bytes from chunk byte `src` to region byte `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Byte offset within the chunk's data.
    pub src: u64,
    /// Byte offset within the region's buffer.
    pub dst: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why a region cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionError {
    /// A run of a sub-byte dtype starts or ends inside a byte.
    NotByteAligned,
}

/// The runs copying the intersection of a chunk (`chunk_off`, `chunk_sizes`) with a region
/// (`reg_off`, `reg_sizes`), for elements of `bits` bits. Runs come in increasing `src` and `dst`
/// order, with trailing dimensions merged where both boxes span them fully. An empty intersection
/// gives no runs.
pub fn chunk_runs(
    bits: u64,
    chunk_off: &[u64],
    chunk_sizes: &[u64],
    reg_off: &[u64],
    reg_sizes: &[u64],
) -> Result<Vec<Run>, RegionError> {
    let n = chunk_off.len();
    let Some((lo, hi)) = intersection(chunk_off, chunk_sizes, reg_off, reg_sizes) else {
        return Ok(Vec::new());
    };
    let to_bytes = |elements: u64| element_bytes(elements, bits);
    if n == 0 {
        return Ok(vec![Run {
            src: 0,
            dst: 0,
            len: to_bytes(1)?,
        }]);
    }
    // Merge trailing dimensions that both boxes (and so the intersection) span fully.
    let full = |d: usize| {
        lo[d] == chunk_off[d]
            && hi[d] == chunk_off[d] + chunk_sizes[d]
            && lo[d] == reg_off[d]
            && hi[d] == reg_off[d] + reg_sizes[d]
    };
    let (k, run_elems) = merged_tail(&lo, &hi, full);
    let (cs, rs) = (strides(chunk_sizes), strides(reg_sizes));
    let len = to_bytes(run_elems)?;
    let mut runs = Vec::new();
    let mut idx: Vec<u64> = lo[..k].to_vec();
    loop {
        let (mut src, mut dst) = (0u64, 0u64);
        for d in 0..n {
            let i = if d < k { idx[d] } else { lo[d] };
            src += (i - chunk_off[d]) * cs[d];
            dst += (i - reg_off[d]) * rs[d];
        }
        runs.push(Run {
            src: to_bytes(src)?,
            dst: to_bytes(dst)?,
            len,
        });
        // Odometer over the outer dimensions 0..k.
        if !advance(&mut idx, &lo, &hi) {
            return Ok(runs);
        }
    }
}

/// The intersection of the two boxes as `(lo, hi)` bounds per dimension, or `None` when it is
/// empty.
fn intersection(
    chunk_off: &[u64],
    chunk_sizes: &[u64],
    reg_off: &[u64],
    reg_sizes: &[u64],
) -> Option<(Vec<u64>, Vec<u64>)> {
    let n = chunk_off.len();
    let mut lo = vec![0u64; n];
    let mut hi = vec![0u64; n];
    for d in 0..n {
        lo[d] = chunk_off[d].max(reg_off[d]);
        hi[d] = (chunk_off[d] + chunk_sizes[d]).min(reg_off[d] + reg_sizes[d]);
        if lo[d] >= hi[d] {
            return None;
        }
    }
    Some((lo, hi))
}

/// The bytes of `elements` elements of `bits` bits, refused when that is not whole bytes.
fn element_bytes(elements: u64, bits: u64) -> Result<u64, RegionError> {
    let b = elements * bits;
    if b.is_multiple_of(8) {
        Ok(b / 8)
    } else {
        Err(RegionError::NotByteAligned)
    }
}

/// How many outer dimensions a run does not cover (`k`), and the elements in one run: the last
/// dimension merged with the trailing ones before it that are `full`.
fn merged_tail(lo: &[u64], hi: &[u64], full: impl Fn(usize) -> bool) -> (usize, u64) {
    let mut k = lo.len() - 1;
    let mut run_elems = hi[k] - lo[k];
    while k > 0 && full(k) {
        k -= 1;
        run_elems *= hi[k] - lo[k];
    }
    (k, run_elems)
}

/// The row-major strides, in elements, of a box of `sizes`.
fn strides(sizes: &[u64]) -> Vec<u64> {
    let n = sizes.len();
    let mut s = vec![1u64; n];
    for d in (0..n.saturating_sub(1)).rev() {
        s[d] = s[d + 1] * sizes[d + 1];
    }
    s
}

/// Steps the index of the outer dimensions `0..idx.len()` to the next one within `lo..hi`, the
/// last dimension fastest; `false` once every index was visited.
fn advance(idx: &mut [u64], lo: &[u64], hi: &[u64]) -> bool {
    let mut d = idx.len();
    loop {
        if d == 0 {
            return false;
        }
        d -= 1;
        idx[d] += 1;
        if idx[d] < hi[d] {
            return true;
        }
        idx[d] = lo[d];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(src: u64, dst: u64, len: u64) -> Run {
        Run { src, dst, len }
    }

    #[test]
    fn runs_table() {
        // (bits, chunk offsets, chunk sizes, region offsets, region sizes, expected runs)
        type Case = (
            u64,
            Vec<u64>,
            Vec<u64>,
            Vec<u64>,
            Vec<u64>,
            Result<Vec<Run>, RegionError>,
        );
        let table: Vec<Case> = vec![
            // Whole 2x3 f32 tensor, one chunk: one merged run.
            (
                32,
                vec![0, 0],
                vec![2, 3],
                vec![0, 0],
                vec![2, 3],
                Ok(vec![r(0, 0, 24)]),
            ),
            // Second row chunk of a 4x3 tensor, region = whole tensor.
            (
                32,
                vec![2, 0],
                vec![2, 3],
                vec![0, 0],
                vec![4, 3],
                Ok(vec![r(0, 24, 24)]),
            ),
            // Column slice [:, 1:2] of a 2x3 chunk: one element per row.
            (
                32,
                vec![0, 0],
                vec![2, 3],
                vec![0, 1],
                vec![2, 1],
                Ok(vec![r(4, 0, 4), r(16, 4, 4)]),
            ),
            // Disjoint boxes.
            (
                32,
                vec![0, 0],
                vec![2, 3],
                vec![2, 0],
                vec![1, 3],
                Ok(vec![]),
            ),
            // 0-d tensor.
            (16, vec![], vec![], vec![], vec![], Ok(vec![r(0, 0, 2)])),
            // Zero-size region.
            (8, vec![0], vec![4], vec![1], vec![0], Ok(vec![])),
            // 3-d: chunk [0:2, 0:2, 0:4], region [1:2, 0:2, 0:4]: trailing dims merge.
            (
                8,
                vec![0, 0, 0],
                vec![2, 2, 4],
                vec![1, 0, 0],
                vec![1, 2, 4],
                Ok(vec![r(8, 0, 8)]),
            ),
            // F4: half a byte per element; a split on whole bytes works, mid-byte does not.
            (4, vec![0], vec![8], vec![2], vec![4], Ok(vec![r(1, 0, 2)])),
            (
                4,
                vec![0],
                vec![8],
                vec![1],
                vec![4],
                Err(RegionError::NotByteAligned),
            ),
        ];
        for (i, (bits, co, cs, ro, rs, want)) in table.into_iter().enumerate() {
            assert_eq!(chunk_runs(bits, &co, &cs, &ro, &rs), want, "case {i}");
        }
    }

    #[test]
    fn runs_cover_the_intersection_exactly() {
        // A 5x7 tensor of u8 whose value is its linear index; chunk [1:4, 2:6], region [0:3, 3:7].
        let (co, cs, ro, rs) = ([1u64, 2], [3u64, 4], [0u64, 3], [3u64, 4]);
        let chunk: Vec<u8> = (0..3)
            .flat_map(|i| (0..4).map(move |j| ((1 + i) * 7 + 2 + j) as u8))
            .collect();
        let mut out = [255u8; 12];
        for run in chunk_runs(8, &co, &cs, &ro, &rs).unwrap() {
            out[run.dst as usize..(run.dst + run.len) as usize]
                .copy_from_slice(&chunk[run.src as usize..(run.src + run.len) as usize]);
        }
        for i in 0..3u64 {
            for j in 0..4u64 {
                let (gi, gj) = (i, 3 + j);
                let inside = (1..4).contains(&gi) && (2..6).contains(&gj);
                let want = if inside { (gi * 7 + gj) as u8 } else { 255 };
                assert_eq!(out[(i * 4 + j) as usize], want, "({gi},{gj})");
            }
        }
    }
}
