//! [`CountingStorage`]: a [`Storage`] wrapper that forwards every call to the storage it wraps,
//! counts the operations and the bytes read and written ([`StorageCounts`]), and can make a
//! chosen operation fail (a fault hook), in the spirit of object_store's `ThrottledStore` and
//! `LimitStore`. Benchmarks use it to count the bytes a load really reads, tests and harnesses
//! to fail the Nth write of a save, or to drive the engine's whole-part path on any storage.
//!
//! It owns counting, the hook and the optional part size, nothing else: it must not change what
//! a forwarded operation does, buffer, retry or reorder anything, so that with no hook and no
//! part size a program behaves exactly as on the inner storage. One deliberate difference: files
//! opened through it are never memory-mapped ([`ReadHandle::mapped`] is `None`), so every byte a
//! reader touches goes through [`ReadHandle::read_at`] and is counted.
//!
//! ```
//! use std::sync::Arc;
//! use waypoint::storage::{
//!     CountingStorage, FsStorage, MemoryFs, SharedStorage, StorageOp, StoragePath,
//! };
//! use waypoint::{CheckpointMeta, Checkpointer, Dtype, TensorRef};
//!
//! let counting = Arc::new(CountingStorage::new(Arc::new(FsStorage::new(Arc::new(MemoryFs::new())))));
//! let storage: SharedStorage = counting.clone();
//! let data = [7u8; 64];
//! let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![64], &data[..])];
//! let dir = StoragePath::new("step-1").unwrap();
//! Checkpointer::new(storage).save(&dir, &CheckpointMeta::at_step(1), &tensors, &()).unwrap();
//! let counts = counting.counts();
//! assert_eq!(counts.of(StorageOp::Commit), 1);
//! assert!(counts.bytes_written > 64); // the tensor, its file's header and the commit record
//! ```

use super::{DirEntry, ReadHandle, SharedStorage, Storage, StoragePath, Transaction, WriteHandle};
use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The operations a [`CountingStorage`] counts: every [`Storage`], [`Transaction`],
/// [`WriteHandle`] and [`ReadHandle`] call that can fail. `describe`, `token`, `part_size`,
/// `len` and `start_writeback` are forwarded without being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageOp {
    /// [`Storage::list`] and [`Transaction::list_written`].
    List,
    /// [`Storage::stat`].
    Stat,
    /// [`Storage::open`].
    Open,
    /// [`ReadHandle::read_at`].
    Read,
    /// [`Storage::begin`] and [`Storage::begin_replace`].
    Begin,
    /// [`Storage::join`].
    Join,
    /// [`Transaction::create`].
    Create,
    /// [`WriteHandle::write_at`].
    Write,
    /// [`WriteHandle::finish`].
    Finish,
    /// [`Transaction::commit`].
    Commit,
    /// [`Transaction::abort`].
    Abort,
    /// [`Storage::remove_dir_all`].
    RemoveDirAll,
    /// [`Storage::cleanup_temporaries`].
    CleanupTemporaries,
    /// [`Storage::link_sibling`] and [`Storage::replace_with_link`].
    LinkSibling,
    /// [`Storage::remove_link`].
    RemoveLink,
    /// [`Storage::add_dir`].
    AddDir,
    /// [`Transaction::carry`] (a hard link or a server-side copy of an earlier checkpoint's file).
    Carry,
}

impl StorageOp {
    /// Every operation, in declaration order.
    pub const ALL: [StorageOp; 17] = [
        StorageOp::List,
        StorageOp::Stat,
        StorageOp::Open,
        StorageOp::Read,
        StorageOp::Begin,
        StorageOp::Join,
        StorageOp::Create,
        StorageOp::Write,
        StorageOp::Finish,
        StorageOp::Commit,
        StorageOp::Abort,
        StorageOp::RemoveDirAll,
        StorageOp::CleanupTemporaries,
        StorageOp::LinkSibling,
        StorageOp::RemoveLink,
        StorageOp::AddDir,
        StorageOp::Carry,
    ];

