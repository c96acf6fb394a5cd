//! Retention beyond the top-k (Orbax's preservation policies), pure: the latest `max_to_keep`
//! saves, permanent keeps (`keep_every_n_steps`, `keep_time_interval`, manual saves) and the
//! union of what every rule keeps. Owns these rules' bookkeeping in [`PolicyState`] (`recent`,
//! `permanent`, the time keep's clock).
//!
//! It must not decide whether a save happens (`decide` does, and asks here whether a save is
//! kept and what a new save pushes out of the window), nor delete anything.

use super::config::ModelCheckpoint;
use super::state::PolicyState;
use serde::{Deserialize, Serialize};

/// A save kept by `max_to_keep`: its name and step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentEntry {
    /// The checkpoint's name.
    pub name: String,
    /// The global step it was saved at.
    pub step: u64,
}

/// Why a checkpoint is kept for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// Its step is a multiple of `keep_every_n_steps`.
    EveryNSteps,
    /// It came `keep_time_interval` after the previous time keep (or was the first save).
    TimeInterval,
    /// A manual save ([`Run::save_now`](crate::Run::save_now)).
    Manual,
}

impl KeepReason {
    /// The knob (or call) that keeps it, for messages and `waypoint show`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::EveryNSteps => "keep_every_n_steps",
            KeepReason::TimeInterval => "keep_time_interval",
            KeepReason::Manual => "save_now",
        }
    }
}

/// A checkpoint kept for good: rotation never deletes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermanentKeep {
    /// The global step it was saved at.
    pub step: u64,
    /// The first rule that kept it.
    pub reason: KeepReason,
}

/// Whether the save at `step` (clock `now_s`) is kept for good, and why; records the time keep's
/// clock in `next` when the time rule keeps it. The time rule keeps the first save, then each
/// save at least the interval after the previous time keep; a clock that went backwards (another
/// origin after a restart) keeps this save and restarts the interval.
pub(crate) fn permanent_reason(
    config: &ModelCheckpoint,
    next: &mut PolicyState,
    step: u64,
    now_s: f64,
) -> Option<KeepReason> {
    let by_step = config
        .keep_every_n_steps()
        .is_some_and(|n| step.checked_rem(n) == Some(0));
    let by_time = config.keep_time_interval().is_some_and(|d| {
        let due = now_s.is_finite()
            && next
                .last_keep_time_s
                .is_none_or(|t| now_s < t || now_s - t >= d.as_secs_f64());
        if due {
            next.last_keep_time_s = Some(now_s);
        }
        due
    });
    match (by_step, by_time) {
        (true, _) => Some(KeepReason::EveryNSteps),
        (false, true) => Some(KeepReason::TimeInterval),
        (false, false) => None,
    }
}

/// Adds `name` (saved at `step`) to the latest saves and returns the names pushed out of the
/// window of `max` (oldest first).
pub(crate) fn push_recent(
    next: &mut PolicyState,
    name: &str,
    step: u64,
    max: usize,
) -> Vec<String> {
    next.recent.retain(|e| e.name != name);
    next.recent.push(RecentEntry {
        name: name.to_string(),
        step,
    });
    trim_recent(next, Some(max))
}

/// Drops the oldest latest saves beyond `max` (all of them when `max_to_keep` is off, as after a
/// change of the knob between runs) and returns their names.
pub(crate) fn trim_recent(next: &mut PolicyState, max: Option<usize>) -> Vec<String> {
    let keep = max.unwrap_or(0);
    let surplus = next.recent.len().saturating_sub(keep);
    next.recent.drain(..surplus).map(|e| e.name).collect()
}

#[cfg(test)]
#[path = "retention_rules_tests.rs"]
mod tests;
