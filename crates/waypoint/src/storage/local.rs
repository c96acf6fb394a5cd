//! [`LocalFs`]: the [`FileSystem`] primitives on a local POSIX directory, and [`local_storage`],
//! the storage most users want. This module owns the system calls (positional I/O, fsync,
//! `posix_fallocate`, `renameat2`, memory maps) and the rule that no symbolic link below the root
//! is ever followed. It must not contain commit logic: that is [`FsStorage`]'s.

use super::memory::read_past_end;
use super::{DirEntry, EntryKind, FileSystem, FsFile, FsStorage, SharedStorage, StoragePath};
use crate::error::{Error, Result};
use memmap2::{Mmap, MmapOptions};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A local directory holding checkpoints.
///
/// The root is canonicalized and opened once, at construction, and its descriptor held: every
/// operation starts from it (no walk of the root's own path each time, which counts when
/// discovery reads a small file of each of thousands of checkpoints). So the storage follows its
/// directory if that is renamed, and fails (`ENOENT`) if it is removed, rather than writing into a
/// new directory of the same name. The root may itself be reached through symbolic links, but
/// nothing below it is: every operation checks each component of its path and refuses a link
/// with [`Error::SymlinkRefused`] (links are still listed and removable, never followed).
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
    /// The root, opened at construction.
    root_fd: Arc<OwnedFd>,
    /// Tests: runs once, between resolving an operation's path and acting on it, where another
    /// process could swap a directory for a link.
    #[cfg(test)]
    race: RaceHook,
}

/// A test's action run inside an operation (see [`LocalFs::between`]), at most once.
#[cfg(test)]
#[derive(Clone, Default)]
struct RaceHook(Arc<std::sync::Mutex<Option<RaceAction>>>);

/// What another process does in a race test.
#[cfg(test)]
type RaceAction = Box<dyn FnOnce() + Send>;

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
/// Built with the `fault-injection` feature (tests and crash harnesses only), a non-empty
/// [`super::FailpointPlan`] in the environment variable [`super::FAILPOINT_ENV`] wraps the file
/// system in a [`super::FaultyFs`] injecting it, and an unparsable plan is
/// [`Error::InvalidArgument`] naming the variable. Without the feature (every ordinary build)
/// the variable is never read: a stray one in a user's job cannot fail a save.
pub fn local_storage(root: impl AsRef<Path>) -> Result<SharedStorage> {
    let local: Arc<dyn FileSystem> = Arc::new(LocalFs::new(root)?);
    Ok(Arc::new(FsStorage::new(with_failpoints(local)?)))
}

/// `fs` wrapped in the fault injector the environment asks for (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
fn with_failpoints(fs: Arc<dyn FileSystem>) -> Result<Arc<dyn FileSystem>> {
    Ok(match super::FailpointPlan::from_env()? {
        Some(plan) => {
            tracing::warn!(%plan, root = %fs.describe(&StoragePath::root()).display(), "storage failpoints active");
            Arc::new(super::FaultyFs::new(fs, plan))
        }
        None => fs,
    })
}

/// `fs` as it is: this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
fn with_failpoints(fs: Arc<dyn FileSystem>) -> Result<Arc<dyn FileSystem>> {
    Ok(fs)
}

