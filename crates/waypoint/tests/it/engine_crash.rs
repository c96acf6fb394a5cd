//! A whole engine save interrupted at every storage operation: in-process crashes followed by a
//! modelled power cut, plain failures, and real process aborts on the local disk through the
//! failpoint environment variable. Whatever happens, the earlier checkpoint is intact and the new
//! one is either absent or complete; leftovers are only temporaries that setup removes.

use std::sync::Arc;
use waypoint::storage::{
    FAILPOINT_ENV, FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, LocalFs, MemoryFs,
    StoragePath, local_storage,
};
use waypoint::{
    CheckpointMeta, Checkpointer, Dtype, Error, LoadOptions, SaveOptions, Tensor, TensorRef,
};

fn options() -> SaveOptions {
    // Small shards so a save has several files; the 2 MiB tensor is written directly from its
    // buffer in whole 1 MiB blocks, the small ones are gathered.
    SaveOptions {
        max_shard_bytes: 3000,
        threads: 2,
        ..Default::default()
    }
}

const BIG: usize = (2 << 20) + 100;

fn state(seed: u8) -> Vec<(String, Vec<u8>)> {
    let mut s: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("layer.{i}.weight"),
                (0..2048u32)
                    .map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i))
                    .collect(),
            )
        })
        .collect();
    s.push((
        "embedding".into(),
        (0..BIG).map(|j| (j as u8).wrapping_mul(seed)).collect(),
    ));
    s
}

fn refs(state: &[(String, Vec<u8>)]) -> Vec<TensorRef<'_>> {
    state
        .iter()
        .map(|(n, d)| TensorRef::whole(n.as_str(), Dtype::U8, vec![d.len() as u64], d.as_slice()))
        .collect()
}

fn p(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}

/// Asserts the checkpoint `name` loads and holds exactly `want`.
fn assert_complete(cp: &Checkpointer, name: &str, step: u64, want: &[(String, Vec<u8>)]) {
    let reader = cp
        .open(&p(name))
        .unwrap_or_else(|e| panic!("{name} should be complete: {e}"));
    assert_eq!(reader.record().step, step);
    assert!(reader.verify().is_empty(), "{name}: {:?}", reader.verify());
    let loaded = reader.load_all(&LoadOptions::default()).unwrap();
    let want: std::collections::BTreeMap<String, Tensor> = want
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                Tensor {
                    dtype: Dtype::U8,
                    shape: vec![d.len() as u64],
                    data: d.clone(),
                },
            )
        })
        .collect();
    assert_eq!(loaded, want, "{name}");
}

