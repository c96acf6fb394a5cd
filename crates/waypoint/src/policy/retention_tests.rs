//! Decision tables for [`Policy::decide`], second part: what is kept and what is deleted — links,
//! last rotation, the protected checkpoint, deletion rights, version counter, ranking. Timelines
//! run through the simulated directory of `testkit`, which checks the deletion rules each time.

use super::*;
use crate::policy::testkit::{Sim, brief, policy, step_end};
use crate::policy::{MetricValue, Mode, ModelCheckpoint, ModelCheckpointBuilder, Trigger};

fn b() -> ModelCheckpointBuilder {
    ModelCheckpoint::builder().filename("{val_loss:.2f}-{step}")
}

/// Lightning #21110 (known problem 15): save_last = "link" with save_top_k = -1 links each last to
/// the top-k checkpoint of its step, never to itself.
#[test]
fn link_never_self_links_lightning_21110() {
    let mut sim = Sim::new(
        b().no_monitor()
            .save_top_k(-1)
            .save_last(SaveLast::Link)
            .filename("{step}")
            .every_n_train_steps(10),
    );
    assert_eq!(
        brief(&sim.event(step_end(10))),
        ["save topk step=10", "link step=10-last -> step=10"]
    );
    assert_eq!(
        brief(&sim.event(step_end(20))),
        [
            "save topk step=20",
            "link step=20-last -> step=20",
            "delete step=10-last"
        ]
    );
    assert_eq!(sim.listing(), ["step=10", "step=20", "step=20-last"]);
    // Without a top-k save at this step (not ranked), the last is a real save.
    let mut sim = Sim::new(
        b().save_top_k(2)
            .save_last(SaveLast::Link)
            .every_n_train_steps(10),
    );
    assert_eq!(
        brief(&sim.event(step_end(10))),
        ["save last val_loss=nan-step=10-last"]
    );
    sim.report("val_loss", 0.5, 20);
    assert_eq!(
        brief(&sim.event(step_end(20))),
        [
            "save topk val_loss=0.50-step=20",
            "link val_loss=0.50-step=20-last -> val_loss=0.50-step=20",
            "delete val_loss=nan-step=10-last",
        ]
    );
}

#[test]
fn last_rotation_deletes_the_previous_last() {
    let mut sim = Sim::new(
        b().no_monitor()
            .save_top_k(0)
            .filename("{step}")
            .every_n_train_steps(10),
    );
    assert_eq!(brief(&sim.event(step_end(10))), ["save last step=10-last"]);
    assert_eq!(
        brief(&sim.event(step_end(20))),
        ["save last step=20-last", "delete step=10-last"]
    );
    assert_eq!(sim.listing(), ["step=20-last"]);
    assert_eq!(sim.state.last_model_path.as_deref(), Some("step=20-last"));
}

/// Lightning #11379 / PR #18750 (known problem 13): the checkpoint resumed from is never deleted,
/// whether displaced from the top-k or rotated out as the previous last.
#[test]
fn never_deletes_the_protected_checkpoint_lightning_11379() {
    let mut sim = Sim::new(b().save_top_k(1).every_n_train_steps(100));
    sim.report("val_loss", 0.5, 100);
    sim.event(step_end(100));
    sim.protected = Some("val_loss=0.50-step=100".into());
    sim.report("val_loss", 0.4, 200);
    let d = sim.event(step_end(200));
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=0.40-step=200",
            "save last val_loss=0.40-step=200-last",
            "delete val_loss=0.50-step=100-last"
        ]
    );
    assert!(
        d.notes[0].starts_with("kept val_loss=0.50-step=100 (displaced from top-k)"),
        "{:?}",
        d.notes
    );
    assert!(
        !d.next.saved.contains_key("val_loss=0.50-step=100"),
        "forgotten, never deleted later"
    );
    sim.protected = Some("val_loss=0.40-step=200-last".into());
    sim.report("val_loss", 0.3, 300);
    let d = sim.event(step_end(300));
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=0.30-step=300",
            "save last val_loss=0.30-step=300-last",
            "delete val_loss=0.40-step=200"
        ]
    );
    assert!(
        sim.disk.contains_key("val_loss=0.50-step=100")
            && sim.disk.contains_key("val_loss=0.40-step=200-last")
    );
}

