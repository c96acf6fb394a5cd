//! The invariants of docs/FORMAT.md §3 that every reader checks before trusting a single offset of
//! a commit record: file names, ranks and sizes, that the chunks of each tensor tile it, that the
//! byte ranges tile each file's data section, checksum counts. Pure: no I/O, no parsing (that is
//! [`super::record`]).
//!
//! Every check costs O(n log n) in the record's size (files, tensors, chunks), so that a hostile
//! record cannot take hours: the tiling of a tensor's chunks is checked by a sweep (chunks cut
//! along at most two dimensions, which is every layout waypoint writes) or by signed corner
//! counts (more dimensions, bounded by [`MAX_CORNERS`]).

use super::dtype::element_count;
use super::names::{parse_shard_file_name, tensor_name_problem};
use super::record::{ChunkEntry, CommitRecord, MAX_DIMS, MAX_HEADER_LEN, TensorEntry};
use crate::error::{Error, Result};
use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::Path;

/// Most corners the tiling check of one tensor visits when its chunks cut it along three or more
/// dimensions: chunks × 2^dimensions. A record over this is refused as too complex to check.
pub const MAX_CORNERS: u64 = 1 << 24;

impl CommitRecord {
    /// Checks every invariant of docs/FORMAT.md: file names, ranks, sizes, that chunks tile their
    /// tensor and the byte ranges tile each file's data section, checksum counts.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::record(path, reason);
        if self.block_size == 0 || self.block_size > 1 << 30 {
            return Err(bad(format!(
                "block_size {} is not in 1..=2^30",
                self.block_size
            )));
        }
        if self.world_size == 0 {
            return Err(bad("world_size must be at least 1".into()));
        }
        let mut file_bytes: u64 = 0;
        for (name, file) in &self.files {
            let Some((rank, _)) = parse_shard_file_name(name) else {
                return Err(bad(format!(
                    "file name {name:?} is not of the form __<rank>_<i>.safetensors"
                )));
            };
            if rank != file.rank || rank >= self.world_size {
                return Err(bad(format!(
                    "file {name:?}: rank {} disagrees with its name or world_size {}",
                    file.rank, self.world_size
                )));
            }
            if file.header_len < 10
                || file.header_len > 8 + MAX_HEADER_LEN
                || file.header_len > file.size
            {
                return Err(bad(format!(
                    "file {name:?}: header_len {} is out of range for a file of {} bytes",
                    file.header_len, file.size
                )));
            }
            file_bytes = file_bytes.checked_add(file.size).ok_or_else(|| {
                bad(format!(
                    "file {name:?}: the sizes of the files add up to more than 2^64 bytes"
                ))
            })?;
        }
        // Per file: the byte ranges of its chunks, to check they tile the data section.
        let mut ranges: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();
        for (name, tensor) in &self.tensors {
            validate_tensor(self, name, tensor, path, &mut ranges)?;
        }
        for (name, file) in &self.files {
            let mut list = ranges.remove(name.as_str()).unwrap_or_default();
            list.sort_unstable();
            let mut cursor = file.header_len;
            for (start, end, tensor) in list {
                if start != cursor {
                    return Err(bad(format!(
                        "file {name:?}: tensor {tensor:?} starts at byte {start}, expected {cursor} (overlap or hole)"
                    )));
                }
                cursor = end;
            }
            if cursor != file.size {
                return Err(bad(format!(
                    "file {name:?}: data ends at byte {cursor} but the file has {} bytes",
                    file.size
                )));
            }
        }
        Ok(())
    }
}