    /// The operation's name, as the method is called (`write_at` is `write`).
    pub fn name(self) -> &'static str {
        match self {
            StorageOp::List => "list",
            StorageOp::Stat => "stat",
            StorageOp::Open => "open",
            StorageOp::Read => "read",
            StorageOp::Begin => "begin",
            StorageOp::Join => "join",
            StorageOp::Create => "create",
            StorageOp::Write => "write",
            StorageOp::Finish => "finish",
            StorageOp::Commit => "commit",
            StorageOp::Abort => "abort",
            StorageOp::RemoveDirAll => "remove_dir_all",
            StorageOp::CleanupTemporaries => "cleanup_temporaries",
            StorageOp::LinkSibling => "link_sibling",
            StorageOp::RemoveLink => "remove_link",
            StorageOp::AddDir => "add_dir",
            StorageOp::Carry => "carry",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One operation as the fault hook of a [`CountingStorage`] sees it, before it is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    /// What is being called.
    pub kind: StorageOp,
    /// Its 1-based number among the operations of this kind since the storage was created (or
    /// [`CountingStorage::reset`]), counted across all threads and handles.
    pub nth: u64,
    /// The path it is about: the directory for `list`, `begin`, `join`, `abort` and
    /// `cleanup_temporaries`; the file (its final path, transaction directory included) for
    /// `open`, `read`, `create`, `write`, `finish` and `carry`; the commit record for `commit`; the
    /// checkpoint for `remove_dir_all`; the link for `link_sibling` and `remove_link`.
    pub path: &'a StoragePath,
    /// The byte offset of a `read` or `write`, 0 otherwise.
    pub offset: u64,
    /// The bytes of a `read`, `write` or `commit` (the record); the file's length for `create`
    /// and `finish`; 0 otherwise.
    pub len: u64,
}

/// A fault hook: called before each counted operation is forwarded; an error is that
/// operation's result and the inner storage is not called.
pub type FaultHook = Arc<dyn Fn(&Operation<'_>) -> Result<()> + Send + Sync>;

/// A snapshot of what a [`CountingStorage`] has counted.
///
/// An operation counts when it is called, whether it then succeeds, fails in the inner storage
/// or is failed by the hook. Bytes count only when the inner call succeeded: `bytes_read` by
/// `read_at`, `bytes_written` by `write_at` and by the commit record of a successful `commit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageCounts {
    ops: [u64; StorageOp::ALL.len()],
    /// Bytes read by successful [`ReadHandle::read_at`] calls.
    pub bytes_read: u64,
    /// Bytes written by successful [`WriteHandle::write_at`] calls and commit records.
    pub bytes_written: u64,
    /// Bytes of the files put in place by successful [`Transaction::carry`] calls (not sent
    /// again, so not in `bytes_written`).
    pub bytes_carried: u64,
}

impl StorageCounts {
    /// How many operations of `kind` were called.
    pub fn of(&self, kind: StorageOp) -> u64 {
        self.ops[kind.index()]
    }

    /// How many operations were called in all.
    pub fn total(&self) -> u64 {
        self.ops.iter().sum()
    }
}

/// The counters, shared by the storage and every handle it gave out.
#[derive(Default)]
struct Counters {
    ops: [AtomicU64; StorageOp::ALL.len()],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    bytes_carried: AtomicU64,
}

/// What every handle of one [`CountingStorage`] shares: counters, hook, part size.
struct Shared {
    counters: Counters,
    hook: Option<FaultHook>,
    part_size: Option<u64>,
}

impl Shared {
    /// Counts `kind` and asks the hook; `Err` means: do not forward.
    fn enter(&self, kind: StorageOp, path: &StoragePath, offset: u64, len: u64) -> Result<()> {
        let nth = self.counters.ops[kind.index()].fetch_add(1, Ordering::Relaxed) + 1;
        match &self.hook {
            Some(hook) => hook(&Operation {
                kind,
                nth,
                path,
                offset,
                len,
            }),
            None => Ok(()),
        }
    }

