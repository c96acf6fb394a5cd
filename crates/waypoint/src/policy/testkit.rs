//! Test helpers: a simulated checkpoint directory that applies a policy's actions, so decision
//! tables can be written as training timelines. Compiled for tests only.
//!
//! It must never touch real storage: the directory is a map of names in memory. Each decision is
//! checked on the spot (no overwrite, no dangling link, no deletion of a missing checkpoint), but
//! the decisions themselves are `decide`'s, never the kit's.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Builds a policy for experiment "gpt" from a builder.
pub(crate) fn policy(builder: ModelCheckpointBuilder) -> Policy {
    Policy::new(builder.build().unwrap(), "gpt").unwrap()
}

/// `TrainStepEnd` at `step` in epoch 0, clock = step seconds.
pub(crate) fn step_end(step: u64) -> Event {
    Event::TrainStepEnd {
        step,
        epoch: 0,
        now_s: step as f64,
    }
}

/// `ValidationEnd` at `step` in `epoch`.
pub(crate) fn val_end(step: u64, epoch: u64) -> Event {
    Event::ValidationEnd {
        step,
        epoch,
        now_s: step as f64,
    }
}

/// `TrainEpochEnd` at `step` for `epoch`.
pub(crate) fn epoch_end(step: u64, epoch: u64) -> Event {
    Event::TrainEpochEnd {
        step,
        epoch,
        now_s: step as f64,
    }
}

/// `TrainEnd` at `step`.
pub(crate) fn train_end(step: u64) -> Event {
    Event::TrainEnd {
        step,
        epoch: 0,
        now_s: step as f64,
    }
}

/// A policy driving an in-memory directory listing.
pub(crate) struct Sim {
    pub policy: Policy,
    pub state: PolicyState,
    pub metrics: Metrics,
    /// Committed names, with the step each was saved at.
    pub disk: BTreeMap<String, u64>,
    pub protected: Option<String>,
    pub decisions: Vec<Decision>,
}

impl Sim {
    pub(crate) fn new(builder: ModelCheckpointBuilder) -> Self {
        let policy = policy(builder);
        let state = policy.initial_state("/ckpt");
        Self {
            policy,
            state,
            metrics: Metrics::new(),
            disk: BTreeMap::new(),
            protected: None,
            decisions: Vec::new(),
        }
    }

    /// Reports `value` for `metric` at `step`.
    pub(crate) fn report(&mut self, metric: &str, value: f64, step: u64) {
        self.metrics
            .insert(metric.to_string(), MetricValue { value, step });
    }

    /// Decides at `event`, checks the decision's invariants, applies it to the directory and
    /// makes `next` the state. Returns the decision.
    pub(crate) fn event(&mut self, event: Event) -> Decision {
        self.decide_and_apply(event, None)
    }

    /// A manual save tagged `tag` at `step` (clock = step seconds), applied like [`Sim::event`].
    pub(crate) fn manual(&mut self, step: u64, tag: &str) -> Decision {
        let event = Event::Manual {
            step,
            epoch: 0,
            now_s: step as f64,
        };
        self.decide_and_apply(event, Some(tag))
    }

    fn decide_and_apply(&mut self, event: Event, tag: Option<&str>) -> Decision {
        let disk = &self.disk;
        let existing = |n: &str| disk.contains_key(n);
        let ctx = DecideContext {
            existing: &existing,
            in_flight: &|_| false,
            protected: self.protected.as_deref(),
        };
        let d = match tag {
            Some(tag) => self
                .policy
                .decide_manual(&self.state, &event, tag, &self.metrics, &ctx),
            None => self.policy.decide(&self.state, &event, &self.metrics, &ctx),
        };
        check_invariants(&d, &self.state, self.protected.as_deref());
        let step = event.parts().0;
        for action in &d.actions {
            match action {
                Action::Save { name, .. } => {
                    assert!(
                        self.disk.insert(name.clone(), step).is_none(),
                        "overwrote {name}"
                    );
                }
                Action::Link { link, target } => {
                    assert!(
                        self.disk.contains_key(target),
                        "dangling link {link} -> {target}"
                    );
                    assert!(
                        self.disk.insert(link.clone(), step).is_none(),
                        "overwrote {link}"
                    );
                }
                Action::Delete { name, .. } => {
                    assert!(self.disk.remove(name).is_some(), "deleted missing {name}");
                }
            }
        }
        self.state = d.next.clone();
        self.decisions.push(d.clone());
        d
    }

    /// The names on disk.
    pub(crate) fn listing(&self) -> Vec<&str> {
        self.disk.keys().map(String::as_str).collect()
    }
}

/// Save before delete, no self-link, no deletion of the protected checkpoint or of a name the
/// policy did not save, the state's names all accounted for.
pub(crate) fn check_invariants(d: &Decision, before: &PolicyState, protected: Option<&str>) {
    let first_delete = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Delete { .. }));
    if let Some(i) = first_delete {
        assert!(
            d.actions[i..]
                .iter()
                .all(|a| matches!(a, Action::Delete { .. })),
            "save or link after a delete: {:?}",
            d.actions
        );
        assert!(i > 0, "a delete without a save: {:?}", d.actions);
    }
    let mut seen = BTreeSet::new();
    for a in &d.actions {
        match a {
            Action::Link { link, target } => assert_ne!(link, target, "self-link"),
            Action::Delete { name, .. } => {
                assert_ne!(
                    Some(name.as_str()),
                    protected,
                    "deleted the protected checkpoint"
                );
                assert!(
                    before.saved.contains_key(name),
                    "deleted {name}, not saved by us"
                );
                assert!(!d.next.keeps(name), "deleted a kept {name}");
                assert_ne!(
                    d.next.last_model_path.as_ref(),
                    Some(name),
                    "deleted the last"
                );
            }
            Action::Save { .. } => {}
        }
        if let Action::Save { name, .. } | Action::Link { link: name, .. } = a {
            assert!(seen.insert(name.clone()), "{name} twice");
            assert!(name_problem(name).is_none(), "{name}");
        }
    }
    for name in d.next.saved.keys() {
        assert!(d.next.keeps(name), "{name} unaccounted");
    }
    for name in d.next.permanent.keys() {
        assert!(
            d.next.saved.contains_key(name),
            "permanent {name} not managed"
        );
    }
}

/// The actions as compact strings: `save topk NAME`, `save last NAME (w)`, `link A -> B`,
/// `delete NAME`.
pub(crate) fn brief(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .map(|a| match a {
            Action::Save {
                name,
                role,
                weights_only,
                ..
            } => {
                let role = if *role == Role::TopK { "topk" } else { "last" };
                let w = if *weights_only { " (w)" } else { "" };
                format!("save {role} {name}{w}")
            }
            Action::Link { link, target } => format!("link {link} -> {target}"),
            Action::Delete { name, .. } => format!("delete {name}"),
        })
        .collect()
}
