//! `Storage::link_sibling` / `remove_link`, the mechanism of `save_last = link`, on the local disk
//! and in memory: relative links only, never a self-link, removal never touches the target.

use std::sync::Arc;
use waypoint::storage::{
    EntryKind, FsStorage, MemoryFs, SharedStorage, StoragePath, local_storage,
};

fn p(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}

fn check(storage: SharedStorage) {
    let txn = storage.begin(&p("ck/step-10")).unwrap();
    let f = txn.create(&p("weights/__0_0.safetensors"), 3).unwrap();
    f.write_at(0, b"abc").unwrap();
    f.finish().unwrap();
    txn.commit(&p("weights/metadata.json"), b"{}").unwrap();

    assert!(
        storage
            .link_sibling("step-10", &p("ck/step-10-last"))
            .unwrap()
    );
    let entry = storage.stat(&p("ck/step-10-last")).unwrap().unwrap();
    assert_eq!(entry.kind, EntryKind::Symlink);
    // Never a self-link, never a path.
    for bad in ["step-10-last", "../x", "a/b", ""] {
        assert!(
            storage.link_sibling(bad, &p("ck/step-10-last")).is_err(),
            "{bad}"
        );
    }
    // Removing a directory as if it were a link is refused.
    assert!(storage.remove_link(&p("ck/step-10")).is_err());
    storage.remove_link(&p("ck/step-10-last")).unwrap();
    assert!(storage.stat(&p("ck/step-10-last")).unwrap().is_none());
    let names: Vec<String> = storage
        .list(&p("ck"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["step-10"]);
    let handle = storage
        .open(&p("ck/step-10/weights/__0_0.safetensors"))
        .unwrap();
    assert_eq!(handle.len(), 3);
}

#[test]
fn links_on_local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    check(local_storage(tmp.path()).unwrap());
    // On disk the link is relative: it still resolves after the directory moves.
    let moved = tmp.path().join("moved");
    let storage = local_storage(tmp.path()).unwrap();
    assert!(
        storage
            .link_sibling("step-10", &p("ck/step-10-last"))
            .unwrap()
    );
    std::fs::rename(tmp.path().join("ck"), &moved).unwrap();
    assert_eq!(
        std::fs::read_link(moved.join("step-10-last")).unwrap(),
        std::path::PathBuf::from("step-10")
    );
    assert!(moved.join("step-10-last/weights/metadata.json").exists());
}

#[test]
fn links_in_memory() {
    check(Arc::new(FsStorage::new(Arc::new(MemoryFs::new()))));
}
