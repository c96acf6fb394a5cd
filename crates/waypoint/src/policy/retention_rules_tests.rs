//! Tables for retention beyond the top-k (issue 18, "Retention beyond top-k (Orbax's preservation
//! policies)"): each rule alone, each combination (the union of what each rule keeps), the
//! permanent keeps across a resume, and manual saves. Timelines run through the simulated
//! directory of `testkit`, which checks on every decision that nothing kept is deleted.

use super::*;
use crate::policy::testkit::{Sim, step_end};
use crate::policy::{ModelCheckpoint, ModelCheckpointBuilder, Policy, SaveLast};
use std::time::Duration;

/// A save every 10 steps, named by its step; clock = step seconds.
fn b() -> ModelCheckpointBuilder {
    ModelCheckpoint::builder()
        .filename("{step}")
        .every_n_train_steps(10)
        .save_last(SaveLast::No)
}

/// Runs saves at steps 10, 20, …, `to`, reporting `val_loss` from `losses` before each step
/// end, and returns the simulation.
fn timeline(builder: ModelCheckpointBuilder, losses: &[(u64, f64)], to: u64) -> Sim {
    let mut sim = Sim::new(builder);
    for step in (10..=to).step_by(10) {
        if let Some((_, loss)) = losses.iter().find(|(s, _)| *s == step) {
            sim.report("val_loss", *loss, step);
        }
        sim.event(step_end(step));
    }
    sim
}

#[test]
fn each_rule_and_each_combination_keeps_the_union() {
    let losses = [
        (10, 0.5),
        (20, 0.4),
        (30, 0.9),
        (40, 0.8),
        (50, 0.7),
        (60, 0.6),
    ];
    type Row = (
        &'static str,
        ModelCheckpointBuilder,
        &'static [&'static str],
    );
    let rows: Vec<Row> = vec![
        (
            "Orbax max_to_keep without a best_fn: the 2 latest",
            b().no_monitor().save_top_k(0).max_to_keep(2),
            &["step=50", "step=60"],
        ),
        (
            "max_to_keep alongside save_top_k: the best and the 2 latest",
            b().save_top_k(1).max_to_keep(2),
            &["step=20", "step=50", "step=60"],
        ),
        (
            "Orbax keep_period (keep_every_n_steps=20) with the newest (save_top_k=1, no monitor)",
            b().no_monitor().save_top_k(1).keep_every_n_steps(20),
            &["step=20", "step=40", "step=60"],
        ),
        (
            "keep_every_n_steps alone: only the permanent keeps",
            b().no_monitor().save_top_k(0).keep_every_n_steps(30),
            &["step=30", "step=60"],
        ),
        (
            "Orbax keep_time_interval (25 s; the first save, then 25 s after the previous keep) with max_to_keep=1",
            b().no_monitor()
                .save_top_k(0)
                .max_to_keep(1)
                .keep_time_interval(Duration::from_secs(25)),
            &["step=10", "step=40", "step=60"],
        ),
        (
            "keep_every_n_steps and keep_time_interval with the top-2",
            b().save_top_k(2)
                .keep_every_n_steps(40)
                .keep_time_interval(Duration::from_secs(45)),
            &["step=10", "step=20", "step=40", "step=60"],
        ),
        (
            "every rule at once, with the -last: top-1, latest 1, every 30 steps, every 35 s",
            b().save_top_k(1)
                .max_to_keep(1)
                .keep_every_n_steps(30)
                .keep_time_interval(Duration::from_secs(35))
                .save_last(SaveLast::Yes),
            &[
                "step=10",
                "step=20",
                "step=30",
                "step=50",
                "step=60",
                "step=60-last",
            ],
        ),
        (
            "save_top_k=-1 keeps everything; the keep rules only mark some as permanent",
            b().save_top_k(-1).keep_every_n_steps(30),
            &[
                "step=10", "step=20", "step=30", "step=40", "step=50", "step=60",
            ],
        ),
    ];
    for (rule, builder, want) in rows {
        let sim = timeline(builder, &losses, 60);
        assert_eq!(sim.listing(), want, "{rule}");
        let mut managed: Vec<&str> = sim.state.saved.keys().map(String::as_str).collect();
        managed.sort();
        assert_eq!(managed, want, "{rule}: the policy manages what it keeps");
    }
    // Why each permanent keep is kept, in the last combination.
    let sim = timeline(
        b().save_top_k(1)
            .max_to_keep(1)
            .keep_every_n_steps(30)
            .keep_time_interval(Duration::from_secs(35)),
        &losses,
        60,
    );
    let why: Vec<(&str, u64, KeepReason)> = sim
        .state
        .permanent
        .iter()
        .map(|(n, k)| (n.as_str(), k.step, k.reason))
        .collect();
    assert_eq!(
        why,
        [
            ("step=10", 10, KeepReason::TimeInterval),
            ("step=30", 30, KeepReason::EveryNSteps),
            ("step=50", 50, KeepReason::TimeInterval),
            ("step=60", 60, KeepReason::EveryNSteps),
        ]
    );
    assert_eq!(sim.state.last_keep_time_s, Some(50.0));
    assert_eq!(sim.state.best_step(), Some(20));
    assert_eq!(sim.state.latest_step(), Some(60));
    assert_eq!(sim.state.all_steps(), [10, 20, 30, 50, 60]);
}

