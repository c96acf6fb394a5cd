//! Tables for [`PolicyState`] across restarts: JSON round trip, reconcile after manual changes,
//! the dirpath rule, a changed monitor or save_top_k, and resumed runs continuing correctly.

use super::*;
use crate::policy::testkit::{Sim, brief, step_end};
use crate::policy::{ModelCheckpoint, ModelCheckpointBuilder};

fn b() -> ModelCheckpointBuilder {
    ModelCheckpoint::builder()
        .filename("{val_loss:.2f}-{step}")
        .every_n_train_steps(100)
}

/// A run with save_top_k = 3 and val_loss 0.5, 0.4, 0.3, 0.2 at steps 100..=400: keeps 200, 300,
/// 400 and the step-400 last.
fn first_run() -> Sim {
    let mut sim = Sim::new(b().save_top_k(3));
    for (i, loss) in [0.5, 0.4, 0.3, 0.2].into_iter().enumerate() {
        let step = 100 * (i as u64 + 1);
        sim.report("val_loss", loss, step);
        sim.event(step_end(step));
    }
    assert_eq!(
        sim.listing(),
        [
            "val_loss=0.20-step=400",
            "val_loss=0.20-step=400-last",
            "val_loss=0.30-step=300",
            "val_loss=0.40-step=200",
        ]
    );
    sim
}

/// Restarts `sim` with a new configuration: the state goes through JSON (as it would inside the
/// checkpoint) and `Policy::restore`; the resumed-from checkpoint becomes protected.
fn restart(sim: &Sim, builder: ModelCheckpointBuilder, dirpath: &str) -> (Sim, Vec<String>) {
    let json = serde_json::to_string(&sim.state).unwrap();
    let restored: PolicyState = serde_json::from_str(&json).unwrap();
    let mut next = Sim::new(builder);
    next.disk = sim.disk.clone();
    let disk = &next.disk;
    let (state, notes) = next
        .policy
        .restore(Some(restored), dirpath, &|n| disk.get(n).copied());
    next.protected = state.last_model_path.clone();
    next.state = state;
    (next, notes)
}

/// NeMo PR #12804 (known problem 8) and Lightning #5173 / #11451 (known problem 14): checkpoints
/// deleted or replaced by hand are forgotten on resume, the run does not crash on them, keeps at
/// most k, and the old last is deleted at the first save.
#[test]
fn reconcile_after_manual_deletion_nemo_12804_lightning_5173() {
    let mut sim = first_run();
    sim.disk.remove("val_loss=0.30-step=300");
    sim.disk.insert("val_loss=0.40-step=200".into(), 999); // replaced by another run's checkpoint
    let (mut sim, notes) = restart(&sim, b().save_top_k(3), "/ckpt");
    let kept: Vec<&str> = sim.state.top_k.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(kept, ["val_loss=0.20-step=400"]);
    assert_eq!(
        sim.state.last_model_path.as_deref(),
        Some("val_loss=0.20-step=400-last")
    );
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].starts_with("val_loss=0.30-step=300 is no longer a committed"),
        "{notes:?}"
    );
    assert!(sim.state.start_time_s.is_none() && sim.state.last_save_time_s.is_none());

    sim.report("val_loss", 0.25, 500);
    // Lightning #11451: the last of the previous run is rotated out like any other.
    assert_eq!(
        brief(&sim.event(step_end(500))),
        [
            "save topk val_loss=0.25-step=500",
            "save last val_loss=0.25-step=500-last"
        ],
        "the protected (resumed-from) last is kept"
    );
    for (step, loss) in [(600, 0.1), (700, 0.05)] {
        sim.report("val_loss", loss, step);
        sim.event(step_end(step));
    }
    assert_eq!(sim.state.top_k.len(), 3);
    assert_eq!(
        sim.listing(),
        [
            "val_loss=0.05-step=700",
            "val_loss=0.05-step=700-last",
            "val_loss=0.10-step=600",
            "val_loss=0.20-step=400",
            "val_loss=0.20-step=400-last", // resumed from: never deleted
            "val_loss=0.40-step=200",      // another run's: never ours to delete
        ]
    );
}

/// Lightning #5173 (known problem 14): resuming with a lower save_top_k deletes the surplus at
/// the next save instead of keeping more than k forever.
#[test]
fn lowered_save_top_k_deletes_the_surplus_lightning_5173() {
    let (mut sim, _) = restart(&first_run(), b().save_top_k(1), "/ckpt");
    sim.protected = None;
    sim.report("val_loss", 0.25, 500);
    assert_eq!(
        brief(&sim.event(step_end(500))),
        [
            "save last val_loss=0.25-step=500-last",
            "delete val_loss=0.40-step=200",
            "delete val_loss=0.30-step=300",
            "delete val_loss=0.20-step=400-last",
        ]
    );
    assert_eq!(
        sim.listing(),
        ["val_loss=0.20-step=400", "val_loss=0.25-step=500-last"]
    );
}

