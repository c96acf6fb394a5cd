//! Checkpoint summaries (`<ckpt>/summary.json`, docs/FORMAT.md "The summary"): every save writes
//! one (one for a multi-rank save), inside the checkpoint before its record; discovery and
//! AutoResume find the same checkpoints with and without them; a damaged, edited or stale summary
//! never changes AutoResume's pick; a crash or failure at every storage operation of a save leaves
//! no summary without its checkpoint.

use crate::common::path;
use std::sync::Arc;
use waypoint::format::{CommitRecord, Reserved, RunFacts, SUMMARY_FILE, Summary, WEIGHTS_DIR};
use waypoint::resume::{
    Candidate, Confirm, Reading, Selection, Source, discover, discover_listed, select_confirmed,
};
use waypoint::storage::{
    FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, MemoryFs, SharedStorage, Storage,
    StoragePath, local_storage, read_to_vec,
};
use waypoint::{AutoResume, CheckpointMeta, Checkpointer, Dtype, SaveOptions, TensorRef};

const RECORD: &str = "weights/metadata.json";

/// Saves checkpoint `name` at `step` (its run completed when `completed`).
fn save(storage: &SharedStorage, name: &str, step: u64, completed: bool) {
    try_save(storage, name, step, completed).unwrap();
}

/// [`save`], returning the save's error: two tensors in two shard files.
fn try_save(
    storage: &SharedStorage,
    name: &str,
    step: u64,
    completed: bool,
) -> waypoint::Result<()> {
    let data: Vec<u8> = (0..3000u32)
        .map(|i| (i as u8).wrapping_mul(step as u8))
        .collect();
    let tensors = vec![
        TensorRef::whole("a", Dtype::U8, vec![1500], &data[..1500]),
        TensorRef::whole("b", Dtype::U8, vec![1500], &data[1500..]),
    ];
    let mut meta = CheckpointMeta::at_step(step);
    meta.epoch = step / 10;
    meta.waypoint = Reserved {
        run: Some(RunFacts {
            completed,
            experiment: "e".into(),
            ..RunFacts::default()
        }),
        model_checkpoint: Some(serde_json::json!({
            "monitor": "loss", "mode": "min", "top_k": [{"name": name, "score": 1.0 / step as f64}],
            "last_model_path": null, "saved": {name: step}})),
        ..Reserved::default()
    };
    Checkpointer::new(storage.clone())
        .with_options(SaveOptions {
            max_shard_bytes: 2000,
            ..SaveOptions::default()
        })
        .save(&path(name), &meta, &tensors, &())
        .map(|_| ())
}

fn bytes(storage: &dyn Storage, p: &str) -> Vec<u8> {
    read_to_vec(storage, &path(p), 1 << 30).unwrap()
}

/// The summary at `<name>/summary.json`, which must be the one its record makes.
fn assert_summary_matches(storage: &dyn Storage, name: &str) -> Summary {
    let record_bytes = bytes(storage, &format!("{name}/{RECORD}"));
    let record = CommitRecord::from_json(&record_bytes, "r".as_ref()).unwrap();
    let summary = Summary::from_json(
        &bytes(storage, &format!("{name}/{SUMMARY_FILE}")),
        "s".as_ref(),
    )
    .unwrap();
    assert_eq!(summary, Summary::of(&record, &record_bytes), "{name}");
    summary
}

/// The candidates without where their facts came from.
fn plain(mut candidates: Vec<Candidate>) -> Vec<Candidate> {
    for c in &mut candidates {
        c.from_summary = None;
    }
    candidates
}

fn local() -> (tempfile::TempDir, SharedStorage) {
    let tmp = tempfile::tempdir().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    (tmp, storage)
}

/// The pick AutoResume makes in `dir` (a local directory): its name, or `!name` for a completed
/// run's end.
fn pick(dir: &std::path::Path, storage: &SharedStorage) -> String {
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .build()
        .unwrap();
    let point = waypoint::resume::choose(&resume, storage, dir)
        .unwrap()
        .unwrap();
    match point.completed {
        true => format!("!{}", point.name),
        false => point.name,
    }
}

