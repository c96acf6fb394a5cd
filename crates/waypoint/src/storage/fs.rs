//! POSIX-like primitives ([`FileSystem`]) and the commit protocol built on them ([`FsStorage`]).
//! The protocol lives here once, so that the local disk, the in-memory model of a power cut and the
//! fault injector all exercise the very same sequence of operations.
//!
//! It must never replace an existing checkpoint or show a partial one under its final name: a save
//! is built in a temporary directory and renamed without replacing, and a removal first renames the
//! checkpoint away. The system calls themselves are the `FileSystem` implementations' (`local.rs`,
//! `memory.rs`, `faulty.rs`); the record's bytes are opaque here, and which checkpoints to save or
//! delete is never decided here.

use super::owner::{LiveGuard, new_tag, tag_of};
use super::{DirEntry, EntryKind, ReadHandle, Storage, StoragePath, Transaction, WriteHandle};
use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Temporary directories of unfinished transactions are named `.<final name><TEMP_MARKER><owner>`,
/// where the owner part records the process that made it (see [`FsStorage`]).
pub const TEMP_MARKER: &str = ".waypoint-tmp-";

/// POSIX-like primitives under one root. Paths are relative to the root.
///
/// Durability follows POSIX: file data is durable after [`FsFile::sync`]; the creation, removal
/// or renaming of a directory entry is durable after [`FileSystem::sync_dir`] of the directory
/// holding it.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// A location for messages (absolute path or URL) of `path`.
    fn describe(&self, path: &StoragePath) -> PathBuf;
    /// Creates a new file of `len` bytes (zero-filled, possibly sparse); fails if it exists.
    fn create_new(&self, path: &StoragePath, len: u64) -> Result<Box<dyn FsFile>>;
    /// Opens an existing regular file for reading; refuses symbolic links.
    fn open_read(&self, path: &StoragePath) -> Result<Box<dyn FsFile>>;
    /// Creates a directory; fails if it exists. The parent must exist.
    fn mkdir(&self, path: &StoragePath) -> Result<()>;
    /// Makes the entries of directory `path` durable.
    fn sync_dir(&self, path: &StoragePath) -> Result<()>;
    /// Renames `from` to `to`; fails with [`Error::AlreadyExists`] if `to` exists.
    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &StoragePath) -> Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &StoragePath) -> Result<()>;
    /// Lists a directory, sorted by name.
    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>>;
    /// What `path` is, without following a final symbolic link; `None` if nothing is there.
    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>>;
    /// Creates a symbolic link at `link` whose content is `target` (relative to the link's
    /// directory); fails if `link` exists.
    fn symlink(&self, target: &str, link: &StoragePath) -> Result<()>;
    /// Makes `to` a second name (a hard link) of the regular file `from`, which must not be a
    /// symbolic link; fails if `to` exists. Like any entry, the new name is durable after a
    /// [`FileSystem::sync_dir`] of its directory; the data is the file's, already synced. File
    /// systems without hard links return an [`Error::Io`] with `EOPNOTSUPP` (the default), and
    /// `EXDEV` across file systems: the caller then writes a copy.
    fn hard_link(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let _ = from;
        Err(Error::io(
            "hard link",
            self.describe(to),
            std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        ))
    }
    /// Swaps `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`); both must exist. File
    /// systems that cannot return an [`Error::Io`] with `EINVAL` (the default), and the storage
    /// then refuses to replace a checkpoint.
    fn rename_exchange(&self, a: &StoragePath, b: &StoragePath) -> Result<()> {
        let _ = b;
        Err(Error::io(
            "exchange",
            self.describe(a),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ))
    }
}

/// An open file of a [`FileSystem`].
pub trait FsFile: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Makes the data durable (fsync).
    fn sync(&self) -> Result<()>;
    /// Starts writing `offset..offset + len` back to the device without waiting (a hint; the
    /// default does nothing). Spreads writeback over the save instead of one burst at `sync`.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
    /// A read-only memory map of the whole file, where supported.
    fn mapped(&self) -> Option<&[u8]> {
        None
    }
    /// The part size in which writes of a new file go around the page cache (`O_DIRECT`), where
    /// the file system allows it: a write of whole 4 KiB pages from page-aligned memory at a
    /// page-aligned offset goes straight to the device, any other write through the page cache
    /// (so every write is correct). `None` (the default): everything through the page cache.
    fn direct_part(&self) -> Option<u64> {
        None
    }
}

