//! Pure arithmetic for the MPI coordinator: where each rank's message lands in an all-gather's
//! receive buffer, and whether a length fits MPI's `int` counts. Every rank computes the same
//! answer from the same gathered lengths, so a message that is too large fails on every rank
//! alike instead of leaving some ranks waiting.
//!
//! It must not call MPI or hold any buffer of its own: `mpi.rs` makes the calls with these counts
//! and offsets, and reports the errors these functions return.

use std::os::raw::c_int;

/// The receive layout of a variable-length all-gather.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GatherLayout {
    /// Bytes from each rank.
    pub counts: Vec<c_int>,
    /// Where each rank's bytes start in the receive buffer.
    pub displs: Vec<c_int>,
    /// The receive buffer's length.
    pub total: usize,
}

/// The layout for messages of `lengths` bytes (indexed by rank), or why MPI cannot carry them in
/// one call (the total must fit a C `int`).
pub(super) fn gather_layout(lengths: &[u64]) -> Result<GatherLayout, String> {
    let mut counts = Vec::with_capacity(lengths.len());
    let mut displs = Vec::with_capacity(lengths.len());
    let mut offset: c_int = 0;
    for (rank, &len) in lengths.iter().enumerate() {
        let count = c_int::try_from(len).ok();
        let end = count.and_then(|c| offset.checked_add(c));
        let (Some(count), Some(end)) = (count, end) else {
            let total: u128 = lengths.iter().map(|&l| u128::from(l)).sum();
            return Err(format!(
                "the messages total {total} bytes (rank {rank} sends {len}); one all-gather carries at most {} bytes",
                c_int::MAX
            ));
        };
        counts.push(count);
        displs.push(offset);
        offset = end;
    }
    Ok(GatherLayout {
        counts,
        displs,
        total: usize::try_from(offset).unwrap_or(0),
    })
}

/// Whether a broadcast of `len` bytes fits one MPI call.
pub(super) fn broadcast_len(len: u64) -> Result<usize, String> {
    match c_int::try_from(len) {
        Ok(count) => Ok(usize::try_from(count).unwrap_or(0)),
        Err(_) => Err(format!(
            "the message has {len} bytes; one broadcast carries at most {} bytes",
            c_int::MAX
        )),
    }
}

/// Cuts a gathered receive buffer into each rank's message.
pub(super) fn split(buffer: &[u8], layout: &GatherLayout) -> Vec<Vec<u8>> {
    layout
        .counts
        .iter()
        .zip(&layout.displs)
        .map(|(&count, &displ)| {
            let start = usize::try_from(displ).unwrap_or(0);
            let end = start + usize::try_from(count).unwrap_or(0);
            buffer.get(start..end).unwrap_or_default().to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MAX: u64 = c_int::MAX as u64;

    /// (lengths, counts, displacements, total)
    type LayoutCase<'a> = (&'a [u64], &'a [c_int], &'a [c_int], usize);

    #[test]
    fn layouts_place_each_rank_after_the_previous_one() {
        let table: &[LayoutCase] = &[
            (&[], &[], &[], 0),
            (&[0, 0, 0], &[0, 0, 0], &[0, 0, 0], 0),
            (&[3, 0, 5], &[3, 0, 5], &[0, 3, 3], 8),
            (&[1, 2, 3, 4], &[1, 2, 3, 4], &[0, 1, 3, 6], 10),
            (&[MAX], &[c_int::MAX], &[0], MAX as usize),
            (
                &[MAX - 1, 1],
                &[c_int::MAX - 1, 1],
                &[0, c_int::MAX - 1],
                MAX as usize,
            ),
        ];
        for &(lengths, counts, displs, total) in table {
            let layout = gather_layout(lengths).unwrap();
            assert_eq!(layout.counts, counts, "{lengths:?}");
            assert_eq!(layout.displs, displs, "{lengths:?}");
            assert_eq!(layout.total, total, "{lengths:?}");
        }
    }

    #[test]
    fn layouts_too_large_for_mpi_are_refused_with_the_sizes() {
        let table: &[(&[u64], &str)] = &[
            (
                &[MAX + 1],
                "total 2147483648 bytes (rank 0 sends 2147483648)",
            ),
            (&[MAX, 1], "total 2147483648 bytes (rank 1 sends 1)"),
            (&[1, u64::MAX], "rank 1 sends 18446744073709551615"),
        ];
        for (lengths, want) in table {
            let err = gather_layout(lengths).unwrap_err();
            assert!(err.contains(want), "{lengths:?}: {err}");
        }
    }

    #[test]
    fn broadcast_lengths_must_fit_an_int() {
        assert_eq!(broadcast_len(0).unwrap(), 0);
        assert_eq!(broadcast_len(MAX).unwrap(), MAX as usize);
        let err = broadcast_len(MAX + 1).unwrap_err();
        assert!(err.contains("2147483648 bytes"), "{err}");
    }

    #[test]
    fn split_returns_each_ranks_bytes() {
        let layout = gather_layout(&[2, 0, 3]).unwrap();
        let parts = split(b"abcde", &layout);
        assert_eq!(parts, vec![b"ab".to_vec(), vec![], b"cde".to_vec()]);
    }
}
