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
use super::retention::{KeepReason, PermanentKeep, permanent_reason, push_recent, trim_recent};
use super::state::{Metrics, PolicyState};
use super::template::{Pad, Segment, Spec};
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
    /// documentation of [`crate::policy`] for the rules. An [`Event::Manual`] is a manual save
    /// tagged `manual` (see [`Policy::decide_manual`]).
    pub fn decide(
        &self,
        state: &PolicyState,
        event: &Event,
        metrics: &Metrics,
        ctx: &DecideContext<'_>,
    ) -> Decision {
        self.decide_tagged(state, event, "manual", metrics, ctx)
    }

    /// A manual save at `event`'s step (Lightning's `trainer.save_checkpoint`, waypoint's
    /// [`Run::save_now`](crate::Run::save_now)): named by the template with `-<tag>` appended
    /// (and `-vN` on a collision), kept for good, ranked in the top-k too when its monitored
    /// value is fresh and good enough; it touches neither the `-last` nor the triggers. Any
    /// other event is decided as by [`Policy::decide`]. Check the tag with
    /// [`Policy::check_tag`] first.
    pub fn decide_manual(
        &self,
        state: &PolicyState,
        event: &Event,
        tag: &str,
        metrics: &Metrics,
        ctx: &DecideContext<'_>,
    ) -> Decision {
        self.decide_tagged(state, event, tag, metrics, ctx)
    }

    fn decide_tagged(
        &self,
        state: &PolicyState,
        event: &Event,
        tag: &str,
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
        let at = (step, epoch, now_s);
        let go = |kind| Go {
            state,
            metrics,
            ctx,
            at,
            kind,
        };
        if let Event::Manual { .. } = event {
            self.save(&mut draft, go(Kind::Manual(tag)));
            return draft.finish();
        }
        let due = self.order(&mut draft, state, event, metrics, triggered);
        if let Some(kind) = due.kind {
            let kept = self.save(&mut draft, go(kind));
            // Saved before its monitored value was reported, and only as the -last (or not at
            // all): this step's validation end may still save it ranked.
            if due.unranked && !kept {
                draft.next.unranked_step = Some(step);
            }
        }
        draft.finish()
    }

    /// Plans the saves of one trigger, train end or manual save, and what they replace. Returns
    /// whether a checkpoint other than the `-last` was saved.
    pub(super) fn save(&self, draft: &mut Draft, go: Go<'_, '_>) -> bool {
        let c = &self.config;
        let Go {
            state,
            metrics,
            ctx,
            at: (step, epoch, now_s),
            kind,
        } = go;
        // Only values measured at this very step reach a name or a rank (NeMo #10675).
        let values = values_at_step(metrics, step);
        let Some(base) = self.base_name(draft, &values, (step, epoch)) else {
            return false;
        };
        // Taken: on disk, managed by the policy, or reserved by a save in flight (not on disk
        // yet, and perhaps no longer in `saved` once a later save rotated it out).
        let taken =
            |n: &str| (ctx.existing)(n) || (ctx.in_flight)(n) || state.saved.contains_key(n);
        let weights_only = match kind {
            Kind::TrainEnd => c.save_weights_only() || !c.save_optim_on_train_end(),
            Kind::Trigger | Kind::Manual(_) => c.save_weights_only(),
        };
        let planned = PlannedSave {
            base,
            step,
            now_s,
            score: c.monitor().and_then(|m| values.get(m).copied()),
            weights_only,
        };
        // Undone if nothing is saved after all: the window and the time keep's clock.
        let (recent_before, keep_time_before) =
            (draft.next.recent.clone(), draft.next.last_keep_time_s);
        let mut top = TopK::with_entries(c.save_top_k(), draft.next.mode, draft.next.top_k.clone());
        // A surplus (save_top_k or max_to_keep lowered since the state was written) goes with
        // this save.
        let mut displaced = top.trim();
        displaced.extend(trim_recent(&mut draft.next, c.max_to_keep()));
        let kept = match kind {
            Kind::TrainEnd => None,
            Kind::Trigger => self.plan_kept(draft, &planned, &taken, &mut top, &mut displaced),
            Kind::Manual(tag) => {
                self.plan_manual(draft, &planned, tag, &taken, &mut top, &mut displaced)
            }
        };
        let manual = matches!(kind, Kind::Manual(_));
        let mut saved_any = kept.is_some();
        if !manual && c.save_last() != SaveLast::No {
            self.plan_last(draft, &planned, &taken, kept.as_deref());
            saved_any = true;
        }
        if !saved_any {
            draft.next.recent = recent_before;
            draft.next.last_keep_time_s = keep_time_before;
            return false;
        }
        draft
            .deletes
            .splice(0..0, displaced.into_iter().map(|n| (n, DISPLACED)));
        draft.next.top_k = top.into_entries();
        if !manual {
            draft.next.last_save_step = Some(step);
        }
        draft.check_deletes(state, ctx.protected, kept.as_deref());
        kept.is_some()
    }

    /// The name the template gives at this step, before any version or `-last` suffix; `None`
    /// (with a note) when it cannot render one. NeMo's default template ends in
    /// `-consumed_samples=<n>` where the trainer reported `consumed_samples` at this step.
    fn base_name(
        &self,
        draft: &mut Draft,
        values: &BTreeMap<String, f64>,
        (step, epoch): (u64, u64),
    ) -> Option<String> {
        let c = &self.config;
        let samples = c.uses_default_filename() && values.contains_key(CONSUMED_SAMPLES);
        let rendered = match samples {
            false => render_segments(
                c.template(),
                &self.experiment_name,
                values,
                epoch,
                step,
                c.auto_insert_metric_name(),
            ),
            true => {
                let mut template = c.template().to_vec();
                template.extend(consumed_samples_segments());
                render_segments(
                    &template,
                    &self.experiment_name,
                    values,
                    epoch,
                    step,
                    c.auto_insert_metric_name(),
                )
            }
        };
        match rendered {
            Ok(base) => Some(base),
            Err(e) => {
                draft.notes.push(format!("step {step}: nothing saved: {e}"));
                None
            }
        }
    }

    /// The score this save would enter the top-k with, or `None` (with a note when the monitored
    /// metric is missing) when it does not enter. `kept_otherwise`: another rule keeps the save.
    fn top_k_entry(
        &self,
        draft: &mut Draft,
        top: &TopK,
        planned: &PlannedSave,
        kept_otherwise: bool,
    ) -> Option<f64> {
        let c = &self.config;
        let step = planned.step;
        match (c.monitor(), planned.score) {
            // No monitor: every save is kept (-1) or replaces the previous one (1).
            (None, _) => Some(step as f64),
            (Some(_), Some(s)) => top.would_enter(s).then_some(s),
            (Some(_), None) if c.save_top_k() == -1 => Some(f64::NAN),
            (Some(m), None) => {
                draft.notes.push(match c.save_last() {
                    _ if kept_otherwise => format!(
                        "step {step}: {m} not reported at this step; not ranked, kept by max_to_keep or a keep rule"
                    ),
                    SaveLast::No => format!(
                        "step {step}: {m} not reported at this step; not ranked, and save_last is off: nothing saved"
                    ),
                    _ => format!("step {step}: {m} not reported at this step; saved as -last only"),
                });
                None
            }
        }
    }

    /// Plans the save of a trigger under its own name when a rule keeps it (its rank in the
    /// top-k, the latest `max_to_keep`, a permanent keep); returns its name. What it pushes out
    /// of the top-k or the window goes to `displaced`.
    fn plan_kept(
        &self,
        draft: &mut Draft,
        planned: &PlannedSave,
        taken: &dyn Fn(&str) -> bool,
        top: &mut TopK,
        displaced: &mut Vec<String>,
    ) -> Option<String> {
        let c = &self.config;
        let permanent = permanent_reason(c, &mut draft.next, planned.step, planned.now_s);
        let kept_otherwise = c.max_to_keep().is_some() || permanent.is_some();
        let score = match c.save_top_k() {
            0 => None,
            _ => self.top_k_entry(draft, top, planned, kept_otherwise),
        };
        if score.is_none() && !kept_otherwise {
            return None;
        }
        let name = self.versioned(&planned.base, taken);
        if let Some(s) = score {
            top.remove(&name);
            if c.monitor().is_none() && c.save_top_k() == 1 {
                displaced.extend(top.names().map(String::from));
                top.retain(|_| false);
            }
            displaced.extend(top.insert(name.clone(), s));
        }
        if let Some(max) = c.max_to_keep() {
            displaced.extend(push_recent(&mut draft.next, &name, planned.step, max));
        }
        if let Some(reason) = permanent {
            let keep = PermanentKeep {
                step: planned.step,
                reason,
            };
            draft.next.permanent.insert(name.clone(), keep);
        }
        self.push_kept(draft, planned, &name);
        Some(name)
    }

    /// Plans a manual save `<base>-<tag>`: kept for good, and in the top-k when its monitored
    /// value is fresh and enters it (never ranked by step without a monitor).
    fn plan_manual(
        &self,
        draft: &mut Draft,
        planned: &PlannedSave,
        tag: &str,
        taken: &dyn Fn(&str) -> bool,
        top: &mut TopK,
        displaced: &mut Vec<String>,
    ) -> Option<String> {
        let c = &self.config;
        let name = self.versioned(&format!("{}-{tag}", planned.base), taken);
        if let Some(problem) = name_problem(&name) {
            let step = planned.step;
            draft
                .notes
                .push(format!("step {step}: nothing saved: {name:?} {problem}"));
            return None;
        }
        if let (Some(_), Some(s)) = (c.monitor(), planned.score)
            && c.save_top_k() != 0
            && top.would_enter(s)
        {
            top.remove(&name);
            displaced.extend(top.insert(name.clone(), s));
        }
        let keep = PermanentKeep {
            step: planned.step,
            reason: KeepReason::Manual,
        };
        draft.next.permanent.insert(name.clone(), keep);
        self.push_kept(draft, planned, &name);
        Some(name)
    }

    /// `base`, or its first free `-vN` with the version counter on.
    fn versioned(&self, base: &str, taken: &dyn Fn(&str) -> bool) -> String {
        if self.config.enable_version_counter() {
            with_version(base, taken)
        } else {
            base.to_string()
        }
    }

    /// The save of a kept checkpoint `name` (not the `-last`).
    fn push_kept(&self, draft: &mut Draft, planned: &PlannedSave, name: &str) {
        draft.actions.push(Action::Save {
            name: name.to_string(),
            role: Role::TopK,
            weights_only: planned.weights_only,
            score: planned.score,
        });
        draft.next.saved.insert(name.to_string(), planned.step);
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

/// The metric a trainer reports for NeMo's default name (`-consumed_samples=<n>`).
pub const CONSUMED_SAMPLES: &str = "consumed_samples";

/// `-{consumed_samples}`, appended to NeMo's default template (rendered as Python renders the
/// float NeMo logs: `consumed_samples=1280.0`).
fn consumed_samples_segments() -> [Segment; 2] {
    [
        Segment::Literal("-".to_string()),
        Segment::Field {
            name: CONSUMED_SAMPLES.to_string(),
            spec: Spec::Plain,
            pad: Pad::default(),
        },
    ]
}

/// What kind of save is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind<'t> {
    /// A trigger's save (or one deferred to this event): ranked, kept, and the `-last`.
    Trigger,
    /// The train-end `-last`.
    TrainEnd,
    /// A manual save with its tag.
    Manual(&'t str),
}

/// The inputs of one planned save.
pub(super) struct Go<'a, 't> {
    pub(super) state: &'a PolicyState,
    pub(super) metrics: &'a Metrics,
    pub(super) ctx: &'a DecideContext<'a>,
    pub(super) at: (u64, u64, f64),
    pub(super) kind: Kind<'t>,
}

/// What the saves of one trigger share: the rendered name, the step, the monitored value measured
/// at it and whether only the weights are saved.
struct PlannedSave {
    base: String,
    step: u64,
    /// The caller's clock at the event.
    now_s: f64,
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
pub(super) fn time_due(next: &mut PolicyState, now_s: f64, interval: f64) -> bool {
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
pub(super) struct Draft {
    pub(super) next: PolicyState,
    actions: Vec<Action>,
    deletes: Vec<(String, &'static str)>,
    pub(super) notes: Vec<String>,
}

impl Draft {
    /// Keeps only the deletions that are safe: names this policy saved, valid, not protected, not
    /// kept by any rule (top-k, last, latest saves, permanent), not saved in this decision.
    fn check_deletes(
        &mut self,
        state: &PolicyState,
        protected: Option<&str>,
        ranked: Option<&str>,
    ) {
        let mut safe = Vec::new();
        for (name, reason) in std::mem::take(&mut self.deletes) {
            let still_used = self.next.keeps(&name) || ranked == Some(name.as_str());
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
