//! [`LocalFs`]: the [`FileSystem`] primitives on a local POSIX directory, and [`local_storage`],
//! the storage most users want. This module owns the system calls (positional I/O, fsync,
//! `posix_fallocate`, `renameat2`, memory maps) and the rule that no symbolic link below the root
//! is ever followed. It must not contain commit logic: that is [`FsStorage`]'s.

use super::memory::read_past_end;
use super::{
    DirEntry, EntryKind, FailpointPlan, FaultyFs, FileSystem, FsFile, FsStorage, SharedStorage,
    StoragePath,
};
use crate::error::{Error, Result};
use memmap2::{Mmap, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A local directory holding checkpoints.
///
/// The root is canonicalized once, at construction; it may itself be reached through symbolic
/// links, but nothing below it is: every operation checks each component of its path and refuses
/// a link with [`Error::SymlinkRefused`] (links are still listed and removable, never followed).
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
    /// Tests: runs once, between resolving an operation's path and acting on it, where another
    /// process could swap a directory for a link.
    #[cfg(test)]
    race: RaceHook,
}

/// A test's action run inside an operation (see [`LocalFs::race`]), at most once.
#[cfg(test)]
#[derive(Clone, Default)]
struct RaceHook(Arc<std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>>);

#[cfg(test)]
impl std::fmt::Debug for RaceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaceHook")
    }
}

#[cfg(test)]
impl RaceHook {
    fn fire(&self) {
        let action = self.0.lock().map(|mut a| a.take()).unwrap_or_default();
        if let Some(action) = action {
            action();
        }
    }
}

/// A [`FsStorage`] over the local directory `root` (created if missing).
///
/// When the environment variable [`super::FAILPOINT_ENV`] holds a non-empty [`FailpointPlan`],
/// the file system is wrapped in a [`FaultyFs`] injecting it; an unparsable plan is
/// [`Error::InvalidArgument`] naming the variable.
pub fn local_storage(root: impl AsRef<Path>) -> Result<SharedStorage> {
    let local: Arc<dyn FileSystem> = Arc::new(LocalFs::new(root)?);
    let fs: Arc<dyn FileSystem> = match FailpointPlan::from_env()? {
        Some(plan) => {
            tracing::warn!(%plan, root = %local.describe(&StoragePath::root()).display(), "storage failpoints active");
            Arc::new(FaultyFs::new(local, plan))
        }
        None => local,
    };
    Ok(Arc::new(FsStorage::new(fs)))
}

impl LocalFs {
    /// Uses the directory `root`, creating it (and its parents) if missing.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io("canonicalize", root, e))?;
        Ok(LocalFs {
            root,
            #[cfg(test)]
            race: RaceHook::default(),
        })
    }

    /// Where a racing process acts in tests: between resolving a path and using it.
    fn between(&self) {
        #[cfg(test)]
        self.race.fire();
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `path`, after checking that no component before the last is a
    /// symbolic link. The last component is the caller's to check (or not to follow).
    fn checked(&self, path: &StoragePath) -> Result<PathBuf> {
        let mut current = self.root.clone();
        let mut components = path.components().peekable();
        while let Some(component) = components.next() {
            current.push(component);
            if components.peek().is_none() {
                break;
            }
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::SymlinkRefused { path: current });
                }
                Ok(_) => {}
                // Nothing further down exists: the operation itself reports it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Ok(self.root.join(path.as_str()));
                }
                Err(e) => return Err(Error::io("stat", current, e)),
            }
        }
        Ok(current)
    }

    /// Like [`Self::checked`], for operations that create, remove or rename `path` itself.
    fn checked_entry(&self, path: &StoragePath) -> Result<PathBuf> {
        if path.is_root() {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "the storage root itself cannot be created, removed or renamed",
            });
        }
        self.checked(path)
    }
}

