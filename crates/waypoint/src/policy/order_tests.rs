//! Tables for the call order of real trainers (issue 18, "The call order of real trainers";
//! Lightning #20919 / PR #21106, in 2.5.5): a step-triggered save whose monitored value comes
//! with the same step's validation, in either order, the deferral's bound, and the queries
//! `should_save`, `check_tag`, `missing_monitor`.

use super::*;
use crate::policy::testkit::{Sim, brief, step_end, train_end, val_end};
use crate::policy::{MetricValue, Metrics, ModelCheckpoint, ModelCheckpointBuilder};
use std::time::Duration;

/// NeMo's most common setup: a save every 30 steps, val_loss validated at the same steps.
fn b() -> ModelCheckpointBuilder {
    ModelCheckpoint::builder()
        .filename("{val_loss:.2f}-{step}")
        .every_n_train_steps(30)
        .save_top_k(2)
}

const LOSSES: [(u64, f64); 3] = [(30, 0.5), (60, 0.4), (90, 0.6)];

/// Lightning's hook order: the training-batch end of step 30 comes before step 30's
/// validation. The first save is made at once (the order is not known yet) and saved again,
/// ranked, at the validation end; from then on a save waits for its step's validation end. Every
/// save is ranked.
#[test]
fn step_end_before_validation_lightning_hook_order() {
    let mut sim = Sim::new(b());
    let mut at_val = Vec::new();
    for (step, loss) in LOSSES {
        let d = sim.event(step_end(step));
        if step == 30 {
            assert_eq!(brief(&d), ["save last val_loss=nan-step=30-last"]);
        } else {
            assert_eq!(brief(&d), Vec::<String>::new(), "step {step} waits");
            assert_eq!(
                d.notes,
                [format!(
                    "step {step}: val_loss not reported yet; the save waits for this step's validation end"
                )]
            );
            assert!(sim.policy.should_save(&sim.state, step, 0.0), "still due");
        }
        sim.report("val_loss", loss, step);
        at_val.push(brief(&sim.event(val_end(step, 0))));
    }
    assert_eq!(
        at_val,
        [
            vec![
                "save topk val_loss=0.50-step=30",
                "save last val_loss=0.50-step=30-last",
                "delete val_loss=nan-step=30-last",
            ],
            vec![
                "save topk val_loss=0.40-step=60",
                "save last val_loss=0.40-step=60-last",
                "delete val_loss=0.50-step=30-last",
            ],
            vec![
                "save last val_loss=0.60-step=90-last",
                "delete val_loss=0.40-step=60-last",
            ],
        ]
    );
    assert_eq!(
        sim.listing(),
        [
            "val_loss=0.40-step=60",
            "val_loss=0.50-step=30",
            "val_loss=0.60-step=90-last"
        ]
    );
    assert!(sim.state.validation_follows);
    assert_eq!(sim.state.best_step(), Some(60));
}

/// The other order (validation reported before the step end, as waypoint-train does): the
/// same checkpoints, with no deferral and no second save.
#[test]
fn validation_before_step_end_gives_the_same_checkpoints() {
    let mut sim = Sim::new(b());
    for (step, loss) in LOSSES {
        sim.report("val_loss", loss, step);
        assert!(sim.event(val_end(step, 0)).actions.is_empty());
        assert!(!sim.event(step_end(step)).actions.is_empty());
    }
    assert_eq!(
        sim.listing(),
        [
            "val_loss=0.40-step=60",
            "val_loss=0.50-step=30",
            "val_loss=0.60-step=90-last"
        ]
    );
    assert!(!sim.state.validation_follows);
}

