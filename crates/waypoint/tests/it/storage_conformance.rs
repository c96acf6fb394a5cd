//! One conformance suite for the `Storage` contract, run against every backend: `FsStorage` over
//! the local disk (a fresh temporary directory per test), over `MemoryFs`, and over
//! `FaultyFs<MemoryFs>` with an empty plan; `ObjectStorage` (feature `object-store`) over
//! object_store's in-memory store, (feature `s3`) over the s3s-fs server scripts/test.sh starts
//! and (feature `azure`) over its Azurite, a fresh prefix per test; (feature `gcs`) over a real
//! GCS bucket, `#[ignore]`d: no GCS emulator speaks object_store's XML API (docs/OBJECT_STORAGE.md). Each check asserts on what a reader sees. Object stores have
//! no symbolic links: the link checks run on the file-system backends only.

use crate::common::*;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use waypoint::Error;
use waypoint::storage::{
    DirEntry, EntryKind, FailpointPlan, FaultyFs, FileSystem, FsStorage, LocalFs, MemoryFs,
    SharedStorage, StoragePath, TEMP_MARKER, read_to_vec,
};

/// A storage under test and the means to plant a symbolic link in it.
struct Backend {
    storage: SharedStorage,
    links: Links,
    /// Whether files opened for reading are memory-mapped.
    maps_files: bool,
}

enum Links {
    /// Links point into `outside`, a directory next to the root that must stay untouched.
    Local {
        root: TempDir,
        outside: TempDir,
    },
    Memory(MemoryFs),
    /// The backend has no links (object stores).
    #[cfg(feature = "object-store")]
    None,
}

impl Backend {
    fn local() -> Self {
        let root = TempDir::new().unwrap();
        let outside = TempDir::new().unwrap();
        std::fs::write(outside.path().join("secret.bin"), b"secret").unwrap();
        std::fs::create_dir(outside.path().join("secret-dir")).unwrap();
        std::fs::write(outside.path().join("secret-dir/inner.bin"), b"inner").unwrap();
        let fs = LocalFs::new(root.path().join("store")).unwrap();
        Backend {
            storage: Arc::new(FsStorage::new(Arc::new(fs))),
            links: Links::Local { root, outside },
            maps_files: true,
        }
    }

    fn memory() -> Self {
        let memory = MemoryFs::new();
        Backend {
            storage: Arc::new(FsStorage::new(Arc::new(memory.clone()))),
            links: Links::Memory(memory),
            maps_files: false,
        }
    }

    fn faulty_memory() -> Self {
        let memory = MemoryFs::new();
        let faulty = FaultyFs::new(Arc::new(memory.clone()), FailpointPlan::default());
        Backend {
            storage: Arc::new(FsStorage::new(Arc::new(faulty))),
            links: Links::Memory(memory),
            maps_files: false,
        }
    }

    #[cfg(feature = "object-store")]
    fn object_memory() -> Self {
        use waypoint::storage::{ObjectStorage, ObjectStorageOptions};
        let storage = ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap();
        Backend {
            storage: Arc::new(storage),
            links: Links::None,
            maps_files: false,
        }
    }

    #[cfg(feature = "s3")]
    fn object_s3() -> Self {
        let endpoint = crate::common::s3::shared();
        let storage = endpoint.storage(
            "conformance",
            waypoint::storage::ObjectStorageOptions::default(),
        );
        Backend {
            storage: Arc::new(storage),
            links: Links::None,
            maps_files: false,
        }
    }

    #[cfg(feature = "azure")]
    fn object_azure() -> Self {
        let endpoint = crate::common::azurite::shared();
        let storage = endpoint.storage(
            "conformance",
            waypoint::storage::ObjectStorageOptions::default(),
        );
        Backend {
            storage: Arc::new(storage),
            links: Links::None,
            maps_files: false,
        }
    }

    /// A real GCS bucket: `WAYPOINT_TEST_GCS_URL=gs://bucket/prefix` and the `GOOGLE_*`
    /// credentials object_store reads (see `common::gcs`).
    #[cfg(feature = "gcs")]
    fn object_gcs() -> Self {
        Backend {
            storage: crate::common::gcs::storage("conformance"),
            links: Links::None,
            maps_files: false,
        }
    }