fn kind_of(file_type: std::fs::FileType) -> EntryKind {
    if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

fn entry(name: String, meta: &std::fs::Metadata) -> DirEntry {
    let kind = kind_of(meta.file_type());
    let size = if kind == EntryKind::File {
        meta.len()
    } else {
        0
    };
    DirEntry { name, kind, size }
}

impl FileSystem for LocalFs {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.root.join(path.as_str())
    }

    fn create_new(&self, path: &StoragePath, len: u64) -> Result<Box<dyn FsFile>> {
        let full = self.checked_entry(path)?;
        self.between();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|e| Error::io("create", &full, e))?;
        if let Err(e) = reserve(&file, len) {
            if let Err(cleanup) = std::fs::remove_file(&full) {
                tracing::warn!(path = %full.display(), error = %cleanup, "could not remove a file whose space reservation failed");
            }
            return Err(Error::io("reserve space for", full, e));
        }
        Ok(Box::new(LocalFile::new(file, full, len, false)))
    }

    fn open_read(&self, path: &StoragePath) -> Result<Box<dyn FsFile>> {
        let full = self.checked(path)?;
        self.between();
        // O_NONBLOCK: opening a FIFO planted in a checkpoint must not hang; no effect on files.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&full)
            .map_err(|e| Error::io("open", &full, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", &full, e))?;
        if !meta.is_file() {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(Error::io("open", full, source));
        }
        Ok(Box::new(LocalFile::new(file, full, meta.len(), true)))
    }

    fn mkdir(&self, path: &StoragePath) -> Result<()> {
        let full = self.checked_entry(path)?;
        std::fs::create_dir(&full).map_err(|e| Error::io("create directory", full, e))
    }

    fn sync_dir(&self, path: &StoragePath) -> Result<()> {
        let full = self.checked(path)?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|e| Error::io("open directory", &full, e))?;
        dir.sync_all()
            .map_err(|e| Error::io("fsync directory", full, e))
    }

    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let from = self.checked_entry(from)?;
        let to = self.checked_entry(to)?;
        rename_noreplace(&from, &to).map_err(|e| Error::io("rename", from, e))
    }

    fn remove_file(&self, path: &StoragePath) -> Result<()> {
        let full = self.checked_entry(path)?;
        std::fs::remove_file(&full).map_err(|e| Error::io("remove", full, e))
    }

    fn symlink(&self, target: &str, link: &StoragePath) -> Result<()> {
        let full = self.checked_entry(link)?;
        std::os::unix::fs::symlink(target, &full).map_err(|e| Error::io("symlink", full, e))
    }

    fn remove_dir(&self, path: &StoragePath) -> Result<()> {
        let full = self.checked_entry(path)?;
        std::fs::remove_dir(&full).map_err(|e| Error::io("remove directory", full, e))
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        let full = self.checked(dir)?;
        self.between();
        let meta = std::fs::symlink_metadata(&full).map_err(|e| Error::io("list", &full, e))?;
        if meta.file_type().is_symlink() {
            return Err(Error::SymlinkRefused { path: full });
        }
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&full).map_err(|e| Error::io("list", &full, e))? {
            let item = item.map_err(|e| Error::io("list", &full, e))?;
            let name = match item.file_name().into_string() {
                Ok(name) => name,
                Err(name) => {
                    tracing::warn!(dir = %full.display(), ?name, "skipping an entry whose name is not UTF-8");
                    continue;
                }
            };
            // DirEntry::metadata does not follow symbolic links (like symlink_metadata).
            match item.metadata() {
                Ok(meta) => entries.push(entry(name, &meta)),
                // Removed since readdir saw it (a concurrent remove_dir_all): it is gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("stat", item.path(), e)),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        let full = self.checked(path)?;
        match std::fs::symlink_metadata(&full) {
            Ok(meta) => Ok(Some(entry(
                path.file_name().unwrap_or_default().to_owned(),
                &meta,
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", full, e)),
        }
    }
}

/// Makes a new file `len` bytes long, reserving the blocks where the file system can, so that a
/// full disk fails now rather than halfway through the writes.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: the descriptor is open for writing for the duration of the call.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EOPNOTSUPP | libc::EINVAL => {} // not supported here: fall back to a sparse file
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
    file.set_len(len)
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c_string = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        };
        let (c_from, c_to) = (c_string(from)?, c_string(to)?);
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c_from.as_ptr(),
                libc::AT_FDCWD,
                c_to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
        // The file system (or kernel) lacks RENAME_NOREPLACE: check, then rename.
    }
    match std::fs::symlink_metadata(to) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// An open local file; files opened for reading can be memory-mapped.
struct LocalFile {
    file: File,
    path: PathBuf,
    /// The length at creation or opening.
    len: u64,
    read_only: bool,
    map: OnceLock<Option<Mmap>>,
}

impl LocalFile {
    fn new(file: File, path: PathBuf, len: u64, read_only: bool) -> Self {
        LocalFile {
            file,
            path,
            len,
            read_only,
            map: OnceLock::new(),
        }
    }

    fn create_map(&self) -> Option<Mmap> {
        let len = usize::try_from(self.len).ok()?;
        // SAFETY: only files opened with `open_read` are mapped, and those are the files of
        // committed checkpoints, which waypoint never modifies or truncates (a checkpoint is
        // written under a temporary name and only renamed into place once complete). Another
        // process changing them would be outside the contract, as for any mapped file.
        match unsafe { MmapOptions::new().len(len).map(&self.file) } {
            Ok(map) => Some(map),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot memory-map; reading instead");
                None
            }
        }
    }
}