/// The bound: a save waiting for a validation that never comes is made at the next step end,
/// unranked, and the run stops waiting; at train end of its own step it is made there.
#[test]
fn a_deferred_save_is_bounded() {
    let mut sim = Sim::new(b());
    sim.event(step_end(30));
    sim.report("val_loss", 0.5, 30);
    sim.event(val_end(30, 0));
    assert!(sim.event(step_end(60)).actions.is_empty(), "waits");
    assert_eq!(sim.state.deferred_step, Some(60));
    assert!(sim.policy.should_save(&sim.state, 61, 0.0));
    let d = sim.event(step_end(61));
    assert_eq!(
        brief(&d),
        [
            "save last val_loss=nan-step=61-last",
            "delete val_loss=0.50-step=30-last"
        ]
    );
    assert!(d.notes[0].starts_with("step 60: no validation ended at step 60"));
    assert!(!sim.state.validation_follows && sim.state.deferred_step.is_none());

    // Waiting at the last step: the train end makes the save (with the optimizer, as a
    // trigger's), not a weights-only train-end -last.
    let mut sim = Sim::new(b());
    sim.event(step_end(30));
    sim.report("val_loss", 0.5, 30);
    sim.event(val_end(30, 0));
    sim.event(step_end(60));
    let d = sim.event(train_end(60));
    assert_eq!(
        brief(&d),
        [
            "save last val_loss=nan-step=60-last",
            "delete val_loss=0.50-step=30-last"
        ]
    );

    // A validation that ends without the monitor: the waiting save is made, unranked.
    let mut sim = Sim::new(b());
    sim.event(step_end(30));
    sim.report("val_loss", 0.5, 30);
    sim.event(val_end(30, 0));
    sim.event(step_end(60));
    let d = sim.event(val_end(60, 0));
    assert_eq!(brief(&d)[0], "save last val_loss=nan-step=60-last");
    assert!(
        d.notes[0].contains("ended without val_loss"),
        "{:?}",
        d.notes
    );
}

/// No deferral where nothing is ranked: without a monitor, or with save_top_k = 0.
#[test]
fn nothing_waits_without_a_ranking() {
    for builder in [b().no_monitor().save_top_k(1), b().save_top_k(0)] {
        let mut sim = Sim::new(builder);
        for (step, loss) in LOSSES {
            assert!(!sim.event(step_end(step)).actions.is_empty(), "step {step}");
            sim.report("val_loss", loss, step);
            sim.event(val_end(step, 0));
        }
        assert!(sim.state.deferred_step.is_none() && !sim.state.validation_follows);
    }
}

/// Orbax's `should_save(step)` for each trigger.
#[test]
fn should_save_table() {
    let policy = |builder: ModelCheckpointBuilder| crate::policy::testkit::policy(builder);
    let steps = policy(b());
    let mut state = steps.initial_state("/ckpt");
    let table = [(0, false), (29, false), (30, true), (31, false), (60, true)];
    for (step, want) in table {
        assert_eq!(steps.should_save(&state, step, 0.0), want, "step {step}");
    }
    state.last_save_step = Some(30);
    assert!(
        !steps.should_save(&state, 30, 0.0),
        "never twice at one step"
    );
    let time = policy(ModelCheckpoint::builder().train_time_interval(Duration::from_secs(60)));
    let mut state = time.initial_state("/ckpt");
    state.start_time_s = Some(100.0);
    let table = [(159.0, false), (160.0, true), (50.0, false)];
    for (now, want) in table {
        assert_eq!(time.should_save(&state, 5, now), want, "now {now}");
    }
    let epochs = policy(ModelCheckpoint::builder());
    let state = epochs.initial_state("/ckpt");
    assert!(
        !epochs.should_save(&state, 30, 0.0),
        "epoch saves are not step ends'"
    );
}

#[test]
fn manual_save_tags_table() {
    let table = [
        ("pre-lr-drop", None),
        ("v1.5_a", None),
        ("", Some("1 to 64 bytes")),
        ("a/b", Some("only ASCII")),
        ("é", Some("only ASCII")),
        ("-x", Some("must not start")),
        (".x", Some("must not start")),
        ("mylast", Some("must not end in \"last\"")),
    ];
    for (tag, want) in table {
        match (Policy::check_tag(tag), want) {
            (Ok(()), None) => {}
            (Err(e), Some(needle)) => assert!(e.to_string().contains(needle), "{tag}: {e}"),
            (got, _) => panic!("{tag:?}: {got:?}"),
        }
    }
    assert!(Policy::check_tag(&"a".repeat(65)).is_err());
}

/// A monitor never reported: what `on_missing_monitor` acts on (Lightning raises).
#[test]
fn missing_monitor_table() {
    let policy = crate::policy::testkit::policy(b());
    let value = MetricValue {
        value: 0.5,
        step: 3,
    };
    let mut metrics = Metrics::new();
    assert_eq!(policy.missing_monitor(&metrics), Some("val_loss"));
    metrics.insert("val_los".into(), value);
    assert_eq!(policy.missing_monitor(&metrics), Some("val_loss"), "a typo");
    metrics.insert("val_loss".into(), value);
    assert_eq!(
        policy.missing_monitor(&metrics),
        None,
        "reported once is enough"
    );
    let none = crate::policy::testkit::policy(b().no_monitor().save_top_k(1));
    assert_eq!(none.missing_monitor(&Metrics::new()), None);
}
