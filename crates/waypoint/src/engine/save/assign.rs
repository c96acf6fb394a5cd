//! Which rank writes which bytes of a checkpoint saved by several ranks. Pure: it sees only what
//! every rank announced (names, dtypes, shapes, offsets), so every rank computes the same answer
//! without another message. It must not touch storage, tensor bytes or the coordinator: the
//! protocol ([`super::ranks`]) exchanges the announcements and acts on the answer.
//!
//! - A chunk held by one rank is written by it.
//! - A chunk held identically by several ranks (a replicated tensor) is written once: split into
//!   row ranges across its replicas when it is large, otherwise given whole to the replica with
//!   the least to write so far.
//! - The distinct chunks of a tensor must tile it exactly (no overlap, no hole), with one dtype
//!   and one global shape on every rank.

use crate::format::{Dtype, element_count};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Replicated chunks at least this large are split across their replicas.
pub(crate) const SPREAD_MIN_BYTES: u64 = 1 << 20;

/// What a rank announces about one of its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkDesc {
    pub name: String,
    pub dtype: Dtype,
    pub global_shape: Vec<u64>,
    pub offsets: Vec<u64>,
    pub shape: Vec<u64>,
}

/// A piece a rank writes: its chunk `index`, whole or only rows `rows` (relative to the chunk,
/// along dimension 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Piece {
    pub index: usize,
    pub rows: Option<(u64, u64)>,
}

