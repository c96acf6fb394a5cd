//! Retention beyond the top-k (Orbax's preservation policies), pure: the latest `max_to_keep`
//! saves, permanent keeps (`keep_every_n_steps`, `keep_time_interval`, manual saves) and the
//! union of what every rule keeps. Owns these rules' bookkeeping in [`PolicyState`] (`recent`,
//! `permanent`, the time keep's clock); the types of that bookkeeping are the state's own
//! (`state.rs`), so that the state depends on no rule.
//!
//! It must not decide whether a save happens (`decide` does, and asks here whether a save is
//! kept and what a new save pushes out of the window), nor delete anything.

use super::config::ModelCheckpoint;
use super::state::{KeepReason, PolicyState, RecentEntry};

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
