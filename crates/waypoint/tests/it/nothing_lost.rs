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
use waypoint::storage::FileSystem;
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
fn train(
    run: &mut Run,
    tiny: &mut Tiny,
    until: u64,
    losses: &[(u64, f64)],
) -> Option<(u64, Error)> {
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
    assert!(
        w.data.iter().all(|b| *b == step as u8),
        "{name}: weights of another step"
    );
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
    let mut run = run_on(
        &storage,
        colliding_policy(SaveLast::No, asynchronous),
        AutoResume::default(),
    );
    let mut tiny = Tiny::new();
    let failed = train(&mut run, &mut tiny, 150, &[(100, 0.503)]);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(all_names(&storage), ["val_loss=0.50"]);
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 100);
    let failed = train(&mut run, &mut tiny, 200, &[(200, 0.498)]);
    assert!(failed.is_none(), "the colliding save failed: {failed:?}");
    assert_eq!(
        all_names(&storage),
        ["val_loss=0.50"],
        "nothing else, no temporary left"
    );
    assert_eq!(committed_step(&storage, "val_loss=0.50"), 200);
    drop(run);
    // A resumed run picks the replacement.
    let mut resumed = Tiny::new();
    let mut again = run_on(
        &storage,
        colliding_policy(SaveLast::No, asynchronous),
        crate::common::training::resume(),
    );
    assert_eq!(
        again.restore(&mut resumed).unwrap().map(|p| p.step),
        Some(200)
    );
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
    let mut run = run_on(
        &storage,
        colliding_policy(SaveLast::Link, false),
        AutoResume::default(),
    );
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
    let mut run = run_on(
        &storage,
        colliding_policy(SaveLast::No, false),
        AutoResume::default(),
    );
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
    let foreign = Checkpointer::new(storage.clone())
        .open(&path("step=200"))
        .unwrap();
    assert_eq!(
        foreign.record().step,
        7,
        "the winner's checkpoint is intact"
    );
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
    let foreign = Checkpointer::new(storage.clone())
        .open(&path("step=200"))
        .unwrap();
    assert_eq!(
        foreign.record().step,
        7,
        "the winner's checkpoint is intact"
    );
}

// ---- path 3: two processes on one checkpoint directory ------------------------------------------

/// Set in a child process started by the tests below: `<mode>:<checkpoint directory>`.
const CHILD: &str = "WAYPOINT_NOTHING_LOST_CHILD";

/// A policy saving `step=N` every 100 steps, everything kept.
fn every_100(asynchronous: bool) -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(SaveLast::No)
        .filename("{step}")
        .every_n_train_steps(100)
        .async_save(asynchronous)
        .build()
        .unwrap()
}