impl FsFile for LocalFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if self.read_only && end.is_none_or(|end| end > self.len) {
            return Err(read_past_end(&self.path, offset, buf.len(), self.len));
        }
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(read_past_end(&self.path, offset, buf.len(), self.len))
            }
            Err(e) => Err(Error::io("read", &self.path, e)),
        }
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (
                libc::off64_t::try_from(offset),
                libc::off64_t::try_from(len),
            ) else {
                return;
            };
            // SAFETY: the descriptor is open for the call; the flag only starts writeback.
            let _ = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
    }

    fn mapped(&self) -> Option<&[u8]> {
        if !self.read_only {
            return None;
        }
        if self.len == 0 {
            return Some(&[]);
        }
        self.map.get_or_init(|| self.create_map()).as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoragePath {
        StoragePath::new(s).unwrap()
    }

    /// A local root `root/` with `root/ck/weights/` holding `inside.bin`, and beside it a
    /// directory `outside/` with `secret.bin`; the file system arms a race that, once inside its
    /// next operation, moves `ck/weights` away and plants `ck/weights -> ../../outside`.
    fn raced() -> (tempfile::TempDir, LocalFs) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("ck/weights")).unwrap();
        std::fs::write(root.join("ck/weights/inside.bin"), b"inside").unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret.bin"), b"secret").unwrap();
        let fs = LocalFs::new(&root).unwrap();
        let weights = fs.root().join("ck/weights");
        *fs.race.0.lock().unwrap() = Some(Box::new(move || {
            std::fs::rename(&weights, weights.with_file_name("weights.real")).unwrap();
            std::os::unix::fs::symlink("../../outside", &weights).unwrap();
        }));
        (tmp, fs)
    }

    fn outside(tmp: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A link swapped in for a directory after its path was checked is never followed: a file
    /// created through that path lands in the directory that was checked, or the creation fails;
    /// nothing appears outside the root.
    #[test]
    fn a_link_swapped_in_after_the_check_is_not_followed_by_create() {
        let (tmp, fs) = raced();
        let created = fs.create_new(&p("ck/weights/new.bin"), 4);
        if let Ok(file) = &created {
            file.write_at(0, b"data").unwrap();
        }
        assert_eq!(outside(&tmp), ["secret.bin"], "created outside the root");
        if created.is_ok() {
            let real = fs.root().join("ck/weights.real/new.bin");
            assert_eq!(std::fs::read(real).unwrap(), b"data");
        }
    }

    /// The same race on a read: the file read is never the one outside the root.
    #[test]
    fn a_link_swapped_in_after_the_check_is_not_followed_by_open() {
        let (_tmp, fs) = raced();
        std::fs::write(fs.root().join("ck/weights/secret.bin"), b"inside too").unwrap();
        if let Ok(file) = fs.open_read(&p("ck/weights/secret.bin")) {
            let mut buf = vec![0; file.len() as usize];
            file.read_at(0, &mut buf).unwrap();
            assert_eq!(buf, b"inside too", "read a file outside the root");
        }
    }

    /// And on a listing: never the entries of the directory outside the root.
    #[test]
    fn a_link_swapped_in_after_the_check_is_not_followed_by_list() {
        let (_tmp, fs) = raced();
        if let Ok(entries) = fs.list(&p("ck/weights")) {
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["inside.bin"], "listed a directory outside the root");
        }
    }
}
