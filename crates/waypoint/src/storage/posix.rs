//! The POSIX-like primitives a [`FsStorage`](super::FsStorage) commits on ([`FileSystem`],
//! [`FsFile`]) and the helpers on trees of them that the commit protocol (`fs.rs`) and
//! `add_dir.rs` share: temporary names, removal and fsync of a whole tree.
//!
//! It must not hold any protocol (which operation comes when is `fs.rs`'s) nor any system call
//! (the implementations are `local.rs`, `memory.rs` and `faulty.rs`).

use super::owner::new_tag;
use super::{DirEntry, EntryKind, StoragePath};
use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;

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

/// A new temporary name for `name` in `parent`, owned by this process.
pub(super) fn temporary(parent: &StoragePath, name: &str, suffix: &str) -> Result<StoragePath> {
    parent.join(&format!(".{name}{TEMP_MARKER}{}{suffix}", new_tag()))
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
pub(super) fn sync_dirs_below(fs: &dyn FileSystem, dir: &StoragePath) -> Result<()> {
    for entry in fs.list(dir)? {
        if entry.kind == EntryKind::Dir {
            sync_dirs_below(fs, &dir.join(&entry.name)?)?;
        }
    }
    fs.sync_dir(dir)
}