    fn add_read(&self, bytes: usize) {
        self.counters
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn add_written(&self, bytes: usize) {
        self.counters
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A [`Storage`] that forwards every call to another, counting operations and bytes
/// ([`StorageCounts`]), with an optional fault hook ([`CountingStorage::with_fault_hook`],
/// [`CountingStorage::fail_at`]) and an optional part size
/// ([`CountingStorage::with_part_size`]). With neither, it behaves exactly as the inner storage,
/// except that files read through it are never memory-mapped ([`ReadHandle::mapped`] is `None`),
/// so that every byte read goes through [`ReadHandle::read_at`] and is counted.
///
/// Keep an `Arc<CountingStorage>` to read the counts and hand a clone of it, as a
/// [`SharedStorage`], to the engine or the run.
///
/// ```
/// use std::sync::Arc;
/// use waypoint::storage::{CountingStorage, FsStorage, MemoryFs, StorageOp, StoragePath, Storage};
///
/// // The second `stat` fails with an injected fault; the others reach the inner storage.
/// let storage = CountingStorage::new(Arc::new(FsStorage::new(Arc::new(MemoryFs::new()))))
///     .fail_at(StorageOp::Stat, 2);
/// let here = StoragePath::new("x").unwrap();
/// assert!(storage.stat(&here).unwrap().is_none());
/// assert!(matches!(storage.stat(&here), Err(waypoint::Error::InjectedFault { op_index: 2, .. })));
/// assert!(storage.stat(&here).is_ok());
/// assert_eq!(storage.counts().of(StorageOp::Stat), 3);
/// ```
pub struct CountingStorage {
    inner: SharedStorage,
    shared: Arc<Shared>,
}

impl fmt::Debug for CountingStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStorage")
            .field("inner", &self.inner)
            .field("counts", &self.counts())
            .field("hook", &self.shared.hook.is_some())
            .field("part_size", &self.shared.part_size)
            .finish()
    }
}

impl CountingStorage {
    /// Wraps `inner`: counts everything, injects nothing. The `with_*` and `fail_at` builders
    /// that follow are meant for before use: each starts the counts afresh.
    pub fn new(inner: SharedStorage) -> Self {
        CountingStorage {
            inner,
            shared: Arc::new(Shared {
                counters: Counters::default(),
                hook: None,
                part_size: None,
            }),
        }
    }

    /// A new [`Shared`] with `change` applied: counting starts afresh, and handles given out
    /// before keep the settings they had.
    fn with_shared(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            counters: Counters::default(),
            hook: self.shared.hook.clone(),
            part_size: self.shared.part_size,
        };
        change(&mut shared);
        self.shared = Arc::new(shared);
        self
    }