    /// Plants a symbolic link at `link`, to a file or to a directory (outside the root, locally).
    fn symlink(&self, link: &StoragePath, to_dir: bool) {
        match &self.links {
            Links::Local { root, outside } => {
                let target = outside
                    .path()
                    .join(if to_dir { "secret-dir" } else { "secret.bin" });
                let at = root.path().join("store").join(link.as_str());
                std::os::unix::fs::symlink(target, at).unwrap();
            }
            Links::Memory(memory) => memory.symlink("/outside", link).unwrap(),
            #[cfg(feature = "object-store")]
            Links::None => panic!("this backend has no symbolic links"),
        }
    }

    /// What the directory outside the root holds (locally; nothing to check in memory).
    fn outside_listing(&self) -> Vec<PathBuf> {
        let Links::Local { outside, .. } = &self.links else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = walk(outside.path());
        found.sort();
        found
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

fn file_entry(name: &str, size: usize) -> DirEntry {
    DirEntry {
        name: name.to_owned(),
        kind: EntryKind::File,
        size: size as u64,
    }
}

/// Files created and written concurrently, chunks in scrambled order, become visible, complete,
/// only on commit; before that the parent holds only a temporary.
fn concurrent_writes_become_visible_on_commit(b: &Backend) {
    let s = b.storage.as_ref();
    let dir = path("runs/step-100");
    let files = checkpoint(7);
    let txn = s.begin(&dir).unwrap();
    let txn_ref = &*txn;
    let data: Vec<_> = files.iter().filter(|(name, _)| *name != RECORD).collect();
    let handles: Vec<_> = std::thread::scope(|scope| {
        let spawned: Vec<_> = data
            .iter()
            .map(|(name, bytes)| {
                scope.spawn(move || txn_ref.create(&path(name), bytes.len() as u64).unwrap())
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let chunks: Vec<(usize, usize)> = data
        .iter()
        .enumerate()
        .flat_map(|(f, (_, bytes))| (0..bytes.len().div_ceil(100)).map(move |c| (f, c)))
        .collect();
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (chunks, handles, data) = (&chunks, &handles, &data);
            scope.spawn(move || {
                for &(f, c) in chunks.iter().rev().skip(thread).step_by(4) {
                    let bytes = data[f].1;
                    let end = (c * 100 + 100).min(bytes.len());
                    handles[f]
                        .write_at(c as u64 * 100, &bytes[c * 100..end])
                        .unwrap();
                }
            });
        }
    });
    std::thread::scope(|scope| {
        for handle in handles {
            scope.spawn(move || handle.finish().unwrap());
        }
    });

    assert_eq!(s.stat(&dir).unwrap(), None);
    let parent = names(s, &path("runs"));
    assert_eq!(parent.len(), 1, "{parent:?}");
    assert!(
        parent[0].contains(TEMP_MARKER) && parent[0].starts_with('.'),
        "{parent:?}"
    );
    assert_err!(s.open(&dir.join(RECORD).unwrap()), Error::NotFound { .. });
    assert_err!(s.list(&dir), Error::NotFound { .. });

    txn.commit(&path(RECORD), &files[RECORD]).unwrap();
    assert_eq!(names(s, &path("runs")), ["step-100"]);
    assert_eq!(read_tree(s, &dir).unwrap(), files);
    assert_eq!(names(s, &dir), ["context", "weights"]);
    let weights = s.list(&dir.join("weights").unwrap()).unwrap();
    let expected: Vec<_> = [
        "metadata.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    .iter()
    .map(|n| file_entry(n, files[&format!("weights/{n}")].len()))
    .collect();
    assert_eq!(weights, expected);
    let stat = s.stat(&dir).unwrap().unwrap();
    assert_eq!(
        (stat.name.as_str(), stat.kind),
        ("step-100", EntryKind::Dir)
    );
    let record = dir.join(RECORD).unwrap();
    assert_eq!(read_to_vec(s, &record, 1 << 20).unwrap(), files[RECORD]);
    assert_err!(read_to_vec(s, &record, 3), Error::InvalidArgument { .. });
}

/// Independent transactions run from several threads at once all commit.
fn parallel_transactions_all_commit(b: &Backend) {
    let s = b.storage.as_ref();
    std::thread::scope(|scope| {
        for i in 0..4u8 {
            scope.spawn(move || {
                write_checkpoint(s, &path(&format!("runs/ckpt-{i}")), &checkpoint(i)).unwrap()
            });
        }
    });
    assert_eq!(
        names(s, &path("runs")),
        ["ckpt-0", "ckpt-1", "ckpt-2", "ckpt-3"]
    );
    for i in 0..4u8 {
        assert_eq!(
            read_tree(s, &path(&format!("runs/ckpt-{i}"))).unwrap(),
            checkpoint(i)
        );
    }
}

/// `begin` on an existing directory fails; of two racing transactions for one name, the second
/// commit fails, leaves the first's content and no temporary behind.
fn existing_directory_is_refused(b: &Backend) {
    let s = b.storage.as_ref();
    let dir = path("ckpt");
    let first = s.begin(&dir).unwrap();
    let second = s.begin(&dir).unwrap();
    first.commit(&path(RECORD), b"first").unwrap();
    assert_err!(
        second.commit(&path(RECORD), b"second"),
        Error::AlreadyExists { .. }
    );
    assert_err!(s.begin(&dir), Error::AlreadyExists { .. });
    assert_eq!(names(s, &StoragePath::root()), ["ckpt"]);
    assert_eq!(
        read_tree(s, &dir).unwrap(),
        Files::from([(RECORD.to_owned(), b"first".to_vec())])
    );
}

/// Aborting and dropping a transaction leave no trace, not even a temporary.
fn abort_and_drop_leave_nothing(b: &Backend) {
    let s = b.storage.as_ref();
    let dir = path("runs/a");
    let txn = s.begin(&dir).unwrap();
    let file = txn.create(&path("weights/x"), 4).unwrap();
    file.write_at(0, b"abcd").unwrap();
    file.finish().unwrap();
    txn.abort().unwrap();
    assert_eq!(names(s, &path("runs")), Vec::<String>::new());

    let txn = s.begin(&dir).unwrap();
    txn.create(&path("nested/deeper/y"), 2)
        .unwrap()
        .write_at(0, b"yy")
        .unwrap();
    drop(txn);
    assert_eq!(names(s, &path("runs")), Vec::<String>::new());
    assert_eq!(s.stat(&dir).unwrap(), None);
    write_checkpoint(s, &dir, &checkpoint(1)).unwrap();
    assert_eq!(
        read_tree(s, &dir).unwrap(),
        checkpoint(1),
        "the name is free again"
    );
}

/// `remove_dir_all` removes the checkpoint and all it holds; the rest is untouched.
fn remove_dir_all_removes_everything(b: &Backend) {
    let s = b.storage.as_ref();
    write_checkpoint(s, &path("runs/a"), &checkpoint(1)).unwrap();
    write_checkpoint(s, &path("runs/b"), &checkpoint(2)).unwrap();
    s.remove_dir_all(&path("runs/a"), &path("runs/a").join(RECORD).unwrap())
        .unwrap();
    assert_eq!(names(s, &path("runs")), ["b"]);
    assert_eq!(s.stat(&path("runs/a")).unwrap(), None);
    assert_err!(
        s.open(&path("runs/a/context/io.json")),
        Error::NotFound { .. }
    );
    assert_eq!(read_tree(s, &path("runs/b")).unwrap(), checkpoint(2));
}

/// The temporaries of crashed transactions are found, removed and named; nothing else is.
fn cleanup_removes_only_temporaries(b: &Backend) {
    let s = b.storage.as_ref();
    assert_eq!(
        s.cleanup_temporaries(&path("runs")).unwrap(),
        Vec::<String>::new(),
        "missing parent"
    );
    write_checkpoint(s, &path("runs/kept"), &checkpoint(1)).unwrap();
    let txn = s.begin(&path("runs/crashed")).unwrap();
    txn.create(&path("weights/x"), 3)
        .unwrap()
        .write_at(0, b"xyz")
        .unwrap();
    txn.abandon(); // the process "died": nothing cleans up
    let before = names(s, &path("runs"));
    assert_eq!(before.len(), 2, "{before:?}");
    let temp = before[0].clone();
    assert!(
        temp.starts_with(".crashed") && temp.contains(TEMP_MARKER),
        "{temp}"
    );

    assert_eq!(s.cleanup_temporaries(&path("runs")).unwrap(), [temp]);
    assert_eq!(names(s, &path("runs")), ["kept"]);
    assert_eq!(read_tree(s, &path("runs/kept")).unwrap(), checkpoint(1));
    assert_eq!(
        s.cleanup_temporaries(&path("runs")).unwrap(),
        Vec::<String>::new()
    );
}

/// Writes must stay within the declared length; reads must stay within the file.
fn out_of_range_io_is_an_error(b: &Backend) {
    let s = b.storage.as_ref();
    let dir = path("ckpt");
    let txn = s.begin(&dir).unwrap();
    let file = txn.create(&path("data"), 8).unwrap();
    assert_err!(file.write_at(4, b"12345"), Error::InvalidArgument { .. });
    assert_err!(file.write_at(u64::MAX, b"1"), Error::InvalidArgument { .. });
    file.write_at(0, b"abcd").unwrap();
    file.write_at(4, b"efgh").unwrap();
    file.write_at(8, b"").unwrap();
    file.finish().unwrap();
    txn.commit(&path("record"), b"r").unwrap();

    let handle = s.open(&path("ckpt/data")).unwrap();
    assert_eq!(handle.len(), 8);
    let mut buf = [0u8; 4];
    handle.read_at(4, &mut buf).unwrap();
    assert_eq!(&buf, b"efgh");
    let err = handle.read_at(5, &mut buf).unwrap_err();
    assert!(
        err.to_string().contains("offset 5"),
        "names the offset: {err}"
    );
    assert!(err.to_string().contains("data"), "names the file: {err}");
    assert!(handle.read_at(u64::MAX, &mut buf).is_err());
    assert!(handle.read_at(8, &mut [0u8; 1]).is_err());
    assert_eq!(&buf, b"efgh", "a failed read may not pretend to succeed");
}

/// Empty files, the record at a nested path, `describe`, and memory maps.
fn empty_files_maps_and_describe(b: &Backend) {
    let s = b.storage.as_ref();
    let dir = path("a/b/ckpt");
    let txn = s.begin(&dir).unwrap();
    txn.create(&path("empty"), 0).unwrap().finish().unwrap();
    txn.commit(&path("deep/er/record.json"), b"{}").unwrap();
    assert_eq!(names(s, &path("a/b")), ["ckpt"]);
    let empty = s.open(&path("a/b/ckpt/empty")).unwrap();
    assert!(empty.is_empty());
    assert_eq!(read_to_vec(s, &path("a/b/ckpt/empty"), 0).unwrap(), b"");
    assert_eq!(read_tree(s, &dir).unwrap().len(), 2);
    let record = s.open(&path("a/b/ckpt/deep/er/record.json")).unwrap();
    let expected_map: Option<&[u8]> = if b.maps_files { Some(&b"{}"[..]) } else { None };
    assert_eq!(record.mapped(), expected_map);
    assert_eq!(empty.mapped(), b.maps_files.then_some(&b""[..]));
    assert!(
        s.describe(&path("a/b/ckpt/empty"))
            .ends_with("a/b/ckpt/empty")
    );
}

/// Unsafe paths never reach storage, and reserved names are refused.
fn unsafe_paths_are_refused(b: &Backend) {
    let s = b.storage.as_ref();
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "a//b",
        "a/",
        "./a",
        "a\\b",
    ] {
        assert_err!(StoragePath::new(bad), Error::UnsafePath { .. });
        assert_err!(path("ok").join(bad), Error::UnsafePath { .. });
    }
    assert_err!(s.begin(&StoragePath::root()), Error::UnsafePath { .. });
    assert_err!(s.begin(&path(".hidden")), Error::UnsafePath { .. });
    assert_err!(
        s.begin(&path(&format!("x{TEMP_MARKER}1"))),
        Error::UnsafePath { .. }
    );
    let txn = s.begin(&path("ckpt")).unwrap();
    assert_err!(
        txn.create(&StoragePath::root(), 1),
        Error::UnsafePath { .. }
    );
    txn.abort().unwrap();
    assert_eq!(names(s, &StoragePath::root()), Vec::<String>::new());
}

/// Symbolic links are listed and removed, never followed: neither as a file nor as a directory.
fn symlinks_are_never_followed(b: &Backend) {
    let s = b.storage.as_ref();
    let outside_before = b.outside_listing();
    write_checkpoint(s, &path("ckpt"), &checkpoint(3)).unwrap();
    b.symlink(&path("ckpt/context/link.bin"), false);
    b.symlink(&path("linkdir"), true);

    let link = s.stat(&path("ckpt/context/link.bin")).unwrap().unwrap();
    assert_eq!((link.kind, link.size), (EntryKind::Symlink, 0));
    let context = s.list(&path("ckpt/context")).unwrap();
    assert_eq!(
        context.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EntryKind::File, EntryKind::File, EntryKind::Symlink]
    );
    assert_err!(
        s.open(&path("ckpt/context/link.bin")),
        Error::SymlinkRefused { .. }
    );

    assert_eq!(
        s.stat(&path("linkdir")).unwrap().unwrap().kind,
        EntryKind::Symlink
    );
    assert_err!(
        s.open(&path("linkdir/inner.bin")),
        Error::SymlinkRefused { .. }
    );
    assert_err!(s.list(&path("linkdir")), Error::SymlinkRefused { .. });
    assert_err!(
        s.stat(&path("linkdir/inner.bin")),
        Error::SymlinkRefused { .. }
    );
    assert_err!(s.begin(&path("linkdir/new")), Error::SymlinkRefused { .. });
    assert_err!(s.begin(&path("linkdir")), Error::AlreadyExists { .. });
    assert_err!(
        s.remove_dir_all(&path("linkdir/x"), &path("linkdir/x/r")),
        Error::SymlinkRefused { .. }
    );

    s.remove_dir_all(&path("ckpt"), &path("ckpt").join(RECORD).unwrap())
        .unwrap();
    assert_eq!(names(s, &StoragePath::root()), ["linkdir"]);
    assert_eq!(
        b.outside_listing(),
        outside_before,
        "nothing outside the root changed"
    );
}

/// Missing things: `list` fails, `stat` says none, `open` fails, all naming NotFound.
fn missing_paths(b: &Backend) {
    let s = b.storage.as_ref();
    assert_err!(s.list(&path("nope")), Error::NotFound { .. });
    assert_eq!(s.stat(&path("nope")).unwrap(), None);
    assert_eq!(s.stat(&path("nope/deeper")).unwrap(), None);
    assert_err!(s.open(&path("nope/file")), Error::NotFound { .. });
    assert_eq!(
        s.list(&StoragePath::root()).unwrap(),
        Vec::<DirEntry>::new()
    );
    let err = s.open(&path("nope")).err().unwrap();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// The checks, each run against every backend as its own test. `$make` gives the backend (the
/// S3 and Azure ones fail, saying how to start the server, when it is not running: never a silent
/// pass); `$attr`s (an `#[ignore = "why"]`) go on every test.
macro_rules! conformance {
    ($backend:ident, $make:expr $(, #[$attr:meta])*) => {
        mod $backend {
            use super::*;

            #[test]
            $(#[$attr])*
            fn concurrent_writes_become_visible_on_commit() {
                super::concurrent_writes_become_visible_on_commit(&$make);
            }
            #[test]
            $(#[$attr])*
            fn parallel_transactions_all_commit() {
                super::parallel_transactions_all_commit(&$make);
            }
            #[test]
            $(#[$attr])*
            fn existing_directory_is_refused() {
                super::existing_directory_is_refused(&$make);
            }
            #[test]
            $(#[$attr])*
            fn abort_and_drop_leave_nothing() {
                super::abort_and_drop_leave_nothing(&$make);
            }
            #[test]
            $(#[$attr])*
            fn remove_dir_all_removes_everything() {
                super::remove_dir_all_removes_everything(&$make);
            }
            #[test]
            $(#[$attr])*
            fn cleanup_removes_only_temporaries() {
                super::cleanup_removes_only_temporaries(&$make);
            }
            #[test]
            $(#[$attr])*
            fn out_of_range_io_is_an_error() {
                super::out_of_range_io_is_an_error(&$make);
            }
            #[test]
            $(#[$attr])*
            fn empty_files_maps_and_describe() {
                super::empty_files_maps_and_describe(&$make);
            }
            #[test]
            $(#[$attr])*
            fn unsafe_paths_are_refused() {
                super::unsafe_paths_are_refused(&$make);
            }
            #[test]
            $(#[$attr])*
            fn missing_paths() {
                super::missing_paths(&$make);
            }
        }
    };
}

conformance!(local, Backend::local());
conformance!(memory, Backend::memory());
conformance!(faulty_memory, Backend::faulty_memory());
#[cfg(feature = "object-store")]
conformance!(object_memory, Backend::object_memory());
#[cfg(feature = "s3")]
conformance!(object_s3, Backend::object_s3());
#[cfg(feature = "azure")]
conformance!(object_azure, Backend::object_azure());
#[cfg(feature = "gcs")]
conformance!(
    object_gcs,
    Backend::object_gcs(),
    #[ignore = "needs a real GCS bucket (WAYPOINT_TEST_GCS_URL): no GCS emulator serves object_store's XML API (docs/OBJECT_STORAGE.md)"]
);

#[test]
fn symlinks_are_never_followed_local() {
    symlinks_are_never_followed(&Backend::local());
}
#[test]
fn symlinks_are_never_followed_memory() {
    symlinks_are_never_followed(&Backend::memory());
}
#[test]
fn symlinks_are_never_followed_faulty_memory() {
    symlinks_are_never_followed(&Backend::faulty_memory());
}

/// `LocalFs` specifics: the canonical root, `describe`, and a root given through a link.
#[test]
fn local_root_is_canonical() {
    let temp = TempDir::new().unwrap();
    std::fs::create_dir(temp.path().join("real")).unwrap();
    std::os::unix::fs::symlink(temp.path().join("real"), temp.path().join("alias")).unwrap();
    let fs = LocalFs::new(temp.path().join("alias/./store")).unwrap();
    let real = temp.path().canonicalize().unwrap().join("real/store");
    assert_eq!(fs.root(), real);
    assert_eq!(fs.describe(&path("a/b")), real.join("a/b"));
    let storage = FsStorage::new(Arc::new(fs));
    write_checkpoint(&storage, &path("c"), &checkpoint(9)).unwrap();
    assert_eq!(
        std::fs::read(real.join("c").join(RECORD)).unwrap(),
        checkpoint(9)[RECORD]
    );
}

/// `LocalFs` primitives: no-replace rename, reserved length, odd directory entries.
#[test]
fn local_primitives() {
    use std::os::unix::ffi::OsStrExt;
    let temp = TempDir::new().unwrap();
    let fs = LocalFs::new(temp.path()).unwrap();
    let root = fs.root().to_owned();

    let file = fs.create_new(&path("a"), 10_000).unwrap();
    assert_eq!(
        (file.len(), std::fs::metadata(root.join("a")).unwrap().len()),
        (10_000, 10_000)
    );
    assert_err!(fs.create_new(&path("a"), 1), Error::AlreadyExists { .. });
    file.write_at(9_998, b"yz").unwrap();
    file.sync().unwrap();
    fs.mkdir(&path("d")).unwrap();
    assert_err!(
        fs.rename_noreplace(&path("d"), &path("a")),
        Error::AlreadyExists { .. }
    );
    assert_err!(
        fs.rename_noreplace(&path("a"), &path("d")),
        Error::AlreadyExists { .. }
    );
    fs.rename_noreplace(&path("a"), &path("d/b")).unwrap();
    assert_eq!(&std::fs::read(root.join("d/b")).unwrap()[9_998..], b"yz");
    assert_err!(
        fs.remove_dir(&StoragePath::root()),
        Error::UnsafePath { .. }
    );

    // A name that is not UTF-8 is skipped; a FIFO is listed but cannot be opened (nor hang).
    std::fs::write(
        root.join("d")
            .join(std::ffi::OsStr::from_bytes(b"bad-\xff")),
        b"",
    )
    .unwrap();
    let fifo = std::ffi::CString::new(root.join("d/fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let listing = fs.list(&path("d")).unwrap();
    let kinds: Vec<_> = listing
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(
        kinds,
        [
            ("b", EntryKind::File, 10_000),
            ("fifo", EntryKind::Other, 0)
        ]
    );
    assert_err!(fs.open_read(&path("d/fifo")), Error::Io { .. });
    assert_err!(fs.open_read(&path("d")), Error::Io { .. });
    let mapped = fs.open_read(&path("d/b")).unwrap();
    assert_eq!(mapped.mapped().map(|m| &m[9_998..]), Some(&b"yz"[..]));
}