/// For each rank, the pieces it writes. `Err` says what is inconsistent, naming the tensor and
/// the ranks.
pub(crate) fn assign(ranks: &[Vec<ChunkDesc>], spread_min: u64) -> Result<Vec<Vec<Piece>>, String> {
    // name -> (dtype, global shape, first rank) and (offsets, shape) -> holders (rank, index).
    type Holders = Vec<(u64, usize)>;
    type Chunks<'a> = BTreeMap<(&'a [u64], &'a [u64]), Holders>;
    let mut tensors: BTreeMap<&str, (Dtype, &[u64], u64, Chunks<'_>)> = BTreeMap::new();
    for (rank, descs) in ranks.iter().enumerate() {
        let rank = rank as u64;
        for (index, d) in descs.iter().enumerate() {
            let entry = tensors.entry(d.name.as_str()).or_insert((
                d.dtype,
                d.global_shape.as_slice(),
                rank,
                BTreeMap::new(),
            ));
            if entry.0 != d.dtype || entry.1 != d.global_shape.as_slice() {
                return Err(format!(
                    "tensor {:?}: rank {} has {} {:?} but rank {rank} has {} {:?}",
                    d.name, entry.2, entry.0, entry.1, d.dtype, d.global_shape
                ));
            }
            let holders = entry.3.entry((&d.offsets, &d.shape)).or_default();
            if holders.iter().any(|&(r, _)| r == rank) {
                return Err(format!(
                    "tensor {:?}: rank {rank} gives the chunk at {:?} twice",
                    d.name, d.offsets
                ));
            }
            holders.push((rank, index));
        }
    }
    let mut out: Vec<Vec<Piece>> = vec![Vec::new(); ranks.len()];
    let mut load: Vec<u64> = vec![0; ranks.len()];
    for (name, (dtype, global, _, chunks)) in &tensors {
        check_tiling(name, global, chunks.keys().copied())?;
        for ((_, shape), holders) in chunks {
            let bytes = element_count(shape)
                .and_then(|n| dtype.byte_len(n))
                .unwrap_or(0);
            let rows = shape.first().copied().unwrap_or(1);
            let row_bytes = element_count(shape.get(1..).unwrap_or(&[]))
                .and_then(|n| dtype.byte_len(n))
                .filter(|_| !shape.is_empty());
            if holders.len() > 1 && bytes >= spread_min && rows >= 2 && row_bytes.is_some() {
                let parts = (holders.len() as u64).min(rows);
                let mut by_load: Vec<(u64, usize)> = holders.clone();
                by_load.sort_by_key(|&(r, _)| (load[r as usize], r));
                by_load.truncate(parts as usize);
                by_load.sort_by_key(|&(r, _)| r);
                for (p, &(rank, index)) in by_load.iter().enumerate() {
                    let start = rows * p as u64 / parts;
                    let end = rows * (p as u64 + 1) / parts;
                    out[rank as usize].push(Piece {
                        index,
                        rows: Some((start, end)),
                    });
                    load[rank as usize] += (end - start) * row_bytes.unwrap_or(0);
                }
            } else {
                let &(rank, index) = holders
                    .iter()
                    .min_by_key(|&&(r, _)| (load[r as usize], r))
                    .ok_or_else(|| format!("tensor {name:?}: a chunk without a holder"))?;
                out[rank as usize].push(Piece { index, rows: None });
                load[rank as usize] += bytes;
            }
        }
    }
    Ok(out)
}

/// The distinct chunks must cover the tensor exactly once.
///
/// A sweep along dimension 0: chunks sorted by their first offset, each compared only with the
/// earlier ones whose rows reach it. Row-sharded tensors compare each chunk with one neighbour, so
/// a tensor of N chunks costs O(N log N), not O(N²) (N = 1,024 ranks: ~10⁴ checks, not 5·10⁵).
fn check_tiling<'a>(
    name: &str,
    global: &[u64],
    chunks: impl Iterator<Item = (&'a [u64], &'a [u64])>,
) -> Result<(), String> {
    let mut chunks: Vec<(&[u64], &[u64])> =
        chunks.filter(|(_, shape)| !shape.contains(&0)).collect();
    chunks.sort_by_key(|(offsets, _)| offsets.first().copied().unwrap_or(0));
    let total = element_count(global).unwrap_or(u64::MAX);
    let mut covered = 0u64;
    // Earlier chunks whose rows reach past the current chunk's first row.
    let mut active: Vec<(&[u64], &[u64])> = Vec::new();
    for &(offsets, shape) in &chunks {
        covered = covered.saturating_add(element_count(shape).unwrap_or(u64::MAX));
        let start = offsets.first().copied().unwrap_or(0);
        active.retain(|(o, s)| {
            o.first().copied().unwrap_or(0) + s.first().copied().unwrap_or(1) > start
        });
        for &(other_offsets, other_shape) in &active {
            let overlap = (0..offsets.len()).all(|d| {
                offsets[d] < other_offsets[d] + other_shape[d]
                    && other_offsets[d] < offsets[d] + shape[d]
            });
            if overlap {
                return Err(format!(
                    "tensor {name:?}: the chunk at {offsets:?} (shape {shape:?}) overlaps the one at {other_offsets:?} (shape {other_shape:?}) from another rank"
                ));
            }
        }
        active.push((offsets, shape));
    }
    if covered != total {
        return Err(format!(
            "tensor {name:?}: the ranks' chunks cover {covered} of its {total} elements (shape {global:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn desc(name: &str, global: &[u64], offsets: &[u64], shape: &[u64]) -> ChunkDesc {
        ChunkDesc {
            name: name.into(),
            dtype: Dtype::F32,
            global_shape: global.to_vec(),
            offsets: offsets.to_vec(),
            shape: shape.to_vec(),
        }
    }

    /// (rank, index, rows) of a piece, for compact tables.
    type Flat = (u64, usize, Option<(u64, u64)>);

    /// (rank, index, rows) triples, for compact tables.
    fn flat(a: &[Vec<Piece>]) -> Vec<Flat> {
        a.iter()
            .enumerate()
            .flat_map(|(r, ps)| ps.iter().map(move |p| (r as u64, p.index, p.rows)))
            .collect()
    }

    #[test]
    fn sharded_chunks_go_to_their_owner() {
        let ranks: Vec<Vec<ChunkDesc>> = (0..4)
            .map(|r| vec![desc("w", &[8, 2], &[2 * r, 0], &[2, 2])])
            .collect();
        let a = assign(&ranks, SPREAD_MIN_BYTES).unwrap();
        assert_eq!(
            flat(&a),
            vec![(0, 0, None), (1, 0, None), (2, 0, None), (3, 0, None)]
        );
    }

    #[test]
    fn replicated_tensors_are_written_once_with_the_load_spread() {
        // Four ranks hold the same 1024x1024 f32 tensor (4 MiB) and eight small ones.
        let table: &[(u64, Vec<Flat>)] = &[
            // Spread: each replica writes a quarter of the rows.
            (
                1 << 20,
                vec![
                    (0, 0, Some((0, 256))),
                    (1, 0, Some((256, 512))),
                    (2, 0, Some((512, 768))),
                    (3, 0, Some((768, 1024))),
                ],
            ),
            // Not spread (threshold above its size): given whole to one replica.
            (u64::MAX, vec![(0, 0, None)]),
        ];
        for (spread_min, want) in table {
            let ranks: Vec<Vec<ChunkDesc>> = (0..4)
                .map(|_| vec![desc("big", &[1024, 1024], &[0, 0], &[1024, 1024])])
                .collect();
            assert_eq!(&flat(&assign(&ranks, *spread_min).unwrap()), want);
        }
        // Small replicated tensors are dealt out by load: every rank writes two of eight.
        let ranks: Vec<Vec<ChunkDesc>> = (0..4)
            .map(|_| {
                (0..8)
                    .map(|i| desc(&format!("b{i}"), &[16], &[0], &[16]))
                    .collect()
            })
            .collect();
        let a = assign(&ranks, SPREAD_MIN_BYTES).unwrap();
        assert!(a.iter().all(|p| p.len() == 2), "{a:?}");
        assert_eq!(flat(&a).len(), 8);
    }

    #[test]
    fn fewer_rows_than_replicas_use_fewer_writers_and_scalars_go_whole() {
        let ranks: Vec<Vec<ChunkDesc>> = (0..4)
            .map(|_| {
                vec![
                    desc("tall", &[3, 1 << 20], &[0, 0], &[3, 1 << 20]),
                    desc("scalar", &[], &[], &[]),
                ]
            })
            .collect();
        let a = flat(&assign(&ranks, SPREAD_MIN_BYTES).unwrap());
        // "scalar" (chunk 1 on every rank) sorts first and goes whole to rank 0; "tall" (chunk 0,
        // 12 MiB) is split in three, avoiding rank 0, which already has a piece.
        assert_eq!(
            a,
            vec![
                (0, 1, None),
                (1, 0, Some((0, 1))),
                (2, 0, Some((1, 2))),
                (3, 0, Some((2, 3))),
            ]
        );
    }

    #[test]
    fn grids_and_many_row_shards_tile() {
        let grid: Vec<Vec<ChunkDesc>> = (0..4u64)
            .map(|r| vec![desc("g", &[4, 4], &[2 * (r / 2), 2 * (r % 2)], &[2, 2])])
            .collect();
        assert_eq!(flat(&assign(&grid, SPREAD_MIN_BYTES).unwrap()).len(), 4);
        // 1,024 row shards, given in reverse order.
        let rows: Vec<Vec<ChunkDesc>> = (0..1024u64)
            .rev()
            .map(|r| vec![desc("w", &[2048, 8], &[2 * r, 0], &[2, 8])])
            .collect();
        assert_eq!(flat(&assign(&rows, SPREAD_MIN_BYTES).unwrap()).len(), 1024);
    }

    #[test]
    fn mixed_sharded_and_replicated() {
        // Ranks 0,1 hold rows 0..2 of "w"; ranks 2,3 hold rows 2..4 (two data-parallel groups).
        let ranks: Vec<Vec<ChunkDesc>> = (0..4u64)
            .map(|r| vec![desc("w", &[4, 4], &[2 * (r / 2), 0], &[2, 4])])
            .collect();
        let a = flat(&assign(&ranks, SPREAD_MIN_BYTES).unwrap());
        // Each group's chunk is written once, by the least loaded of its two replicas.
        assert_eq!(a, vec![(0, 0, None), (2, 0, None)]);
    }

    #[test]
    fn inconsistent_announcements_are_refused_naming_the_tensor() {
        let table: Vec<(Vec<Vec<ChunkDesc>>, &str)> = vec![
            (
                vec![
                    vec![desc("w", &[4], &[0], &[2])],
                    vec![desc("w", &[5], &[2], &[2])],
                ],
                "tensor \"w\": rank 0 has F32 [4] but rank 1 has F32 [5]",
            ),
            (
                vec![
                    vec![desc("w", &[4], &[0], &[3])],
                    vec![desc("w", &[4], &[2], &[2])],
                ],
                "overlaps",
            ),
            (
                vec![vec![desc("w", &[4], &[0], &[2])], vec![]],
                "cover 2 of its 4 elements",
            ),
            // A 2 x 2 grid whose last chunk reaches into its left neighbour's columns.
            (
                vec![
                    vec![desc("g", &[4, 4], &[0, 0], &[2, 2])],
                    vec![desc("g", &[4, 4], &[0, 2], &[2, 2])],
                    vec![desc("g", &[4, 4], &[2, 0], &[2, 2])],
                    vec![desc("g", &[4, 4], &[2, 1], &[2, 3])],
                ],
                "overlaps",
            ),
            (
                vec![vec![
                    desc("w", &[4], &[0], &[4]),
                    desc("w", &[4], &[0], &[4]),
                ]],
                "rank 0 gives the chunk at [0] twice",
            ),
        ];
        for (ranks, want) in table {
            let err = assign(&ranks, SPREAD_MIN_BYTES).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
