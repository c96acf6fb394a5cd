//! How the ranks of a run agree: rank 0 decides (resume point, which saves in flight are
//! finalized, checkpoint actions, preemption) and broadcasts; the other ranks follow. This module
//! owns the wire form of those messages. Every checkpoint decision carries its number, step and
//! event, and a rank that receives one for another call than its own fails loudly
//! ([`Error::RanksDiverged`]) instead of applying it a step late.
//!
//! It must not make the decisions it carries (the policy and `events.rs` on rank 0 do) nor apply
//! them, and it never trusts what arrives: a message that does not parse is a `Collective` error,
//! and rank 0's failure reaches the others as `RankFailed`.

use crate::dist::Coordinator;
use crate::error::{Error, Result};
use crate::policy::{Action, DISPLACED, Event, PREVIOUS_LAST, PolicyState, Role};
use serde::{Deserialize, Serialize};

/// What rank 0 decided at one point of an event: finalize saves in flight, skip, or act.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decided {
    /// Finalize this many saves in flight, oldest first; then rank 0 decides again.
    Finalize(usize),
    /// A save was due but skipped (`when_pending_full = skip`).
    Skip,
    /// Move to `next` through these actions (none: the state only advances).
    Act {
        /// The policy state after the actions.
        next: Box<PolicyState>,
        /// Saves and links, then deletions.
        actions: Vec<Action>,
    },
}

/// A decision as sent: its number and the call it is for, so that a rank at another call notices.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DecisionWire {
    sequence: u64,
    step: u64,
    event: String,
    body: BodyWire,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum BodyWire {
    Finalize(usize),
    Skip,
    Act {
        next: Box<PolicyState>,
        actions: Vec<ActionWire>,
    },
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

impl ActionWire {
    fn from_actions(actions: &[Action]) -> Vec<ActionWire> {
        actions
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
            .collect()
    }

    fn to_actions(wire: &[ActionWire]) -> Vec<Action> {
        wire.iter()
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

/// The name of an event in messages.
pub(super) fn event_name(event: &Event) -> &'static str {
    match event {
        Event::TrainStepEnd { .. } => "train step end",
        Event::ValidationEnd { .. } => "validation end",
        Event::TrainEpochEnd { .. } => "train epoch end",
        Event::TrainEnd { .. } => "train end",
        Event::Manual { .. } => "manual save",
    }
}

/// Rank 0 sends its decision number `sequence` for `event`.
pub(super) fn send_decision(
    coordinator: &dyn Coordinator,
    sequence: u64,
    event: &Event,
    decided: &Decided,
) -> Result<()> {
    let body = match decided {
        Decided::Finalize(n) => BodyWire::Finalize(*n),
        Decided::Skip => BodyWire::Skip,
        Decided::Act { next, actions } => BodyWire::Act {
            next: next.clone(),
            actions: ActionWire::from_actions(actions),
        },
    };
    let wire = DecisionWire {
        sequence,
        step: event.parts().0,
        event: event_name(event).to_owned(),
        body,
    };
    share(coordinator, "the checkpoint decision", Some(Ok(wire))).map(|_| ())
}

/// A rank other than 0 receives rank 0's decision, which must be number `sequence` and for
/// `event`, the call this rank is at.
pub(super) fn receive_decision(
    coordinator: &dyn Coordinator,
    sequence: u64,
    event: &Event,
) -> Result<Decided> {
    let wire: DecisionWire = share(coordinator, "the checkpoint decision", None)?;
    let step = event.parts().0;
    let name = event_name(event);
    if wire.sequence != sequence || wire.step != step || wire.event != name {
        return Err(Error::RanksDiverged {
            rank: coordinator.rank(),
            step,
            event: name,
            leader_step: wire.step,
            leader_event: wire.event,
            sequence: wire.sequence,
            expected: sequence,
        });
    }
    Ok(match wire.body {
        BodyWire::Finalize(n) => Decided::Finalize(n),
        BodyWire::Skip => Decided::Skip,
        BodyWire::Act { next, actions } => Decided::Act {
            next,
            actions: ActionWire::to_actions(&actions),
        },
    })
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
        let wire = ActionWire::from_actions(&actions);
        let bytes = serde_json::to_vec(&wire).unwrap();
        let got: Vec<ActionWire> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(ActionWire::to_actions(&got), actions);
    }

    /// A follower at another call than rank 0's decision fails, naming both steps; at the same
    /// call it gets the decision.
    #[test]
    fn a_decision_for_another_call_is_refused() {
        use crate::dist::ThreadGroup;
        let at = |step| Event::TrainStepEnd {
            step,
            epoch: 0,
            now_s: 0.0,
        };
        let table: [(u64, Event, u64, Event, bool); 4] = [
            (1, at(10), 1, at(10), true),
            (2, at(10), 2, at(11), false),
            (3, at(10), 2, at(10), false),
            (
                1,
                at(10),
                1,
                Event::ValidationEnd {
                    step: 10,
                    epoch: 0,
                    now_s: 0.0,
                },
                false,
            ),
        ];
        for (sent_seq, sent_event, got_seq, got_event, agrees) in table {
            let mut ranks = ThreadGroup::new(2).into_iter();
            let (leader, follower) = (ranks.next().unwrap(), ranks.next().unwrap());
            let decided = Decided::Finalize(1);
            let sender = std::thread::spawn(move || {
                send_decision(&leader, sent_seq, &sent_event, &decided).unwrap()
            });
            let got = receive_decision(&follower, got_seq, &got_event);
            sender.join().unwrap();
            match got {
                Ok(d) => assert!(agrees && d == Decided::Finalize(1)),
                Err(e) => {
                    assert!(!agrees, "{e}");
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!("step {}", got_event.parts().0)),
                        "{text}"
                    );
                    assert!(
                        text.contains(&format!("for step {}", sent_event.parts().0)),
                        "{text}"
                    );
                }
            }
        }
    }
}
