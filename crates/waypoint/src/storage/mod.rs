//! The storage layer: where checkpoint bytes live. This module owns the [`Storage`] contract that the
//! engine writes and reads through, and its implementations. It knows nothing of tensors or policy.
//!
//! Two levels:
//! - [`Storage`] is what the engine uses: list, open for reading, and *transactions* that write a
//!   checkpoint directory and make it visible in one commit step.
//! - [`FileSystem`] is the set of POSIX-like primitives (create, positional write, fsync, rename)
//!   that [`FsStorage`] turns into a crash-safe commit protocol (hidden temporary directory,
//!   fsync of files and directories, commit record last, atomic rename, fsync of the parent).
//!   [`LocalFs`], [`MemoryFs`] (which models a power cut) and [`FaultyFs`] (which injects
//!   faults) implement it. `ObjectStorage` (feature `object-store`) implements [`Storage`]
//!   directly on an object store, without rename: shards at their final keys, the commit record
//!   last with a create-only put (see docs/OBJECT_STORAGE.md).
//! - [`open_location`] opens a checkpoint directory given as a local path or a URL.
//! - [`CountingStorage`] wraps any [`SharedStorage`]: it forwards every call, counts operations
//!   and bytes, and can fail a chosen operation (benchmarks, tests, the MPI harness).

mod add_dir;
mod counting;
mod fs;
mod location;
#[cfg(feature = "object-store")]
mod object;
pub(crate) mod owner;
mod path;

pub use counting::{CountingStorage, FaultHook, Operation, StorageCounts, StorageOp};
pub use fs::{FileSystem, FsFile, FsStorage, TEMP_MARKER};
pub use location::{ObjectUrl, is_url, open_dir, open_location};
#[cfg(feature = "object-store")]
pub use object::{MIN_PART_SIZE, ObjectBackend, ObjectStorage, ObjectStorageOptions};
pub use path::StoragePath;

use crate::error::Result;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What kind of thing a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by waypoint inside a checkpoint).
    Symlink,
    /// Anything else (socket, device, …).
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (one component).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes for files, 0 otherwise.
    pub size: u64,
}

/// A storage backend holding checkpoint directories under one root.
///
/// # Contract
/// - Paths are [`StoragePath`]s relative to the root; nothing outside the root is ever touched.
/// - [`Storage::begin`] starts writing a new directory. Until [`Transaction::commit`] returns
///   `Ok`, no reader calling [`Storage::list`] or [`Storage::open`] on the final path observes the
///   directory or any file in it (temporary names may show up in listings of the parent; their
///   names contain [`TEMP_MARKER`] and readers must skip them). After `commit` returns `Ok`, every
///   reader observes the complete directory, and it survives a crash or power cut.
/// - A failed or aborted transaction leaves nothing visible under the final path, with one
///   exception: when the last step of a POSIX commit (the fsync of the parent after the rename)
///   fails, the directory is already visible and complete, but may not survive a power cut; the
///   error is then [`crate::Error::NotDurable`]. It is never partial.
/// - [`Storage::remove_dir_all`] makes the directory vanish from its name atomically (POSIX: a
///   rename to a temporary name, then the removal; object stores: the commit record goes first).
///   A crash midway leaves only a temporary that [`Storage::cleanup_temporaries`] removes.
/// - `list` and `open` observe only committed directories and their files, plus temporaries.
pub trait Storage: Send + Sync + fmt::Debug {
    /// A human-readable location of `path` for messages: an absolute file-system path, or a URL.
    fn describe(&self, path: &StoragePath) -> PathBuf;

    /// The entries directly under `dir`, sorted by name. A missing `dir` is [`crate::Error::NotFound`].
    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>>;

    /// What `path` is, or `None` when nothing is there. Symbolic links are reported, not followed.
    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>>;

    /// Opens a file for reading. A symbolic link is refused.
    fn open(&self, path: &StoragePath) -> Result<Box<dyn ReadHandle>>;

