//! Histograms of values with TensorFlow's default buckets.
//!
//! The bucket edges are TensorFlow's (`tensorflow/core/lib/histogram`): 0, then ±1e-12 growing
//! by 10% per bucket up to ±1e20, then ±`f64::MAX`; 1,551 edges in all. Bucket `i` counts the
//! values `v` with `edge[i-1] <= v < edge[i]`. As TensorFlow does, every run of consecutive empty
//! buckets is written as one empty bucket whose limit is the run's last edge, so a histogram
//! costs about as many buckets as it has distinct magnitudes. Non-finite values (NaN, ±∞) are
//! left out of every statistic, since TensorBoard cannot draw them.

use crate::proto::HistogramProto;
use std::sync::OnceLock;

/// TensorFlow's default bucket edges, ascending.
pub fn default_bucket_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut positive = Vec::new();
        let mut v = 1.0e-12;
        while v < 1.0e20 {
            positive.push(v);
            v *= 1.1;
        }
        positive.push(f64::MAX);
        let mut limits: Vec<f64> = positive.iter().rev().map(|v| -v).collect();
        limits.push(0.0);
        limits.extend_from_slice(&positive);
        limits
    })
}

/// A histogram of `values` over the default buckets (non-finite values are left out).
pub fn histogram(values: &[f64]) -> HistogramProto {
    let limits = default_bucket_limits();
    let mut counts = vec![0.0f64; limits.len()];
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut num, mut sum, mut sum_squares) = (0.0f64, 0.0f64, 0.0f64);
    for &v in values.iter().filter(|v| v.is_finite()) {
        let index = limits
            .partition_point(|&limit| limit <= v)
            .min(limits.len() - 1);
        if let Some(count) = counts.get_mut(index) {
            *count += 1.0;
        }
        min = min.min(v);
        max = max.max(v);
        num += 1.0;
        sum += v;
        sum_squares += v * v;
    }
    if num == 0.0 {
        (min, max) = (0.0, 0.0);
    }
    let (bucket_limit, bucket) = collapse_empty_runs(limits, &counts);
    HistogramProto {
        min,
        max,
        num,
        sum,
        sum_squares,
        bucket_limit,
        bucket,
    }
}

/// Writes each run of consecutive empty buckets as one bucket ending at the run's last edge.
fn collapse_empty_runs(limits: &[f64], counts: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut out_limits = Vec::new();
    let mut out_counts = Vec::new();
    let mut i = 0;
    while i < counts.len() {
        let mut end = limits[i];
        let count = counts[i];
        i += 1;
        if count <= 0.0 {
            while i < counts.len() && counts[i] <= 0.0 {
                end = limits[i];
                i += 1;
            }
        }
        out_limits.push(end);
        out_counts.push(count);
    }
    (out_limits, out_counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_match_tensorflow() {
        let limits = default_bucket_limits();
        assert_eq!(limits.len(), 1551);
        assert_eq!(limits[775], 0.0);
        assert_eq!(limits[776], 1.0e-12);
        assert_eq!(limits[0], -f64::MAX);
        assert_eq!(limits[1550], f64::MAX);
        assert!(limits.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn statistics_and_buckets() {
        let h = histogram(&[1.0, 2.0, 2.0, -3.0, f64::NAN, f64::INFINITY]);
        assert_eq!(
            (h.min, h.max, h.num, h.sum, h.sum_squares),
            (-3.0, 2.0, 4.0, 2.0, 18.0)
        );
        assert_eq!(h.bucket.iter().sum::<f64>(), 4.0);
        assert_eq!(h.bucket.len(), h.bucket_limit.len());
        // Non-empty buckets hold their values: edge[i-1] <= v < edge[i].
        let two = h.bucket_limit.iter().position(|&l| l > 2.0).unwrap();
        assert_eq!(h.bucket[two], 2.0);
        assert!(h.bucket_limit[two - 1] <= 2.0);
        // Collapsing leaves no two consecutive empty buckets.
        assert!(h.bucket.windows(2).all(|w| w[0] > 0.0 || w[1] > 0.0));
        assert_eq!(*h.bucket_limit.last().unwrap(), f64::MAX);
    }

    #[test]
    fn empty_histogram() {
        let h = histogram(&[]);
        assert_eq!((h.min, h.max, h.num), (0.0, 0.0, 0.0));
        assert_eq!(h.bucket_limit, vec![f64::MAX]);
        assert_eq!(h.bucket, vec![0.0]);
    }

    #[test]
    fn extreme_values_land_in_edge_buckets() {
        let h = histogram(&[f64::MAX, -f64::MAX, 0.0]);
        assert_eq!(h.bucket.iter().sum::<f64>(), 3.0);
    }
}
