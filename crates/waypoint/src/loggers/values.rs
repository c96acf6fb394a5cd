//! [`Values`]: the values of one metrics call as the queue carries them, inside the message for
//! up to [`INLINE`] metrics, so that a typical call allocates nothing (an allocation freed on
//! the writer's thread costs the caller its p99: measured in `examples/logger_throughput.rs`).

use super::names::MetricId;

/// Metrics of one call carried inside the message; more go to the heap.
pub(super) const INLINE: usize = 8;

/// The `(id, value)` pairs of one call.
#[derive(Debug)]
pub(super) enum Values {
    /// Up to [`INLINE`] pairs: the first `len` of `ids` and `values`.
    Inline {
        len: u8,
        ids: [MetricId; INLINE],
        values: [f64; INLINE],
    },
    /// More.
    Heap(Vec<(MetricId, f64)>),
}

impl Values {
    /// The pairs of `pairs`.
    pub(super) fn collect(pairs: impl ExactSizeIterator<Item = (MetricId, f64)>) -> Self {
        if pairs.len() > INLINE {
            return Values::Heap(pairs.collect());
        }
        let mut ids = [MetricId::default(); INLINE];
        let mut values = [0.0; INLINE];
        let mut len = 0u8;
        for ((id, value), (id_slot, value_slot)) in pairs.zip(ids.iter_mut().zip(values.iter_mut()))
        {
            *id_slot = id;
            *value_slot = value;
            len += 1;
        }
        Values::Inline { len, ids, values }
    }

    /// How many pairs.
    pub(super) fn len(&self) -> usize {
        match self {
            Values::Inline { len, .. } => usize::from(*len),
            Values::Heap(pairs) => pairs.len(),
        }
    }

    /// The pairs, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (MetricId, f64)> + '_ {
        (0..self.len()).filter_map(move |i| match self {
            Values::Inline { ids, values, .. } => Some((*ids.get(i)?, *values.get(i)?)),
            Values::Heap(pairs) => pairs.get(i).copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_keep_the_pairs_in_order() {
        for n in [0usize, 1, INLINE, INLINE + 1, 40] {
            let pairs: Vec<(MetricId, f64)> =
                (0..n).map(|i| (MetricId::default(), i as f64)).collect();
            let values = Values::collect(pairs.iter().copied());
            assert_eq!(matches!(values, Values::Heap(_)), n > INLINE);
            assert_eq!(values.iter().collect::<Vec<_>>(), pairs);
        }
    }
}
