//! Decision tables for [`Policy::decide`], first part: when it saves — triggers, fresh metrics,
//! no double save, train end. Timelines run through the simulated directory of `testkit`, which
//! checks save-before-delete and the deletion rules on every decision.

use super::*;
use crate::policy::ModelCheckpoint;
use crate::policy::testkit::{Sim, brief, epoch_end, step_end, train_end, val_end};
use std::time::Duration;

fn b() -> crate::policy::ModelCheckpointBuilder {
    ModelCheckpoint::builder().filename("{val_loss:.2f}-{step}")
}

/// Step trigger every 30, validation every 100 reported before the step end: only the saves at
/// steps where val_loss was measured (300, 600, 900) are ranked; the others are -last only.
#[test]
fn step_trigger_every_30_with_validation_every_100() {
    let mut sim = Sim::new(b().save_top_k(2).every_n_train_steps(30));
    let val_loss = [0.9, 0.85, 0.7, 0.9, 0.9, 0.8, 0.9, 0.9, 0.6]; // at steps 100, 200, …, 900
    let mut ranked = Vec::new();
    let mut saves = 0;
    for step in 1..=900u64 {
        if step % 100 == 0 {
            sim.report("val_loss", val_loss[(step / 100 - 1) as usize], step);
            assert!(
                sim.event(val_end(step, 0)).actions.is_empty(),
                "no epoch save (#20075)"
            );
        }
        let d = sim.event(step_end(step));
        if !d.actions.is_empty() {
            saves += 1;
        }
        for a in &d.actions {
            if let Action::Save {
                role: Role::TopK,
                score,
                ..
            } = a
            {
                ranked.push((step, *score));
            }
        }
        if step == 30 {
            assert_eq!(brief(&d), ["save last val_loss=nan-step=30-last"]);
            let note = "step 30: val_loss not reported at this step; saved as -last only";
            assert_eq!(d.notes, [note]);
        }
        if step == 900 {
            assert_eq!(
                brief(&d),
                [
                    "save topk val_loss=0.60-step=900",
                    "save last val_loss=0.60-step=900-last",
                    "delete val_loss=0.80-step=600",
                    "delete val_loss=nan-step=870-last",
                ]
            );
        }
    }
    assert_eq!(saves, 30);
    assert_eq!(
        ranked,
        [(300, Some(0.7)), (600, Some(0.8)), (900, Some(0.6))]
    );
    assert_eq!(
        sim.listing(),
        [
            "val_loss=0.60-step=900",
            "val_loss=0.60-step=900-last",
            "val_loss=0.70-step=300"
        ]
    );
    assert_eq!(sim.state.best_model_path(), Some("val_loss=0.60-step=900"));
    assert_eq!(sim.state.kth_value(), Some(0.7));
}

/// NeMo #10675 (known problem 10): a value reported at an earlier step never reaches a name or a
/// rank; the placeholder renders nan.
#[test]
fn stale_metric_never_in_a_name_nemo_10675() {
    let mut sim = Sim::new(
        ModelCheckpoint::builder()
            .filename("{train_loss:.2f}-{val_loss:.2f}-{step}")
            .every_n_train_steps(30)
            .save_top_k(3),
    );
    sim.report("val_loss", 0.5, 100);
    sim.report("train_loss", 1.25, 120);
    let d = sim.event(step_end(120));
    assert_eq!(
        brief(&d),
        ["save last train_loss=1.25-val_loss=nan-step=120-last"]
    );
    assert!(d.next.top_k.is_empty());
    // With save_top_k = -1 the unranked save is still kept, with a NaN score.
    let mut all = Sim::new(b().every_n_train_steps(30).save_top_k(-1));
    all.report("val_loss", 0.5, 100);
    let d = all.event(step_end(120));
    assert_eq!(
        brief(&d),
        [
            "save topk val_loss=nan-step=120",
            "save last val_loss=nan-step=120-last"
        ]
    );
    assert!(matches!(d.actions[0], Action::Save { score: None, .. }));
    assert!(d.next.top_k[0].score.is_nan() && d.notes.is_empty());
    // save_last off: nothing is saved, and the note says why.
    let mut off = Sim::new(b().every_n_train_steps(30).save_last(SaveLast::No));
    let d = off.event(step_end(30));
    assert!(d.actions.is_empty() && d.next.last_save_step.is_none());
    assert!(
        d.notes[0].contains("save_last is off: nothing saved"),
        "{:?}",
        d.notes
    );
}

