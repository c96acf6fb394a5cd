//! Helpers shared by the test modules: for storage, a small checkpoint fixture, writing it
//! through a transaction, and reading a directory tree back as bytes; the object-store test peers (`s3`, `azurite`, `gcs`);
//! training states and run fixtures (`training`).
#![allow(dead_code)] // some helpers serve only modules behind features

#[cfg(feature = "azure")]
pub mod azurite;
pub mod faults;
#[cfg(feature = "gcs")]
pub mod gcs;
#[cfg(any(feature = "s3", feature = "azure"))]
pub mod peer;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sequences;
pub mod training;

use std::collections::BTreeMap;
use waypoint::storage::{EntryKind, SharedStorage, Storage, StoragePath};
use waypoint::{Error, Result};

/// The commit record's path inside a checkpoint, as the engine lays it out.
pub const RECORD: &str = "weights/metadata.json";

/// Files of a checkpoint: relative path → bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Shorthand for a valid path.
pub fn path(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}

/// Deterministic bytes that differ per `seed` and per position.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i >> 8) as u8)
        })
        .collect()
}

/// A checkpoint with nested directories, a record and an empty file.
pub fn checkpoint(seed: u8) -> Files {
    BTreeMap::from([
        (
            "weights/shard-00000.safetensors".to_owned(),
            pattern(3000, seed),
        ),
        (
            "weights/shard-00001.safetensors".to_owned(),
            pattern(1000, seed.wrapping_add(1)),
        ),
        (
            "context/io.json".to_owned(),
            format!("{{\"seed\":{seed}}}").into_bytes(),
        ),
        ("context/empty".to_owned(), Vec::new()),
        (
            RECORD.to_owned(),
            format!("{{\"record\":{seed}}}").into_bytes(),
        ),
    ])
}

/// Writes `files` as the checkpoint `dir` in one transaction, single-threaded (so the sequence of
/// storage operations is deterministic), 512-byte writes, record last.
pub fn write_checkpoint(storage: &dyn Storage, dir: &StoragePath, files: &Files) -> Result<()> {
    let txn = storage.begin(dir)?;
    for (name, bytes) in files.iter().filter(|(name, _)| *name != RECORD) {
        let handle = txn.create(&path(name), bytes.len() as u64)?;
        for (i, chunk) in bytes.chunks(512).enumerate() {
            handle.write_at(i as u64 * 512, chunk)?;
        }
        handle.finish()?;
    }
    txn.commit(&path(RECORD), &files[RECORD])
}

/// Reads a whole file through [`Storage::open`].
pub fn read_file(storage: &dyn Storage, file: &StoragePath) -> Result<Vec<u8>> {
    let handle = storage.open(file)?;
    let mut buf = vec![0; handle.len() as usize];
    handle.read_at(0, &mut buf)?;
    Ok(buf)
}

/// Every file below `dir` (relative path → bytes); any symbolic link or odd entry is an error.
pub fn read_tree(storage: &dyn Storage, dir: &StoragePath) -> Result<Files> {
    let mut files = Files::new();
    let mut pending = vec![StoragePath::root()];
    while let Some(rel) = pending.pop() {
        for entry in storage.list(&dir.join(rel.as_str())?)? {
            let child = rel.join(&entry.name)?;
            match entry.kind {
                EntryKind::Dir => pending.push(child),
                EntryKind::File => {
                    let bytes = read_file(storage, &dir.join(child.as_str())?)?;
                    assert_eq!(bytes.len() as u64, entry.size, "listed size of {child}");
                    files.insert(child.as_str().to_owned(), bytes);
                }
                kind => panic!("unexpected {kind:?} at {child}"),
            }
        }
    }
    Ok(files)
}

/// The names directly under `dir`; none when `dir` does not exist (on object stores a prefix
/// with nothing under it does not exist).
pub fn names(storage: &dyn Storage, dir: &StoragePath) -> Vec<String> {
    match storage.list(dir) {
        Ok(entries) => entries.into_iter().map(|e| e.name).collect(),
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => panic!("listing {dir}: {e}"),
    }
}

/// The names at the root of `storage`.
pub fn root_names(storage: &SharedStorage) -> Vec<String> {
    names(storage.as_ref(), &StoragePath::root())
}

/// The names in the local directory `dir`, sorted.
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Asserts that `result` failed with the variant `$pattern`.
#[macro_export]
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err(e @ $pattern) => e,
            Err(other) => panic!("expected {}, got the error {other:?}", stringify!($pattern)),
            Ok(_) => panic!("expected {}, got Ok", stringify!($pattern)),
        }
    };
}

/// Whether an error is one the fault injector produced (directly or as a crashed follow-up, or
/// as the cause of a commit that could not be made durable).
pub fn is_injected(e: &Error) -> bool {
    match e {
        Error::InjectedFault { .. } => true,
        Error::NotDurable { source, .. } => is_injected(source),
        _ => false,
    }
}
