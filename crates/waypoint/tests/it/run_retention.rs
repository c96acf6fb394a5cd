//! Issue 18 through a real `Run` on the local disk: retention beyond the top-k across a restart
//! (the permanent keeps stay, the record says why), manual saves (`save_now`) and Orbax's
//! queries, the call order of real trainers (Lightning's hook order: the step end before the
//! same step's validation), `on_missing_monitor`, and `{consumed_samples}` in NeMo's default
//! name. What is asserted is what a user sees: the names in the checkpoints directory and what
//! the reader opens.

use crate::common::dir_names;
use crate::common::training::{Tiny, resume};
use std::path::Path;
use std::time::Duration;
use waypoint::storage::{StoragePath, open_dir};
use waypoint::{
    Checkpointer, Error, MissingMonitor, ModelCheckpoint, ModelCheckpointBuilder, Run, SaveLast,
};

fn run(dir: &Path, policy: ModelCheckpointBuilder) -> Run {
    Run::builder()
        .log_dir(dir)
        .checkpoint(policy.build().unwrap())
        .resume(resume())
        .clock(|| 0.0)
        .build()
        .unwrap()
}

/// The step and the `model_checkpoint` state in checkpoint `name`'s record, read by the reader.
fn record(dir: &Path, name: &str) -> (u64, serde_json::Value) {
    let storage = open_dir(&dir.join("default/checkpoints")).unwrap();
    let reader = Checkpointer::new(storage)
        .open(&StoragePath::new(name).unwrap())
        .unwrap();
    let record = reader.record();
    let state = serde_json::to_value(&record.trainer_state.waypoint).unwrap();
    (record.step, state["model_checkpoint"].clone())
}

/// keep_every_n_steps and max_to_keep across a restart: the permanent keeps of the first process
/// are never rotated out by the second, and each checkpoint's record names why it is kept.
#[test]
fn permanent_keeps_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = || {
        ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(0)
            .max_to_keep(1)
            .keep_every_n_steps(20)
            .filename("{step:03d}")
            .every_n_train_steps(10)
    };
    let mut tiny = Tiny::new();
    let mut first = run(tmp.path(), policy());
    first.restore(&mut tiny).unwrap();
    while tiny.step < 30 {
        tiny.train_step();
        first.step_end(tiny.step, 0, &tiny).unwrap();
    }
    drop(first); // killed after its saves: not finished
    let mut tiny = Tiny::new();
    let mut second = run(tmp.path(), policy());
    assert_eq!(second.restore(&mut tiny).unwrap().unwrap().step, 30);
    assert_eq!(second.all_steps(), [20, 30]);
    while tiny.step < 70 {
        tiny.train_step();
        second.step_end(tiny.step, 0, &tiny).unwrap();
    }
    second.wait_for_saves().unwrap();
    let ckpts = tmp.path().join("default/checkpoints");
    assert_eq!(
        dir_names(&ckpts),
        [
            "step=020",
            "step=040",
            "step=060",
            "step=070",
            "step=070-last"
        ]
    );
    let (step, state) = record(tmp.path(), "step=040");
    assert_eq!(step, 40);
    assert_eq!(
        state["permanent"]["step=040"],
        serde_json::json!({"step": 40, "reason": "every_n_steps"})
    );
    assert_eq!(second.latest_step(), Some(70));
    assert_eq!(second.all_steps(), [20, 40, 60, 70]);
}

/// keep_time_interval by the run's clock, carried across a restart (wall time by default; here
/// an injected clock that goes on).
#[test]
fn time_keeps_follow_the_clock_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = || {
        ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(1)
            .keep_time_interval(Duration::from_secs(100))
            .save_last(SaveLast::No)
            .filename("{step}")
            .every_n_train_steps(10)
    };
    for (from, to) in [(0, 30), (30, 60)] {
        let mut r = Run::builder()
            .log_dir(tmp.path())
            .checkpoint(policy().build().unwrap())
            .resume(resume())
            .clock(move || 1_000.0 + 6.0 * from as f64)
            .build()
            .unwrap();
        let mut tiny = Tiny::new();
        r.restore(&mut tiny).unwrap();
        assert_eq!(tiny.step, from);
        while tiny.step < to {
            tiny.train_step();
            r.step_end(tiny.step, 0, &tiny).unwrap();
        }
        r.wait_for_saves().unwrap();
    }
    // The first save (clock 1000) is a time keep; the second process's clock (1180) is 180 s
    // later, so its first save is one too; the rest are the newest only.
    let ckpts = tmp.path().join("default/checkpoints");
    assert_eq!(dir_names(&ckpts), ["step=10", "step=40", "step=60"]);
}