#[test]
fn time_trigger_with_injected_clock() {
    let mut sim = Sim::new(
        b().no_monitor()
            .save_top_k(1)
            .filename("{step}")
            .train_time_interval(Duration::from_secs(60)),
    );
    let mut saved = Vec::new();
    for step in 1..=30u64 {
        let now_s = 1000.0 + 7.0 * (step - 1) as f64;
        if !sim
            .event(Event::TrainStepEnd {
                step,
                epoch: 0,
                now_s,
            })
            .actions
            .is_empty()
        {
            saved.push(step);
        }
    }
    // The first interval starts at the first event (t = 1000): 1063, then 1126, 1189.
    assert_eq!(saved, [10, 19, 28]);
    assert_eq!(sim.listing(), ["step=28", "step=28-last"]);
    // A clock that goes backwards restarts the interval instead of never firing again.
    let mut at = |step, now_s| {
        !sim.event(Event::TrainStepEnd {
            step,
            epoch: 0,
            now_s,
        })
        .actions
        .is_empty()
    };
    assert!(!at(31, 5.0));
    assert!(!at(32, 64.9));
    assert!(at(33, 65.0), "exactly one interval later is due");
    assert!(!at(34, f64::NAN));
}

#[test]
fn epoch_trigger_at_validation_end_or_train_epoch_end() {
    // (save_on_train_epoch_end, every_n_epochs, event, saves?)
    let table = [
        (false, 1, val_end(100, 0), true),
        (false, 1, epoch_end(100, 0), false),
        (true, 1, val_end(100, 0), false),
        (true, 1, epoch_end(100, 0), true),
        (false, 2, val_end(100, 0), false),
        (false, 2, val_end(100, 1), true),
        (false, 2, val_end(100, 2), false),
        (true, 3, epoch_end(100, 5), true),
        (false, 1, step_end(100), false),
        (false, 1, val_end(0, 0), false), // never at global step 0
        (false, 1, val_end(100, u64::MAX), true),
    ];
    for (on_train_epoch_end, n, event, want) in table {
        let mut sim = Sim::new(
            b().save_on_train_epoch_end(on_train_epoch_end)
                .every_n_epochs(n),
        );
        sim.report("val_loss", 0.5, 100);
        let d = sim.event(event);
        assert_eq!(
            !d.actions.is_empty(),
            want,
            "{on_train_epoch_end} {n} {event:?}"
        );
    }
}

/// Lightning #20075 (known problem 16): with a step or time trigger, epoch and validation ends
/// never save, even without a validation set.
#[test]
fn step_or_time_trigger_never_saves_per_epoch_lightning_20075() {
    for builder in [
        b().every_n_train_steps(1000),
        b().train_time_interval(Duration::from_secs(3600)),
        b().every_n_train_steps(1000).save_on_train_epoch_end(true),
    ] {
        let mut sim = Sim::new(builder);
        for epoch in 0..50u64 {
            let step = 10 * (epoch + 1);
            sim.report("val_loss", 0.5, step);
            assert!(sim.event(val_end(step, epoch)).actions.is_empty());
            assert!(sim.event(epoch_end(step, epoch)).actions.is_empty());
        }
        assert!(sim.disk.is_empty());
    }
}