/// The child: saves `step=1` into the directory; just before the commit it says `ready` and
/// waits for its stdin to close, then commits (`commit`), or exits on the spot (`die`), as a
/// killed process would: its temporary stays behind. Not a test of its own: run by
/// [`start_child`] with `--ignored --exact`.
#[test]
#[ignore = "the child process of the tests that use start_child, run by them with --ignored --exact"]
fn child_with_a_save_in_flight() {
    let spec =
        std::env::var(CHILD).expect("run by start_child, which sets WAYPOINT_NOTHING_LOST_CHILD");
    let (mode, root) = spec.split_once(':').unwrap();
    let die = mode == "die";
    let storage = CountingStorage::new(local_storage(std::path::Path::new(root)).unwrap())
        .with_fault_hook(move |op| {
            if op.kind == StorageOp::Commit {
                use std::io::{Read, Write};
                println!("ready");
                std::io::stdout().flush().unwrap();
                let mut rest = Vec::new();
                std::io::stdin().read_to_end(&mut rest).unwrap();
                if die {
                    std::process::exit(0);
                }
            }
            Ok(())
        });
    let data = [1u8; 64];
    let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![64], &data[..])];
    Checkpointer::new(Arc::new(storage))
        .save(&path("step=1"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();
}

/// Starts the child in `mode` on `root` and waits until its save is about to commit.
fn start_child(mode: &str, root: &std::path::Path) -> std::process::Child {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "nothing_lost::child_with_a_save_in_flight",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{mode}:{}", root.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints the test's name first, on the same line.
    let ready = lines
        .by_ref()
        .map(|l| l.unwrap())
        .any(|l| l.ends_with("ready"));
    assert!(ready, "the child never reached its commit");
    // Keep reading, so that the child's last words never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// The temporaries (hidden names) in the local directory `dir`.
fn temporaries(dir: &std::path::Path) -> Vec<String> {
    crate::common::dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with('.') && n.contains(waypoint::storage::TEMP_MARKER))
        .collect()
}

/// A second process starting a run in the directory while the first one's save is in flight
/// (no experiment lock: an explicit shared dirpath). Today its setup removes the live save's
/// temporary, and the first process's commit fails. Now the temporary's owner is alive, so it
/// stays, and the first process commits a complete checkpoint.
#[test]
fn a_live_save_of_another_process_survives_cleanup() {
    let dir = TempDir::new().unwrap();
    let mut child = start_child("commit", dir.path());
    let live = temporaries(dir.path());
    assert_eq!(live.len(), 1, "{live:?}");
    let storage = local_storage(dir.path()).unwrap();
    let run = run_on(
        &storage,
        every_100(false),
        crate::common::training::resume(),
    );
    assert_eq!(
        temporaries(dir.path()),
        live,
        "the setup removed a live save's temporary"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "the child's commit failed");
    assert_eq!(committed_step(&storage, "step=1"), 1);
    drop(run);
}

/// The temporary of a process that died is removed by the next cleanup.
#[test]
fn a_dead_processes_temporary_is_removed() {
    let dir = TempDir::new().unwrap();
    let mut child = start_child("die", dir.path());
    drop(child.stdin.take());
    child.wait().unwrap();
    let left = temporaries(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let storage = local_storage(dir.path()).unwrap();
    let removed = Checkpointer::new(storage.clone())
        .cleanup_temporaries(&path(""))
        .unwrap();
    assert_eq!(removed, left);
    assert!(crate::common::dir_names(dir.path()).is_empty());
}

/// Two runs on one directory in one process (a notebook cell run again): the second run's setup
/// leaves the first one's save in flight alone; it commits afterwards.
#[test]
fn a_second_run_in_the_same_process_leaves_a_save_in_flight_alone() {
    use std::sync::Mutex;
    use std::sync::mpsc::channel;
    let memory = MemoryFs::new();
    let (at_commit, reached) = channel::<()>();
    let (go, wait) = channel::<()>();
    let (at_commit, wait) = (Mutex::new(at_commit), Mutex::new(wait));
    let first: SharedStorage = Arc::new(
        CountingStorage::new(Arc::new(FsStorage::new(Arc::new(memory.clone())))).with_fault_hook(
            move |op| {
                if op.kind == StorageOp::Commit {
                    at_commit.lock().unwrap().send(()).unwrap();
                    wait.lock().unwrap().recv().unwrap();
                }
                Ok(())
            },
        ),
    );
    let mut run = run_on(&first, every_100(true), AutoResume::default());
    // Dropped before the run if an assertion fails, so that the held save ends.
    let go = go;
    let mut tiny = Tiny::new();
    while tiny.step < 100 {
        tiny.train_step();
        run.step_end(tiny.step, 0, &tiny).unwrap(); // step 100's save goes to the background
    }
    reached.recv().unwrap();
    let second: SharedStorage = Arc::new(FsStorage::new(Arc::new(memory.clone())));
    let live = root_names(&second);
    assert_eq!(live.len(), 1, "{live:?}");
    let other = run_on(&second, every_100(false), crate::common::training::resume());
    assert_eq!(
        root_names(&second),
        live,
        "the second run removed a live temporary"
    );
    go.send(()).unwrap();
    let saved = run.wait_for_saves().unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(committed_step(&second, "step=100"), 100);
    drop(other);
}

/// Shards removed under a save (as another process's cleanup did) fail it: nothing broken is
/// committed, the earlier checkpoint stays. Today the save commits a checkpoint no reader opens.
fn shards_removed_under_a_save(ranks: u64) {
    let memory = MemoryFs::new();
    let inner: SharedStorage = Arc::new(FsStorage::new(Arc::new(memory.clone())));
    let fs = memory.clone();
    let storage: SharedStorage = Arc::new(CountingStorage::new(inner).with_fault_hook(move |op| {
        // When the step-200 save finishes its shard, someone removes it.
        if op.kind == StorageOp::Finish && op.path.as_str().starts_with("step=200/weights/") {
            let temp = fs
                .list(&path(""))
                .unwrap()
                .into_iter()
                .find(|e| e.name.starts_with(".step=200"))
                .unwrap();
            let name = op.path.file_name().unwrap();
            waypoint::storage::FileSystem::remove_file(
                &fs,
                &path(&format!("{}/weights/{name}", temp.name)),
            )
            .unwrap();
        }
        Ok(())
    }));
    let results: Vec<Option<(u64, Error)>> = std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(ranks)
            .into_iter()
            .map(|group| {
                let storage = storage.clone();
                s.spawn(move || {
                    let mut run = Run::builder()
                        .storage(storage)
                        .checkpoint(every_100(false))
                        .clock(|| 0.0)
                        .coordinator(Arc::new(group))
                        .build()
                        .unwrap();
                    let mut tiny = Tiny::new();
                    train(&mut run, &mut tiny, 200, &[])
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for result in results {
        let (step, error) = result.expect("the save must fail");
        assert_eq!(step, 200);
        assert!(error.to_string().contains("missing"), "{error}");
    }
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(memory)));
    assert_eq!(
        root_names(&storage),
        ["step=100"],
        "nothing broken committed, no temporary"
    );
    assert_eq!(committed_step(&storage, "step=100"), 100);
}

#[test]
fn shards_removed_under_a_save_fail_it() {
    shards_removed_under_a_save(1);
}

#[test]
fn shards_removed_under_a_save_of_several_ranks_fail_it() {
    shards_removed_under_a_save(2);
}

// ---- path 4: an ambiguous create-only put of the record on an object store ----------------------

#[cfg(feature = "object-store")]
mod ambiguous_put {
    use crate::common::{names, path, read_file};
    use object_store::path::Path as Key;
    use object_store::{CopyOptions, ObjectStoreExt, multipart::MultipartStore, multipart::PartId};
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore,
        PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };
    use std::sync::Arc;
    use waypoint::Error;
    use waypoint::storage::{
        ObjectBackend, ObjectStorage, ObjectStorageOptions, Storage, StoragePath,
    };

    const RECORD: &str = "weights/metadata.json";
    const OURS: &[u8] = b"{\"ours\":true}";

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Begins `ckpt`, writes one file, and returns the transaction before its commit.
    fn pending(storage: &ObjectStorage) -> Box<dyn waypoint::storage::Transaction> {
        let txn = storage.begin(&path("ckpt")).unwrap();
        let file = txn.create(&path("weights/a.bin"), 3).unwrap();
        file.write_at(0, b"abc").unwrap();
        file.finish().unwrap();
        txn
    }

    /// The record put answers "already exists" because our own first attempt landed and its
    /// answer was lost (a retry), or because another writer won: the record is read back.
    fn record_already_there(store: Arc<dyn ObjectBackend>, storage: ObjectStorage, prefix: &str) {
        let key = |rel: &str| match prefix {
            "" => Key::from(rel),
            p => Key::from(format!("{p}/{rel}")),
        };
        // Ours: the commit counts, the marker goes, the checkpoint is visible.
        let txn = pending(&storage);
        let s = store.clone();
        let k = key(&format!("ckpt/{RECORD}"));
        block_on(async move { s.put(&k, OURS.into()).await.unwrap() });
        txn.commit(&path(RECORD), OURS)
            .expect("a record with our bytes is our commit");
        assert_eq!(names(&storage, &StoragePath::root()), ["ckpt"]);
        assert_eq!(
            read_file(&storage, &path(&format!("ckpt/{RECORD}"))).unwrap(),
            OURS
        );
        // Another writer's: the save fails, naming the checkpoint, and leaves the record alone.
        let txn = storage.begin(&path("other")).unwrap();
        let s = store.clone();
        let k = key(&format!("other/{RECORD}"));
        block_on(async move { s.put(&k, b"{\"theirs\":1}".to_vec().into()).await.unwrap() });
        let error = txn.commit(&path(RECORD), OURS).unwrap_err();
        assert!(matches!(error, Error::AlreadyExists { .. }), "{error:?}");
        assert_eq!(
            read_file(&storage, &path(&format!("other/{RECORD}"))).unwrap(),
            b"{\"theirs\":1}"
        );
        assert_eq!(names(&storage, &StoragePath::root()), ["ckpt", "other"]);
    }

    /// Today the first case fails: the commit reports AlreadyExists and deletes its marker.
    #[test]
    fn a_record_already_there_is_read_back_in_memory() {
        let store: Arc<dyn ObjectBackend> = Arc::new(object_store::memory::InMemory::new());
        let storage = ObjectStorage::new(
            store.clone(),
            "memory://",
            "",
            ObjectStorageOptions::default(),
        )
        .unwrap();
        record_already_there(store, storage, "");
    }

    #[cfg(feature = "s3")]
    #[test]
    fn a_record_already_there_is_read_back_on_s3s_fs() {
        let endpoint = crate::common::s3::shared();
        let options = ObjectStorageOptions::default();
        let prefix = crate::common::s3::unique_prefix("ambiguous-put");
        let store = endpoint.store(options.retry_timeout);
        let storage = endpoint.storage_at(&prefix, options);
        record_already_there(store, storage, &prefix);
    }

    /// An object store whose create-only puts of a commit record answer "already exists" without
    /// writing anything (as some S3 implementations answer 409 ConditionalRequestConflict).
    #[derive(Debug)]
    struct Conflicting(object_store::memory::InMemory);

    impl std::fmt::Display for Conflicting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Conflicting({})", self.0)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Conflicting {
        async fn put_opts(
            &self,
            location: &Key,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if matches!(opts.mode, PutMode::Create) && location.as_ref().ends_with(RECORD) {
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "409 ConditionalRequestConflict".into(),
                });
            }
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Key,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Key,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<Key>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<Key>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Key>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Key>,
        ) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Key,
            to: &Key,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[async_trait::async_trait]
    impl MultipartStore for Conflicting {
        async fn create_multipart(&self, path: &Key) -> object_store::Result<MultipartId> {
            self.0.create_multipart(path).await
        }
        async fn put_part(
            &self,
            path: &Key,
            id: &MultipartId,
            part_idx: usize,
            data: PutPayload,
        ) -> object_store::Result<PartId> {
            self.0.put_part(path, id, part_idx, data).await
        }
        async fn complete_multipart(
            &self,
            path: &Key,
            id: &MultipartId,
            parts: Vec<PartId>,
        ) -> object_store::Result<PutResult> {
            self.0.complete_multipart(path, id, parts).await
        }
        async fn abort_multipart(&self, path: &Key, id: &MultipartId) -> object_store::Result<()> {
            self.0.abort_multipart(path, id).await
        }
    }

    /// "Already exists", but nothing is there: the save fails as a transient error and keeps its
    /// marker, so the prefix (shards, no record) stays invisible and cleanup removes it. Today the
    /// marker is deleted: the prefix shows as a directory without a record, which nothing removes.
    #[test]
    fn already_exists_with_nothing_there_keeps_the_marker() {
        let store: Arc<dyn ObjectBackend> =
            Arc::new(Conflicting(object_store::memory::InMemory::new()));
        let storage =
            ObjectStorage::new(store, "memory://", "", ObjectStorageOptions::default()).unwrap();
        let txn = pending(&storage);
        let error = txn.commit(&path(RECORD), OURS).unwrap_err();
        assert!(matches!(error, Error::ObjectStore { .. }), "{error:?}");
        assert!(error.to_string().contains("retry"), "{error}");
        let left = names(&storage, &StoragePath::root());
        assert_eq!(left.len(), 1, "only the marker shows: {left:?}");
        assert!(left[0].starts_with(".ckpt"), "{left:?}");
        assert_eq!(storage.stat(&path("ckpt")).unwrap(), None);
        assert_eq!(
            storage.cleanup_temporaries(&StoragePath::root()).unwrap(),
            left
        );
        assert!(names(&storage, &StoragePath::root()).is_empty());
    }
}