#[test]
fn restored_state_ignored_when_dirpath_differs() {
    let sim = first_run();
    let (other, notes) = restart(&sim, b().save_top_k(3), "/elsewhere");
    assert_eq!(other.state, other.policy.initial_state("/elsewhere"));
    assert!(notes[0].contains("not \"/elsewhere\""), "{notes:?}");
    let state = sim.state.clone();
    assert!(state.clone().for_dirpath("/ckpt/").is_some());
    assert!(state.for_dirpath("/ckpt2").is_none());
}

#[test]
fn changed_monitor_forgets_the_ranking_but_rotates_the_last() {
    let (mut sim, notes) = restart(&first_run(), b().monitor("acc").mode(Mode::Max), "/ckpt");
    assert!(sim.state.top_k.is_empty());
    assert!(notes[0].starts_with("monitor changed"), "{notes:?}");
    sim.protected = None;
    sim.report("acc", 0.9, 500);
    let d = sim.event(step_end(500));
    assert_eq!(d.actions.len(), 3, "{:?}", brief(&d));
    assert_eq!(brief(&d)[2], "delete val_loss=0.20-step=400-last");
}

#[test]
fn reconcile_table() {
    let entry = |name: &str, score| TopKEntry {
        name: name.into(),
        score,
    };
    let mut state = PolicyState::new(Some("val_loss".into()), Mode::Min, "/c");
    state.top_k = vec![
        entry("a", 1.0),
        entry("b", 2.0),
        entry("../x", 0.0),
        entry("c", 3.0),
    ];
    state.last_model_path = Some("c-last".into());
    state.saved = [("a", 1), ("b", 2), ("c", 3), ("c-last", 3)]
        .map(|(n, s)| (n.to_string(), s))
        .into();
    // a: committed at its step; b: gone; ../x: invalid; c: another checkpoint at step 9.
    let committed = |n: &str| match n {
        "a" => Some(1),
        "../x" | "c-last" => Some(3),
        "c" => Some(9),
        _ => None,
    };
    let dropped = state.reconcile(&committed);
    assert_eq!(dropped, ["../x", "b", "c"]);
    assert_eq!(state.top_k, vec![entry("a", 1.0)]);
    assert_eq!(state.last_model_path.as_deref(), Some("c-last"));
    assert_eq!(state.saved.keys().collect::<Vec<_>>(), ["a", "c-last"]);
    assert_eq!(state.best_model_path(), Some("a"));
}

#[test]
fn json_round_trip_and_derived_best_kth() {
    let mut state = PolicyState::new(Some("val_loss".into()), Mode::Min, "/c");
    for (name, score) in [
        ("n", f64::NAN),
        ("a", 0.5),
        ("b", 0.25),
        ("i", f64::INFINITY),
    ] {
        state.top_k.push(TopKEntry {
            name: name.into(),
            score,
        });
        state.saved.insert(name.into(), 1);
    }
    state.last_save_time_s = Some(12.5);
    let json = serde_json::to_string(&state).unwrap();
    let back: PolicyState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(back.best_model_path(), Some("b"));
    assert_eq!(back.best_model_score(), Some(0.25));
    assert_eq!(back.kth_best_model_path(), Some("n"));
    assert!(back.kth_value().is_some_and(f64::is_nan));
    let empty: PolicyState = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, PolicyState::default());
    assert_eq!(empty.best_model_path(), None);
}

/// A crash between the top-k and the -last of the final step: reconcile drops the -last and
/// forgets that the step was saved, so the train-end save writes the -last again.
#[test]
fn a_last_that_never_committed_does_not_count_as_saved() {
    let sim = first_run();
    let mut state = sim.state.clone();
    assert_eq!(state.last_save_step, Some(400));
    let dropped = state.reconcile(&|name: &str| {
        (!name.ends_with("-last")).then_some(if name.contains("400") {
            400
        } else if name.contains("300") {
            300
        } else {
            200
        })
    });
    assert_eq!(dropped, ["val_loss=0.20-step=400-last"]);
    assert_eq!(state.last_model_path, None);
    assert_eq!(state.last_save_step, None);
    // When the -last is there, the step stays saved.
    let mut whole = sim.state.clone();
    whole.reconcile(&|name: &str| {
        Some(if name.contains("400") {
            400
        } else if name.contains("300") {
            300
        } else {
            200
        })
    });
    assert_eq!(whole.last_save_step, Some(400));
}