impl LocalFs {
    /// Uses the directory `root`, creating it (and its parents) if missing.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io("canonicalize", root, e))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root_fd = rustix::fs::open(&root, flags, Mode::empty())
            .map_err(|e| Error::io("open directory", &root, e.into()))?;
        Ok(LocalFs {
            root,
            root_fd: Arc::new(root_fd),
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

    fn full(&self, path: &StoragePath) -> PathBuf {
        self.root.join(path.as_str())
    }

    /// A descriptor of its own for the root directory opened at construction (a `dup`, no path
    /// walk). The way to it may go through links (it was canonicalized once); nothing below it
    /// is reached through one.
    fn open_root(&self) -> Result<OwnedFd> {
        rustix::io::fcntl_dupfd_cloexec(&*self.root_fd, 0)
            .map_err(|e| Error::io("open directory", &self.root, e.into()))
    }

    /// The directory `dir` (below the root, or the root itself), opened without following a
    /// symbolic link anywhere below the root: one `openat2` with `RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6), else a walk of `openat` with
    /// `O_NOFOLLOW`, one component at a time from the root's descriptor. Either way the
    /// directory is resolved and opened in one go: a link swapped in later cannot redirect what
    /// is done through the descriptor.
    fn open_dir(&self, dir: &StoragePath) -> Result<OwnedFd> {
        if dir.is_root() {
            return self.open_root();
        }
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            &*self.root_fd,
            dir.as_str(),
            DIR_FLAGS,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => Ok(fd),
            // No openat2 here (an old kernel, a seccomp filter), or a link on the way (ELOOP;
            // ENOTDIR when the link is the last component): the walk works everywhere and
            // names the link.
            Err(
                Errno::NOSYS
                | Errno::PERM
                | Errno::INVAL
                | Errno::LOOP
                | Errno::XDEV
                | Errno::NOTDIR,
            ) => self.walk(self.open_root()?, dir),
            Err(e) => Err(Error::io("open directory", self.full(dir), e.into())),
        }
    }

    /// The file `path` opened for reading in one `openat2` from the root, following no link
    /// below it (as [`Self::open_dir`] resolves directories): two system calls fewer than opening
    /// its directory first, which counts when discovery reads a small file of each of thousands
    /// of checkpoints. `None` whenever that does not simply succeed (no `openat2`, a link on the
    /// way, a missing file...): the caller then takes the way that names what is wrong.
    fn open_file_beneath(&self, path: &StoragePath) -> Option<OwnedFd> {
        if path.is_root() {
            return None;
        }
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        rustix::fs::openat2(
            &*self.root_fd,
            path.as_str(),
            READ_FLAGS,
            Mode::empty(),
            resolve,
        )
        .ok()
    }

    /// [`Self::open_dir`] without `openat2`.
    fn walk(&self, mut fd: OwnedFd, dir: &StoragePath) -> Result<OwnedFd> {
        let mut current = self.root.clone();
        for component in dir.components() {
            current.push(component);
            fd = match rustix::fs::openat(&fd, component, DIR_FLAGS, Mode::empty()) {
                Ok(next) => next,
                Err(e) => return Err(refusal(&fd, component, current, e, "open directory")),
            };
        }
        Ok(fd)
    }

    /// The directory holding `path`, opened as [`Self::open_dir`] does, and `path`'s last
    /// component, for the `*at` call that acts on it without following it. A missing directory
    /// is [`Error::NotFound`] naming `path` itself.
    fn parent<'p>(&self, path: &'p StoragePath) -> Result<(OwnedFd, &'p str)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "the storage root itself cannot be created, removed or renamed",
            });
        };
        let dir = match self.open_dir(&parent) {
            Err(Error::NotFound { .. }) => Err(Error::NotFound {
                path: self.full(path),
            }),
            other => other,
        }?;
        self.between();
        Ok((dir, name))
    }
}

/// Flags of a file opened for reading. `O_NONBLOCK`: opening a FIFO planted in a checkpoint must
/// not hang; no effect on regular files.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// Flags of a directory opened to act inside it (read: listed; fsynced).
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The error of opening `name` in `dir` without following it: a symbolic link there is
/// [`Error::SymlinkRefused`] (`O_NOFOLLOW` says `ELOOP`, with `O_DIRECTORY` possibly `ENOTDIR`).
fn refusal(dir: &OwnedFd, name: &str, full: PathBuf, e: Errno, op: &'static str) -> Error {
    let is_link = || {
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
    };
    if e == Errno::LOOP || (e == Errno::NOTDIR && is_link()) {
        Error::SymlinkRefused { path: full }
    } else {
        Error::io(op, full, e.into())
    }
}

fn kind_of(file_type: FileType) -> EntryKind {
    match file_type {
        FileType::Symlink => EntryKind::Symlink,
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::File,
        _ => EntryKind::Other,
    }
}

fn entry(name: String, stat: &rustix::fs::Stat) -> DirEntry {
    let kind = kind_of(FileType::from_raw_mode(stat.st_mode));
    let size = if kind == EntryKind::File {
        u64::try_from(stat.st_size).unwrap_or(0)
    } else {
        0
    };
    DirEntry { name, kind, size }
}

