//! The call order of real trainers, pure: which save an event makes when the monitored value of a
//! step-triggered save is reported after that step's end (Lightning calls the training-batch end
//! before that step's validation). Owns the deferral of such a save to the step's validation end
//! (as Lightning does from 2.5.5, PR #21106), its bound, the first save's catch-up, and the
//! queries that need no decision: [`Policy::should_save`] and [`Policy::check_tag`].
//!
//! It must not plan names or deletions (`decide` does), nor read a clock.

use super::config::ModelCheckpoint;
use super::decide::{Draft, Kind, Policy, time_due};
use super::event::Event;
use super::knobs::{SaveLast, Trigger};
use super::state::{Metrics, PolicyState};
use crate::error::{Error, Result};

/// Longest tag of a manual save, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Which save an event makes, and whether a trigger's save made before its monitored value was
/// reported may be caught up at this step's validation end.
pub(super) struct Due {
    pub(super) kind: Option<Kind<'static>>,
    pub(super) unranked: bool,
}

impl Due {
    fn none() -> Self {
        Due {
            kind: None,
            unranked: false,
        }
    }
    fn save(kind: Kind<'static>) -> Self {
        Due {
            kind: Some(kind),
            unranked: false,
        }
    }
    fn when(due: bool, kind: Kind<'static>) -> Self {
        Due {
            kind: due.then_some(kind),
            unranked: false,
        }
    }
}

impl Policy {
    /// Which save `event` makes (`triggered`: the knobs' trigger fired), following the trainer's
    /// call order, and the deferral it leaves in `draft.next`.
    ///
    /// - A step end whose trigger fires while the monitored value is not reported at this step:
    ///   once the trainer was seen validating after a save step's end (`validation_follows`),
    ///   the save waits for this step's validation end; otherwise it is saved at once, unranked,
    ///   and a validation end at this step with the value saves it again, ranked (the first
    ///   save of a run that validates after the step end), and later ones wait.
    /// - The bound: a deferred save is made at the next step end if no validation ended at its
    ///   step (unranked, at that step), or at the train end of its step.
    pub(super) fn order(
        &self,
        draft: &mut Draft,
        state: &PolicyState,
        event: &Event,
        metrics: &Metrics,
        triggered: bool,
    ) -> Due {
        let c: &ModelCheckpoint = self.config();
        let (step, ..) = event.parts();
        // Lightning never saves at global step 0 (nothing trained) nor twice at one step.
        let fresh_step = step > 0 && state.last_save_step != Some(step);
        let monitor = c.monitor().filter(|_| c.save_top_k() != 0);
        let reported = |m: &str| metrics.get(m).is_some_and(|v| v.step == step);
        let deferred = state.deferred_step;
        draft.next.deferred_step = None;
        match event {
            Event::TrainEnd { .. } if deferred == Some(step) => {
                Due::when(fresh_step, Kind::Trigger)
            }
            Event::TrainEnd { .. } => {
                Due::when(fresh_step && c.save_last() != SaveLast::No, Kind::TrainEnd)
            }
            Event::TrainStepEnd { .. } => match deferred {
                Some(d) if d != step => {
                    draft.notes.push(format!(
                        "step {d}: no validation ended at step {d}; the save that waited for it is made at step {step}, unranked"
                    ));
                    draft.next.validation_follows = false;
                    Due::when(fresh_step, Kind::Trigger)
                }
                _ if !(triggered && fresh_step) => {
                    draft.next.deferred_step = deferred;
                    Due::none()
                }
                _ => match monitor.filter(|m| !reported(m)) {
                    Some(m) if state.validation_follows => {
                        draft.next.deferred_step = Some(step);
                        draft.notes.push(format!(
                            "step {step}: {m} not reported yet; the save waits for this step's validation end"
                        ));
                        Due::none()
                    }
                    Some(_) => Due {
                        kind: Some(Kind::Trigger),
                        unranked: true,
                    },
                    None => Due::save(Kind::Trigger),
                },
            },
            Event::ValidationEnd { .. } if deferred == Some(step) => {
                if let Some(m) = monitor.filter(|m| !reported(m)) {
                    draft.notes.push(format!(
                        "step {step}: the validation ended without {m}; the save that waited for it is made unranked"
                    ));
                }
                Due::when(fresh_step, Kind::Trigger)
            }
            Event::ValidationEnd { .. } => {
                draft.next.deferred_step = deferred;
                match monitor {
                    Some(m) if reported(m) && state.unranked_step == Some(step) => {
                        draft.next.unranked_step = None;
                        draft.next.validation_follows = true;
                        draft.notes.push(format!(
                            "step {step}: {m} was reported after this step's save: saved again, ranked; later saves wait for their validation end"
                        ));
                        Due::save(Kind::Trigger)
                    }
                    _ => Due::when(triggered && fresh_step, Kind::Trigger),
                }
            }
            Event::TrainEpochEnd { .. } => {
                draft.next.deferred_step = deferred;
                Due::when(triggered && fresh_step, Kind::Trigger)
            }
            Event::Manual { .. } => {
                draft.next.deferred_step = deferred;
                Due::none()
            }
        }
    }

    /// Whether a save is due at the step end of `step` (clock `now_s`): Orbax's
    /// `should_save(step)`. True at a step trigger's multiple, when the time trigger's interval
    /// has passed, or when a save deferred for an earlier step's validation is made now; never at
    /// step 0 nor twice at one step; epoch-triggered saves happen at epoch and validation ends,
    /// so never here. A due save whose monitored value is not reported yet may still wait for
    /// the step's validation end.
    pub fn should_save(&self, state: &PolicyState, step: u64, now_s: f64) -> bool {
        if step == 0 || state.last_save_step == Some(step) {
            return false;
        }
        if state.deferred_step.is_some_and(|d| d != step) {
            return true;
        }
        match self.config().trigger() {
            Trigger::EveryNTrainSteps(n) => step.checked_rem(n) == Some(0),
            Trigger::TrainTimeInterval(d) => {
                let mut probe = state.clone();
                if now_s.is_finite() && probe.start_time_s.is_none() {
                    probe.start_time_s = Some(now_s);
                }
                time_due(&mut probe, now_s, d.as_secs_f64())
            }
            Trigger::EveryNEpochs(_) => false,
        }
    }

    /// The monitored metric, when one is set and no value of it was ever reported: at a
    /// validation end, what `on_missing_monitor` acts on (nothing can ever be ranked).
    pub fn missing_monitor(&self, metrics: &Metrics) -> Option<&str> {
        self.config()
            .monitor()
            .filter(|m| !metrics.contains_key(*m))
    }

    /// Checks a manual save's tag: 1 to [`MAX_TAG_LEN`] bytes of ASCII letters, digits, `-`, `_`
    /// and `.`, not starting with `-` or `.`, and not ending in `last` (a name ending in `last`
    /// is a `-last` checkpoint to AutoResume).
    pub fn check_tag(tag: &str) -> Result<()> {
        let problem = if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            Some(format!("must be 1 to {MAX_TAG_LEN} bytes"))
        } else if !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            Some("may hold only ASCII letters, digits, '-', '_' and '.'".to_string())
        } else if tag.starts_with(['-', '.']) {
            Some("must not start with '-' or '.'".to_string())
        } else if tag.ends_with("last") {
            Some("must not end in \"last\" (the -last checkpoint's suffix)".to_string())
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidArgument {
                name: "tag",
                reason: format!("{tag:?} {reason}"),
            }),
        }
    }
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