#[test]
fn a_save_writes_one_summary_inside_the_checkpoint_that_matches_its_record() {
    let (tmp, storage) = local();
    save(&storage, "ck", 7, false);
    let mut top: Vec<String> = std::fs::read_dir(tmp.path().join("ck"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, [SUMMARY_FILE, WEIGHTS_DIR]);
    let summary = assert_summary_matches(storage.as_ref(), "ck");
    assert_eq!((summary.step, summary.epoch, summary.world_size), (7, 0, 1));
    assert!(summary.files >= 2, "{summary:?}");
    let report = Checkpointer::new(storage.clone())
        .verify(&path("ck"), &mut |_| {})
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let len = std::fs::metadata(tmp.path().join("ck").join(SUMMARY_FILE))
        .unwrap()
        .len();
    assert!(len < 600, "a summary of {len} bytes");
}

#[test]
fn a_multi_rank_save_writes_one_summary() {
    let memory: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    let results =
        crate::ranks::save_from_ranks(4, &|_| memory.clone(), "ck", 5, &crate::ranks::plain);
    for r in results {
        r.unwrap();
    }
    let top: Vec<String> = memory
        .list(&path("ck"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(top, [SUMMARY_FILE, WEIGHTS_DIR]);
    let summary = assert_summary_matches(memory.as_ref(), "ck");
    assert_eq!((summary.step, summary.world_size), (5, 4));
    let weights = memory.list(&path("ck/weights")).unwrap();
    assert!(weights.iter().all(|e| e.name != SUMMARY_FILE));
}

/// The same directory read through summaries and through records: the same checkpoints, the
/// same facts, the same pick; and the same again once the summaries are gone (checkpoints of
/// earlier versions).
#[test]
fn discovery_and_autoresume_agree_with_and_without_summaries() {
    // (saves: name, step, completed; AutoResume's pick, `!` for a completed run's end)
    type Case = (&'static [(&'static str, u64, bool)], &'static str);
    let cases: [Case; 4] = [
        (
            &[
                ("a--step=10", 10, false),
                ("a--step=20", 20, false),
                ("a--step=20-last", 20, false),
            ],
            "a--step=20-last",
        ),
        (
            &[
                ("b--step=5", 5, false),
                ("b--step=9-end", 9, false),
                ("b--step=9", 9, false),
            ],
            "!b--step=9-end",
        ),
        (&[("c-1", 3, false), ("c-2", 3, true)], "!c-2"),
        (&[("d-x", 8, false), ("d-y", 2, false)], "d-x"),
    ];
    for (saves, want) in cases {
        let (tmp, storage) = local();
        for (name, step, completed) in saves {
            save(&storage, name, *step, *completed);
        }
        std::fs::create_dir_all(tmp.path().join("interrupted/weights")).unwrap();
        let root = StoragePath::root();
        let by_summary = discover_listed(storage.as_ref(), &root, Reading::Summaries).unwrap();
        let by_record = discover_listed(storage.as_ref(), &root, Reading::Records).unwrap();
        assert!(
            by_summary
                .listed
                .iter()
                .all(|l| l.source == Source::Summary)
        );
        assert!(
            by_summary
                .discovery
                .committed
                .iter()
                .all(|c| c.from_summary.is_some())
        );
        assert!(
            by_record
                .listed
                .iter()
                .all(|l| l.source == Source::Record(None))
        );
        assert_eq!(
            plain(by_summary.discovery.committed.clone()),
            by_record.discovery.committed
        );
        assert_eq!(by_summary.discovery.skipped, by_record.discovery.skipped);
        assert_eq!(by_summary.discovery.skipped.len(), 1);
        let facts = |l: &waypoint::resume::Listing| -> Vec<Summary> {
            l.listed.iter().map(|x| x.summary.clone()).collect()
        };
        assert_eq!(facts(&by_summary), facts(&by_record));
        assert_eq!(pick(tmp.path(), &storage), want);
        for (name, _, _) in saves {
            std::fs::remove_file(tmp.path().join(name).join(SUMMARY_FILE)).unwrap();
        }
        let without = discover_listed(storage.as_ref(), &root, Reading::Summaries).unwrap();
        assert_eq!(without.discovery, by_record.discovery);
        assert_eq!(facts(&without), facts(&by_record));
        assert_eq!(pick(tmp.path(), &storage), want, "without summaries");
    }
}

#[test]
fn a_damaged_summary_is_refused_and_its_record_read() {
    let (tmp, storage) = local();
    save(&storage, "old", 10, false);
    save(&storage, "new", 20, false);
    let file = tmp.path().join("old").join(SUMMARY_FILE);
    let damaged = String::from_utf8(std::fs::read(&file).unwrap())
        .unwrap()
        .replace("\"step\":10", "\"step\":90");
    std::fs::write(&file, damaged).unwrap();
    let listing =
        discover_listed(storage.as_ref(), &StoragePath::root(), Reading::Summaries).unwrap();
    let old = listing
        .listed
        .iter()
        .find(|l| l.candidate.name == "old")
        .unwrap();
    match &old.source {
        Source::Record(Some(why)) => assert!(why.contains("CRC-32C"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(old.candidate.step, 10);
    assert_eq!(pick(tmp.path(), &storage), "new");
}

/// A summary that disagrees with its record: rewritten with a valid checksum to claim a newer
/// step, left behind by a record replaced since, or left alone by a record removed. AutoResume
/// picks what the records say; the listing's own confirmation (the record binding) catches every
/// case but the rewritten summary.
#[test]
fn a_summary_that_disagrees_with_its_record_never_changes_autoresumes_pick() {
    type Tamper = fn(&std::path::Path);
    let forged: Tamper = |dir| {
        // `old` claims step 90 in a summary whose checksum is right.
        let file = dir.join("old").join(SUMMARY_FILE);
        let mut s = Summary::from_json(&std::fs::read(&file).unwrap(), "s".as_ref()).unwrap();
        s.step = 90;
        std::fs::write(&file, s.to_json()).unwrap();
    };
    let replaced: Tamper = |dir| {
        // `new`'s record replaced by `old`'s (step 10): `new`'s summary still says 20.
        let old = std::fs::read(dir.join("old").join(RECORD)).unwrap();
        std::fs::write(dir.join("new").join(RECORD), old).unwrap();
    };
    let removed: Tamper = |dir| {
        std::fs::remove_file(dir.join("new").join(RECORD)).unwrap();
    };
    // (tampering, AutoResume's pick, whether the listing's binding check falls back, its pick)
    let cases: [(Tamper, &str, bool, &str); 3] = [
        (forged, "new", false, "old"),
        (replaced, "mid", true, "mid"),
        (removed, "mid", true, "mid"),
    ];
    for (i, (tamper, want, listing_falls_back, listing_pick)) in cases.into_iter().enumerate() {
        let (tmp, storage) = local();
        save(&storage, "old", 10, false);
        save(&storage, "mid", 15, false);
        save(&storage, "new", 20, false);
        tamper(tmp.path());
        let root = StoragePath::root();
        let listing = discover_listed(storage.as_ref(), &root, Reading::Summaries).unwrap();
        let (selection, full) = select_confirmed(
            storage.as_ref(),
            &root,
            listing.clone(),
            false,
            Confirm::Full,
        )
        .unwrap();
        let Selection::Resume { candidate, .. } = selection else {
            panic!("case {i}: {selection:?}");
        };
        assert_eq!(candidate.name, want, "case {i}");
        assert!(full.fallback.is_some(), "case {i}");
        assert_eq!(pick(tmp.path(), &storage), want, "case {i}");
        let (selection, bound) =
            select_confirmed(storage.as_ref(), &root, listing, false, Confirm::Binding).unwrap();
        let Selection::Resume { candidate, .. } = selection else {
            panic!("case {i}: {selection:?}");
        };
        assert_eq!(bound.fallback.is_some(), listing_falls_back, "case {i}");
        assert_eq!(candidate.name, listing_pick, "case {i}");
    }
}

/// Counts the storage operations of a fault-free save of `runs/new` after `runs/old`.
fn count_ops() -> u64 {
    let faulty = Arc::new(FaultyFs::new(
        Arc::new(MemoryFs::new()),
        FailpointPlan::default(),
    ));
    let storage: SharedStorage = Arc::new(FsStorage::new(faulty.clone()));
    save(&storage, "runs/old", 1, false);
    let before = faulty.ops();
    save(&storage, "runs/new", 2, false);
    faulty.ops() - before
}

/// After an interrupted save of `runs/new`: reading through summaries finds what reading records
/// finds; `runs/new` is absent with no summary visible, or complete with its summary.
fn assert_nothing_partial(storage: &SharedStorage, context: &str) -> bool {
    let root = path("runs");
    let by_summary = discover_listed(storage.as_ref(), &root, Reading::Summaries).unwrap();
    let by_record = discover_listed(storage.as_ref(), &root, Reading::Records).unwrap();
    assert_eq!(
        plain(by_summary.discovery.committed.clone()),
        by_record.discovery.committed,
        "{context}"
    );
    assert!(
        by_record.discovery.skipped.is_empty(),
        "{context}: {:?}",
        by_record.discovery
    );
    let names: Vec<&str> = by_record
        .discovery
        .committed
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_summary_matches(storage.as_ref(), "runs/old");
    if names == ["new", "old"] {
        assert_summary_matches(storage.as_ref(), "runs/new");
        return true;
    }
    assert_eq!(names, ["old"], "{context}");
    let summary = storage.stat(&path(&format!("runs/new/{SUMMARY_FILE}")));
    assert!(matches!(summary, Ok(None)), "{context}: {summary:?}");
    false
}

#[test]
fn a_crash_or_failure_at_every_operation_of_a_save_leaves_no_summary_without_its_checkpoint() {
    let total = count_ops();
    let mut summary_ops = 0;
    for n in 1..=total {
        for kind in [FaultKind::Crash, FaultKind::Fail] {
            let memory = Arc::new(MemoryFs::new());
            let setup: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
            save(&setup, "runs/old", 1, false);
            let faulty = Arc::new(FaultyFs::new(memory.clone(), FailpointPlan::new(kind, n)));
            let fs: Arc<dyn FileSystem> = faulty.clone();
            let storage: SharedStorage = Arc::new(FsStorage::new(fs));
            let context = format!("{kind:?} at operation {n} of {total}");
            let saved = try_save(&storage, "runs/new", 2, false);
            if let Some(fired) = faulty.fired()
                && fired.path.to_string_lossy().ends_with(SUMMARY_FILE)
            {
                summary_ops += 1;
            }
            if kind == FaultKind::Crash {
                memory.power_cut();
            }
            Checkpointer::new(setup.clone())
                .cleanup_temporaries(&path("runs"))
                .unwrap();
            let visible = assert_nothing_partial(&setup, &context);
            if saved.is_ok() {
                assert!(visible, "{context}: Ok but not visible");
            }
        }
    }
    assert!(
        summary_ops >= 4,
        "the faults met the summary's writes {summary_ops} times"
    );
}

#[cfg(feature = "object-store")]
mod object_store_tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path as Key;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
        multipart::{MultipartStore, PartId},
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use waypoint::storage::{
        CountingStorage, ObjectBackend, ObjectStorage, ObjectStorageOptions, StorageOp,
    };

    /// An in-memory object store counting the requests discovery makes.
    #[derive(Debug, Default)]
    struct Counted {
        inner: InMemory,
        gets: AtomicU64,
        heads: AtomicU64,
        lists: AtomicU64,
    }

    impl std::fmt::Display for Counted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Counted({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counted {
        async fn put_opts(
            &self,
            location: &Key,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Key,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Key,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            let counter = if options.head {
                &self.heads
            } else {
                &self.gets
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<Key>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<Key>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Key>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Key>,
        ) -> object_store::Result<ListResult> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Key,
            to: &Key,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[async_trait::async_trait]
    impl MultipartStore for Counted {
        async fn create_multipart(
            &self,
            path: &Key,
        ) -> object_store::Result<object_store::MultipartId> {
            self.inner.create_multipart(path).await
        }
        async fn put_part(
            &self,
            path: &Key,
            id: &object_store::MultipartId,
            part_idx: usize,
            data: PutPayload,
        ) -> object_store::Result<PartId> {
            self.inner.put_part(path, id, part_idx, data).await
        }
        async fn complete_multipart(
            &self,
            path: &Key,
            id: &object_store::MultipartId,
            parts: Vec<PartId>,
        ) -> object_store::Result<PutResult> {
            self.inner.complete_multipart(path, id, parts).await
        }
        async fn abort_multipart(
            &self,
            path: &Key,
            id: &object_store::MultipartId,
        ) -> object_store::Result<()> {
            self.inner.abort_multipart(path, id).await
        }
    }

    /// Discovery on an object store: one LIST of the directory, then one GET per checkpoint (its
    /// summary); without summaries, a second GET each (the record), still no LIST per checkpoint.
    #[test]
    fn discovery_lists_once_and_gets_each_summary_once() {
        let counted = Arc::new(Counted::default());
        let backend: Arc<dyn ObjectBackend> = counted.clone();
        let storage: SharedStorage = Arc::new(
            ObjectStorage::new(backend, "memory://", "", ObjectStorageOptions::default()).unwrap(),
        );
        let names = ["s1", "s2", "s3", "s4", "s5"];
        for (i, name) in names.iter().enumerate() {
            save(&storage, name, i as u64 + 1, false);
        }
        let reset = |c: &Counted| {
            for n in [&c.gets, &c.heads, &c.lists] {
                n.store(0, Ordering::Relaxed);
            }
        };
        let counts = |c: &Counted| [&c.gets, &c.heads, &c.lists].map(|n| n.load(Ordering::Relaxed));
        reset(&counted);
        let found = discover(storage.as_ref(), &StoragePath::root()).unwrap();
        assert_eq!(found.committed.len(), 5);
        assert!(found.committed.iter().all(|c| c.from_summary.is_some()));
        assert_eq!(counts(&counted), [5, 0, 1], "gets, heads, lists");
        let with = plain(found.committed);
        for name in names {
            storage_delete(&counted, &format!("{name}/{SUMMARY_FILE}"));
        }
        reset(&counted);
        let found = discover(storage.as_ref(), &StoragePath::root()).unwrap();
        assert_eq!(found.committed, with, "the same without summaries");
        assert_eq!(counts(&counted), [10, 0, 1], "gets, heads, lists");
    }

    fn storage_delete(counted: &Counted, key: &str) {
        use futures_util::FutureExt;
        // The in-memory store answers at once: no runtime needed.
        let deleted = counted.inner.delete(&Key::from(key)).now_or_never();
        assert!(matches!(deleted, Some(Ok(()))), "{key}: {deleted:?}");
    }

    /// A failure at every storage operation of a save to an object store: the checkpoint and its
    /// summary are visible together or not at all.
    #[test]
    fn a_failure_at_every_operation_of_an_object_store_save_leaves_no_summary_visible() {
        let count = {
            let memory: SharedStorage =
                Arc::new(ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap());
            save(&memory, "runs/old", 1, false);
            let counting = Arc::new(CountingStorage::new(memory));
            let storage: SharedStorage = counting.clone();
            save(&storage, "runs/new", 2, false);
            counting.counts()
        };
        for kind in StorageOp::ALL {
            for nth in 1..=count.of(kind) {
                let memory: SharedStorage =
                    Arc::new(ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap());
                save(&memory, "runs/old", 1, false);
                let storage: SharedStorage =
                    Arc::new(CountingStorage::new(memory.clone()).fail_at(kind, nth));
                let context = format!("{} #{nth}", kind.name());
                let saved = try_save(&storage, "runs/new", 2, false);
                let visible = assert_nothing_partial(&memory, &context);
                if saved.is_ok() {
                    assert!(visible, "{context}: Ok but not visible");
                }
            }
        }
    }
}
