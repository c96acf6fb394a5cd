//! Nothing lost (issue 16, paths 1, 3 and 4): a failed save undoes only what it created, never a
//! checkpoint that was there before it (a name collision, another committer winning the race, a
//! link onto an existing name, with one rank or several); with the version counter off, a
//! colliding name is replaced atomically where the storage can (local disk, memory) and refused
//! with a clear error where it cannot (object stores); temporaries carry their owner, so a
//! second process's cleanup never removes a live save's temporary, and a save whose shards were
//! removed under it fails instead of committing; an ambiguous create-only record put on an object
//! store is resolved by reading the record back.

use crate::common::training::Tiny;
use crate::common::{path, root_names};
use std::sync::Arc;
use tempfile::TempDir;
use waypoint::dist::ThreadGroup;
use waypoint::storage::{
    CountingStorage, FsStorage, MemoryFs, SharedStorage, StorageOp, local_storage,
};
use waypoint::{
    AutoResume, CheckpointMeta, Checkpointer, Dtype, Error, Mode, ModelCheckpoint, Run, SaveLast,
    TensorRef,
};

/// The repro of issue 16: one best checkpoint named by its loss to two decimals, no version
/// counter, no `-last`, a save every 100 steps.
fn colliding_policy(save_last: SaveLast, asynchronous: bool) -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .monitor("val_loss")
        .mode(Mode::Min)
        .save_top_k(1)
        .enable_version_counter(false)
        .save_last(save_last)
        .filename("{val_loss:.2f}")
        .every_n_train_steps(100)
        .async_save(asynchronous)
        .build()
        .unwrap()
}

fn memory() -> SharedStorage {
    Arc::new(FsStorage::new(Arc::new(MemoryFs::new())))
}

fn run_on(storage: &SharedStorage, policy: ModelCheckpoint, resume: AutoResume) -> Run {
    Run::builder()
        .storage(storage.clone())
        .checkpoint(policy)
        .resume(resume)
        .clock(|| 0.0)
        .build()
        .unwrap()
}

/// Trains `tiny` up to `until`, reporting `losses[(step)]` at the steps listed; returns the first
/// error of a call, if any, with its step.
fn train(run: &mut Run, tiny: &mut Tiny, until: u64, losses: &[(u64, f64)]) -> Option<(u64, Error)> {
    while tiny.step < until {
        tiny.train_step();
        if let Some((_, loss)) = losses.iter().find(|(s, _)| *s == tiny.step) {
            run.log_metrics(tiny.step, &[("val_loss", *loss)]);
        }
        if let Err(e) = run.step_end(tiny.step, 0, tiny) {
            return Some((tiny.step, e));
        }
    }
    run.wait_for_saves().err().map(|e| (tiny.step, e))
}

/// The step in `name`'s commit record, and whether its weights are that step's.
fn committed_step(storage: &SharedStorage, name: &str) -> u64 {
    let reader = Checkpointer::new(storage.clone())
        .open(&path(name))
        .unwrap_or_else(|e| panic!("{name} should be a readable checkpoint: {e}"));
    assert!(reader.verify().is_empty(), "{name}: {:?}", reader.verify());
    let step = reader.record().step;
    let w = reader.load_tensor("w", &Default::default()).unwrap();
    assert!(w.data.iter().all(|b| *b == step as u8), "{name}: weights of another step");
    step
}

/// The names at the root, temporaries included.
fn all_names(storage: &SharedStorage) -> Vec<String> {
    root_names(storage)
}

/// Path 1, the repro: step 100 saves `val_loss=0.50`; step 200 (loss 0.498) renders the same name.
/// Today the second save fails with AlreadyExists and its rollback deletes the step-100
/// checkpoint. Now the new checkpoint replaces the old one atomically.
fn colliding_name_replaces(storage: SharedStorage, asynchronous: bool) {
    let mut run = run_on(&storage, colliding_policy(SaveLast::No, asynchronous), AutoResume::default());
    let mut tiny = Tiny::new();
    let failed = train(&mut run, &mut tiny, 150, &[(100, 0.503)]);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(all_names(&storage), ["val_loss=0.50"]);
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 100);
    let failed = train(&mut run, &mut tiny, 200, &[(200, 0.498)]);
    assert!(failed.is_none(), "the colliding save failed: {failed:?}");
    assert_eq!(all_names(&storage), ["val_loss=0.50"], "nothing else, no temporary left");
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 200);
    drop(run);
    // A resumed run picks the replacement.
    let mut resumed = Tiny::new();
    let mut again = run_on(&storage, colliding_policy(SaveLast::No, asynchronous), crate::common::training::resume());
    assert_eq!(again.restore(&mut resumed).unwrap().map(|p| p.step), Some(200));
}

#[test]
fn colliding_name_replaces_in_memory() {
    colliding_name_replaces(memory(), false);
}

#[test]
fn colliding_name_replaces_in_memory_asynchronously() {
    colliding_name_replaces(memory(), true);
}

#[test]
fn colliding_name_replaces_on_the_local_disk() {
    let dir = TempDir::new().unwrap();
    colliding_name_replaces(local_storage(dir.path()).unwrap(), false);
}

