//! The decision function, pure: given the policy state, one training event and the latest metrics,
//! which checkpoints to save, link and delete. Owns triggers, ranking freshness, the last
//! checkpoint's rotation and the safety rules on deletion; performs none of it.
//!
//! It must not touch storage, the clock or the other ranks: which checkpoints exist and the time
//! come in through `DecideContext` and the event, the next policy state goes out in the `Decision`
//! (never changed in place), and the run carries the actions out.

use super::config::ModelCheckpoint;
use super::event::{Action, DISPLACED, DecideContext, Decision, Event, PREVIOUS_LAST, Role};
use super::knobs::{Mode, SaveLast, Trigger};
use super::naming::{last_name, last_with_version, name_problem, render_segments, with_version};
use super::state::{Metrics, PolicyState};
use super::topk::TopK;
use crate::error::Result;
use std::collections::BTreeMap;

/// A configured checkpoint policy for one experiment.
#[derive(Debug, Clone)]
pub struct Policy {
    config: ModelCheckpoint,
    experiment_name: String,
}

impl Policy {
    /// A policy for `config` in the experiment named `experiment_name` (the `{name}` placeholder).
    /// Refused when the template cannot give a valid name with this experiment name.
    pub fn new(config: ModelCheckpoint, experiment_name: impl Into<String>) -> Result<Self> {
        let experiment_name = experiment_name.into();
        render_segments(
            config.template(),
            &experiment_name,
            &BTreeMap::new(),
            0,
            0,
            config.auto_insert_metric_name(),
        )?;
        Ok(Self {
            config,
            experiment_name,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelCheckpoint {
        &self.config
    }

    /// The experiment name.
    pub fn experiment_name(&self) -> &str {
        &self.experiment_name
    }

    /// Decides what to do at `event`. Returns no actions when nothing triggers; see the module
    /// documentation of [`crate::policy`] for the rules.
    pub fn decide(
        &self,
        state: &PolicyState,
        event: &Event,
        metrics: &Metrics,
        ctx: &DecideContext<'_>,
    ) -> Decision {
        let (step, epoch, now_s) = event.parts();
        let mut next = state.clone();
        next.monitor = self.config.monitor().map(String::from);
        next.mode = if next.monitor.is_some() {
            self.config.mode()
        } else {
            Mode::Max
        };
        if now_s.is_finite() && next.start_time_s.is_none() {
            next.start_time_s = Some(now_s);
        }
        let c = &self.config;
        let triggered = match (event, c.trigger()) {
            (Event::TrainStepEnd { .. }, Trigger::EveryNTrainSteps(n)) => {
                step.checked_rem(n) == Some(0)
            }
            (Event::TrainStepEnd { .. }, Trigger::TrainTimeInterval(d)) => {
                time_due(&mut next, now_s, d.as_secs_f64())
            }
            (Event::ValidationEnd { .. }, Trigger::EveryNEpochs(n)) => {
                !c.save_on_train_epoch_end() && epoch_due(epoch, n)
            }
            (Event::TrainEpochEnd { .. }, Trigger::EveryNEpochs(n)) => {
                c.save_on_train_epoch_end() && epoch_due(epoch, n)
            }
            _ => false,
        };
        let mut draft = Draft {
            next,
            actions: Vec::new(),
            deletes: Vec::new(),
            notes: Vec::new(),
        };
        // Lightning never saves at global step 0 (nothing trained) nor twice at one step.
        let fresh_step = step > 0 && state.last_save_step != Some(step);
        if let Event::TrainEnd { .. } = event {
            if fresh_step && c.save_last() != SaveLast::No {
                let weights_only = c.save_weights_only() || !c.save_optim_on_train_end();
                self.save(
                    &mut draft,
                    state,
                    metrics,
                    ctx,
                    (step, epoch),
                    false,
                    weights_only,
                );
            }
        } else if triggered && fresh_step {
            self.save(
                &mut draft,
                state,
                metrics,
                ctx,
                (step, epoch),
                true,
                c.save_weights_only(),
            );
        }
        draft.finish()
    }

    /// Plans the saves of one trigger (`rank`: the top-k may take it) and what they replace.
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        draft: &mut Draft,
        state: &PolicyState,
        metrics: &Metrics,
        ctx: &DecideContext<'_>,
        (step, epoch): (u64, u64),
        rank: bool,
        weights_only: bool,
    ) {
        let c = &self.config;
        // Only values measured at this very step reach a name or a rank (NeMo #10675).
        let values = values_at_step(metrics, step);
        let Some(base) = self.base_name(draft, &values, (step, epoch)) else {
            return;
        };
        // Taken: on disk, managed by the policy, or reserved by a save in flight (not on disk
        // yet, and perhaps no longer in `saved` once a later save rotated it out).
        let taken =
            |n: &str| (ctx.existing)(n) || (ctx.in_flight)(n) || state.saved.contains_key(n);
        let planned = PlannedSave {
            base,
            step,
            score: c.monitor().and_then(|m| values.get(m).copied()),
            weights_only,
        };
        let mut top = TopK::with_entries(c.save_top_k(), draft.next.mode, draft.next.top_k.clone());
        let mut displaced = Vec::new();
        let mut ranked: Option<String> = None;
        let mut saved_any = false;
        // A surplus (save_top_k lowered since the state was written) goes with this save.
        displaced.extend(top.trim());
        if rank && c.save_top_k() != 0 {
            ranked = self.plan_ranked(draft, &planned, &taken, &mut top, &mut displaced);
            saved_any = ranked.is_some();
        }
        if c.save_last() != SaveLast::No {
            self.plan_last(draft, &planned, &taken, ranked.as_deref());
            saved_any = true;
        }
        if !saved_any {
            return;
        }
        draft
            .deletes
            .splice(0..0, displaced.into_iter().map(|n| (n, DISPLACED)));
        draft.next.top_k = top.into_entries();
        draft.next.last_save_step = Some(step);
        draft.check_deletes(state, ctx.protected, ranked.as_deref());
    }

    /// The name the template gives at this step, before any version or `-last` suffix; `None`
    /// (with a note) when it cannot render one.
    fn base_name(
        &self,
        draft: &mut Draft,
        values: &BTreeMap<String, f64>,
        (step, epoch): (u64, u64),
    ) -> Option<String> {
        let c = &self.config;
        match render_segments(
            c.template(),
            &self.experiment_name,
            values,
            epoch,
            step,
            c.auto_insert_metric_name(),
        ) {
            Ok(base) => Some(base),
            Err(e) => {
                draft.notes.push(format!("step {step}: nothing saved: {e}"));
                None
            }
        }
    }

    /// The score this save would enter the top-k with, or `None` (with a note when the monitored
    /// metric is missing) when it does not enter.
    fn top_k_entry(&self, draft: &mut Draft, top: &TopK, planned: &PlannedSave) -> Option<f64> {
        let c = &self.config;
        let step = planned.step;
        match (c.monitor(), planned.score) {
            // No monitor: every save is kept (-1) or replaces the previous one (1).
            (None, _) => Some(step as f64),
            (Some(_), Some(s)) => top.would_enter(s).then_some(s),
            (Some(_), None) if c.save_top_k() == -1 => Some(f64::NAN),
            (Some(m), None) => {
                draft.notes.push(match c.save_last() {
                    SaveLast::No => format!(
                        "step {step}: {m} not reported at this step; not ranked, and save_last is off: nothing saved"
                    ),
                    _ => format!("step {step}: {m} not reported at this step; saved as -last only"),
                });
                None
            }
        }
    }

    /// Plans the top-k save, if this one enters; returns its name. What it pushes out of the
    /// top-k goes to `displaced`.
    fn plan_ranked(
        &self,
        draft: &mut Draft,
        planned: &PlannedSave,
        taken: &dyn Fn(&str) -> bool,
        top: &mut TopK,
        displaced: &mut Vec<String>,
    ) -> Option<String> {
        let c = &self.config;
        let s = self.top_k_entry(draft, top, planned)?;
        let name = if c.enable_version_counter() {
            with_version(&planned.base, taken)
        } else {
            planned.base.to_string()
        };
        top.remove(&name);
        if c.monitor().is_none() && c.save_top_k() == 1 {
            displaced.extend(top.names().map(String::from));
            top.retain(|_| false);
        }
        displaced.extend(top.insert(name.clone(), s));
        draft.actions.push(Action::Save {
            name: name.clone(),
            role: Role::TopK,
            weights_only: planned.weights_only,
            score: planned.score,
        });
        draft.next.saved.insert(name.clone(), planned.step);
        Some(name)
    }

    /// Plans the `-last` checkpoint (a save, or a link to the top-k save `ranked`) and the
    /// deletion of the previous one.
    fn plan_last(
        &self,
        draft: &mut Draft,
        planned: &PlannedSave,
        taken: &dyn Fn(&str) -> bool,
        ranked: Option<&str>,
    ) {
        let c = &self.config;
        let taken_now = |n: &str| taken(n) || ranked == Some(n);
        let last = if c.enable_version_counter() {
            last_with_version(&planned.base, &taken_now)
        } else {
            last_name(&planned.base)
        };
        match ranked {
            Some(target) if c.save_last() == SaveLast::Link && target != last => {
                draft.actions.push(Action::Link {
                    link: last.clone(),
                    target: target.to_string(),
                });
            }
            _ => draft.actions.push(Action::Save {
                name: last.clone(),
                role: Role::Last,
                weights_only: planned.weights_only,
                score: planned.score,
            }),
        }
        draft.next.saved.insert(last.clone(), planned.step);
        if let Some(previous) = draft.next.last_model_path.replace(last) {
            draft.deletes.push((previous, PREVIOUS_LAST));
        }
    }
}

/// What the saves of one trigger share: the rendered name, the step, the monitored value measured
/// at it and whether only the weights are saved.
struct PlannedSave {
    base: String,
    step: u64,
    score: Option<f64>,
    weights_only: bool,
}

/// The metrics measured at `step`, by name.
fn values_at_step(metrics: &Metrics, step: u64) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(_, m)| m.step == step)
        .map(|(k, m)| (k.clone(), m.value))
        .collect()
}

