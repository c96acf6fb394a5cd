//! What the checkpoint policy remembers between events and across restarts: [`PolicyState`]
//! (serialised into every checkpoint, like Lightning's callback state), the metrics it reads, and
//! the reconciliation of a restored state with what is committed. Owns the bookkeeping, not the
//! decisions.

use super::knobs::Mode;
use super::naming::name_problem;
use super::retention::{PermanentKeep, RecentEntry};
use super::topk::{TopK, TopKEntry, best_index, kth_index};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The latest reported value of one metric and the global step it was reported at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricValue {
    /// The value.
    pub value: f64,
    /// The global step (optimizer steps completed) at which it was measured.
    pub step: u64,
}

/// The latest value of each metric, by name.
pub type Metrics = BTreeMap<String, MetricValue>;

/// The policy's memory: the top-k, the last checkpoint, when it last saved, and which names it
/// saved (the only names it will ever ask to delete). Plain data: it is serialised (JSON) into
/// each checkpoint and restored on resume through [`Policy::restore`](super::Policy::restore).
///
/// Best and k-th are derived from `top_k` ([`PolicyState::best_model_path`], …), never stored
/// twice, so they cannot disagree with it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyState {
    /// The monitored metric the top-k was ranked by (`None`: ranked by step, newest best).
    pub monitor: Option<String>,
    /// The ranking direction of `top_k` (`Max` when there is no monitor: newest best).
    pub mode: Mode,
    /// The resolved checkpoint directory this state belongs to.
    pub dirpath: String,
    /// The kept checkpoints and their scores, oldest first.
    pub top_k: Vec<TopKEntry>,
    /// The current last checkpoint (a save or a link).
    pub last_model_path: Option<String>,
    /// The global step of the latest save.
    pub last_save_step: Option<u64>,
    /// The caller's clock (seconds) at the first event seen: where the first time interval starts.
    pub start_time_s: Option<f64>,
    /// The caller's clock (seconds) at the latest time-triggered save.
    pub last_save_time_s: Option<f64>,
    /// Every name this policy saved and still manages, with the step it was saved at.
    pub saved: BTreeMap<String, u64>,
    /// The latest saves kept by `max_to_keep`, oldest first.
    pub recent: Vec<RecentEntry>,
    /// The checkpoints kept for good (`keep_every_n_steps`, `keep_time_interval`, manual
    /// saves): rotation never deletes them.
    pub permanent: BTreeMap<String, PermanentKeep>,
    /// The caller's clock (seconds) at the latest save kept by `keep_time_interval`. Unlike the
    /// time trigger's clock it carries across restarts (the run's clock is wall time by default).
    pub last_keep_time_s: Option<f64>,
    /// A step-triggered save due at this step waits for the step's validation end, whose
    /// monitored value is not reported yet (see the policy's rules on the call order).
    pub deferred_step: Option<u64>,
    /// The step of a trigger's save made before its monitored value was reported: a validation
    /// end at that step with the value saves it ranked.
    pub unranked_step: Option<u64>,
    /// The trainer was seen validating after the step end of a save step (Lightning's hook
    /// order): a save whose monitored value is not reported yet waits for that validation.
    pub validation_follows: bool,
}

impl PolicyState {
    /// A fresh state for `dirpath`, ranked by `monitor` in `mode` (`Max` by step without one).
    pub fn new(monitor: Option<String>, mode: Mode, dirpath: impl Into<String>) -> Self {
        let mode = if monitor.is_some() { mode } else { Mode::Max };
        Self {
            monitor,
            mode,
            dirpath: dirpath.into(),
            ..Self::default()
        }
    }

    /// The top-k as a [`TopK`] keeping `k` entries.
    pub fn top_k(&self, k: i64) -> TopK {
        TopK::with_entries(k, self.mode, self.top_k.clone())
    }

    /// The best kept checkpoint (Lightning's `best_model_path`).
    pub fn best_model_path(&self) -> Option<&str> {
        self.best().map(|e| e.name.as_str())
    }

    /// The best kept score (Lightning's `best_model_score`); without a monitor, the step.
    pub fn best_model_score(&self) -> Option<f64> {
        self.best().map(|e| e.score)
    }

    /// The worst kept checkpoint, displaced next (Lightning's `kth_best_model_path`).
    pub fn kth_best_model_path(&self) -> Option<&str> {
        self.kth().map(|e| e.name.as_str())
    }