#[test]
fn no_double_save_at_one_step() {
    let mut sim = Sim::new(b().every_n_train_steps(30));
    assert!(!sim.event(step_end(30)).actions.is_empty());
    assert!(sim.event(step_end(30)).actions.is_empty());
    let mut epochs = Sim::new(b());
    epochs.report("val_loss", 0.4, 100);
    assert!(!epochs.event(val_end(100, 0)).actions.is_empty());
    assert!(epochs.event(val_end(100, 0)).actions.is_empty());
    assert!(epochs.event(train_end(100)).actions.is_empty());
}

#[test]
fn train_end_weights_only_rule() {
    // (save_weights_only, save_optim_on_train_end) -> weights only at train end (NeMo).
    let table = [
        ((false, false), true),
        ((false, true), false),
        ((true, false), true),
        ((true, true), true),
    ];
    for ((weights_only, optim_at_end), want) in table {
        let mut sim = Sim::new(
            b().every_n_train_steps(30)
                .save_weights_only(weights_only)
                .save_optim_on_train_end(optim_at_end),
        );
        let d = sim.event(step_end(30));
        assert!(matches!(d.actions[0], Action::Save { weights_only: w, .. } if w == weights_only));
        let d = sim.event(train_end(45));
        let w = if want { " (w)" } else { "" };
        let want_actions = [
            format!("save last val_loss=nan-step=45-last{w}"),
            "delete val_loss=nan-step=30-last".into(),
        ];
        assert_eq!(brief(&d), want_actions, "{weights_only} {optim_at_end}");
        assert!(matches!(
            d.actions[0],
            Action::Save {
                role: Role::Last,
                ..
            }
        ));
    }
    // Already saved at this step, save_last off, or nothing trained: nothing.
    let mut sim = Sim::new(b().every_n_train_steps(30));
    sim.event(step_end(30));
    assert!(sim.event(train_end(30)).actions.is_empty());
    assert!(
        Sim::new(b().save_last(SaveLast::No))
            .event(train_end(45))
            .actions
            .is_empty()
    );
    assert!(Sim::new(b()).event(train_end(0)).actions.is_empty());
}

/// NeMo's Megatron default name (`{model_name}--{val_loss:.2f}-{step}-{consumed_samples}` in
/// NeMo 2's recipes): with the default filename, a `consumed_samples` metric reported at the
/// save's step ends the name, rendered as NeMo renders the float it logs; not reported at this
/// step, the name is NeMo's plain default. An explicit template is left as written.
#[test]
fn consumed_samples_in_the_default_name_nemo_megatron() {
    let mut sim = Sim::new(
        ModelCheckpoint::builder()
            .every_n_train_steps(10)
            .save_top_k(-1),
    );
    sim.report("val_loss", 0.25, 10);
    sim.report("consumed_samples", 1280.0, 10);
    assert_eq!(
        brief(&sim.event(step_end(10))),
        [
            "save topk gpt--val_loss=0.2500-epoch=0-step=10-consumed_samples=1280.0",
            "save last gpt--val_loss=0.2500-epoch=0-step=10-consumed_samples=1280.0-last",
        ]
    );
    sim.report("val_loss", 0.2, 20);
    let d = sim.event(step_end(20));
    assert_eq!(
        brief(&d)[0],
        "save topk gpt--val_loss=0.2000-epoch=0-step=20"
    );
    let mut explicit = Sim::new(b().every_n_train_steps(10).save_top_k(-1));
    explicit.report("consumed_samples", 1280.0, 10);
    assert_eq!(
        brief(&explicit.event(step_end(10)))[0],
        "save topk val_loss=nan-step=10"
    );
    let mut padded = Sim::new(
        ModelCheckpoint::builder()
            .filename("{step:05d}-{consumed_samples:08d}")
            .every_n_train_steps(10)
            .save_top_k(-1),
    );
    padded.report("consumed_samples", 1280.0, 10);
    assert_eq!(
        brief(&padded.event(step_end(10)))[0],
        "save topk step=00010-consumed_samples=00001280"
    );
}