#[test]
fn deletes_only_names_it_saved() {
    let policy = policy(b().save_top_k(1).every_n_train_steps(10));
    let mut state = policy.initial_state("/ckpt");
    state.top_k.push(crate::policy::TopKEntry {
        name: "../../etc".into(),
        score: 9.0,
    });
    state.last_model_path = Some("foreign-last".into());
    let metrics = Metrics::from([(
        "val_loss".to_string(),
        MetricValue {
            value: 0.1,
            step: 10,
        },
    )]);
    let ctx = DecideContext {
        existing: &|_| false,
        in_flight: &|_| false,
        protected: None,
    };
    let d = policy.decide(&state, &step_end(10), &metrics, &ctx);
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=0.10-step=10",
            "save last val_loss=0.10-step=10-last"
        ]
    );
    assert_eq!(d.notes.len(), 2, "{:?}", d.notes);
    assert!(
        d.notes
            .iter()
            .all(|n| n.contains("this policy did not save it"))
    );
}

#[test]
fn version_counter_on_collisions() {
    let mut sim = Sim::new(b().every_n_train_steps(100));
    for name in [
        "val_loss=0.50-step=100",
        "val_loss=0.50-step=100-last",
        "val_loss=0.50-step=100-v1-last",
    ] {
        sim.disk.insert(name.into(), 7);
    }
    sim.report("val_loss", 0.5, 100);
    let d = sim.event(step_end(100));
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=0.50-step=100-v1",
            "save last val_loss=0.50-step=100-v2-last"
        ]
    );
    // Counter off: the plain names (Lightning overwrote; replacing is the mechanism's call).
    let policy = policy(b().every_n_train_steps(100).enable_version_counter(false));
    let metrics = Metrics::from([(
        "val_loss".to_string(),
        MetricValue {
            value: 0.5,
            step: 100,
        },
    )]);
    let ctx = DecideContext {
        existing: &|_| true,
        in_flight: &|_| false,
        protected: None,
    };
    let d = policy.decide(&policy.initial_state("/c"), &step_end(100), &metrics, &ctx);
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=0.50-step=100",
            "save last val_loss=0.50-step=100-last"
        ]
    );
}

/// Names reserved by saves in flight are taken for the version counter, like names on disk: no
/// two saves in flight share a name. With none in flight (one save at a time: NeMo's case) the
/// names are NeMo's. With the counter off the names stay the template's (the run then waits for
/// the save in flight of that name).
#[test]
fn names_in_flight_are_taken_table() {
    // (counter, on disk, in flight, the current last (saved at step 1), val_loss at step 2,
    //  the decision at step 2)
    type Row = (
        bool,
        &'static [&'static str],
        &'static [&'static str],
        Option<&'static str>,
        Option<f64>,
        &'static [&'static str],
    );
    let table: &[Row] = &[
        (true, &[], &[], None, None, &["save last val_loss=nan-last"]),
        // The last of step 1, rotated out of `saved` by a later save, still being written.
        (
            true,
            &[],
            &["val_loss=nan-last"],
            None,
            None,
            &["save last val_loss=nan-v1-last"],
        ),
        (
            true,
            &[],
            &["val_loss=nan-last", "val_loss=nan-v1-last"],
            Some("val_loss=nan-v1-last"),
            None,
            &[
                "save last val_loss=nan-v2-last",
                "delete val_loss=nan-v1-last",
            ],
        ),
        (
            true,
            &["val_loss=nan-last"],
            &["val_loss=nan-v1-last"],
            None,
            None,
            &["save last val_loss=nan-v2-last"],
        ),
        (
            true,
            &[],
            &["val_loss=0.50", "val_loss=0.50-last"],
            None,
            Some(0.5),
            &[
                "save topk val_loss=0.50-v1",
                "save last val_loss=0.50-v1-last",
            ],
        ),
        // Counter off: the template's name, even in flight; the last is not deleted (same name).
        (
            false,
            &[],
            &["val_loss=nan-last"],
            Some("val_loss=nan-last"),
            None,
            &["save last val_loss=nan-last"],
        ),
    ];
    for (counter, disk, in_flight, last, value, want) in table {
        let policy = policy(
            ModelCheckpoint::builder()
                .filename("{val_loss:.2f}")
                .save_top_k(3)
                .save_last(SaveLast::Yes)
                .every_n_train_steps(1)
                .enable_version_counter(*counter),
        );
        let mut state = policy.initial_state("/c");
        if let Some(last) = last {
            state.last_model_path = Some(last.to_string());
            state.saved.insert(last.to_string(), 1);
            state.last_save_step = Some(1);
        }
        let metrics: Metrics = value
            .map(|value| ("val_loss".to_string(), MetricValue { value, step: 2 }))
            .into_iter()
            .collect();
        let existing = |n: &str| disk.contains(&n);
        let reserved = |n: &str| in_flight.contains(&n);
        let ctx = DecideContext {
            existing: &existing,
            in_flight: &reserved,
            protected: None,
        };
        let d = policy.decide(&state, &step_end(2), &metrics, &ctx);
        assert_eq!(
            brief(&d),
            *want,
            "counter {counter}, disk {disk:?}, in flight {in_flight:?}"
        );
    }
}