    /// The worst kept score (Lightning's `kth_value`).
    pub fn kth_value(&self) -> Option<f64> {
        self.kth().map(|e| e.score)
    }

    /// Whether any rule still keeps `name`: the top-k, the last, the latest saves or a permanent
    /// keep. The kept set is the union of what each rule keeps.
    pub fn keeps(&self, name: &str) -> bool {
        self.top_k.iter().any(|e| e.name == name)
            || self.last_model_path.as_deref() == Some(name)
            || self.recent.iter().any(|e| e.name == name)
            || self.permanent.contains_key(name)
    }

    /// The newest step of a checkpoint the policy keeps (Orbax's `latest_step`).
    pub fn latest_step(&self) -> Option<u64> {
        self.saved.values().copied().max()
    }

    /// The steps of the checkpoints the policy keeps, ascending, each once (Orbax's
    /// `all_steps`).
    pub fn all_steps(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = self.saved.values().copied().collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    /// The step of the best checkpoint (Orbax's `best_step`): the best ranked one, the newest
    /// without a monitor.
    pub fn best_step(&self) -> Option<u64> {
        self.best_model_path()
            .and_then(|name| self.saved.get(name).copied())
    }

    fn best(&self) -> Option<&TopKEntry> {
        best_index(self.mode, &self.top_k).and_then(|i| self.top_k.get(i))
    }

    fn kth(&self) -> Option<&TopKEntry> {
        kth_index(self.mode, &self.top_k).and_then(|i| self.top_k.get(i))
    }

    /// The state, if it was saved for `dirpath` (trailing `/` ignored); `None` means start fresh.
    /// Lightning's rule: a restored ModelCheckpoint state applies only to the directory it was
    /// written for, so a run pointed elsewhere never deletes checkpoints of another run.
    pub fn for_dirpath(self, dirpath: &str) -> Option<Self> {
        let trim = |s: &str| s.trim_end_matches('/').to_string();
        (trim(&self.dirpath) == trim(dirpath)).then_some(self)
    }

    /// Drops every name whose checkpoint is gone: `committed(name)` gives the step of the committed
    /// checkpoint of that name in the directory, or `None`. A top-k entry or last checkpoint is kept
    /// only if committed (and, when this policy saved it, committed at the step it was saved at:
    /// a same-named checkpoint of another run is not ours). Invalid names are dropped too. Metric
    /// values are never parsed out of names. Returns the dropped names, sorted.
    ///
    /// This is what keeps a resumed run from crashing on, or counting, checkpoints deleted or
    /// renamed by hand (NeMo PR #12804, Lightning #5173 / #11451).
    pub fn reconcile(&mut self, committed: &dyn Fn(&str) -> Option<u64>) -> Vec<String> {
        let saved = &self.saved;
        let present = |name: &str| {
            name_problem(name).is_none()
                && committed(name)
                    .is_some_and(|step| saved.get(name).is_none_or(|&expected| expected == step))
        };
        let mut dropped = Vec::new();
        let mut top_k = std::mem::take(&mut self.top_k);
        top_k.retain(|e| {
            let keep = present(&e.name);
            if !keep {
                dropped.push(e.name.clone());
            }
            keep
        });
        if let Some(last) = self.last_model_path.take() {
            if present(&last) {
                self.last_model_path = Some(last);
            } else {
                // The -last of the latest save never committed (a crash between the top-k and
                // the -last of one step): that step is not fully saved, so the train-end save
                // must not be skipped as a repeat of it.
                if self.last_save_step.is_some() && saved.get(&last).copied() == self.last_save_step
                {
                    self.last_save_step = None;
                }
                dropped.push(last);
            }
        }
        self.top_k = top_k;
        let mut recent = std::mem::take(&mut self.recent);
        recent.retain(|e| {
            let keep = present(&e.name);
            if !keep {
                dropped.push(e.name.clone());
            }
            keep
        });
        self.recent = recent;
        let mut permanent = std::mem::take(&mut self.permanent);
        permanent.retain(|name, _| {
            let keep = present(name);
            if !keep {
                dropped.push(name.clone());
            }
            keep
        });
        self.permanent = permanent;
        self.retain_managed();
        dropped.sort();
        dropped.dedup();
        dropped
    }

    /// Keeps `saved` to the names still managed: the top-k, the last, the latest saves and the
    /// permanent keeps.
    pub(crate) fn retain_managed(&mut self) {
        let mut saved = std::mem::take(&mut self.saved);
        saved.retain(|name, _| self.keeps(name));
        self.saved = saved;
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