/// Whether epoch `epoch` (0-based) ends a period of `n` epochs: `(epoch + 1) % n == 0`.
fn epoch_due(epoch: u64, n: u64) -> bool {
    n > 0 && epoch % n == n - 1
}

/// Whether `interval` seconds passed since the latest time-triggered save (or the first event);
/// records the save time when it did. A clock that went backwards restarts the interval.
fn time_due(next: &mut PolicyState, now_s: f64, interval: f64) -> bool {
    if !now_s.is_finite() {
        return false;
    }
    match next.last_save_time_s.or(next.start_time_s) {
        Some(anchor) if now_s >= anchor => {
            let due = now_s - anchor >= interval;
            if due {
                next.last_save_time_s = Some(now_s);
            }
            due
        }
        _ => {
            next.start_time_s = Some(now_s);
            next.last_save_time_s = None;
            false
        }
    }
}

/// A decision being assembled: saves go to `actions` at once, deletes wait in `deletes`.
struct Draft {
    next: PolicyState,
    actions: Vec<Action>,
    deletes: Vec<(String, &'static str)>,
    notes: Vec<String>,
}

impl Draft {
    /// Keeps only the deletions that are safe: names this policy saved, valid, not protected, not
    /// kept in the top-k, not the current last, not saved in this decision.
    fn check_deletes(
        &mut self,
        state: &PolicyState,
        protected: Option<&str>,
        ranked: Option<&str>,
    ) {
        let mut safe = Vec::new();
        for (name, reason) in std::mem::take(&mut self.deletes) {
            let still_used = self.next.top_k.iter().any(|e| e.name == name)
                || self.next.last_model_path.as_deref() == Some(name.as_str())
                || ranked == Some(name.as_str());
            if still_used || safe.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if protected == Some(name.as_str()) {
                self.notes.push(format!(
                    "kept {name} ({reason}): it is the checkpoint this run resumed from"
                ));
            } else if !state.saved.contains_key(&name) || name_problem(&name).is_some() {
                self.notes.push(format!(
                    "not deleting {name} ({reason}): this policy did not save it"
                ));
            } else {
                safe.push((name, reason));
            }
        }
        self.deletes = safe;
    }

    fn finish(mut self) -> Decision {
        self.next.retain_managed();
        let deletes = self
            .deletes
            .into_iter()
            .map(|(name, reason)| Action::Delete { name, reason });
        self.actions.extend(deletes);
        Decision {
            actions: self.actions,
            next: self.next,
            notes: self.notes,
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "retention_tests.rs"]
mod retention_tests;