/// After an interrupted save: `old` intact, `new` absent or complete, temporaries removable, and
/// then nothing else in the directory. Returns whether `new` exists.
fn check_after(cp: &Checkpointer, old: &[(String, Vec<u8>)], new: &[(String, Vec<u8>)]) -> bool {
    assert_complete(cp, "runs/old", 1, old);
    let exists = match cp.open(&p("runs/new")) {
        Ok(_) => {
            assert_complete(cp, "runs/new", 2, new);
            true
        }
        Err(Error::NotFound { .. }) => false,
        Err(e) => panic!("a partial checkpoint is visible: {e}"),
    };
    cp.cleanup_temporaries(&p("runs")).unwrap();
    let names: Vec<String> = cp
        .storage()
        .list(&p("runs"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let expected: Vec<&str> = if exists {
        vec!["new", "old"]
    } else {
        vec!["old"]
    };
    assert_eq!(names, expected);
    exists
}

/// Counts the storage operations of a fault-free save of `new` after `old`.
fn count_ops(make: impl Fn() -> Arc<dyn FileSystem>) -> u64 {
    let faulty = Arc::new(FaultyFs::new(make(), FailpointPlan::default()));
    let cp = Checkpointer::new(Arc::new(FsStorage::new(faulty.clone()))).with_options(options());
    let old = state(3);
    cp.save(
        &p("runs/old"),
        &CheckpointMeta::at_step(1),
        &refs(&old),
        &(),
    )
    .unwrap();
    let before = faulty.ops();
    cp.save(
        &p("runs/new"),
        &CheckpointMeta::at_step(2),
        &refs(&state(5)),
        &(),
    )
    .unwrap();
    faulty.ops() - before
}

#[test]
fn crash_at_every_operation_then_power_cut() {
    let (old, new) = (state(3), state(5));
    let total = count_ops(|| Arc::new(MemoryFs::new()));
    assert!(
        total > 20,
        "a save should take many operations, took {total}"
    );
    let mut visible = 0;
    for n in 1..=total {
        let memory = Arc::new(MemoryFs::new());
        let setup =
            Checkpointer::new(Arc::new(FsStorage::new(memory.clone()))).with_options(options());
        setup
            .save(
                &p("runs/old"),
                &CheckpointMeta::at_step(1),
                &refs(&old),
                &(),
            )
            .unwrap();
        let faulty = Arc::new(FaultyFs::new(
            memory.clone(),
            FailpointPlan::new(FaultKind::Crash, n),
        ));
        let cp = Checkpointer::new(Arc::new(FsStorage::new(faulty))).with_options(options());
        assert!(
            cp.save(
                &p("runs/new"),
                &CheckpointMeta::at_step(2),
                &refs(&new),
                &()
            )
            .is_err(),
            "op {n}"
        );
        memory.power_cut();
        if check_after(&setup, &old, &new) {
            visible += 1;
        }
    }
    eprintln!(
        "crashed a save at each of its {total} operations; {visible} left the new checkpoint"
    );
    // Only a crash after the rename became durable (the last operation) may keep the new one.
    assert!(
        visible <= 1,
        "{visible} crash points kept the new checkpoint"
    );
}

#[test]
fn power_cut_right_after_a_commit_keeps_the_new_checkpoint() {
    let (old, new) = (state(3), state(5));
    let memory = Arc::new(MemoryFs::new());
    let cp = Checkpointer::new(Arc::new(FsStorage::new(memory.clone()))).with_options(options());
    cp.save(
        &p("runs/old"),
        &CheckpointMeta::at_step(1),
        &refs(&old),
        &(),
    )
    .unwrap();
    cp.save(
        &p("runs/new"),
        &CheckpointMeta::at_step(2),
        &refs(&new),
        &(),
    )
    .unwrap();
    memory.power_cut();
    assert!(check_after(&cp, &old, &new));
}

#[test]
fn a_failure_at_any_operation_leaves_no_partial_checkpoint_and_no_temporaries() {
    let (old, new) = (state(3), state(5));
    let total = count_ops(|| Arc::new(MemoryFs::new()));
    for n in 1..=total {
        for kind in [FaultKind::Fail, FaultKind::ShortWrite] {
            let memory = Arc::new(MemoryFs::new());
            let setup =
                Checkpointer::new(Arc::new(FsStorage::new(memory.clone()))).with_options(options());
            setup
                .save(
                    &p("runs/old"),
                    &CheckpointMeta::at_step(1),
                    &refs(&old),
                    &(),
                )
                .unwrap();
            let faulty = Arc::new(FaultyFs::new(memory.clone(), FailpointPlan::new(kind, n)));
            let cp = Checkpointer::new(Arc::new(FsStorage::new(faulty))).with_options(options());
            let result = cp.save(
                &p("runs/new"),
                &CheckpointMeta::at_step(2),
                &refs(&new),
                &(),
            );
            // A failed save cleaned up after itself: no temporary is left before any setup call.
            let names: Vec<String> = setup
                .storage()
                .list(&p("runs"))
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert!(
                names.iter().all(|n| n == "old" || n == "new"),
                "{kind:?}@{n}: leftovers {names:?}"
            );
            let exists = check_after(&setup, &old, &new);
            if result.is_ok() {
                assert!(exists, "{kind:?}@{n}: Ok but not visible");
            }
        }
    }
}

/// The child half of the real-crash test: saves `new` with whatever failpoint the parent set.
fn child_save(root: &str) {
    let cp = Checkpointer::new(local_storage(root).unwrap()).with_options(options());
    let _ = cp.save(
        &p("runs/new"),
        &CheckpointMeta::at_step(2),
        &refs(&state(5)),
        &(),
    );
    std::process::exit(0);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "reads WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn real_process_abort_at_every_operation_on_local_disk() {
    if let Ok(root) = std::env::var("WAYPOINT_TEST_CHILD_ROOT") {
        child_save(&root);
    }
    let (old, new) = (state(3), state(5));
    let count_dir = tempfile::tempdir().unwrap();
    let total = count_ops(|| Arc::new(LocalFs::new(count_dir.path()).unwrap()));
    let exe = std::env::current_exe().unwrap();
    let mut aborted = 0;
    for n in 1..=total {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(options());
        cp.save(
            &p("runs/old"),
            &CheckpointMeta::at_step(1),
            &refs(&old),
            &(),
        )
        .unwrap();
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "engine_crash::real_process_abort_at_every_operation_on_local_disk",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WAYPOINT_TEST_CHILD_ROOT", tmp.path())
            .env(FAILPOINT_ENV, format!("abort@{n}"))
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        if status.code().is_none() {
            aborted += 1;
        }
        check_after(&cp, &old, &new);
    }
    eprintln!("aborted a child process at each of the {total} operations of a save");
    assert_eq!(
        aborted, total,
        "every failpoint should have killed the child"
    );
}
