//! The Run handle end to end: a deterministic toy training loop checkpointed by the policy,
//! crashed at every storage operation of a whole run and power-cut (in memory), then resumed
//! with AutoResume until it completes. The final state equals an uninterrupted run's, and the
//! checkpoints directory holds exactly the top-k and the last. Plus AutoResume's errors and the
//! known problems of NeMo and Lightning that concern resume.

use crate::common::faults::{assert_disk_sound, why_silent};
use crate::common::root_names;
use crate::common::training::{Toy, resume};
use std::sync::Arc;
use waypoint::storage::{
    FailpointPlan, FaultKind, FaultyFs, FsStorage, MemoryFs, SharedStorage, StoragePath,
};
use waypoint::{AutoResume, Error, ModelCheckpoint, Run, SaveLast, SaveOptions};

const STEPS: u64 = 24;

fn policy() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .monitor("val_loss")
        .save_top_k(2)
        .save_last(SaveLast::Yes)
        .every_n_train_steps(3)
        .build()
        .unwrap()
}

/// Runs the toy to completion (or to the first storage error) on `storage`, resuming first.
fn train(storage: SharedStorage) -> waypoint::Result<Toy> {
    let mut run = Run::builder()
        .storage(storage)
        .checkpoint(policy())
        .resume(resume())
        .save_options(SaveOptions {
            threads: 1,
            ..Default::default()
        })
        .clock(|| 0.0)
        .max_steps(STEPS)
        .build()?;
    let mut toy = Toy::new();
    if let Some(point) = run.restore(&mut toy)?
        && point.completed
    {
        return Ok(toy);
    }
    while toy.step < STEPS {
        toy.train_step();
        if toy.step.is_multiple_of(6) {
            run.log_metrics(toy.step, &[("val_loss", toy.val_loss())]);
            run.validation_end(toy.step, 0, &toy)?;
        }
        run.step_end(toy.step, 0, &toy)?;
    }
    run.finish(toy.step, 0, &toy)?;
    Ok(toy)
}

fn uninterrupted() -> (Toy, Vec<String>) {
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    let toy = train(storage.clone()).unwrap();
    (toy, root_names(&storage))
}

#[test]
fn the_uninterrupted_run_keeps_top_k_and_last() {
    let (toy, names) = uninterrupted();
    assert_eq!(toy.step, STEPS);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.ends_with("-last")).count(),
        1,
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| n.starts_with("default--val_loss=")),
        "{names:?}"
    );
}

/// Crash at every storage operation of a whole run, lose what was not durable, resume: the final
/// state is bit-identical and the directory holds exactly what the uninterrupted run left.
#[test]
fn crash_and_power_cut_at_every_operation_then_resume() {
    let (reference, expected_names) = uninterrupted();
    let counter = Arc::new(FaultyFs::new(
        Arc::new(MemoryFs::new()),
        FailpointPlan::default(),
    ));
    train(Arc::new(FsStorage::new(counter.clone()))).unwrap();
    let total = counter.ops();
    assert!(
        total > 100,
        "a run should take many storage operations, took {total}"
    );
    let (mut crashed, mut silent) = (0, Vec::new());
    let mut reasons = std::collections::BTreeMap::new();
    for n in 1..=total {
        let memory = Arc::new(MemoryFs::new());
        let faulty = Arc::new(FaultyFs::new(
            memory.clone(),
            FailpointPlan::new(FaultKind::Crash, n),
        ));
        if train(Arc::new(FsStorage::new(faulty.clone()))).is_err() {
            crashed += 1;
        } else {
            let fired = faulty.fired();
            match why_silent(fired.as_ref(), faulty.ops(), n) {
                Some(reason) => *reasons.entry(reason).or_insert(0) += 1,
                None => silent.push((n, fired)),
            }
        }
        memory.power_cut();
        let storage: SharedStorage = Arc::new(FsStorage::new(memory));
        assert_disk_sound(&storage, &format!("crash at op {n}, power cut"));
        let toy = train(storage.clone())
            .unwrap_or_else(|e| panic!("resume after a crash at op {n}: {e}"));
        assert_eq!(toy, reference, "crash at op {n}: the resumed run diverged");
        assert_eq!(
            root_names(&storage),
            expected_names,
            "crash at op {n}: wrong checkpoints left"
        );
    }
    // Every crash stops the run, except one inside a deletion of a superseded checkpoint (logged,
    // finished on the next start): each of those is named by `why_silent`.
    eprintln!(
        "crashed a whole run at each of its {total} storage operations: {crashed} stopped it, {reasons:?}"
    );
    assert!(
        silent.is_empty(),
        "crashes that neither stopped the run nor had a reason: {silent:?}"
    );
    assert_eq!(crashed + reasons.values().sum::<u64>(), total);
}

