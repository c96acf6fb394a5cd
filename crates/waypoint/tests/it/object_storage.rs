//! `ObjectStorage` beyond the conformance suite: the engine saving and loading multi-part shards
//! (object_store's in-memory store, s3s-fs and Azurite), ranged partial reads, several ranks writing one
//! checkpoint (token/join), the orphan-cleanup rule (a save older than the run's start goes, a
//! concurrent one stays), and the s3s-fs server killed in the middle of a multipart upload: a
//! clear error naming the URL, nothing partial visible, the previous checkpoint still loads, and
//! saving works again once the server is back (the same on Azurite, the Azure emulator); and a
//! `Run` whose ModelCheckpoint dirpath and AutoResume resume_from_directory are `s3://` URLs.

use crate::common::*;
use object_store::ObjectStoreExt;
use std::sync::Arc;
use waypoint::storage::{
    MIN_PART_SIZE, ObjectBackend, ObjectStorage, ObjectStorageOptions, SharedStorage, Storage,
    StoragePath,
};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, Error, LoadOptions, SaveOptions, TensorRef};

const MIB: usize = 1024 * 1024;

/// Options with the smallest part size, so that a few MiB span several parts.
fn small_parts() -> ObjectStorageOptions {
    ObjectStorageOptions {
        part_size: MIN_PART_SIZE,
        max_concurrent_parts: 3,
        ..Default::default()
    }
}

/// A state of one 12 MiB tensor (three parts of a 5 MiB multipart upload) and two small ones.
fn state(seed: u8) -> Vec<(String, Vec<u8>)> {
    vec![
        ("big".into(), pattern(12 * MIB + 12_345, seed)),
        ("small.a".into(), pattern(1000, seed.wrapping_add(1))),
        ("small.b".into(), pattern(77, seed.wrapping_add(2))),
    ]
}

fn refs(state: &[(String, Vec<u8>)]) -> Vec<TensorRef<'_>> {
    state
        .iter()
        .map(|(name, data)| {
            TensorRef::whole(
                name.as_str(),
                Dtype::U8,
                vec![data.len() as u64],
                data.as_slice(),
            )
        })
        .collect()
}

fn checkpointer(storage: SharedStorage) -> Checkpointer {
    Checkpointer::new(storage).with_options(SaveOptions {
        max_shard_bytes: 64 * MIB as u64,
        ..Default::default()
    })
}

/// Saves `state(seed)` as `name`, loads it back, verifies it, and checks the bytes.
fn round_trip(storage: SharedStorage, name: &str, seed: u8) {
    let cp = checkpointer(storage);
    let dir = path(name);
    let state = state(seed);
    cp.save(
        &dir,
        &CheckpointMeta::at_step(seed as u64),
        &refs(&state),
        &(),
    )
    .unwrap();
    let reader = cp.open(&dir).unwrap();
    assert!(reader.verify().is_empty(), "the checkpoint verifies");
    let loaded = reader.load_all(&LoadOptions::default()).unwrap();
    for (name, data) in &state {
        assert_eq!(&loaded[name].data, data, "{name}");
    }
}

#[test]
fn engine_round_trip_in_memory_with_multipart_shards() {
    let storage: SharedStorage = Arc::new(ObjectStorage::in_memory(small_parts()).unwrap());
    round_trip(storage.clone(), "step-1", 1);
    let shard = storage
        .list(&path("step-1/weights"))
        .unwrap()
        .into_iter()
        .find(|e| e.name.ends_with(".safetensors"))
        .unwrap();
    assert!(
        shard.size > 2 * MIN_PART_SIZE,
        "the shard spans several parts: {shard:?}"
    );
    // Ranged reads: a slice from the middle of the big shard.
    let handle = storage
        .open(&path("step-1/weights").join(&shard.name).unwrap())
        .unwrap();
    let mut buf = vec![0u8; 100];
    handle.read_at(6 * MIB as u64, &mut buf).unwrap();
    assert!(buf.iter().any(|b| *b != 0));
}

#[cfg(feature = "s3")]
#[test]
fn engine_round_trip_on_s3s_fs() {
    let endpoint = s3::shared();
    engine_round_trip_on_server(Arc::new(endpoint.storage("engine", small_parts())));
}

#[cfg(feature = "azure")]
#[test]
fn engine_round_trip_on_azurite() {
    let endpoint = azurite::shared();
    engine_round_trip_on_server(Arc::new(endpoint.storage("engine", small_parts())));
}

