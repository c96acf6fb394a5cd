//! Tables for [`CountingStorage`]: what one write-commit-read scenario counts with no fault and
//! with a fault at each kind of operation, what the hook sees, the part size, reset, no mapping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

use super::*;
use crate::storage::{FsStorage, MemoryFs, local_storage};
use std::sync::Mutex;

const RECORD: &[u8] = b"{\"record\":1}";

fn memory() -> SharedStorage {
    Arc::new(FsStorage::new(Arc::new(MemoryFs::new())))
}

fn p(path: &str) -> StoragePath {
    StoragePath::new(path).unwrap()
}

/// Writes `c/weights/a` (10 bytes in two writes) and commits `c`, then lists, stats, opens and
/// reads it back whole.
fn scenario(storage: &dyn Storage) -> Result<()> {
    let txn = storage.begin(&p("c"))?;
    let file = txn.create(&p("weights/a"), 10)?;
    file.write_at(0, &[1; 4])?;
    file.write_at(4, &[2; 6])?;
    file.finish()?;
    txn.commit(&p("weights/metadata.json"), RECORD)?;
    storage.list(&p("c/weights"))?;
    storage.stat(&p("c/weights/a"))?;
    let read = storage.open(&p("c/weights/a"))?;
    let mut buf = [0u8; 10];
    read.read_at(0, &mut buf)?;
    assert_eq!(buf, [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    Ok(())
}

/// The operations of a whole [`scenario`], in order.
const SCENARIO: [StorageOp; 10] = [
    StorageOp::Begin,
    StorageOp::Create,
    StorageOp::Write,
    StorageOp::Write,
    StorageOp::Finish,
    StorageOp::Commit,
    StorageOp::List,
    StorageOp::Stat,
    StorageOp::Open,
    StorageOp::Read,
];

fn expected_counts(calls: &[StorageOp], bytes_written: u64, bytes_read: u64) -> StorageCounts {
    let mut counts = StorageCounts {
        bytes_read,
        bytes_written,
        ..StorageCounts::default()
    };
    for op in calls {
        counts.ops[op.index()] += 1;
    }
    counts
}

/// (fault, whether it fires, operations called (the failing one included), bytes written,
/// bytes read, checkpoint committed)
type FaultRow = (Option<(StorageOp, u64)>, bool, usize, u64, u64, bool);

#[test]
fn a_fault_at_each_operation_counts_what_was_called_and_forwards_nothing_after() {
    let all = RECORD.len() as u64 + 10;
    let table: [FaultRow; 8] = [
        (None, false, 10, all, 10, true),
        (Some((StorageOp::Begin, 1)), true, 1, 0, 0, false),
        (Some((StorageOp::Create, 1)), true, 2, 0, 0, false),
        (Some((StorageOp::Write, 1)), true, 3, 0, 0, false),
        (Some((StorageOp::Write, 2)), true, 4, 4, 0, false),
        (Some((StorageOp::Commit, 1)), true, 6, 10, 0, false),
        (Some((StorageOp::Read, 1)), true, 10, all, 0, true),
        // Never reached: the scenario writes twice.
        (Some((StorageOp::Write, 3)), false, 10, all, 10, true),
    ];
    for (fault, fires, called, written, read, committed) in table {
        let inner = memory();
        let mut storage = CountingStorage::new(inner.clone());
        if let Some((kind, nth)) = fault {
            storage = storage.fail_at(kind, nth);
        }
        let outcome = scenario(&storage);
        match fault.filter(|_| fires) {
            Some((kind, nth)) => {
                let err = outcome.unwrap_err();
                assert!(
                    matches!(err, Error::InjectedFault { op_index, op, .. } if op_index == nth && op == kind.name()),
                    "{fault:?}: {err}"
                );
            }
            None => outcome.unwrap(),
        }
        assert_eq!(
            storage.counts(),
            expected_counts(&SCENARIO[..called], written, read),
            "{fault:?}"
        );
        assert_eq!(
            inner.stat(&p("c/weights/metadata.json")).unwrap().is_some(),
            committed,
            "{fault:?}"
        );
    }
}

#[test]
fn the_hook_sees_each_operation_with_its_number_path_offset_and_length() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let storage = CountingStorage::new(memory()).with_fault_hook(move |op| {
        let entry = (op.kind, op.nth, op.path.to_string(), op.offset, op.len);
        log.lock().unwrap().push(entry);
        Ok(())
    });
    scenario(&storage).unwrap();
    let record = RECORD.len() as u64;
    let expected = [
        (StorageOp::Begin, 1, "c", 0, 0),
        (StorageOp::Create, 1, "c/weights/a", 0, 10),
        (StorageOp::Write, 1, "c/weights/a", 0, 4),
        (StorageOp::Write, 2, "c/weights/a", 4, 6),
        (StorageOp::Finish, 1, "c/weights/a", 0, 10),
        (StorageOp::Commit, 1, "c/weights/metadata.json", 0, record),
        (StorageOp::List, 1, "c/weights", 0, 0),
        (StorageOp::Stat, 1, "c/weights/a", 0, 0),
        (StorageOp::Open, 1, "c/weights/a", 0, 0),
        (StorageOp::Read, 1, "c/weights/a", 0, 10),
    ]
    .map(|(kind, nth, path, offset, len)| (kind, nth, path.to_owned(), offset, len));
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[test]
fn a_hook_error_is_the_result_and_the_inner_storage_is_not_called() {
    let inner = memory();
    let storage = CountingStorage::new(inner.clone()).with_fault_hook(|op| match op.kind {
        StorageOp::Begin => Err(Error::InvalidArgument {
            name: "test",
            reason: format!("no begin of {}", op.path),
        }),
        _ => Ok(()),
    });
    let err = storage.begin(&p("c")).err().unwrap();
    assert!(err.to_string().contains("no begin of c"), "{err}");
    assert!(inner.list(&StoragePath::root()).unwrap().is_empty());
}

#[test]
fn the_other_operations_are_counted_and_forwarded() {
    let storage = CountingStorage::new(memory());
    scenario(&storage).unwrap();
    assert!(storage.link_sibling("c", &p("c-last")).unwrap());
    storage.remove_link(&p("c-last")).unwrap();
    let txn = storage.begin(&p("d")).unwrap();
    let token = txn.token();
    assert!(!token.is_empty());
    storage.join(&p("d"), &token).unwrap().abort().unwrap();
    txn.abort().unwrap();
    assert!(
        storage
            .cleanup_temporaries(&StoragePath::root())
            .unwrap()
            .is_empty()
    );
    storage
        .remove_dir_all(&p("c"), &p("c/weights/metadata.json"))
        .unwrap();
    assert!(storage.stat(&p("c")).unwrap().is_none());
    let counts = storage.counts();
    let table = [
        (StorageOp::LinkSibling, 1),
        (StorageOp::RemoveLink, 1),
        (StorageOp::Begin, 2),
        (StorageOp::Join, 1),
        (StorageOp::Abort, 2),
        (StorageOp::CleanupTemporaries, 1),
        (StorageOp::RemoveDirAll, 1),
        (StorageOp::Stat, 2),
    ];
    for (kind, n) in table {
        assert_eq!(counts.of(kind), n, "{}", kind.name());
    }
    assert_eq!(counts.total(), 10 + 9);
    storage.reset();
    assert_eq!(storage.counts(), StorageCounts::default());
}

#[test]
fn the_part_size_is_announced_and_refused_over_a_storage_with_parts() {
    let parts = CountingStorage::new(memory()).with_part_size(64);
    let txn = parts.begin(&p("c")).unwrap();
    let file = txn.create(&p("a"), 100).unwrap();
    assert_eq!(file.part_size(), Some(64));
    assert_eq!(
        CountingStorage::new(memory())
            .begin(&p("c"))
            .unwrap()
            .create(&p("a"), 1)
            .unwrap()
            .part_size(),
        None
    );
    let twice = CountingStorage::new(Arc::new(parts)).with_part_size(32);
    let err = twice
        .begin(&p("d"))
        .unwrap()
        .create(&p("a"), 100)
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn files_are_never_mapped_so_every_byte_read_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let local = local_storage(tmp.path()).unwrap();
    let storage = CountingStorage::new(local.clone());
    scenario(&storage).unwrap();
    assert!(local.open(&p("c/weights/a")).unwrap().mapped().is_some());
    let read = storage.open(&p("c/weights/a")).unwrap();
    assert!(read.mapped().is_none());
    let all = crate::storage::read_to_vec(&storage, &p("c/weights/metadata.json"), 1 << 10);
    assert_eq!(all.unwrap(), RECORD);
    assert_eq!(storage.counts().bytes_read, 10 + RECORD.len() as u64);
}