#[test]
fn nothing_to_resume_is_an_error_that_says_where_checkpoints_are() {
    let tmp = tempfile::tempdir().unwrap();
    // A finished run in experiment "exp", version "v1".
    let mut run = Run::builder()
        .log_dir(tmp.path())
        .name("exp")
        .version("v1")
        .checkpoint(policy())
        .build()
        .unwrap();
    let mut toy = Toy::new();
    for _ in 0..3 {
        toy.train_step();
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    drop(run); // completes the saves in flight
    // Pointing resume_from_directory at the log root (NeMo #14259) must not silently start over.
    let strict = AutoResume::builder()
        .resume_if_exists(true)
        .resume_from_directory(tmp.path())
        .build()
        .unwrap();
    let err = Run::builder()
        .log_dir(tmp.path())
        .name("exp")
        .resume(strict)
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NoCheckpoint { .. }), "{text}");
    assert!(
        text.contains(&tmp.path().canonicalize().unwrap().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("exp/v1/checkpoints"),
        "should point at the real checkpoints: {text}"
    );
    // Even with resume_ignore_no_checkpoint, a misdirected resume_from_directory is an error,
    // never a silent start from scratch (NeMo #14259).
    let lenient = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .resume_from_directory(tmp.path())
        .build()
        .unwrap();
    let err = Run::builder()
        .log_dir(tmp.path())
        .name("exp")
        .resume(lenient)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("exp/v1/checkpoints"), "{err}");
}

#[test]
fn ignore_no_checkpoint_starts_fresh_and_uncommitted_directories_never_count() {
    let memory = Arc::new(MemoryFs::new());
    let storage: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
    // Junk that looks like a last checkpoint but has no commit record (NeMo #7948, PR #10228).
    let txn = storage
        .begin(&StoragePath::new("default--val_loss=0.0100-epoch=0-step=99-last").unwrap())
        .unwrap();
    let f = txn
        .create(&StoragePath::new("weights/__0_0.safetensors").unwrap(), 3)
        .unwrap();
    f.write_at(0, b"abc").unwrap();
    f.finish().unwrap();
    txn.abandon(); // a crash before the commit: a temporary stays behind
    let run = Run::builder()
        .storage(storage.clone())
        .checkpoint(policy())
        .resume(resume())
        .build()
        .unwrap();
    assert!(run.resume_point().is_none());
    // Setup removed the temporary.
    assert!(
        root_names(&storage).is_empty(),
        "{:?}",
        root_names(&storage)
    );
}

#[test]
fn a_completed_run_says_so_unless_resume_past_end() {
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    train(storage.clone()).unwrap();
    let run = Run::builder()
        .storage(storage.clone())
        .checkpoint(policy())
        .resume(resume())
        .build()
        .unwrap();
    let point = run.resume_point().unwrap();
    assert!(point.completed, "{point:?}");
    assert_eq!(point.step, STEPS);
    let past = AutoResume::builder()
        .resume_if_exists(true)
        .resume_past_end(true)
        .build()
        .unwrap();
    let run = Run::builder()
        .storage(storage)
        .checkpoint(policy())
        .resume(past)
        .build()
        .unwrap();
    assert!(!run.resume_point().unwrap().completed);
}

