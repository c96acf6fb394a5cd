//! The top-k bookkeeping of Lightning's ModelCheckpoint, pure: which checkpoint names are kept for
//! their score, which one a new score displaces. Owns the ranking rules (strict improvement, ties
//! keep the incumbent, NaN is the worst score); knows nothing of files.

use super::knobs::Mode;
use serde::{Deserialize, Serialize};

/// One kept checkpoint and its score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopKEntry {
    /// The checkpoint's name in the checkpoint directory.
    pub name: String,
    /// Its monitored value. In JSON a finite score is a number and NaN / infinities are the
    /// strings `"nan"`, `"inf"`, `"-inf"` (JSON has no NaN).
    #[serde(with = "score_repr")]
    pub score: f64,
}

impl PartialEq for TopKEntry {
    /// Names equal and scores equal, where NaN equals NaN (a state survives a JSON round trip).
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && (self.score == other.score || (self.score.is_nan() && other.score.is_nan()))
    }
}

/// The k best checkpoints by score.
///
/// Rules (Lightning's, made exact):
/// - `k == -1` keeps everything, `k == 0` nothing;
/// - a score enters when fewer than k are kept, or when it is strictly better than the k-th (the
///   worst kept): a tie does not enter;
/// - NaN is the worst score possible: a NaN never enters a full top-k, and a kept NaN is the first
///   displaced;
/// - among equally bad entries the most recently inserted is displaced first (incumbents win
///   ties, as a new tie does not enter).
///
/// ```
/// use waypoint::policy::{Mode, TopK};
/// let mut top = TopK::new(2, Mode::Min);
/// assert_eq!(top.insert("a", 0.5), None);
/// assert_eq!(top.insert("b", 0.4), None);
/// assert!(!top.would_enter(0.5)); // a tie with the worst kept does not enter
/// assert_eq!(top.insert("c", 0.3), Some("a".to_string()));
/// assert_eq!(top.best().map(|e| e.name.as_str()), Some("c"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    k: i64,
    mode: Mode,
    entries: Vec<TopKEntry>,
}

impl TopK {
    /// An empty top-k keeping `k` entries (-1: all, 0: none) ranked by `mode`.
    pub fn new(k: i64, mode: Mode) -> Self {
        Self::with_entries(k, mode, Vec::new())
    }

    /// A top-k over existing entries, oldest first. Surplus beyond k stays until [`TopK::trim`].
    pub fn with_entries(k: i64, mode: Mode, entries: Vec<TopKEntry>) -> Self {
        Self { k, mode, entries }
    }

    /// How many entries are kept (-1: all).
    pub fn k(&self) -> i64 {
        self.k
    }

    /// The ranking direction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> &[TopKEntry] {
        &self.entries
    }

    /// The kept entries, oldest first, by value.
    pub fn into_entries(self) -> Vec<TopKEntry> {
        self.entries
    }

    /// The kept names, oldest first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// Whether `name` is kept.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `score` would be kept if inserted now.
    pub fn would_enter(&self, score: f64) -> bool {
        match self.capacity() {
            None => true,
            Some(0) => false,
            Some(k) if self.entries.len() < k => true,
            Some(_) => self
                .kth()
                .is_some_and(|worst| self.mode.is_better(score, worst.score)),
        }
    }

    /// Inserts `name` with `score`, then displaces the worst entries beyond k. Returns the
    /// displaced name, which is `name` itself when the score does not enter (check
    /// [`TopK::would_enter`] first to avoid that). When the top-k held a surplus (k was lowered),
    /// only the first displaced name is returned; use [`TopK::trim`] to drain the rest.
    pub fn insert(&mut self, name: impl Into<String>, score: f64) -> Option<String> {
        self.entries.push(TopKEntry {
            name: name.into(),
            score,
        });
        self.trim().into_iter().next()
    }

    /// Displaces the worst entries until at most k are kept; returns their names, worst first.
    pub fn trim(&mut self) -> Vec<String> {
        let mut displaced = Vec::new();
        if let Some(k) = self.capacity() {
            while self.entries.len() > k {
                match self.kth_index() {
                    Some(i) => displaced.push(self.entries.remove(i).name),
                    None => break,
                }
            }
        }
        displaced
    }

    /// The best entry (the oldest among equals); a NaN only when every entry is NaN.
    pub fn best(&self) -> Option<&TopKEntry> {
        best_index(self.mode, &self.entries).and_then(|i| self.entries.get(i))
    }

    /// The worst kept entry: the one displaced next (the newest among equals, NaN first).
    pub fn kth(&self) -> Option<&TopKEntry> {
        self.kth_index().and_then(|i| self.entries.get(i))
    }

    /// Removes `name`; returns its entry when it was kept.
    pub fn remove(&mut self, name: &str) -> Option<TopKEntry> {
        let i = self.entries.iter().position(|e| e.name == name)?;
        Some(self.entries.remove(i))
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&TopKEntry) -> bool) {
        self.entries.retain(keep);
    }

    fn capacity(&self) -> Option<usize> {
        if self.k < 0 {
            None
        } else {
            Some(usize::try_from(self.k).unwrap_or(usize::MAX))
        }
    }

    fn kth_index(&self) -> Option<usize> {
        kth_index(self.mode, &self.entries)
    }
}

/// Index of the best of `entries` by `mode`: the oldest among equals.
pub(crate) fn best_index(mode: Mode, entries: &[TopKEntry]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, e) in entries.iter().enumerate() {
        let better = match best.and_then(|b| entries.get(b)) {
            None => true,
            Some(b) => mode.is_better(e.score, b.score),
        };
        if better {
            best = Some(i);
        }
    }
    best
}

/// Index of the worst of `entries` by `mode`: the newest among equals, a NaN before any number.
pub(crate) fn kth_index(mode: Mode, entries: &[TopKEntry]) -> Option<usize> {
    let mut worst: Option<usize> = None;
    for (i, e) in entries.iter().enumerate() {
        let at_least_as_bad = match worst.and_then(|w| entries.get(w)) {
            None => true,
            Some(w) => !mode.is_better(e.score, w.score),
        };
        if at_least_as_bad {
            worst = Some(i);
        }
    }
    worst
}

/// Serde for scores that may be NaN or infinite: a number when finite, else `"nan"`, `"inf"`,
/// `"-inf"`.
pub(crate) mod score_repr {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_nan() {
            s.serialize_str("nan")
        } else if x.is_infinite() {
            s.serialize_str(if *x > 0.0 { "inf" } else { "-inf" })
        } else {
            s.serialize_f64(*x)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(ScoreVisitor)
    }

    struct ScoreVisitor;

    impl Visitor<'_> for ScoreVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or one of \"nan\", \"inf\", \"-inf\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }
    }
}

#[cfg(test)]
#[path = "topk_tests.rs"]
mod tests;