/// Two multi-part checkpoints saved, loaded and verified; removing one leaves the other whole.
#[cfg(any(feature = "s3", feature = "azure"))]
fn engine_round_trip_on_server(storage: SharedStorage) {
    round_trip(storage.clone(), "step-2", 2);
    round_trip(storage.clone(), "step-3", 3);
    assert_eq!(
        names(storage.as_ref(), &StoragePath::root()),
        ["step-2", "step-3"]
    );
    // A superseded checkpoint goes, record first; the other stays loadable.
    storage
        .remove_dir_all(&path("step-2"), &path("step-2/weights/metadata.json"))
        .unwrap();
    assert_eq!(names(storage.as_ref(), &StoragePath::root()), ["step-3"]);
    let reader = checkpointer(storage).open(&path("step-3")).unwrap();
    assert!(reader.verify().is_empty());
}

/// Rank 0 begins, rank 1 joins with the token and writes its own file; only rank 0 commits.
#[test]
fn ranks_join_one_save() {
    let storage = ObjectStorage::in_memory(small_parts()).unwrap();
    let dir = path("step-5");
    let owner = storage.begin(&dir).unwrap();
    let token = owner.token();
    assert!(token.starts_with(".step-5.waypoint-tmp-"), "{token}");
    let joined = storage.join(&dir, &token).unwrap();
    for (txn, name, byte) in [
        (&owner, "weights/__0_0.bin", 0u8),
        (&joined, "weights/__1_0.bin", 1),
    ] {
        let file = txn.create(&path(name), 3).unwrap();
        file.write_at(0, &[byte; 3]).unwrap();
        file.finish().unwrap();
    }
    assert_eq!(
        storage.stat(&dir).unwrap(),
        None,
        "invisible before the commit"
    );
    assert_err!(
        storage.join(&dir, ".step-5.waypoint-tmp-nope"),
        Error::NotFound { .. }
    );
    assert_err!(storage.join(&dir, "step-5"), Error::InvalidArgument { .. });
    assert_err!(
        joined.commit(&path(RECORD), b"{}"),
        Error::InvalidArgument { .. }
    );
    owner.commit(&path(RECORD), b"{}").unwrap();
    let files = read_tree(&storage, &dir).unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["weights/__0_0.bin", "weights/__1_0.bin", RECORD]
    );
}

/// A joined rank that drops its transaction removes nothing: the owner still commits.
#[test]
fn a_joined_drop_removes_nothing() {
    let storage = ObjectStorage::in_memory(small_parts()).unwrap();
    let dir = path("c");
    let owner = storage.begin(&dir).unwrap();
    let file = owner.create(&path("weights/a"), 1).unwrap();
    file.write_at(0, b"a").unwrap();
    file.finish().unwrap();
    drop(storage.join(&dir, &owner.token()).unwrap());
    owner.commit(&path(RECORD), b"{}").unwrap();
    assert_eq!(read_tree(&storage, &dir).unwrap().len(), 2);
}

/// Orphans of saves older than the storage's start go; a newer save of another process stays.
#[test]
fn cleanup_spares_a_concurrent_save() {
    let store: Arc<dyn ObjectBackend> = Arc::new(object_store::memory::InMemory::new());
    let put = |key: &str| {
        let store = store.clone();
        let key = object_store::path::Path::from(key);
        tokio_block_on(async move {
            store
                .put(&key, "weights/metadata.json".into())
                .await
                .unwrap()
        });
    };
    // "Another process" crashed in the middle of a save: its marker and a shard.
    put("runs/.old.waypoint-tmp-1.dead-0");
    put("runs/old/weights/__0_0.safetensors");
    let storage = ObjectStorage::new(store.clone(), "memory://", "", small_parts()).unwrap();
    // Another process starts a save after this run started: in flight, not an orphan.
    put("runs/.live.waypoint-tmp-2.busy-0");
    put("runs/live/weights/__0_0.safetensors");
    assert_eq!(
        names(&storage, &path("runs")),
        [".live.waypoint-tmp-2.busy-0", ".old.waypoint-tmp-1.dead-0"]
    );

    let removed = storage.cleanup_temporaries(&path("runs")).unwrap();
    assert_eq!(removed, [".old.waypoint-tmp-1.dead-0"]);
    assert_eq!(
        names(&storage, &path("runs")),
        [".live.waypoint-tmp-2.busy-0"]
    );
    assert!(
        !object_keys(&store)
            .iter()
            .any(|k| k.starts_with("runs/old/")),
        "the orphan's objects are gone"
    );
    // The next run (started after the live save began) treats it as an orphan.
    let later = ObjectStorage::new(store.clone(), "memory://", "", small_parts()).unwrap();
    assert_eq!(
        later.cleanup_temporaries(&path("runs")).unwrap(),
        [".live.waypoint-tmp-2.busy-0"]
    );
    assert_eq!(object_keys(&store), Vec::<String>::new());
}