/// The same after `resume_from_path` to an older checkpoint: the run resumes from step 100's
/// `val_loss=0.50`, and its own step-200 save takes that name again. Today the rollback deletes the
/// checkpoint the run resumed from.
#[test]
fn colliding_name_after_resume_from_path_replaces() {
    let dir = TempDir::new().unwrap();
    let storage = local_storage(dir.path()).unwrap();
    let keep_two = ModelCheckpoint::builder()
        .monitor("val_loss")
        .save_top_k(2)
        .enable_version_counter(false)
        .save_last(SaveLast::No)
        .filename("{val_loss:.2f}")
        .every_n_train_steps(100)
        .async_save(false)
        .build()
        .unwrap();
    let mut first = run_on(&storage, keep_two, AutoResume::default());
    let mut tiny = Tiny::new();
    assert!(train(&mut first, &mut tiny, 300, &[(100, 0.503), (300, 0.41)]).is_none());
    drop(first);
    assert_eq!(all_names(&storage), ["val_loss=0.41", "val_loss=0.50"]);
    let resume = AutoResume::builder()
        .resume_from_path(dir.path().join("val_loss=0.50"))
        .build()
        .unwrap();
    let mut run = run_on(&storage, colliding_policy(SaveLast::No, false), resume);
    let mut tiny = Tiny::new();
    assert_eq!(run.restore(&mut tiny).unwrap().map(|p| p.step), Some(100));
    let failed = train(&mut run, &mut tiny, 200, &[(200, 0.498)]);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(all_names(&storage), ["val_loss=0.41", "val_loss=0.50"]);
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 200);
    assert_eq!(committed_step(&storage, "val_loss=0.41"), 300);
}

/// `save_last = link` with a recurring name: the `-last` link exists already; relinking it replaces
/// it, and nothing is lost.
#[test]
fn colliding_link_replaces_the_link() {
    let dir = TempDir::new().unwrap();
    let storage = local_storage(dir.path()).unwrap();
    let mut run = run_on(&storage, colliding_policy(SaveLast::Link, false), AutoResume::default());
    let mut tiny = Tiny::new();
    let failed = train(&mut run, &mut tiny, 200, &[(100, 0.503), (200, 0.498)]);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(all_names(&storage), ["val_loss=0.50", "val_loss=0.50-last"]);
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 200);
    let link = std::fs::read_link(dir.path().join("val_loss=0.50-last")).unwrap();
    assert_eq!(link, std::path::Path::new("val_loss=0.50"));
}

/// An object store cannot swap a checkpoint for another in one step: the colliding save is
/// refused before anything is written, with an error naming the knob, and step 100's checkpoint
/// stays, readable.
#[cfg(feature = "object-store")]
#[test]
fn colliding_name_on_an_object_store_is_refused_and_keeps_the_old_one() {
    use waypoint::storage::{ObjectStorage, ObjectStorageOptions};
    let storage: SharedStorage =
        Arc::new(ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap());
    let mut run = run_on(&storage, colliding_policy(SaveLast::No, false), AutoResume::default());
    let mut tiny = Tiny::new();
    assert!(train(&mut run, &mut tiny, 150, &[(100, 0.503)]).is_none());
    let (step, error) = train(&mut run, &mut tiny, 200, &[(200, 0.498)]).expect("refused");
    assert_eq!(step, 200);
    assert!(
        error.to_string().contains("enable_version_counter"),
        "the error should name the knob: {error}"
    );
    assert_eq!(all_names(&storage), ["val_loss=0.50"]);
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 100);
}

/// Another committer takes the name between the decision and the commit (the version counter on):
/// the save fails, and its rollback leaves the other's checkpoint and the earlier ones alone.
fn racing_committer(storage: SharedStorage) -> SharedStorage {
    let inner = storage.clone();
    Arc::new(CountingStorage::new(storage).with_fault_hook(move |op| {
        if op.kind == StorageOp::Begin && op.path.as_str().contains("step=200") {
            let foreign = Checkpointer::new(inner.clone());
            let data = [7u8; 64];
            let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![64], &data[..])];
            foreign.save(op.path, &CheckpointMeta::at_step(7), &tensors, &())?;
        }
        Ok(())
    }))
}

fn step_policy() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(SaveLast::No)
        .filename("{step}")
        .every_n_train_steps(100)
        .async_save(false)
        .build()
        .unwrap()
}

#[test]
fn losing_the_race_for_a_name_removes_nothing_of_the_winner() {
    let storage = racing_committer(memory());
    let mut run = run_on(&storage, step_policy(), AutoResume::default());
    let mut tiny = Tiny::new();
    let (step, error) = train(&mut run, &mut tiny, 200, &[]).expect("the race is lost");
    assert_eq!(step, 200);
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error:?}");
    assert_eq!(all_names(&storage), ["step=100", "step=200"]);
    assert_eq!(committed_step(&storage, "step=100"), 100);
    let foreign = Checkpointer::new(storage.clone()).open(&path("step=200")).unwrap();
    assert_eq!(foreign.record().step, 7, "the winner's checkpoint is intact");
}

/// The same with three ranks: rank 0's begin fails, every rank returns `RankFailed` wrapping the
/// cause, and the winner's checkpoint survives.
#[test]
fn losing_the_race_with_several_ranks_removes_nothing_of_the_winner() {
    let storage = racing_committer(memory());
    std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|group| {
                let storage = storage.clone();
                s.spawn(move || {
                    let mut run = Run::builder()
                        .storage(storage)
                        .checkpoint(step_policy())
                        .clock(|| 0.0)
                        .coordinator(Arc::new(group))
                        .build()
                        .unwrap();
                    let mut tiny = Tiny::new();
                    train(&mut run, &mut tiny, 200, &[])
                })
            })
            .collect();
        for join in joins {
            let (step, error) = join.join().unwrap().expect("the race is lost");
            assert_eq!(step, 200);
            assert!(matches!(error, Error::RankFailed { .. }), "{error:?}");
        }
    });
    assert_eq!(all_names(&storage), ["step=100", "step=200"]);
    assert_eq!(committed_step(&storage, "step=100"), 100);
    let foreign = Checkpointer::new(storage.clone()).open(&path("step=200")).unwrap();
    assert_eq!(foreign.record().step, 7, "the winner's checkpoint is intact");
}