/// A stale monitored value: the save is not ranked, but max_to_keep keeps it under its name
/// (not only as the -last), and the note says so.
#[test]
fn max_to_keep_keeps_unranked_saves_under_their_name() {
    let mut sim = Sim::new(b().save_top_k(2).max_to_keep(1).save_last(SaveLast::Yes));
    let d = sim.event(step_end(10));
    assert_eq!(
        crate::policy::testkit::brief(&d),
        ["save topk step=10", "save last step=10-last"]
    );
    assert_eq!(
        d.notes,
        [
            "step 10: val_loss not reported at this step; not ranked, kept by max_to_keep or a keep rule"
        ]
    );
    assert!(d.next.top_k.is_empty());
}

/// The policy state carries the keeps across a resume (it is saved in each checkpoint's
/// record); a record written before these rules existed still reads, with none.
#[test]
fn permanent_keeps_survive_a_resume_and_older_records_read() {
    let builder = || {
        b().no_monitor()
            .save_top_k(1)
            .keep_every_n_steps(20)
            .max_to_keep(2)
    };
    let first = timeline(builder(), &[], 30);
    assert_eq!(first.listing(), ["step=20", "step=30"]);
    // The state as a resumed run reads it back from the record's JSON.
    let json = serde_json::to_value(&first.state).unwrap();
    let restored: PolicyState = serde_json::from_value(json).unwrap();
    let policy = Policy::new(builder().build().unwrap(), "gpt").unwrap();
    let disk = first.disk.clone();
    let committed = |n: &str| disk.get(n).copied();
    let (state, notes) = policy.restore(Some(restored), "/ckpt", &committed);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(state.permanent.keys().collect::<Vec<_>>(), ["step=20"]);
    let mut second = Sim::new(builder());
    second.state = state;
    second.disk = first.disk.clone();
    for step in [40, 50, 60, 70] {
        second.event(step_end(step));
    }
    assert_eq!(
        second.listing(),
        ["step=20", "step=40", "step=60", "step=70"],
        "20 and 40, 60 kept for good; 60, 70 the latest"
    );
    // An older record's state: no recent, permanent or deferral fields.
    let old = serde_json::json!({
        "monitor": null, "mode": "max", "dirpath": "/ckpt",
        "top_k": [{"name": "step=10", "score": 10.0}],
        "last_model_path": null, "last_save_step": 10,
        "saved": {"step=10": 10}
    });
    let old: PolicyState = serde_json::from_value(old).unwrap();
    assert!(old.recent.is_empty() && old.permanent.is_empty() && !old.validation_follows);
    assert_eq!(old.last_keep_time_s, None);
    // And a removed permanent keep is forgotten on resume, like any checkpoint gone.
    let mut gone = first.disk.clone();
    gone.remove("step=20");
    let json = serde_json::to_value(&first.state).unwrap();
    let committed = |n: &str| gone.get(n).copied();
    let (state, notes) = policy.restore(serde_json::from_value(json).ok(), "/ckpt", &committed);
    assert!(state.permanent.is_empty() && !state.saved.contains_key("step=20"));
    assert!(notes[0].contains("step=20"), "{notes:?}");
}

/// Lightning's `trainer.save_checkpoint` (issue 18, "Manual and forced saves"): a manual save is
/// named by the template plus its tag, kept for good, ranked when its value is fresh, and leaves
/// the -last and the triggers alone.
#[test]
fn manual_saves_are_kept_and_ranked_when_fresh() {
    let mut sim = Sim::new(b().save_top_k(1).save_last(SaveLast::Yes));
    sim.report("val_loss", 0.5, 10);
    sim.event(step_end(10));
    sim.report("val_loss", 0.3, 15);
    let d = sim.manual(15, "pre-lr-drop");
    assert_eq!(
        crate::policy::testkit::brief(&d),
        ["save topk step=15-pre-lr-drop", "delete step=10"]
    );
    assert_eq!(sim.state.best_model_path(), Some("step=15-pre-lr-drop"));
    assert_eq!(sim.state.last_model_path.as_deref(), Some("step=10-last"));
    assert_eq!(
        sim.state.last_save_step,
        Some(10),
        "the triggers are untouched"
    );
    // Displaced from the top-k by a better one, it stays: a manual save is kept for good.
    sim.report("val_loss", 0.2, 20);
    sim.event(step_end(20));
    assert_eq!(
        sim.listing(),
        ["step=15-pre-lr-drop", "step=20", "step=20-last"]
    );
    assert_eq!(sim.state.best_step(), Some(20));
    // Not fresh: not ranked, still kept; a repeated tag gets the version counter.
    let d = sim.manual(25, "x");
    assert_eq!(crate::policy::testkit::brief(&d), ["save topk step=25-x"]);
    assert_eq!(sim.state.best_step(), Some(20));
    sim.disk.insert("step=26-x".into(), 26);
    let d = sim.manual(26, "x");
    assert_eq!(
        crate::policy::testkit::brief(&d),
        ["save topk step=26-x-v1"]
    );
    assert_eq!(
        sim.state.permanent.get("step=26-x-v1").map(|k| k.reason),
        Some(KeepReason::Manual)
    );
    // A save at the trigger's step after a manual one at that step still happens.
    let d = sim.manual(30, "before");
    assert_eq!(
        crate::policy::testkit::brief(&d),
        ["save topk step=30-before"]
    );
    let d = sim.event(step_end(30));
    assert_eq!(
        crate::policy::testkit::brief(&d),
        ["save last step=30-last", "delete step=20-last"]
    );
}