fn validate_tensor<'r>(
    record: &'r CommitRecord,
    name: &'r str,
    tensor: &'r TensorEntry,
    path: &Path,
    ranges: &mut BTreeMap<&'r str, Vec<(u64, u64, &'r str)>>,
) -> Result<()> {
    let bad = |reason: String| Error::record(path, format!("tensor {name:?}: {reason}"));
    let total = tensor_element_count(name, tensor, &bad)?;
    let mut covered: u64 = 0;
    let mut files_seen: BTreeSet<&str> = BTreeSet::new();
    for (i, chunk) in tensor.chunks.iter().enumerate() {
        let cbad = |reason: String| bad(format!("chunk {i}: {reason}"));
        let (elements, bytes) = chunk_extent(tensor, chunk, &cbad)?;
        let [start, end] = chunk.byte_range;
        check_chunk_placement(record, tensor, chunk, &cbad)?;
        if !files_seen.insert(chunk.file.as_str()) {
            return Err(cbad(format!(
                "a second chunk of the tensor in {:?}",
                chunk.file
            )));
        }
        let blocks = bytes.div_ceil(record.block_size);
        if chunk.block_crc32c.len() as u64 != blocks {
            return Err(cbad(format!(
                "{} block checksums for {bytes} bytes in blocks of {} (expected {blocks})",
                chunk.block_crc32c.len(),
                record.block_size
            )));
        }
        covered = covered
            .checked_add(elements)
            .ok_or_else(|| cbad("element count overflows".into()))?;
        ranges
            .entry(chunk.file.as_str())
            .or_default()
            .push((start, end, name));
    }
    if let Some(problem) = overlap_problem(&tensor.shape, &tensor.chunks, covered == total) {
        return Err(bad(problem));
    }
    if covered != total {
        return Err(bad(format!(
            "its chunks cover {covered} of {total} elements"
        )));
    }
    Ok(())
}

/// Checks the tensor's name, rank and shape; returns its element count.
fn tensor_element_count(
    name: &str,
    tensor: &TensorEntry,
    bad: &dyn Fn(String) -> Error,
) -> Result<u64> {
    if let Some(problem) = tensor_name_problem(name) {
        return Err(bad(problem.into()));
    }
    if tensor.shape.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions is more than {MAX_DIMS}",
            tensor.shape.len()
        )));
    }
    let total = element_count(&tensor.shape)
        .ok_or_else(|| bad("the element count of its shape overflows".into()))?;
    tensor.dtype.byte_len(total).ok_or_else(|| {
        bad(format!(
            "{total} elements of {} is not a whole number of bytes",
            tensor.dtype
        ))
    })?;
    Ok(total)
}

/// Checks that the chunk's box lies within the tensor and that its byte range holds exactly its
/// elements; returns its element and byte counts.
fn chunk_extent(
    tensor: &TensorEntry,
    chunk: &ChunkEntry,
    cbad: &dyn Fn(String) -> Error,
) -> Result<(u64, u64)> {
    if chunk.offsets.len() != tensor.shape.len() || chunk.sizes.len() != tensor.shape.len() {
        return Err(cbad(
            "offsets and sizes must have one entry per dimension".into(),
        ));
    }
    for d in 0..tensor.shape.len() {
        let end = chunk.offsets[d].checked_add(chunk.sizes[d]);
        if end.is_none_or(|e| e > tensor.shape[d]) {
            return Err(cbad(format!(
                "offset {} + size {} exceeds dimension {d} of size {}",
                chunk.offsets[d], chunk.sizes[d], tensor.shape[d]
            )));
        }
    }
    let elements =
        element_count(&chunk.sizes).ok_or_else(|| cbad("element count overflows".into()))?;
    let bytes = tensor.dtype.byte_len(elements).ok_or_else(|| {
        cbad(format!(
            "{elements} elements of {} is not whole bytes",
            tensor.dtype
        ))
    })?;
    let [start, end] = chunk.byte_range;
    if end < start || end - start != bytes {
        return Err(cbad(format!(
            "byte_range {start}..{end} does not hold {bytes} bytes ({elements} × {})",
            tensor.dtype
        )));
    }
    Ok((elements, bytes))
}