#[test]
fn ranking_table() {
    // (mode, k, scores at steps 100, 200, 300, 400) -> top-k names kept (by step), best step.
    type Row = (Mode, i64, [f64; 4], &'static [u64], u64);
    let table: &[Row] = &[
        (Mode::Min, 2, [0.5, 0.4, 0.6, 0.3], &[200, 400], 400),
        (Mode::Max, 2, [0.5, 0.4, 0.6, 0.3], &[100, 300], 300),
        (Mode::Min, 1, [0.5, 0.5, 0.5, 0.5], &[100], 100),
        (
            Mode::Min,
            3,
            [f64::NAN, 0.4, 0.6, 0.3],
            &[200, 300, 400],
            400,
        ),
        (
            Mode::Min,
            -1,
            [0.5, 0.4, 0.6, 0.3],
            &[100, 200, 300, 400],
            400,
        ),
        (Mode::Min, 0, [0.5, 0.4, 0.6, 0.3], &[], 0),
    ];
    for (mode, k, scores, want, best) in table {
        let mut sim = Sim::new(
            ModelCheckpoint::builder()
                .filename("{step}")
                .mode(*mode)
                .save_top_k(*k)
                .every_n_train_steps(100),
        );
        for (i, score) in scores.iter().enumerate() {
            let step = 100 * (i as u64 + 1);
            sim.report("val_loss", *score, step);
            sim.event(step_end(step));
        }
        let kept: Vec<u64> = sim
            .state
            .top_k
            .iter()
            .map(|e| e.name[5..].parse().unwrap())
            .collect();
        let mut kept_sorted = kept.clone();
        kept_sorted.sort();
        assert_eq!(&kept_sorted, want, "{mode} k={k}");
        let best_name = sim.state.best_model_path().map(String::from);
        assert_eq!(
            best_name,
            (*best > 0).then(|| format!("step={best}")),
            "{mode} k={k}"
        );
        assert_eq!(
            sim.disk.len(),
            want.len() + 1,
            "top-k plus one last: {:?}",
            sim.listing()
        );
    }
}

#[test]
fn without_monitor_rank_by_step() {
    for (k, want) in [
        (1, vec!["step=30", "step=30-last"]),
        (-1, vec!["step=10", "step=20", "step=30", "step=30-last"]),
    ] {
        let mut sim = Sim::new(
            ModelCheckpoint::builder()
                .no_monitor()
                .save_top_k(k)
                .filename("{step}")
                .every_n_train_steps(10),
        );
        for step in [10, 20, 30] {
            sim.event(step_end(step));
        }
        assert_eq!(sim.listing(), want, "k={k}");
        assert_eq!(sim.state.best_model_path(), Some("step=30"));
    }
}

#[test]
fn policy_refuses_an_experiment_name_that_breaks_names() {
    let config = ModelCheckpoint::builder().build().unwrap();
    let err = Policy::new(config.clone(), ".hidden")
        .unwrap_err()
        .to_string();
    assert!(err.contains("must not start with '.'"), "{err}");
    assert!(
        Policy::new(config, "gpt/small").is_ok(),
        "separators become _"
    );
    assert_eq!(policy(b()).config().trigger(), Trigger::EveryNEpochs(1));
}