    /// Calls `hook` before every counted operation; an `Err` it returns becomes the result of
    /// that operation, which then never reaches the inner storage. Replaces any earlier hook
    /// (including [`CountingStorage::fail_at`]'s). The hook runs on the calling thread, so it may
    /// also end the process there (a killed rank).
    pub fn with_fault_hook(
        self,
        hook: impl Fn(&Operation<'_>) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        let hook: FaultHook = Arc::new(hook);
        self.with_shared(|shared| shared.hook = Some(hook))
    }

    /// Makes operation number `nth` (1-based) of `kind` fail with [`Error::InjectedFault`]; every
    /// other operation is forwarded. Replaces any earlier hook.
    pub fn fail_at(self, kind: StorageOp, nth: u64) -> Self {
        self.with_fault_hook(move |op| {
            if op.kind == kind && op.nth == nth {
                Err(Error::InjectedFault {
                    op_index: nth,
                    op: kind.name(),
                    path: PathBuf::from(op.path.as_str()),
                })
            } else {
                Ok(())
            }
        })
    }

    /// Makes the files it creates demand whole parts of `part` bytes
    /// ([`WriteHandle::part_size`]), as an object store's multipart upload does, so that the
    /// engine's part-based writing can be tested on a storage that accepts any range (POSIX, the
    /// in-memory file system). It only announces the part size: checking the writes is the
    /// hook's job. Creating a file fails with [`Error::InvalidArgument`] when the inner storage
    /// has a part size of its own.
    pub fn with_part_size(self, part: u64) -> Self {
        self.with_shared(|shared| shared.part_size = Some(part))
    }

    /// The storage it forwards to.
    pub fn inner(&self) -> &SharedStorage {
        &self.inner
    }

    /// What has been counted so far.
    pub fn counts(&self) -> StorageCounts {
        let c = &self.shared.counters;
        let mut ops = [0u64; StorageOp::ALL.len()];
        for (to, from) in ops.iter_mut().zip(&c.ops) {
            *to = from.load(Ordering::Relaxed);
        }
        StorageCounts {
            ops,
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            bytes_carried: c.bytes_carried.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter back to zero (the numbering the hook sees starts again at 1).
    pub fn reset(&self) {
        let c = &self.shared.counters;
        for op in &c.ops {
            op.store(0, Ordering::Relaxed);
        }
        c.bytes_read.store(0, Ordering::Relaxed);
        c.bytes_written.store(0, Ordering::Relaxed);
        c.bytes_carried.store(0, Ordering::Relaxed);
    }

    fn transaction(&self, dir: &StoragePath, inner: Box<dyn Transaction>) -> Box<dyn Transaction> {
        Box::new(CountingTransaction {
            inner,
            dir: dir.clone(),
            shared: self.shared.clone(),
        })
    }
}

impl Storage for CountingStorage {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.inner.describe(path)
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        self.shared.enter(StorageOp::List, dir, 0, 0)?;
        self.inner.list(dir)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        self.shared.enter(StorageOp::Stat, path, 0, 0)?;
        self.inner.stat(path)
    }

    fn open(&self, path: &StoragePath) -> Result<Box<dyn ReadHandle>> {
        self.shared.enter(StorageOp::Open, path, 0, 0)?;
        Ok(Box::new(CountingRead {
            inner: self.inner.open(path)?,
            path: path.clone(),
            shared: self.shared.clone(),
        }))
    }

    fn begin(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        self.shared.enter(StorageOp::Begin, dir, 0, 0)?;
        Ok(self.transaction(dir, self.inner.begin(dir)?))
    }

    fn begin_replace(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        self.shared.enter(StorageOp::Begin, dir, 0, 0)?;
        Ok(self.transaction(dir, self.inner.begin_replace(dir)?))
    }

    fn join(&self, dir: &StoragePath, token: &str) -> Result<Box<dyn Transaction>> {
        self.shared.enter(StorageOp::Join, dir, 0, 0)?;
        Ok(self.transaction(dir, self.inner.join(dir, token)?))
    }

    fn remove_dir_all(&self, dir: &StoragePath, record: &StoragePath) -> Result<()> {
        self.shared.enter(StorageOp::RemoveDirAll, dir, 0, 0)?;
        self.inner.remove_dir_all(dir, record)
    }

    fn cleanup_temporaries(&self, parent: &StoragePath) -> Result<Vec<String>> {
        self.shared
            .enter(StorageOp::CleanupTemporaries, parent, 0, 0)?;
        self.inner.cleanup_temporaries(parent)
    }

    fn link_sibling(&self, target: &str, link: &StoragePath) -> Result<bool> {
        self.shared.enter(StorageOp::LinkSibling, link, 0, 0)?;
        self.inner.link_sibling(target, link)
    }

    fn replace_with_link(&self, target: &str, link: &StoragePath) -> Result<bool> {
        self.shared.enter(StorageOp::LinkSibling, link, 0, 0)?;
        self.inner.replace_with_link(target, link)
    }

    fn remove_link(&self, link: &StoragePath) -> Result<()> {
        self.shared.enter(StorageOp::RemoveLink, link, 0, 0)?;
        self.inner.remove_link(link)
    }

    fn add_dir(&self, dir: &StoragePath, sub: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
        self.shared.enter(StorageOp::AddDir, dir, 0, bytes)?;
        self.inner.add_dir(dir, sub, files)
    }
}

/// A transaction of a [`CountingStorage`].
struct CountingTransaction {
    inner: Box<dyn Transaction>,
    dir: StoragePath,
    shared: Arc<Shared>,
}

impl Transaction for CountingTransaction {
    fn create(&self, rel: &StoragePath, len: u64) -> Result<Box<dyn WriteHandle>> {
        let path = self.dir.join(rel.as_str())?;
        self.shared.enter(StorageOp::Create, &path, 0, len)?;
        let inner = self.inner.create(rel, len)?;
        if let (Some(part), Some(own)) = (self.shared.part_size, inner.part_size()) {
            return Err(Error::InvalidArgument {
                name: "part size",
                reason: format!(
                    "{path}: the counting storage was given parts of {part} bytes, but the storage it wraps has its own ({own} bytes)"
                ),
            });
        }
        Ok(Box::new(CountingWrite {
            inner,
            path,
            len,
            shared: self.shared.clone(),
        }))
    }

    fn commit(self: Box<Self>, rel: &StoragePath, record: &[u8]) -> Result<()> {
        let path = self.dir.join(rel.as_str())?;
        self.shared
            .enter(StorageOp::Commit, &path, 0, record.len() as u64)?;
        self.inner.commit(rel, record)?;
        self.shared.add_written(record.len());
        Ok(())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        self.shared.enter(StorageOp::Abort, &self.dir, 0, 0)?;
        self.inner.abort()
    }

    fn list_written(&self, rel: &StoragePath) -> Result<Option<Vec<DirEntry>>> {
        self.shared
            .enter(StorageOp::List, &self.dir.join(rel.as_str())?, 0, 0)?;
        self.inner.list_written(rel)
    }

    fn carry(&self, rel: &StoragePath, source: &StoragePath, len: u64) -> Result<bool> {
        let path = self.dir.join(rel.as_str())?;
        self.shared.enter(StorageOp::Carry, &path, 0, len)?;
        let carried = self.inner.carry(rel, source, len)?;
        if carried {
            self.shared
                .counters
                .bytes_carried
                .fetch_add(len, Ordering::Relaxed);
        }
        Ok(carried)
    }

    fn abandon(self: Box<Self>) {
        self.inner.abandon();
    }

    fn token(&self) -> String {
        self.inner.token()
    }
}

/// A file being written through a [`CountingStorage`].
struct CountingWrite {
    inner: Box<dyn WriteHandle>,
    path: StoragePath,
    len: u64,
    shared: Arc<Shared>,
}

impl WriteHandle for CountingWrite {
    fn part_size(&self) -> Option<u64> {
        self.shared.part_size.or_else(|| self.inner.part_size())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.shared
            .enter(StorageOp::Write, &self.path, offset, data.len() as u64)?;
        self.inner.write_at(offset, data)?;
        self.shared.add_written(data.len());
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.shared
            .enter(StorageOp::Finish, &self.path, 0, self.len)?;
        self.inner.finish()
    }

    fn direct_part_size(&self) -> Option<u64> {
        self.inner.direct_part_size()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len);
    }
}

/// A file read through a [`CountingStorage`]: never mapped, so every byte is counted.
struct CountingRead {
    inner: Box<dyn ReadHandle>,
    path: StoragePath,
    shared: Arc<Shared>,
}

impl ReadHandle for CountingRead {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.shared
            .enter(StorageOp::Read, &self.path, offset, buf.len() as u64)?;
        self.inner.read_at(offset, buf)?;
        self.shared.add_read(buf.len());
        Ok(())
    }
}

#[cfg(test)]
#[path = "counting_tests.rs"]
mod tests;