/// Lightning #5173 / #11451, NeMo PR #12804: checkpoints deleted by hand between runs do not
/// crash the resumed run, and it ends with exactly k + last.
#[test]
fn checkpoints_deleted_by_hand_are_reconciled_on_resume() {
    let memory = Arc::new(MemoryFs::new());
    let storage: SharedStorage = Arc::new(FsStorage::new(memory));
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(policy())
        .resume(resume())
        .clock(|| 0.0)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    while toy.step < 12 {
        toy.train_step();
        if toy.step.is_multiple_of(6) {
            run.log_metrics(toy.step, &[("val_loss", toy.val_loss())]);
            run.validation_end(toy.step, 0, &toy).unwrap();
        }
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    drop(run);
    let names = root_names(&storage);
    let victim = names
        .iter()
        .find(|n| !n.ends_with("-last"))
        .unwrap()
        .clone();
    let dir = StoragePath::new(&victim).unwrap();
    storage
        .remove_dir_all(&dir, &dir.join("weights/metadata.json").unwrap())
        .unwrap();
    let toy = train(storage.clone()).unwrap();
    assert_eq!(toy.step, STEPS);
    let names = root_names(&storage);
    assert_eq!(names.len(), 3, "{names:?}");
}

/// save_last = link: the last is a relative link to the top-k checkpoint of the same step, never
/// to itself (Lightning #21110), and resume still finds the newest step.
#[test]
fn save_last_link_points_at_the_top_k_checkpoint_of_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(SaveLast::Link)
        .every_n_train_steps(2)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .log_dir(tmp.path())
        .checkpoint(policy.clone())
        .build()
        .unwrap();
    let mut toy = Toy::new();
    for _ in 0..4 {
        toy.train_step();
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    run.wait_for_saves().unwrap();
    let dir = run.checkpoint_dir().to_path_buf();
    let mut links = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap();
            assert_ne!(target.as_os_str(), entry.file_name(), "self-link");
            assert!(target.is_relative());
            links.push((entry.file_name().into_string().unwrap(), target));
        }
    }
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(
        links[0].1.to_str().unwrap().ends_with("step=4"),
        "{links:?}"
    );
    drop(run);
    let run = Run::builder()
        .log_dir(tmp.path())
        .checkpoint(policy)
        .resume(resume())
        .build()
        .unwrap();
    assert_eq!(run.resume_point().unwrap().step, 4);
}

/// A preemption request saves the -last checkpoint at the next step boundary (not a trigger
/// step), waits for it, and stops the loop; the rerun resumes there and ends bit-identical.
#[test]
fn preemption_saves_at_the_next_step_and_the_rerun_resumes_there() {
    let (reference, _) = uninterrupted();
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(policy())
        .resume(resume())
        .preemption(flag.clone())
        .max_steps(STEPS)
        .clock(|| 0.0)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    while toy.step < STEPS && !run.should_stop() {
        toy.train_step();
        if toy.step == 10 {
            flag.store(true, std::sync::atomic::Ordering::Relaxed); // SIGTERM arrives
        }
        if toy.step.is_multiple_of(6) {
            run.log_metrics(toy.step, &[("val_loss", toy.val_loss())]);
            run.validation_end(toy.step, 0, &toy).unwrap();
        }
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    assert_eq!(
        toy.step, 10,
        "the loop stops at the step the request arrived"
    );
    assert_eq!(
        run.pending_saves(),
        0,
        "the preemption save is complete before should_stop"
    );
    drop(run);
    let latest = root_names(&storage)
        .into_iter()
        .find(|n| n.contains("step=10"))
        .expect("a step-10 checkpoint");
    assert!(latest.ends_with("-last"), "{latest}");
    let toy = train(storage.clone()).unwrap();
    assert_eq!(toy, reference);
}

/// context/ holds the run's configuration in every checkpoint (always_save_context), or only in
/// the train-end one (save_context_on_train_end).
#[test]
fn context_files_go_into_the_checkpoints_that_need_them() {
    for always in [true, false] {
        let memory = Arc::new(MemoryFs::new());
        let storage: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
        let config = ModelCheckpoint::builder()
            .no_monitor()
            .save_top_k(-1)
            .every_n_train_steps(2)
            .always_save_context(always)
            .async_save(false)
            .build()
            .unwrap();
        let mut run = Run::builder()
            .storage(storage.clone())
            .checkpoint(config)
            .context_files(vec![
                ("io.json".into(), b"{\"lr\":0.1}".to_vec()),
                ("model.yaml".into(), b"lr: 0.1\n".to_vec()),
            ])
            .build()
            .unwrap();
        let mut toy = Toy::new();
        for _ in 0..5 {
            toy.train_step();
            run.step_end(toy.step, 0, &toy).unwrap();
        }
        run.finish(toy.step, 0, &toy).unwrap();
        let files = memory.snapshot();
        for name in root_names(&storage) {
            let io = files.get(&format!("{name}/context/io.json"));
            let yaml = files.get(&format!("{name}/context/model.yaml"));
            let want = always || name.contains("step=5");
            assert_eq!(io.is_some(), want, "{name} (always={always})");
            if want {
                assert_eq!(io.unwrap().as_slice(), b"{\"lr\":0.1}");
                assert_eq!(yaml.unwrap().as_slice(), b"lr: 0.1\n");
            }
        }
    }
}

/// The deletions a resumed checkpoint's record lists go only while their names still hold the
/// checkpoint meant: `superseded` names each with its step (a name reused by a newer checkpoint
/// stays), older records' `pending_deletes` name no step (a name goes only if it holds a
/// checkpoint older than the record's), and the resumed checkpoint never goes.
#[test]
fn pending_deletions_of_a_record_delete_only_the_checkpoints_they_name() {
    use waypoint::format::{Reserved, Superseded};
    use waypoint::{CheckpointMeta, Checkpointer, Dtype, TensorRef};
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    let checkpointer = Checkpointer::new(storage.clone());
    let save = |name: &str, step: u64, waypoint: Reserved| {
        let meta = CheckpointMeta {
            waypoint,
            ..CheckpointMeta::at_step(step)
        };
        let dir = StoragePath::new(name).unwrap();
        let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![1], &[7u8][..])];
        checkpointer
            .save(&dir, &meta, &tensors, &serde_json::json!({}))
            .unwrap();
    };
    let doomed = |name: &str, step| Superseded {
        name: name.into(),
        step,
    };
    // n (step 5) is the one meant; m was meant at step 7 and now holds step 15.
    save("n", 5, Reserved::default());
    save("m", 15, Reserved::default());
    // Named by an older record: a (step 10) is older than it, s (step 20) is not.
    save("a", 10, Reserved::default());
    save("s", 20, Reserved::default());
    save(
        "z",
        20,
        Reserved {
            superseded: Some(vec![doomed("n", 5), doomed("m", 7), doomed("z", 20)]),
            pending_deletes: Some(vec!["a".into(), "s".into(), "z".into()]),
            ..Reserved::default()
        },
    );
    let run = Run::builder()
        .storage(storage.clone())
        .checkpoint(policy())
        .resume(resume())
        .build()
        .unwrap();
    assert_eq!(run.resume_point().unwrap().name, "z");
    assert_eq!(root_names(&storage), ["m", "s", "z"]);
}