/// Checks that the chunk's file is listed and that its byte range lies, aligned, in that file's
/// data section.
fn check_chunk_placement(
    record: &CommitRecord,
    tensor: &TensorEntry,
    chunk: &ChunkEntry,
    cbad: &dyn Fn(String) -> Error,
) -> Result<()> {
    let [start, end] = chunk.byte_range;
    let Some(file) = record.files.get(&chunk.file) else {
        return Err(cbad(format!(
            "file {:?} is not listed in `files`",
            chunk.file
        )));
    };
    if start < file.header_len || end > file.size {
        return Err(cbad(format!(
            "byte_range {start}..{end} lies outside the data section {}..{} of {:?}",
            file.header_len, file.size, chunk.file
        )));
    }
    if start % tensor.dtype.alignment() != (file.header_len % tensor.dtype.alignment()) {
        return Err(cbad(format!(
            "byte_range start {start} is not aligned to {}",
            tensor.dtype.alignment()
        )));
    }
    Ok(())
}

/// Why the chunks of a tensor of `shape` share an element, if they do. The chunks must lie inside
/// the tensor (checked by [`chunk_extent`] first). Empty chunks overlap nothing, and dimensions
/// that every chunk spans whole are left out: the rest are the dimensions the chunks cut.
/// Up to two cut dimensions, a sweep finds the first overlapping pair in O(n log n); beyond, the
/// signed corner counts of the chunks are compared with the tensor's (equal exactly when the
/// chunks tile it, so when they hold `product(shape)` elements, `exact_count`, unequal means an
/// overlap; otherwise the corners tell nothing the count does not, and this says nothing).
pub(crate) fn overlap_problem(
    shape: &[u64],
    chunks: &[ChunkEntry],
    exact_count: bool,
) -> Option<String> {
    let live: Vec<usize> = (0..chunks.len())
        .filter(|&i| !chunks[i].sizes.contains(&0))
        .collect();
    let cut: Vec<usize> = (0..shape.len())
        .filter(|&d| {
            live.iter()
                .any(|&i| chunks[i].offsets[d] != 0 || chunks[i].sizes[d] != shape[d])
        })
        .collect();
    let pair = |(a, b): (usize, usize)| format!("chunk {} overlaps chunk {}", a.max(b), a.min(b));
    match cut.as_slice() {
        // Every non-empty chunk is the whole tensor.
        [] => (live.len() > 1).then(|| pair((live[0], live[1]))),
        [a] => sweep(chunks, &live, *a, None).map(pair),
        [a, b] => sweep(chunks, &live, *a, Some(*b)).map(pair),
        _ if !exact_count => None,
        _ => corner_problem(shape, chunks, &live, &cut),
    }
}

/// `[start, end)` of a chunk along dimension `d` (`[0, 1)` for none).
fn span(chunk: &ChunkEntry, d: Option<usize>) -> (u64, u64) {
    d.map_or((0, 1), |d| {
        (chunk.offsets[d], chunk.offsets[d] + chunk.sizes[d])
    })
}

/// The first pair of `live` chunks that overlap, found by a sweep along dimension `a`: the chunks
/// that contain the sweep's position along `a` must be disjoint along `b`, so they are kept in an
/// ordered map by their start along `b`, and a new one only has to be compared with its two
/// neighbours there. O(n log n).
fn sweep(
    chunks: &[ChunkEntry],
    live: &[usize],
    a: usize,
    b: Option<usize>,
) -> Option<(usize, usize)> {
    let mut order = live.to_vec();
    order.sort_unstable_by_key(|&i| chunks[i].offsets[a]);
    // The active chunks by start along `b`: (end along `b`, chunk index).
    let mut active: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    // When each active chunk stops being active: (end along `a`, its key in `active`).
    let mut expiry: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    for i in order {
        let (a0, a1) = span(&chunks[i], Some(a));
        while let Some(&Reverse((end, key))) = expiry.peek() {
            if end > a0 {
                break;
            }
            expiry.pop();
            active.remove(&key);
        }
        let (b0, b1) = span(&chunks[i], b);
        if let Some((_, &(end, j))) = active.range(..=b0).next_back()
            && end > b0
        {
            return Some((j, i));
        }
        if let Some((&start, &(_, j))) = active.range(b0..).next()
            && start < b1
        {
            return Some((j, i));
        }
        active.insert(b0, (b1, i));
        expiry.push(Reverse((a1, b0)));
    }
    None
}