/// `save_now` (Lightning's `trainer.save_checkpoint`): the template's name plus the tag, kept
/// through rotation and a restart, ranked when its value is fresh; Orbax's queries.
#[test]
fn manual_saves_and_orbax_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = || {
        ModelCheckpoint::builder()
            .save_top_k(1)
            .filename("{step}-{val_loss:.2f}")
            .every_n_train_steps(10)
    };
    let mut r = run(tmp.path(), policy());
    let mut tiny = Tiny::new();
    r.restore(&mut tiny).unwrap();
    assert!(Matches::err(r.save_now("a/b", 0, 0, &tiny)));
    let loss = |step: u64| 1.0 / step as f64;
    while tiny.step < 30 {
        tiny.train_step();
        assert_eq!(
            r.should_save(tiny.step),
            tiny.step.is_multiple_of(10),
            "{}",
            tiny.step
        );
        r.log_metrics(tiny.step, &[("val_loss", loss(tiny.step))]);
        if tiny.step == 15 {
            r.save_now("pre-lr-drop", 15, 0, &tiny).unwrap();
        }
        r.step_end(tiny.step, 0, &tiny).unwrap();
    }
    r.wait_for_saves().unwrap();
    let ckpts = tmp.path().join("default/checkpoints");
    assert_eq!(
        dir_names(&ckpts),
        [
            "step=15-val_loss=0.07-pre-lr-drop",
            "step=30-val_loss=0.03",
            "step=30-val_loss=0.03-last"
        ]
    );
    assert_eq!((r.latest_step(), r.best_step()), (Some(30), Some(30)));
    assert_eq!(r.all_steps(), [15, 30]);
    let (step, state) = record(tmp.path(), "step=15-val_loss=0.07-pre-lr-drop");
    assert_eq!(step, 15);
    assert_eq!(
        state["permanent"]["step=15-val_loss=0.07-pre-lr-drop"]["reason"],
        "manual"
    );
    drop(r);
    // A restart keeps it, and AutoResume resumes from the newest step, not the manual save.
    let mut r = run(tmp.path(), policy());
    let mut tiny = Tiny::new();
    assert_eq!(r.restore(&mut tiny).unwrap().unwrap().step, 30);
    while tiny.step < 40 {
        tiny.train_step();
        r.log_metrics(tiny.step, &[("val_loss", loss(tiny.step))]);
        r.step_end(tiny.step, 0, &tiny).unwrap();
    }
    r.wait_for_saves().unwrap();
    assert_eq!(
        dir_names(&ckpts),
        [
            "step=15-val_loss=0.07-pre-lr-drop",
            "step=40-val_loss=0.03",
            "step=40-val_loss=0.03-last"
        ]
    );
}

/// `Result` helper: whether it is an `InvalidArgument` naming `tag`.
struct Matches;
impl Matches {
    fn err(result: waypoint::Result<Vec<waypoint::SavedCheckpoint>>) -> bool {
        matches!(result, Err(Error::InvalidArgument { name: "tag", .. }))
    }
}