/// A [`Storage`] over a [`FileSystem`], committing by atomic rename.
///
/// A transaction for `dir` writes into `<parent>/.<name>.waypoint-tmp-<owner>`, fsyncs every file
/// as it is finished, writes the commit record last and fsyncs it, fsyncs every directory inside,
/// checks the listing of `weights/` (done by the engine), renames the temporary to `dir` (refusing
/// to replace; [`Storage::begin_replace`] swaps instead) and fsyncs the parent.
///
/// `<owner>` is `<host>.<pid>.<start>-<created>-<k>`: a hash of the host name and pid namespace,
/// the process id and start time, the temporary's creation time and a counter.
/// [`Storage::cleanup_temporaries`] leaves a temporary alone while its owner may be using it: this
/// process's while its transaction is open; another process's on this host while that process
/// runs; another host's until it is a day old ([`FOREIGN_GRACE`](super::owner::FOREIGN_GRACE)).
#[derive(Debug, Clone)]
pub struct FsStorage {
    fs: Arc<dyn FileSystem>,
}

impl FsStorage {
    /// Wraps a file system.
    pub fn new(fs: Arc<dyn FileSystem>) -> Self {
        FsStorage { fs }
    }

    /// The file system underneath.
    pub fn file_system(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    fn mkdir_all(&self, dir: &StoragePath) -> Result<()> {
        let mut current = StoragePath::root();
        for component in dir.components() {
            current = current.join(component)?;
            match self.fs.stat(&current)? {
                Some(DirEntry {
                    kind: EntryKind::Dir,
                    ..
                }) => continue,
                Some(DirEntry {
                    kind: EntryKind::Symlink,
                    ..
                }) => {
                    return Err(Error::SymlinkRefused {
                        path: self.fs.describe(&current),
                    });
                }
                Some(_) => {
                    return Err(Error::AlreadyExists {
                        path: self.fs.describe(&current),
                    });
                }
                None => match self.fs.mkdir(&current) {
                    Ok(()) | Err(Error::AlreadyExists { .. }) => {
                        if let Some(parent) = current.parent() {
                            self.fs.sync_dir(&parent)?;
                        }
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }
}

impl FsStorage {
    /// Begins a transaction for `dir`; `replace`: the commit may swap out what is there.
    fn start(&self, dir: &StoragePath, replace: bool) -> Result<Box<dyn Transaction>> {
        let (parent, name) = checkpoint_parts(dir)?;
        if name.contains(TEMP_MARKER) || name.starts_with('.') {
            return Err(Error::UnsafePath {
                path: dir.to_string(),
                reason: "names starting with '.' are reserved for temporaries",
            });
        }
        self.mkdir_all(&parent)?;
        if !replace && self.fs.stat(dir)?.is_some() {
            return Err(Error::AlreadyExists {
                path: self.fs.describe(dir),
            });
        }
        let temp = temporary(&parent, name, "")?;
        let guard = LiveGuard::new(temp.file_name().unwrap_or_default());
        self.fs.mkdir(&temp)?;
        let mut txn = FsTransaction::new(self.fs.clone(), temp, dir.clone(), Some(guard));
        txn.replace = replace;
        Ok(Box::new(txn))
    }

    /// Moves `temp` to `dir`'s name: a rename that never replaces, or with `replace` a swap with
    /// what is there, whose old content (now under `temp`'s name) is removed after. Returns
    /// whether something was replaced. Any error after the name changed is
    /// [`Error::NotDurable`].
    fn move_into_place(
        &self,
        temp: &StoragePath,
        dir: &StoragePath,
        replace: bool,
    ) -> Result<bool> {
        let parent = dir.parent().unwrap_or_default();
        let replaced = match self.fs.rename_noreplace(temp, dir) {
            Ok(()) => false,
            Err(Error::AlreadyExists { .. }) if replace => {
                match self.fs.rename_exchange(temp, dir) {
                    Ok(()) => true,
                    Err(Error::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        return Err(cannot_replace(
                            self.fs.describe(dir),
                            "its file system cannot exchange two names atomically",
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let settle = || -> Result<()> {
            self.fs.sync_dir(&parent)?;
            if replaced {
                // The replaced checkpoint (or link) now has the temporary's name.
                match self.fs.stat(temp)? {
                    Some(DirEntry {
                        kind: EntryKind::Dir,
                        ..
                    }) => remove_tree(self.fs.as_ref(), temp)?,
                    Some(_) => self.fs.remove_file(temp)?,
                    None => {}
                }
                self.fs.sync_dir(&parent)?;
            }
            Ok(())
        };
        settle().map_err(|e| Error::NotDurable {
            path: self.fs.describe(dir),
            source: Box::new(e),
        })?;
        Ok(replaced)
    }
}

/// A new temporary name for `name` in `parent`, owned by this process.
pub(super) fn temporary(parent: &StoragePath, name: &str, suffix: &str) -> Result<StoragePath> {
    parent.join(&format!(".{name}{TEMP_MARKER}{}{suffix}", new_tag()))
}

/// The refusal to replace the checkpoint at `path` where it cannot be done atomically.
pub(crate) fn cannot_replace(path: PathBuf, why: &str) -> Error {
    Error::InvalidArgument {
        name: "enable_version_counter",
        reason: format!(
            "{} exists, and with the version counter off a save of the same name replaces it, but {why}; the existing checkpoint is kept. Turn enable_version_counter on, or put {{step}} in the filename so that names do not repeat",
            path.display()
        ),
    }
}

impl Storage for FsStorage {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.fs.describe(path)
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        self.fs.list(dir)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        self.fs.stat(path)
    }

    fn open(&self, path: &StoragePath) -> Result<Box<dyn ReadHandle>> {
        Ok(Box::new(FsRead(self.fs.open_read(path)?)))
    }

    fn begin(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        self.start(dir, false)
    }

    fn begin_replace(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        self.start(dir, true)
    }

    fn join(&self, dir: &StoragePath, token: &str) -> Result<Box<dyn Transaction>> {
        let (parent, name) = checkpoint_parts(dir)?;
        let prefix = format!(".{name}{TEMP_MARKER}");
        if !token.starts_with(&prefix) || token.contains('/') || token.len() == prefix.len() {
            return Err(Error::InvalidArgument {
                name: "transaction token",
                reason: format!("{token:?} does not name an uncommitted save of {dir}"),
            });
        }
        let temp = parent.join(token)?;
        match self.fs.stat(&temp)? {
            Some(DirEntry {
                kind: EntryKind::Dir,
                ..
            }) => {}
            _ => {
                return Err(Error::NotFound {
                    path: self.fs.describe(&temp),
                });
            }
        }
        Ok(Box::new(FsTransaction::new(
            self.fs.clone(),
            temp,
            dir.clone(),
            None,
        )))
    }

    fn remove_dir_all(&self, dir: &StoragePath, record: &StoragePath) -> Result<()> {
        // Hide the whole directory first with one atomic rename to a temporary name: a crash in
        // the middle of the removal then leaves a temporary for `cleanup_temporaries`, never a
        // half-removed directory under a checkpoint's name.
        let _ = record;
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(Error::UnsafePath {
                path: dir.to_string(),
                reason: "the storage root cannot be removed",
            });
        };
        let doomed = temporary(&parent, name, "-removed")?;
        let _live = LiveGuard::new(doomed.file_name().unwrap_or_default());
        self.fs.rename_noreplace(dir, &doomed)?;
        self.fs.sync_dir(&parent)?;
        remove_tree(self.fs.as_ref(), &doomed)?;
        self.fs.sync_dir(&parent)
    }

    fn add_dir(&self, dir: &StoragePath, sub: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        super::add_dir::add_dir(self.fs.as_ref(), dir, sub, files)
    }

    fn link_sibling(&self, target: &str, link: &StoragePath) -> Result<bool> {
        let name = link.file_name().unwrap_or_default();
        check_sibling_target(link, name, target)?;
        self.fs.symlink(target, link)?;
        self.fs
            .sync_dir(&link.parent().unwrap_or_default())
            .map_err(|e| Error::NotDurable {
                path: self.fs.describe(link),
                source: Box::new(e),
            })?;
        Ok(true)
    }

    fn replace_with_link(&self, target: &str, link: &StoragePath) -> Result<bool> {
        let (parent, name) = checkpoint_parts(link)?;
        check_sibling_target(link, name, target)?;
        let temp = temporary(&parent, name, "-link")?;
        let _live = LiveGuard::new(temp.file_name().unwrap_or_default());
        self.fs.symlink(target, &temp)?;
        match self.move_into_place(&temp, link, true) {
            Ok(_) => Ok(true),
            Err(e @ Error::NotDurable { .. }) => Err(e),
            Err(e) => {
                if let Err(cleanup) = self.fs.remove_file(&temp) {
                    tracing::warn!(temporary = %temp, error = %cleanup, "could not remove a link that was not put in place");
                }
                Err(e)
            }
        }
    }

    fn remove_link(&self, link: &StoragePath) -> Result<()> {
        match self.fs.stat(link)? {
            Some(DirEntry {
                kind: EntryKind::Symlink,
                ..
            }) => {
                self.fs.remove_file(link)?;
                self.fs.sync_dir(&link.parent().unwrap_or_default())
            }
            Some(_) => Err(Error::UnsafePath {
                path: link.to_string(),
                reason: "not a symbolic link; refusing to remove it as one",
            }),
            None => Err(Error::NotFound {
                path: self.fs.describe(link),
            }),
        }
    }

    fn cleanup_temporaries(&self, parent: &StoragePath) -> Result<Vec<String>> {
        let entries = match self.fs.list(parent) {
            Ok(entries) => entries,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut removed = Vec::new();
        let now = SystemTime::now();
        for entry in entries {
            if !(entry.name.starts_with('.') && entry.name.contains(TEMP_MARKER)) {
                continue;
            }
            // Names of earlier versions record no owner: they are leftovers.
            if let Some(tag) = tag_of(&entry.name)
                && tag.may_be_live(&entry.name, now)
            {
                tracing::info!(temporary = %entry.name, "leaving the temporary of a save in flight alone");
                continue;
            }
            let path = parent.join(&entry.name)?;
            match entry.kind {
                EntryKind::Dir => remove_tree(self.fs.as_ref(), &path)?,
                // A link being put in place by replace_with_link.
                EntryKind::Symlink => self.fs.remove_file(&path)?,
                _ => continue,
            }
            tracing::warn!(temporary = %entry.name, "removed the leftovers of an interrupted save");
            removed.push(entry.name);
        }
        if !removed.is_empty() {
            self.fs.sync_dir(parent)?;
        }
        Ok(removed)
    }
}

/// Refuses a link target that is not a different sibling of `link` (named `name`): one path
/// component, not `.`, `..` or the link itself.
fn check_sibling_target(link: &StoragePath, name: &str, target: &str) -> Result<()> {
    if target.is_empty()
        || target.contains('/')
        || target == "."
        || target == ".."
        || target == name
    {
        return Err(Error::UnsafePath {
            path: format!("{link} -> {target}"),
            reason: "a link must point at a different sibling (one path component)",
        });
    }
    Ok(())
}

/// Removes `dir` and everything below it, never following symbolic links.
pub(super) fn remove_tree(fs: &dyn FileSystem, dir: &StoragePath) -> Result<()> {
    for entry in fs.list(dir)? {
        let path = dir.join(&entry.name)?;
        match entry.kind {
            EntryKind::Dir => remove_tree(fs, &path)?,
            _ => fs.remove_file(&path)?,
        }
    }
    fs.remove_dir(dir)
}

/// Fsyncs every directory below `dir`, deepest first, then `dir` itself.
fn sync_dirs_below(fs: &dyn FileSystem, dir: &StoragePath) -> Result<()> {
    for entry in fs.list(dir)? {
        if entry.kind == EntryKind::Dir {
            sync_dirs_below(fs, &dir.join(&entry.name)?)?;
        }
    }
    fs.sync_dir(dir)
}

struct FsRead(Box<dyn FsFile>);

impl ReadHandle for FsRead {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_at(offset, buf)
    }
    fn mapped(&self) -> Option<&[u8]> {
        self.0.mapped()
    }
}

struct FsTransaction {
    fs: Arc<dyn FileSystem>,
    temp: StoragePath,
    final_dir: StoragePath,
    /// Directories created inside the temporary, in creation order.
    dirs: Mutex<Vec<StoragePath>>,
    done: bool,
    /// Whether this rank began the transaction (and so commits or removes it), or joined it.
    owner: bool,
    /// The commit may swap out what is at `final_dir` ([`Storage::begin_replace`]).
    replace: bool,
    /// Marks the temporary as in use while the owner holds it.
    live: Option<LiveGuard>,
}

/// A checkpoint directory's parent and name; the storage root is no checkpoint.
fn checkpoint_parts(dir: &StoragePath) -> Result<(StoragePath, &str)> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Error::UnsafePath {
            path: dir.to_string(),
            reason: "a checkpoint cannot be the storage root itself",
        }),
    }
}

impl FsTransaction {
    /// A transaction writing `temp`; `live` is the owner's guard (`None`: joined).
    fn new(
        fs: Arc<dyn FileSystem>,
        temp: StoragePath,
        final_dir: StoragePath,
        live: Option<LiveGuard>,
    ) -> Self {
        FsTransaction {
            fs,
            temp,
            final_dir,
            dirs: Mutex::new(Vec::new()),
            done: false,
            owner: live.is_some(),
            replace: false,
            live,
        }
    }

    fn ensure_dirs(&self, rel: &StoragePath) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let mut current = StoragePath::root();
        for component in parent.components() {
            current = current.join(component)?;
            if !dirs.contains(&current) {
                // Another rank of a shared transaction may have made it already.
                match self.fs.mkdir(&self.temp.join(current.as_str())?) {
                    Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                dirs.push(current.clone());
            }
        }
        Ok(())
    }
}

impl Transaction for FsTransaction {
    fn create(&self, rel: &StoragePath, len: u64) -> Result<Box<dyn WriteHandle>> {
        if rel.is_root() {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "a file needs a name",
            });
        }
        self.ensure_dirs(rel)?;
        let file = self.fs.create_new(&self.temp.join(rel.as_str())?, len)?;
        Ok(Box::new(FsWrite { file, len }))
    }

    fn commit(mut self: Box<Self>, rel: &StoragePath, record: &[u8]) -> Result<()> {
        if !self.owner {
            return Err(Error::InvalidArgument {
                name: "transaction",
                reason: format!(
                    "{} was joined, not begun, by this rank: only its owner commits it",
                    self.fs.describe(&self.final_dir).display()
                ),
            });
        }
        self.ensure_dirs(rel)?;
        let file = self
            .fs
            .create_new(&self.temp.join(rel.as_str())?, record.len() as u64)?;
        file.write_at(0, record)?;
        file.sync()?;
        drop(file);
        // Every directory inside, including those other ranks of a shared transaction made.
        sync_dirs_below(self.fs.as_ref(), &self.temp)?;
        let storage = FsStorage::new(self.fs.clone());
        match storage.move_into_place(&self.temp, &self.final_dir, self.replace) {
            Ok(_) => {
                self.done = true;
                Ok(())
            }
            Err(e @ Error::NotDurable { .. }) => {
                self.done = true;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn list_written(&self, rel: &StoragePath) -> Result<Option<Vec<DirEntry>>> {
        self.fs.list(&self.temp.join(rel.as_str())?).map(Some)
    }

    fn carry(&self, rel: &StoragePath, source: &StoragePath, len: u64) -> Result<bool> {
        let _ = len;
        if rel.is_root() {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "a file needs a name",
            });
        }
        self.ensure_dirs(rel)?;
        match self.fs.hard_link(source, &self.temp.join(rel.as_str())?) {
            Ok(()) => Ok(true),
            // Gone meanwhile (a deletion), or no link possible here: the engine writes a copy.
            Err(Error::NotFound { .. }) => Ok(false),
            Err(Error::Io { source: e, .. })
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EOPNOTSUPP | libc::EPERM | libc::EMLINK)
                ) =>
            {
                tracing::debug!(source = %self.fs.describe(source).display(), error = %e, "no hard link here; writing a copy");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn abandon(mut self: Box<Self>) {
        // As a crashed process would: the temporary stays, and is no longer in use.
        self.done = true;
        self.live = None;
    }

    fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        if !self.owner {
            return Ok(());
        }
        let result = remove_tree(self.fs.as_ref(), &self.temp);
        match result {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn token(&self) -> String {
        self.temp.file_name().unwrap_or_default().to_string()
    }
}

impl Drop for FsTransaction {
    fn drop(&mut self) {
        if !self.done
            && self.owner
            && let Err(e) = remove_tree(self.fs.as_ref(), &self.temp)
        {
            tracing::warn!(temporary = %self.temp, error = %e, "could not remove an aborted save's temporary");
        }
    }
}

struct FsWrite {
    file: Box<dyn FsFile>,
    len: u64,
}

impl WriteHandle for FsWrite {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Error::InvalidArgument {
                name: "write range",
                reason: format!(
                    "{offset}+{} lies beyond the file's {} bytes",
                    data.len(),
                    self.len
                ),
            });
        }
        self.file.write_at(offset, data)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.file.sync()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        self.file.start_writeback(offset, len);
    }

    fn direct_part_size(&self) -> Option<u64> {
        self.file.direct_part()
    }
}