/// A commit that crashed after writing its record but before deleting its marker: the checkpoint
/// is visible, and cleanup only removes the marker.
#[test]
fn a_commit_interrupted_after_its_record_counts() {
    let store: Arc<dyn ObjectBackend> = Arc::new(object_store::memory::InMemory::new());
    let storage = ObjectStorage::new(store.clone(), "memory://", "", small_parts()).unwrap();
    write_checkpoint(&storage, &path("done"), &checkpoint(4)).unwrap();
    let marker = object_store::path::Path::from(".done.waypoint-tmp-1.dead-0");
    let s = store.clone();
    tokio_block_on(async move {
        s.put(&marker, "weights/metadata.json".into())
            .await
            .unwrap()
    });
    assert_eq!(read_tree(&storage, &path("done")).unwrap(), checkpoint(4));
    assert_eq!(
        storage.cleanup_temporaries(&StoragePath::root()).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(names(&storage, &StoragePath::root()), ["done"]);
    assert_eq!(read_tree(&storage, &path("done")).unwrap(), checkpoint(4));
}

/// Called from inside another tokio runtime, the storage neither panics nor deadlocks.
#[test]
fn works_inside_another_runtime() {
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    outer.block_on(async {
        let storage = ObjectStorage::in_memory(small_parts()).unwrap();
        write_checkpoint(&storage, &path("x"), &checkpoint(1)).unwrap();
        assert_eq!(read_tree(&storage, &path("x")).unwrap(), checkpoint(1));
        drop(storage);
    });
}

/// A private server a test can stop and start again (same port, same data).
#[cfg(any(feature = "s3", feature = "azure"))]
trait KillableServer {
    fn kill(&mut self);
    fn restart(&mut self);
    /// The storage under `prefix` of the test bucket (container).
    fn storage_at(&self, prefix: &str, options: ObjectStorageOptions) -> ObjectStorage;
}

#[cfg(feature = "s3")]
impl KillableServer for s3::Server {
    fn kill(&mut self) {
        s3::Server::kill(self);
    }
    fn restart(&mut self) {
        s3::Server::restart(self);
    }
    fn storage_at(&self, prefix: &str, options: ObjectStorageOptions) -> ObjectStorage {
        self.endpoint().storage_at(prefix, options)
    }
}

#[cfg(feature = "azure")]
impl KillableServer for azurite::Server {
    fn kill(&mut self) {
        azurite::Server::kill(self);
    }
    fn restart(&mut self) {
        azurite::Server::restart(self);
    }
    fn storage_at(&self, prefix: &str, options: ObjectStorageOptions) -> ObjectStorage {
        self.endpoint().storage_at(prefix, options)
    }
}

/// The s3s-fs server is killed between two parts of a multipart upload: the save fails with an
/// error naming the object's URL, nothing of it is visible, the previous checkpoint loads, and
/// once the server is back the same save succeeds.
#[cfg(feature = "s3")]
#[test]
fn server_killed_mid_upload() {
    let temp = tempfile::tempdir().unwrap();
    let mut server = s3::Server::start(&s3::binary(), temp.path());
    killed_mid_upload(&mut server, "s3://waypoint-test");
}

/// The same on Azurite, between two blocks of a block blob (`Put Block`, then `Put Block List`
/// at `finish`): the uncommitted blocks stay invisible.
#[cfg(feature = "azure")]
#[test]
fn azurite_killed_mid_upload() {
    let temp = tempfile::tempdir().unwrap();
    let mut server = azurite::Server::start(&azurite::binary(), temp.path());
    killed_mid_upload(&mut server, "az://waypoint-test");
}

/// The body of the kill tests; `root` is the URL of the bucket (container) the server serves.
#[cfg(any(feature = "s3", feature = "azure"))]
fn killed_mid_upload(server: &mut dyn KillableServer, root: &str) {
    let options = ObjectStorageOptions {
        retry_timeout: std::time::Duration::from_secs(2),
        max_retries: 2,
        ..small_parts()
    };
    let storage: SharedStorage = Arc::new(server.storage_at("run", options.clone()));
    round_trip(storage.clone(), "step-1", 1);

    let big = pattern(3 * MIN_PART_SIZE as usize, 9);
    let part = MIN_PART_SIZE as usize;
    let txn = storage.begin(&path("step-2")).unwrap();
    let file = txn
        .create(&path("weights/__0_0.safetensors"), big.len() as u64)
        .unwrap();
    assert_eq!(file.part_size(), Some(MIN_PART_SIZE));
    file.write_at(0, &big[..part]).unwrap();
    server.kill();
    let err = file
        .write_at(part as u64, &big[part..2 * part])
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("{root}/run/step-2/weights/__0_0.safetensors")),
        "the error names the object: {message}"
    );
    drop(file);
    drop(txn); // the abort cannot reach the server either; the marker hides the prefix

    server.restart();
    assert_eq!(
        names(storage.as_ref(), &StoragePath::root())
            .iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>(),
        ["step-1"]
    );
    assert_eq!(
        storage.stat(&path("step-2")).unwrap(),
        None,
        "nothing partial visible"
    );
    let reader = checkpointer(storage.clone()).open(&path("step-1")).unwrap();
    assert!(reader.verify().is_empty(), "the previous checkpoint loads");

    // The next run's setup removes the orphan; the same save then succeeds.
    let next: SharedStorage = Arc::new(server.storage_at("run", options));
    let removed = next.cleanup_temporaries(&StoragePath::root()).unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(names(next.as_ref(), &StoragePath::root()), ["step-1"]);
    round_trip(next, "step-2", 2);
}