    /// Starts writing the directory `dir`, which must not exist yet
    /// ([`crate::Error::AlreadyExists`] otherwise). Parent directories are created as needed.
    fn begin(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>>;

    /// Starts writing a new version of `dir` that replaces, at commit, the checkpoint (or link)
    /// of that name in one atomic step: the old one stays readable until the new one is complete
    /// and takes the name, there is never a moment with neither, and the old one is removed
    /// after. Where nothing is there at commit, the commit is [`Storage::begin`]'s. Backends that
    /// cannot replace atomically (object stores, file systems without an atomic exchange) refuse
    /// with [`crate::Error::InvalidArgument`] naming `enable_version_counter`, before anything is
    /// written (or, for a file system, at commit, keeping the old one).
    fn begin_replace(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        Err(fs::cannot_replace(
            self.describe(dir),
            "this storage cannot swap one checkpoint for another atomically",
        ))
    }

    /// Joins the transaction that another rank started with [`Storage::begin`] for `dir`, given
    /// its [`Transaction::token`], so that this rank writes its own files into the same
    /// uncommitted directory. A joined transaction cannot commit (only the owner does, after
    /// every rank finished its files) and dropping or aborting it removes nothing: the owner
    /// cleans up. Backends that cannot share a transaction return
    /// [`crate::Error::InvalidArgument`].
    fn join(&self, dir: &StoragePath, token: &str) -> Result<Box<dyn Transaction>> {
        let _ = token;
        Err(crate::Error::InvalidArgument {
            name: "storage",
            reason: format!(
                "{} cannot be written by several ranks: this storage cannot share a transaction",
                self.describe(dir).display()
            ),
        })
    }

    /// Removes a committed directory and everything in it, so that no reader ever sees it
    /// half-removed under its name. `record` is its commit record (backends without a rename
    /// delete it first).
    fn remove_dir_all(&self, dir: &StoragePath, record: &StoragePath) -> Result<()>;

    /// Removes the temporaries that crashed transactions left directly under `parent` and returns
    /// their names. A temporary whose owner may still be using it (a transaction open in this
    /// process, a live process on this host, another host's for a day) is left alone, so it is
    /// safe while other processes save into the same directory.
    fn cleanup_temporaries(&self, parent: &StoragePath) -> Result<Vec<String>>;

    /// Adds the directory `<dir>/<sub>` holding `files` (name, bytes) to the committed checkpoint
    /// `dir`: files outside `weights/`, which its commit record does not list (the `context/` a
    /// run writes at train end into the checkpoint it saved at that step before). `<sub>` must
    /// not exist ([`crate::Error::AlreadyExists`]). The record is not touched, so the checkpoint
    /// verifies at every instant. POSIX: all or nothing (the files are written and fsynced in a
    /// temporary directory inside the checkpoint, which readers ignore, renamed into place, the
    /// checkpoint fsynced; a failure removes the temporary). Object stores: each file is one
    /// create-only put, whole or absent. Other backends refuse with
    /// [`crate::Error::InvalidArgument`].
    fn add_dir(&self, dir: &StoragePath, sub: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        let _ = (sub, files);
        Err(crate::Error::InvalidArgument {
            name: "storage",
            reason: format!(
                "{}: this storage cannot add files to a committed checkpoint",
                self.describe(dir).display()
            ),
        })
    }

    /// Makes `link` a relative symbolic link to its sibling `target` (one path component, never
    /// `link`'s own name), durably. Returns `Ok(false)` where the backend has no links (object
    /// stores): the caller then saves a full copy instead.
    fn link_sibling(&self, target: &str, link: &StoragePath) -> Result<bool> {
        let _ = (target, link);
        Ok(false)
    }

    /// Like [`Storage::link_sibling`], but replaces atomically whatever `link` names now (a link,
    /// or a checkpoint directory, removed after). `Ok(false)` where the backend has no links.
    fn replace_with_link(&self, target: &str, link: &StoragePath) -> Result<bool> {
        let _ = (target, link);
        Ok(false)
    }

    /// Removes a symbolic link made by [`Storage::link_sibling`] (never what it points to).
    fn remove_link(&self, link: &StoragePath) -> Result<()> {
        Err(crate::Error::UnsafePath {
            path: link.to_string(),
            reason: "this storage has no links",
        })
    }
}

/// Writing one new directory. Dropping a transaction without committing aborts it (best effort;
/// call [`Transaction::abort`] to see errors).
pub trait Transaction: Send + Sync {
    /// Creates the file `rel` (relative to the transaction's directory) of exactly `len` bytes,
    /// to be filled by [`WriteHandle::write_at`] from any number of threads.
    fn create(&self, rel: &StoragePath, len: u64) -> Result<Box<dyn WriteHandle>>;

    /// Writes `record` at `rel` last and makes the whole directory visible atomically and durably.
    /// Every [`WriteHandle`] must have been finished before.
    fn commit(self: Box<Self>, rel: &StoragePath, record: &[u8]) -> Result<()>;

