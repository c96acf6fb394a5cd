//! How the ranks of a run agree: rank 0 decides (resume point, checkpoint actions, preemption)
//! and broadcasts; the other ranks follow. This module owns the wire form of those messages.

use super::ResumePoint;
use crate::dist::Coordinator;
use crate::error::{Error, Result};
use crate::policy::{Action, DISPLACED, PREVIOUS_LAST, PolicyState, Role};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What rank 0 decided at one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Decided {
    /// A save was due but skipped (`when_pending_full = skip`).
    pub skip: bool,
    pub next: PolicyState,
    actions: Vec<ActionWire>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ActionWire {
    Save {
        name: String,
        last: bool,
        weights_only: bool,
        score: Option<f64>,
    },
    Delete {
        name: String,
        reason: String,
    },
    Link {
        link: String,
        target: String,
    },
}

impl Decided {
    pub(super) fn new(skip: bool, next: PolicyState, actions: &[Action]) -> Self {
        let actions = actions
            .iter()
            .map(|a| match a {
                Action::Save {
                    name,
                    role,
                    weights_only,
                    score,
                } => ActionWire::Save {
                    name: name.clone(),
                    last: *role == Role::Last,
                    weights_only: *weights_only,
                    score: *score,
                },
                Action::Delete { name, reason } => ActionWire::Delete {
                    name: name.clone(),
                    reason: (*reason).to_owned(),
                },
                Action::Link { link, target } => ActionWire::Link {
                    link: link.clone(),
                    target: target.clone(),
                },
            })
            .collect();
        Decided {
            skip,
            next,
            actions,
        }
    }

    pub(super) fn actions(&self) -> Vec<Action> {
        self.actions
            .iter()
            .map(|a| match a {
                ActionWire::Save {
                    name,
                    last,
                    weights_only,
                    score,
                } => Action::Save {
                    name: name.clone(),
                    role: if *last { Role::Last } else { Role::TopK },
                    weights_only: *weights_only,
                    score: *score,
                },
                ActionWire::Delete { name, reason } => Action::Delete {
                    name: name.clone(),
                    reason: if reason == PREVIOUS_LAST {
                        PREVIOUS_LAST
                    } else {
                        DISPLACED
                    },
                },
                ActionWire::Link { link, target } => Action::Link {
                    link: link.clone(),
                    target: target.clone(),
                },
            })
            .collect()
    }
}

/// The resume point as rank 0 chose it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeWire {
    path: PathBuf,
    name: String,
    step: u64,
    epoch: u64,
    completed: bool,
    reason: String,
}

/// Rank 0's outcome of a setup step, or its error.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome<T> {
    Ok(T),
    Failed(String),
}

/// Rank 0 sends `value` (or its error), the others receive it. Every rank returns the same
/// outcome; rank 0 returns its own error as it was.
pub(crate) fn share<T: Serialize + for<'de> Deserialize<'de>>(
    coordinator: &dyn Coordinator,
    what: &str,
    mine: Option<Result<T>>,
) -> Result<T> {
    match mine {
        Some(result) => {
            let message = match &result {
                Ok(value) => serde_json::to_vec(&Outcome::Ok(value)),
                Err(e) => serde_json::to_vec(&Outcome::<()>::Failed(e.to_string())),
            }
            .unwrap_or_default();
            coordinator.broadcast(0, &message)?;
            result
        }
        None => {
            let message = coordinator.broadcast(0, &[])?;
            match serde_json::from_slice::<Outcome<T>>(&message) {
                Ok(Outcome::Ok(value)) => Ok(value),
                Ok(Outcome::Failed(reason)) => Err(Error::RankFailed {
                    step: 0,
                    rank: 0,
                    world_size: coordinator.world_size(),
                    reason: format!("{what}: {reason}"),
                }),
                Err(e) => Err(Error::Collective {
                    op: "broadcast",
                    rank: coordinator.rank(),
                    reason: format!("unreadable {what} from rank 0: {e}"),
                }),
            }
        }
    }
}

/// Rank 0's resume point, on every rank.
pub(super) fn share_resume(
    coordinator: &dyn Coordinator,
    mine: Option<Result<Option<ResumePoint>>>,
) -> Result<Option<ResumePoint>> {
    let mine = mine.map(|r| {
        r.map(|p| {
            p.map(|p| ResumeWire {
                path: p.path,
                name: p.name,
                step: p.step,
                epoch: p.epoch,
                completed: p.completed,
                reason: p.reason,
            })
        })
    });
    let wire: Option<ResumeWire> = share(coordinator, "choosing the checkpoint to resume", mine)?;
    Ok(wire.map(|w| ResumePoint {
        path: w.path,
        name: w.name,
        step: w.step,
        epoch: w.epoch,
        completed: w.completed,
        reason: w.reason,
    }))
}

/// Whether any rank asks to stop (a preemption signal may reach the ranks at different steps).
pub(super) fn any_rank(coordinator: &dyn Coordinator, mine: bool) -> Result<bool> {
    let all = coordinator.all_gather(&[u8::from(mine)])?;
    Ok(all.iter().any(|m| m.first() == Some(&1)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decisions_survive_the_wire() {
        let actions = vec![
            Action::Save {
                name: "a".into(),
                role: Role::TopK,
                weights_only: false,
                score: Some(0.5),
            },
            Action::Save {
                name: "a-last".into(),
                role: Role::Last,
                weights_only: true,
                score: None,
            },
            Action::Link {
                link: "b-last".into(),
                target: "b".into(),
            },
            Action::Delete {
                name: "old".into(),
                reason: DISPLACED,
            },
            Action::Delete {
                name: "old-last".into(),
                reason: PREVIOUS_LAST,
            },
        ];
        let sent = Decided::new(false, PolicyState::default(), &actions);
        let bytes = serde_json::to_vec(&sent).unwrap();
        let got: Decided = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(got.actions(), actions);
        assert!(!got.skip);
    }
}