impl FileSystem for LocalFs {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.full(path)
    }

    fn create_new(&self, path: &StoragePath, len: u64) -> Result<Box<dyn FsFile>> {
        let (dir, name) = self.parent(path)?;
        let full = self.full(path);
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o666))
            .map_err(|e| refusal(&dir, name, full.clone(), e, "create"))?;
        let file = File::from(fd);
        if let Err(e) = reserve(&file, len) {
            if let Err(cleanup) = rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
                tracing::warn!(path = %full.display(), error = %cleanup, "could not remove a file whose space reservation failed");
            }
            return Err(Error::io("reserve space for", full, e));
        }
        let mut local = LocalFile::new(file, full, len, false);
        local.direct = open_direct(&dir, name);
        Ok(Box::new(local))
    }

    fn open_read(&self, path: &StoragePath) -> Result<Box<dyn FsFile>> {
        let full = self.full(path);
        let fd = match self.open_file_beneath(path) {
            Some(fd) => fd,
            None => {
                let (dir, name) = self.parent(path)?;
                rustix::fs::openat(&dir, name, READ_FLAGS, Mode::empty())
                    .map_err(|e| refusal(&dir, name, full.clone(), e, "open"))?
            }
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| Error::io("stat", &full, e))?;
        if !meta.is_file() {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(Error::io("open", full, source));
        }
        Ok(Box::new(LocalFile::new(file, full, meta.len(), true)))
    }

    fn mkdir(&self, path: &StoragePath) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777))
            .map_err(|e| Error::io("create directory", self.full(path), e.into()))
    }

    fn sync_dir(&self, path: &StoragePath) -> Result<()> {
        let dir = self.open_dir(path)?;
        rustix::fs::fsync(&dir).map_err(|e| Error::io("fsync directory", self.full(path), e.into()))
    }

    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rename_noreplace(&from_dir, from_name, &to_dir, to_name)
            .map_err(|e| Error::io("rename", self.full(from), e))
    }

    fn rename_exchange(&self, a: &StoragePath, b: &StoragePath) -> Result<()> {
        let (a_dir, a_name) = self.parent(a)?;
        let (b_dir, b_name) = self.parent(b)?;
        rename_exchange(&a_dir, a_name, &b_dir, b_name)
            .map_err(|e| Error::io("exchange", self.full(a), e))
    }

    fn remove_file(&self, path: &StoragePath) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())
            .map_err(|e| Error::io("remove", self.full(path), e.into()))
    }

    fn symlink(&self, target: &str, link: &StoragePath) -> Result<()> {
        let (dir, name) = self.parent(link)?;
        rustix::fs::symlinkat(target, &dir, name)
            .map_err(|e| Error::io("symlink", self.full(link), e.into()))
    }

    fn hard_link(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        // Only a regular file: linkat without AT_SYMLINK_FOLLOW would link a symbolic link
        // itself, and a checkpoint never holds one.
        let stat = rustix::fs::statat(&from_dir, from_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io("stat", self.full(from), e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Symlink => {
                return Err(Error::SymlinkRefused {
                    path: self.full(from),
                });
            }
            _ => {
                let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
                return Err(Error::io("hard link", self.full(from), source));
            }
        }
        rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
            .map_err(|e| Error::io("hard link", self.full(to), e.into()))
    }

    fn remove_dir(&self, path: &StoragePath) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| Error::io("remove directory", self.full(path), e.into()))
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        let full = self.full(dir);
        let fd = self.open_dir(dir)?;
        self.between();
        let listing =
            rustix::fs::Dir::read_from(&fd).map_err(|e| Error::io("list", &full, e.into()))?;
        let mut entries = Vec::new();
        for item in listing {
            let item = item.map_err(|e| Error::io("list", &full, e.into()))?;
            let name = match item.file_name().to_str() {
                Ok("." | "..") => continue,
                Ok(name) => name.to_owned(),
                Err(_) => {
                    tracing::warn!(dir = %full.display(), name = ?item.file_name(), "skipping an entry whose name is not UTF-8");
                    continue;
                }
            };
            // The directory's own entry says what a subdirectory or a link is (no size to
            // read): no `stat` for each of thousands of checkpoints. Files, and entries of file
            // systems that do not say (`DT_UNKNOWN`), are stat'ed.
            let kind = kind_of(item.file_type());
            if matches!(kind, EntryKind::Dir | EntryKind::Symlink) {
                entries.push(DirEntry {
                    name,
                    kind,
                    size: 0,
                });
                continue;
            }
            match rustix::fs::statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => entries.push(entry(name, &stat)),
                // Removed since the listing saw it (a concurrent remove_dir_all): it is gone.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::io("stat", full.join(&name), e.into())),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        if path.is_root() {
            let stat = rustix::fs::fstat(&*self.root_fd)
                .map_err(|e| Error::io("stat", &self.root, e.into()))?;
            return Ok(Some(entry(String::new(), &stat)));
        }
        let (dir, name) = match self.parent(path) {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(entry(name.to_owned(), &stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("stat", self.full(path), e.into())),
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

/// Renames `from_name` in `from_dir` to `to_name` in `to_dir`, failing with `AlreadyExists`
/// instead of replacing it. Neither name is followed if it is a link.
fn rename_noreplace(
    from_dir: &OwnedFd,
    from_name: &str,
    to_dir: &OwnedFd,
    to_name: &str,
) -> io::Result<()> {
    let flags = RenameFlags::NOREPLACE;
    match rustix::fs::renameat_with(from_dir, from_name, to_dir, to_name, flags) {
        Ok(()) => return Ok(()),
        // The file system (or kernel) lacks RENAME_NOREPLACE: check, then rename.
        Err(Errno::INVAL | Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::statat(to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        Err(Errno::NOENT) => Ok(rustix::fs::renameat(from_dir, from_name, to_dir, to_name)?),
        Err(e) => Err(e.into()),
    }
}

/// Swaps `a_name` in `a_dir` and `b_name` in `b_dir` atomically (neither followed if a link);
/// `EINVAL` where the kernel or file system cannot (NFS, non-Linux).
fn rename_exchange(a_dir: &OwnedFd, a_name: &str, b_dir: &OwnedFd, b_name: &str) -> io::Result<()> {
    match rustix::fs::renameat_with(a_dir, a_name, b_dir, b_name, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(Errno::NOSYS) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        Err(e) => Err(e.into()),
    }
}

/// Writes of this size, page-aligned, go around the page cache (see [`FsFile::direct_part`]).
const DIRECT_PART: u64 = 1 << 20;

/// The alignment `O_DIRECT` needs of offsets, lengths and memory here.
const DIRECT_ALIGN: usize = 4096;

/// The new file `name` in `dir` opened again for writing with `O_DIRECT`, where the file system
/// allows it (tmpfs does not: `None`, and every write goes through the page cache).
fn open_direct(dir: &OwnedFd, name: &str) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => return Some(File::from(fd)),
            Err(e) => {
                tracing::debug!(file = name, error = %e, "no O_DIRECT here; writing through the page cache")
            }
        }
    }
    let _ = (dir, name);
    None
}

/// An open local file; files opened for reading can be memory-mapped.
struct LocalFile {
    file: File,
    /// The same new file opened with `O_DIRECT`, for whole aligned writes.
    direct: Option<File>,
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
            direct: None,
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
        let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
            && data.len().is_multiple_of(DIRECT_ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if let (Some(direct), true) = (&self.direct, aligned) {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // Refused after all (a file system that accepts the flag but not this write):
                // the page cache takes it.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(Error::io("write", &self.path, e)),
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    fn direct_part(&self) -> Option<u64> {
        self.direct.as_ref().map(|_| DIRECT_PART)
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
        start_writeback(&self.file, offset, len);
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

/// Starts writing back `len` bytes of `file` at `offset` (Linux `sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`: it waits for nothing; an fsync later is what makes them durable).
/// Elsewhere a no-op. Shared with the DCP writer, which writes plain files.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
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
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoragePath {
        StoragePath::new(s).unwrap()
    }

    /// The root is held open from construction: once it is removed, a write fails naming what
    /// it wrote, and a directory made at the same path meanwhile receives nothing.
    #[test]
    fn a_removed_root_fails_instead_of_writing_into_a_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let fs = LocalFs::new(&root).unwrap();
        fs.mkdir(&p("ck")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        let err = fs.create_new(&p("late.bin"), 4).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("late.bin"), "{err}");
        assert!(fs.mkdir(&p("ck2")).is_err());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }

    /// A renamed root is followed: what was written before is read through the same storage.
    #[test]
    fn a_renamed_root_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = LocalFs::new(tmp.path().join("root")).unwrap();
        fs.mkdir(&p("ck")).unwrap();
        std::fs::rename(tmp.path().join("root"), tmp.path().join("moved")).unwrap();
        let names: Vec<String> = fs
            .list(&StoragePath::root())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["ck"]);
        fs.mkdir(&p("ck/weights")).unwrap();
        assert!(tmp.path().join("moved/ck/weights").is_dir());
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

    /// The walk (what runs where the kernel has no `openat2`) refuses a link on the way and
    /// names it, as `openat2` does.
    #[test]
    fn the_walk_without_openat2_refuses_links_and_names_them() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = LocalFs::new(tmp.path()).unwrap();
        std::fs::create_dir_all(fs.root().join("a/real/b")).unwrap();
        std::os::unix::fs::symlink("real", fs.root().join("a/link")).unwrap();
        let walked = fs.walk(fs.open_root().unwrap(), &p("a/real/b"));
        assert!(walked.is_ok());
        match fs.walk(fs.open_root().unwrap(), &p("a/link/b")) {
            Err(Error::SymlinkRefused { path }) => assert_eq!(path, fs.root().join("a/link")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fs.open_dir(&p("a/link/b")),
            Err(Error::SymlinkRefused { .. })
        ));
        assert!(matches!(
            fs.walk(fs.open_root().unwrap(), &p("a/missing")),
            Err(Error::NotFound { .. })
        ));
    }
}