/// The tiling check for chunks cut along three or more dimensions: the sum over the chunks of
/// their corners, each signed by the parity of its upper coordinates, equals the tensor's own
/// exactly when the chunks cover every element once (the signed corners are the mixed finite
/// difference of the boxes' indicator functions, which loses nothing). Refused beyond
/// [`MAX_CORNERS`].
fn corner_problem(
    shape: &[u64],
    chunks: &[ChunkEntry],
    live: &[usize],
    cut: &[usize],
) -> Option<String> {
    let per_chunk = 1u64.checked_shl(cut.len() as u32).unwrap_or(u64::MAX);
    let corners = per_chunk.saturating_mul(live.len() as u64 + 1);
    if corners > MAX_CORNERS {
        return Some(format!(
            "{} chunks cut it along {} dimensions: checking that they do not overlap would take \
             {corners} steps, more than the reader's limit of {MAX_CORNERS}",
            live.len(),
            cut.len()
        ));
    }
    let mut sum: HashMap<Vec<u64>, i64> = HashMap::new();
    let mut add = |lower: &dyn Fn(usize) -> u64, upper: &dyn Fn(usize) -> u64, sign: i64| {
        for mask in 0..per_chunk {
            let mut corner = Vec::with_capacity(cut.len());
            let mut s = sign;
            for (k, &d) in cut.iter().enumerate() {
                if mask >> k & 1 == 1 {
                    corner.push(upper(d));
                    s = -s;
                } else {
                    corner.push(lower(d));
                }
            }
            // Corners that cancel are removed: the interior corners of a tiling do.
            match sum.entry(corner) {
                Entry::Occupied(mut e) => {
                    *e.get_mut() += s;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(s);
                }
            }
        }
    };
    for &i in live {
        let c = &chunks[i];
        add(&|d| c.offsets[d], &|d| c.offsets[d] + c.sizes[d], 1);
    }
    add(&|_| 0, &|d| shape[d], -1);
    (!sum.is_empty()).then(|| "two of its chunks overlap (and leave elements uncovered)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offsets: &[u64], sizes: &[u64]) -> ChunkEntry {
        ChunkEntry {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            file: String::new(),
            byte_range: [0, 0],
            block_crc32c: Vec::new(),
        }
    }

    /// Shape, chunks (each inside the shape, together holding its element count), and a fragment
    /// of the problem expected (`None`: they tile it).
    #[test]
    fn overlap_table() {
        type Case = (Vec<u64>, Vec<ChunkEntry>, Option<&'static str>);
        let table: Vec<Case> = vec![
            (
                vec![4, 4],
                vec![chunk(&[0, 0], &[2, 4]), chunk(&[2, 0], &[2, 4])],
                None,
            ),
            (
                vec![4, 4],
                vec![chunk(&[0, 0], &[4, 2]), chunk(&[0, 2], &[4, 2])],
                None,
            ),
            (
                vec![4, 4],
                vec![chunk(&[0, 0], &[3, 4]), chunk(&[1, 0], &[1, 4])],
                Some("chunk 1 overlaps chunk 0"),
            ),
            (
                vec![3, 4],
                vec![
                    chunk(&[0, 0], &[2, 2]),
                    chunk(&[0, 2], &[2, 2]),
                    chunk(&[1, 1], &[2, 2]),
                ],
                Some("chunk 2 overlaps chunk 0"),
            ),
            // A staircase: row i as [i, 0..i] and [i, i..4].
            (
                vec![4, 4],
                (0..4u64)
                    .flat_map(|i| [chunk(&[i, 0], &[1, i]), chunk(&[i, i], &[1, 4 - i])])
                    .collect(),
                None,
            ),
            (vec![4], vec![chunk(&[0], &[0]), chunk(&[0], &[4])], None),
            (
                vec![],
                vec![chunk(&[], &[]), chunk(&[], &[])],
                Some("chunk 1 overlaps chunk 0"),
            ),
            // Dimensions every chunk spans whole are left out: this is one cut dimension.
            (
                vec![2, 4, 3],
                vec![chunk(&[0, 0, 0], &[2, 3, 3]), chunk(&[0, 2, 0], &[2, 2, 3])],
                Some("chunk 1 overlaps chunk 0"),
            ),
            // Three cut dimensions: a 2×2×2 grid tiles; moving one octant makes it overlap.
            (
                vec![2, 2, 2],
                (0..8u64)
                    .map(|m| chunk(&[m & 1, m >> 1 & 1, m >> 2], &[1, 1, 1]))
                    .collect(),
                None,
            ),
            (
                vec![2, 2, 2],
                (0..8u64)
                    .map(|m| match m {
                        7 => chunk(&[0, 0, 0], &[1, 1, 1]),
                        m => chunk(&[m & 1, m >> 1 & 1, m >> 2], &[1, 1, 1]),
                    })
                    .collect(),
                Some("overlap"),
            ),
        ];
        for (i, (shape, chunks, want)) in table.into_iter().enumerate() {
            let got = overlap_problem(&shape, &chunks, true);
            match (want, &got) {
                (None, None) => {}
                (Some(fragment), Some(problem)) if problem.contains(fragment) => {}
                _ => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A hostile layout once made the check quadratic: row i of an [n, n] tensor as the chunks
    /// [i, 0..i] and [i, i..n] (and, before that, plain rows and columns, found by fuzzing).
    #[test]
    fn many_chunks_are_checked_in_n_log_n() {
        let n = 100_000u64;
        let stairs: Vec<ChunkEntry> = (0..n)
            .flat_map(|i| [chunk(&[i, 0], &[1, i]), chunk(&[i, i], &[1, n - i])])
            .collect();
        assert_eq!(overlap_problem(&[n, n], &stairs, true), None);
        let rows: Vec<ChunkEntry> = (0..n).map(|r| chunk(&[r, 0], &[1, 8])).collect();
        assert_eq!(overlap_problem(&[n, 8], &rows, true), None);
        let cols: Vec<ChunkEntry> = (0..n).map(|c| chunk(&[0, c], &[8, 1])).collect();
        assert_eq!(overlap_problem(&[8, n], &cols, true), None);
        // Tall columns beside many rows: every row is compared with its neighbours only.
        let k = n / 2;
        let mut mixed: Vec<ChunkEntry> = (0..k).map(|c| chunk(&[0, c], &[k, 1])).collect();
        mixed.extend((0..k).map(|r| chunk(&[r, k], &[1, k])));
        assert_eq!(overlap_problem(&[k, 2 * k], &mixed, true), None);
    }

    #[test]
    fn chunks_cut_along_many_dimensions_are_bounded() {
        // 24 cut dimensions: 2^24 corners for one chunk is over the limit.
        let shape = vec![2u64; 24];
        let chunks = vec![chunk(&[0; 24], &[1; 24]), chunk(&[1; 24], &[1; 24])];
        let problem = overlap_problem(&shape, &chunks, true).unwrap();
        assert!(
            problem.contains("more than the reader's limit"),
            "{problem}"
        );
        // A 3-D grid of 40^3 chunks is well within it.
        let g = 40u64;
        let grid: Vec<ChunkEntry> = (0..g * g * g)
            .map(|i| chunk(&[i % g, i / g % g, i / (g * g)], &[1, 1, 1]))
            .collect();
        assert_eq!(overlap_problem(&[g, g, g], &grid, true), None);
    }
}