/// Runs a future on a small runtime of the test's own (to plant objects directly).
fn tokio_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Every key in `store`, sorted.
fn object_keys(store: &Arc<dyn ObjectBackend>) -> Vec<String> {
    use futures_util::TryStreamExt;
    let store = store.clone();
    let mut keys: Vec<String> =
        tokio_block_on(async move { store.list(None).try_collect::<Vec<_>>().await.unwrap() })
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
    keys.sort();
    keys
}

/// ModelCheckpoint's dirpath and AutoResume's resume_from_directory as `s3://` URLs (configured
/// from the AWS_* variables scripts/test.sh exports): a run saves into the bucket, a second run
/// elsewhere resumes from that bucket prefix.
#[cfg(feature = "s3")]
#[test]
fn run_saves_to_and_resumes_from_urls() {
    use crate::common::training::Tiny;
    use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};
    let bucket = s3::shared().bucket; // fails, saying how to start it, without the server
    let url = format!("s3://{bucket}/{}", s3::unique_prefix("run"));
    let logs = tempfile::tempdir().unwrap();
    let policy = |dir: &str| {
        ModelCheckpoint::builder()
            .dirpath(dir)
            .save_last(SaveLast::Yes)
            .every_n_train_steps(2)
            .build()
            .unwrap()
    };
    let mut run = Run::builder()
        .log_dir(logs.path())
        .checkpoint(policy(&url))
        .max_steps(6)
        .build()
        .unwrap();
    assert_eq!(run.checkpoint_dir(), std::path::Path::new(&url));
    let mut toy = Tiny::new();
    while toy.step < 6 {
        toy.train_step();
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    run.finish(6, 0, &toy).unwrap();

    let elsewhere = format!("{url}-second");
    let mut second = Run::builder()
        .log_dir(logs.path())
        .name("second")
        .checkpoint(policy(&elsewhere))
        .resume(
            AutoResume::builder()
                .resume_if_exists(true)
                .resume_past_end(true)
                .resume_from_directory(std::path::PathBuf::from(&url))
                .build()
                .unwrap(),
        )
        .max_steps(8)
        .build()
        .unwrap();
    let mut restored = Tiny::new();
    restored.w.fill(9);
    let point = second.restore(&mut restored).unwrap().unwrap();
    assert_eq!(point.step, 6, "{point:?}");
    assert!(point.path.starts_with(&url), "{point:?}");
    assert_eq!(restored, toy);
}