/// Many small tensors: a commit record far larger than the checkpoint's summary.
struct ManyTensors {
    names: Vec<String>,
    data: [u8; 4],
}

impl waypoint::Checkpointable for ManyTensors {
    fn model_tensors(&self) -> Vec<waypoint::TensorRef<'_>> {
        (self.names.iter())
            .map(|n| waypoint::TensorRef::whole(n, waypoint::Dtype::U8, vec![4], &self.data[..]))
            .collect()
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_slots(&mut self) -> Vec<waypoint::SinkSlot<'_>> {
        Vec::new()
    }
    fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
        Ok(())
    }
}

/// A run that resumes reads the chosen checkpoint's commit record once while it is built: the
/// confirmation of its summary hands the parsed record to the resume plan (before, the plan read
/// and parsed it again: 252 MB and seconds at the 100 B layout).
#[test]
fn building_a_resuming_run_reads_the_chosen_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let local = waypoint::storage::local_storage(tmp.path()).unwrap();
    let counting = Arc::new(waypoint::storage::CountingStorage::new(local));
    let storage: SharedStorage = counting.clone();
    let build = || {
        Run::builder()
            .storage(storage.clone())
            .checkpoint(
                ModelCheckpoint::builder()
                    .every_n_train_steps(1)
                    .build()
                    .unwrap(),
            )
            .resume(resume())
            .save_options(SaveOptions {
                threads: 1,
                ..Default::default()
            })
            .build()
            .unwrap()
    };
    let state = ManyTensors {
        names: (0..300)
            .map(|i| format!("model.layers.{i}.weight"))
            .collect(),
        data: [1, 2, 3, 4],
    };
    let mut run = build();
    let saved = run.step_end(1, 0, &state).unwrap();
    let mut saved = [saved, run.wait_for_saves().unwrap()].concat();
    drop(run);
    let ckpt = tmp.path().join(saved.pop().unwrap().name);
    let record = std::fs::metadata(ckpt.join("weights/metadata.json"))
        .unwrap()
        .len();
    let summary = std::fs::metadata(ckpt.join("summary.json")).unwrap().len();
    assert!(
        record > 20 * summary,
        "record {record} B, summary {summary} B"
    );

    counting.reset();
    let run = build();
    assert_eq!(run.resume_point().map(|p| p.step), Some(1));
    let read = counting.counts().bytes_read;
    assert!(
        read >= record && read < record + record / 2,
        "{read} bytes read while building the run, for a record of {record} B and a summary of {summary} B"
    );
}