    /// Discards everything written.
    fn abort(self: Box<Self>) -> Result<()>;

    /// The entries under `rel` (relative to the transaction's directory) written so far, before
    /// the commit, so that the engine can check them against the record it is about to commit;
    /// `None` where the backend cannot list them.
    fn list_written(&self, rel: &StoragePath) -> Result<Option<Vec<DirEntry>>> {
        let _ = rel;
        Ok(None)
    }

    /// Puts the committed file `source` (a path from the storage's root: a shard of an earlier
    /// checkpoint, `len` bytes) at `rel` in this transaction without sending its bytes again: a
    /// hard link on a file system, a server-side copy on an object store. The new file is the
    /// new checkpoint's own: removing `source` later never changes it. Returns `Ok(false)` where
    /// this cannot be done (no links, another file system, `source` gone): the caller then
    /// writes the bytes with [`Transaction::create`]. An error is the save's.
    fn carry(&self, rel: &StoragePath, source: &StoragePath, len: u64) -> Result<bool> {
        let _ = (rel, source, len);
        Ok(false)
    }

    /// Abandons the transaction as a crashed process would: nothing is removed, and its
    /// temporary is no longer in use, so [`Storage::cleanup_temporaries`] removes it (tests and
    /// crash harnesses).
    fn abandon(self: Box<Self>) {
        std::mem::forget(self);
    }

    /// An opaque token naming this uncommitted transaction, for other ranks to pass to
    /// [`Storage::join`] (the temporary directory's name on a file system). Empty where the
    /// backend cannot share a transaction.
    fn token(&self) -> String {
        String::new()
    }
}

/// A file being written.
///
/// Writes go to byte offsets and may come from several threads at once, in any order. When
/// [`WriteHandle::part_size`] is `Some(p)` (object stores: multipart upload), every write must be
/// one whole part: offset a multiple of `p` and length `p`, except the file's last part, which
/// is shorter; each part is written exactly once. With `None` (POSIX), any ranges may be written.
pub trait WriteHandle: Send + Sync {
    /// The part size writes must respect, if any (at least 5 MiB when `Some`).
    fn part_size(&self) -> Option<u64> {
        None
    }

    /// Writes `data` at `offset`. The range must lie within the length given to `create`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes the file's content durable (fsync, or completing the multipart upload).
    fn finish(self: Box<Self>) -> Result<()>;

    /// A hint that `offset..offset + len` is written and may go to the device now (POSIX:
    /// `sync_file_range`); durability still comes from [`WriteHandle::finish`].
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Where writes can bypass the page cache (a local file opened with `O_DIRECT` too): the
    /// part size in which the engine should write, whole parts assembled in page-aligned
    /// buffers (as for [`WriteHandle::part_size`], but optional: any other write still works,
    /// through the page cache). `None` where there is no such path.
    fn direct_part_size(&self) -> Option<u64> {
        None
    }
}

/// A file opened for reading.
pub trait ReadHandle: Send + Sync {
    /// Its size in bytes.
    fn len(&self) -> u64;

    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The whole file mapped into memory, where the backend can (local files).
    fn mapped(&self) -> Option<&[u8]> {
        None
    }
}

/// Storage shared between threads.
pub type SharedStorage = Arc<dyn Storage>;

/// Reads a whole (small) file, refusing files larger than `limit` bytes.
///
/// It reads with plain reads, never through a memory map: a file truncated meanwhile (or on a
/// stale NFS handle) is then an error, where a mapped read would be killed by `SIGBUS`.
pub fn read_to_vec(storage: &dyn Storage, path: &StoragePath, limit: u64) -> Result<Vec<u8>> {
    let handle = storage.open(path)?;
    let len = handle.len();
    if len > limit {
        return Err(crate::Error::InvalidArgument {
            name: "file size",
            reason: format!(
                "{} is {len} bytes, more than the {limit}-byte limit",
                storage.describe(path).display()
            ),
        });
    }
    let mut buf = vec![0u8; len as usize];
    handle.read_at(0, &mut buf)?;
    Ok(buf)
}

mod abort_points;
mod faulty;
mod local;
mod memory;

pub(crate) use abort_points::abort_point;
pub use abort_points::{ABORT_AT_ENV, ABORT_POINTS};
pub use faulty::{FAILPOINT_ENV, FailpointPlan, FaultKind, FaultyFs, InjectedOp};
pub use local::{LocalFs, local_storage};
pub use memory::MemoryFs;