/// NeMo's most common setup with Lightning's hook order: a save every 10 steps, val_loss
/// validated at the same steps, each validation after the step end. Every checkpoint is
/// ranked by its own step's value; the same loop with the validation first gives the same
/// directory.
#[test]
fn lightning_hook_order_ranks_every_save() {
    let losses = [0.5, 0.3, 0.4, 0.6];
    let mut listings = Vec::new();
    for validation_first in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(
            tmp.path(),
            ModelCheckpoint::builder()
                .save_top_k(2)
                .filename("{val_loss:.2f}-{step}")
                .every_n_train_steps(10),
        );
        let mut tiny = Tiny::new();
        r.restore(&mut tiny).unwrap();
        while tiny.step < 40 {
            tiny.train_step();
            let validate = tiny.step.is_multiple_of(10);
            let loss = losses[(tiny.step / 10).saturating_sub(1) as usize];
            if validate && validation_first {
                r.log_metrics(tiny.step, &[("val_loss", loss)]);
                r.validation_end(tiny.step, 0, &tiny).unwrap();
            }
            r.step_end(tiny.step, 0, &tiny).unwrap();
            if validate && !validation_first {
                r.log_metrics(tiny.step, &[("val_loss", loss)]);
                r.validation_end(tiny.step, 0, &tiny).unwrap();
            }
        }
        r.wait_for_saves().unwrap();
        assert_eq!(r.best_step(), Some(20));
        listings.push(dir_names(&tmp.path().join("default/checkpoints")));
    }
    let want = [
        "val_loss=0.30-step=20",
        "val_loss=0.40-step=30",
        "val_loss=0.60-step=40-last",
    ];
    assert_eq!(listings, [want, want]);
}

/// A monitor never reported after a validation: a warning by default, an error naming the
/// monitor and what was reported with `on_missing_monitor(Error)` (Lightning raises).
#[test]
fn a_monitor_never_reported() {
    for knob in [MissingMonitor::Warn, MissingMonitor::Error] {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(
            tmp.path(),
            ModelCheckpoint::builder()
                .on_missing_monitor(knob)
                .every_n_train_steps(10),
        );
        let mut tiny = Tiny::new();
        tiny.train_step();
        r.log_metrics(1, &[("val/loss", 0.5)]);
        let result = r.validation_end(1, 0, &tiny);
        match (knob, result) {
            (MissingMonitor::Warn, Ok(_)) => {}
            (MissingMonitor::Error, Err(e @ Error::MonitorMissing { .. })) => {
                let text = e.to_string();
                assert!(
                    text.contains("\"val_loss\"") && text.contains("val/loss"),
                    "{text}"
                );
            }
            (knob, other) => panic!("{knob:?}: {other:?}"),
        }
    }
}

/// NeMo's Megatron default name: the trainer reports `consumed_samples` as a metric at the
/// step, and the default name ends in it.
#[test]
fn consumed_samples_in_the_default_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = run(
        tmp.path(),
        ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(1)
            .every_n_train_steps(10),
    );
    let mut tiny = Tiny::new();
    while tiny.step < 10 {
        tiny.train_step();
        r.log_metrics(tiny.step, &[("consumed_samples", 32.0 * tiny.step as f64)]);
        r.step_end(tiny.step, 0, &tiny).unwrap();
    }
    r.wait_for_saves().unwrap();
    assert_eq!(
        dir_names(&tmp.path().join("default/checkpoints")),
        [
            "default--epoch=0-step=10-consumed_samples=320.0",
            "default--epoch=0-step=10-consumed_samples=320.0-last"
        ]
    );
}

/// Found by the hunter once step saves were ranked at their validation end: a `-last` link was
/// forgotten by a resumed run (discovery skips links, so reconciling the restored state dropped
/// it), never rotated, and dangled once its target was displaced.
#[test]
fn a_last_link_is_rotated_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = || {
        ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(1)
            .save_last(SaveLast::Link)
            .filename("{step}")
            .every_n_train_steps(5)
    };
    for until in [5, 10] {
        let mut r = run(tmp.path(), policy());
        let mut tiny = Tiny::new();
        r.restore(&mut tiny).unwrap();
        while tiny.step < until {
            tiny.train_step();
            r.step_end(tiny.step, 0, &tiny).unwrap();
        }
        r.wait_for_saves().unwrap();
    }
    let ckpts = tmp.path().join("default/checkpoints");
    assert_eq!(dir_names(&ckpts), ["step=10", "step=10-last"]);
}
