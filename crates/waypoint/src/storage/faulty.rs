//! [`FaultyFs`]: a [`FileSystem`] wrapper that injects faults by operation index, and the
//! [`FailpointPlan`] that says which. It owns counting and injecting; it never changes what a
//! successful operation does, so a run with an empty plan behaves exactly like the inner file
//! system. Programs reach it only by building one; the environment variable [`FAILPOINT_ENV`]
//! exists only with the `fault-injection` feature (the crash tests and harnesses).

use super::{DirEntry, FileSystem, FsFile, StoragePath};
use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Environment variable holding a [`FailpointPlan`] for [`super::local_storage`], e.g.
/// `WAYPOINT_FAILPOINT=abort@12` to kill the process at its 12th storage operation. Read only in
/// builds with the `fault-injection` feature (tests, crash harnesses); ignored otherwise.
pub const FAILPOINT_ENV: &str = "WAYPOINT_FAILPOINT";

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `fail@N`: operation `N` fails with [`Error::InjectedFault`]; later ones succeed.
    Fail,
    /// `crash@N`: operation `N` and every later one fail with [`Error::InjectedFault`], as if the
    /// process had died there (in-process; pair with [`super::MemoryFs::power_cut`]).
    Crash,
    /// `abort@N`: the process calls [`std::process::abort`] at operation `N`, a real crash.
    Abort,
    /// `short@N`: if operation `N` is a write, only the first half of its bytes is written and
    /// then it fails (a torn write); any other operation `N` fails like `fail@N`.
    ShortWrite,
    /// `enospc@BYTES`: a write fails with [`Error::NoSpace`] once it would bring the bytes written
    /// in total above `BYTES`; every later write fails too.
    NoSpace,
    /// `pause-write@K`: the `K`-th write (counting [`FsFile::write_at`] calls only) prints
    /// `waypoint failpoint: paused in write K …` on stderr and never returns, so that a test
    /// reading stderr can kill the process while a save's writes are in progress. The other
    /// threads carry on.
    PauseWrite,
}

impl FaultKind {
    const ALL: [FaultKind; 6] = [
        FaultKind::Fail,
        FaultKind::Crash,
        FaultKind::Abort,
        FaultKind::ShortWrite,
        FaultKind::NoSpace,
        FaultKind::PauseWrite,
    ];

    /// The keyword naming this kind in a plan.
    pub fn keyword(self) -> &'static str {
        match self {
            FaultKind::Fail => "fail",
            FaultKind::Crash => "crash",
            FaultKind::Abort => "abort",
            FaultKind::ShortWrite => "short",
            FaultKind::NoSpace => "enospc",
            FaultKind::PauseWrite => "pause-write",
        }
    }
}

/// Which faults a [`FaultyFs`] injects: a list of `(kind, number)` clauses.
///
/// # Grammar
/// ```text
/// plan   = "" | clause { "," clause }
/// clause = kind "@" number            (spaces around a clause are ignored)
/// kind   = "fail" | "crash" | "abort" | "short" | "enospc" | "pause-write"
/// number = decimal u64: a 1-based operation index, a byte count for "enospc", or a 1-based
///          count of writes for "pause-write"
/// ```
/// Operations are counted from 1 across all threads: every [`FileSystem`] call except
/// `describe`, plus every [`FsFile::write_at`] and [`FsFile::sync`]. See [`FaultKind`] for what
/// each kind does.
///
/// ```
/// use waypoint::storage::{FailpointPlan, FaultKind};
/// let plan: FailpointPlan = "fail@3, enospc@4096".parse().unwrap();
/// assert_eq!(plan.clauses(), [(FaultKind::Fail, 3), (FaultKind::NoSpace, 4096)]);
/// assert_eq!(plan.to_string(), "fail@3,enospc@4096");
/// assert!("fail@0".parse::<FailpointPlan>().is_err()); // operations count from 1
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailpointPlan {
    clauses: Vec<(FaultKind, u64)>,
}

impl FailpointPlan {
    /// A plan with one clause.
    pub fn new(kind: FaultKind, at: u64) -> Self {
        FailpointPlan::default().and(kind, at)
    }

    /// This plan with one more clause.
    pub fn and(mut self, kind: FaultKind, at: u64) -> Self {
        self.clauses.push((kind, at));
        self
    }

    /// The clauses, in the order given.
    pub fn clauses(&self) -> &[(FaultKind, u64)] {
        &self.clauses
    }

    /// Whether the plan injects nothing.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// The plan in [`FAILPOINT_ENV`], or `None` when the variable is unset or empty. Only with
    /// the `fault-injection` feature: nothing else in an ordinary build reads the variable.
    #[cfg(feature = "fault-injection")]
    pub fn from_env() -> Result<Option<Self>> {
        let Some(value) = std::env::var_os(FAILPOINT_ENV) else {
            return Ok(None);
        };
        let invalid = |reason: String| Error::InvalidArgument {
            name: FAILPOINT_ENV,
            reason,
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid(format!("{value:?} is not UTF-8")))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        match text.parse::<FailpointPlan>() {
            Ok(plan) => Ok(Some(plan)),
            Err(Error::InvalidArgument { reason, .. }) => Err(invalid(reason)),
            Err(e) => Err(e),
        }
    }

    fn has(&self, kind: FaultKind, index: u64) -> bool {
        self.clauses.contains(&(kind, index))
    }

    fn crashed_by(&self, index: u64) -> bool {
        self.clauses
            .iter()
            .any(|&(k, at)| k == FaultKind::Crash && at <= index)
    }

    fn space_limit(&self) -> Option<u64> {
        self.clauses
            .iter()
            .filter(|(kind, _)| *kind == FaultKind::NoSpace)
            .map(|&(_, bytes)| bytes)
            .min()
    }
}

impl FromStr for FailpointPlan {
    type Err = Error;

    /// Parses the grammar documented on [`FailpointPlan`]; errors are [`Error::InvalidArgument`].
    fn from_str(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidArgument {
            name: "failpoint plan",
            reason,
        };
        let mut plan = FailpointPlan::default();
        if text.trim().is_empty() {
            return Ok(plan);
        }
        for clause in text.split(',').map(str::trim) {
            let Some((keyword, number)) = clause.split_once('@') else {
                return Err(invalid(format!("clause {clause:?} is not KIND@NUMBER")));
            };
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.keyword() == keyword)
                .ok_or_else(|| invalid(format!("unknown fault {keyword:?} in {clause:?}")))?;
            let at: u64 = number
                .parse()
                .map_err(|_| invalid(format!("{number:?} in {clause:?} is not a whole number")))?;
            if at == 0 && kind != FaultKind::NoSpace {
                return Err(invalid(format!(
                    "{clause:?}: operations are counted from 1"
                )));
            }
            plan = plan.and(kind, at);
        }
        Ok(plan)
    }
}

impl fmt::Display for FailpointPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, at)) in self.clauses.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{}@{at}", kind.keyword())?;
        }
        Ok(())
    }
}

/// A [`FileSystem`] that counts operations and injects the faults of a [`FailpointPlan`].
#[derive(Debug)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    injector: Arc<Injector>,
}

/// The first fault a [`FaultyFs`] injected: which operation, what it was, on which path. Tests
/// use it to account for every injected failure (fired, and where) instead of counting errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedOp {
    /// The operation's 1-based index.
    pub index: u64,
    /// What the operation was (`"write"`, `"rename"`, `"remove"`, …).
    pub op: &'static str,
    /// The path it was on.
    pub path: PathBuf,
    /// The name of the thread that made the call (`waypoint-save`, `waypoint-delete`, …).
    pub thread: Option<String>,
}

/// The counters shared by a [`FaultyFs`] and the files it opened.
#[derive(Debug)]
struct Injector {
    plan: FailpointPlan,
    ops: AtomicU64,
    writes: AtomicU64,
    written: AtomicU64,
    fired: Mutex<Option<InjectedOp>>,
}

/// What a counted write should do.
enum Fate {
    Proceed,
    /// A torn write at this operation index.
    Tear(u64),
}

impl Injector {
    /// Counts one operation and decides its fate.
    fn next(&self, op: &'static str, path: &Path, is_write: bool) -> Result<Fate> {
        let index = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        let plan = &self.plan;
        if is_write {
            let write = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if plan.has(FaultKind::PauseWrite, write) {
                pause(write, index, path);
            }
        }
        let fault = |kind: FaultKind| {
            tracing::warn!(op_index = index, op, path = %path.display(), fault = kind.keyword(), "injected storage fault");
            self.record(index, op, path);
            Error::InjectedFault {
                op_index: index,
                op,
                path: path.to_owned(),
            }
        };
        if plan.has(FaultKind::Abort, index) {
            tracing::warn!(op_index = index, op, path = %path.display(), "injected abort: killing the process");
            std::process::abort();
        }
        if plan.crashed_by(index) {
            return Err(fault(FaultKind::Crash));
        }
        if plan.has(FaultKind::Fail, index) {
            return Err(fault(FaultKind::Fail));
        }
        if plan.has(FaultKind::ShortWrite, index) {
            if is_write {
                tracing::warn!(op_index = index, op, path = %path.display(), "injected torn write");
                self.record(index, op, path);
                return Ok(Fate::Tear(index));
            }
            return Err(fault(FaultKind::ShortWrite));
        }
        Ok(Fate::Proceed)
    }

    /// Remembers the first injected fault.
    fn record(&self, index: u64, op: &'static str, path: &Path) {
        let mut fired = self.fired.lock().unwrap_or_else(|e| e.into_inner());
        if fired.is_none() {
            *fired = Some(InjectedOp {
                index,
                op,
                path: path.to_owned(),
                thread: std::thread::current().name().map(str::to_owned),
            });
        }
    }

    /// Counts `bytes` against the `enospc` limit, if any.
    fn reserve(&self, path: &Path, bytes: u64) -> Result<()> {
        let Some(limit) = self.plan.space_limit() else {
            return Ok(());
        };
        let before = self.written.fetch_add(bytes, Ordering::SeqCst);
        if before.saturating_add(bytes) > limit {
            tracing::warn!(path = %path.display(), limit, "injected no space left on device");
            self.record(self.ops.load(Ordering::SeqCst), "write", path);
            return Err(Error::NoSpace {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

/// `pause-write@K`: says so on stderr (flushed, one line) and blocks this thread forever.
fn pause(write: u64, index: u64, path: &Path) -> ! {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    // A test reads this line to kill the process; if stderr is gone there is no one to tell.
    let _ = writeln!(
        stderr,
        "waypoint failpoint: paused in write {write} (operation {index}) to {}",
        path.display()
    );
    let _ = stderr.flush();
    drop(stderr);
    loop {
        std::thread::park();
    }
}

impl FaultyFs {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: Arc<dyn FileSystem>, plan: FailpointPlan) -> Self {
        FaultyFs {
            inner,
            injector: Arc::new(Injector {
                plan,
                ops: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                written: AtomicU64::new(0),
                fired: Mutex::new(None),
            }),
        }
    }

    /// How many operations have been counted so far (including failed ones).
    pub fn ops(&self) -> u64 {
        self.injector.ops.load(Ordering::SeqCst)
    }

    /// The first fault injected so far (`None`: none fired, e.g. because the run ended before
    /// the planned operation). Aborts and pauses never return, so they are never recorded.
    pub fn fired(&self) -> Option<InjectedOp> {
        self.injector
            .fired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The plan in force.
    pub fn plan(&self) -> &FailpointPlan {
        &self.injector.plan
    }

    fn step(&self, op: &'static str, path: &StoragePath) -> Result<()> {
        self.injector
            .next(op, &self.inner.describe(path), false)
            .map(|_| ())
    }

    fn wrap(&self, file: Box<dyn FsFile>, path: &StoragePath) -> Box<dyn FsFile> {
        Box::new(FaultyFile {
            inner: file,
            path: self.inner.describe(path),
            injector: self.injector.clone(),
        })
    }
}

impl FileSystem for FaultyFs {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.inner.describe(path)
    }

    fn create_new(&self, path: &StoragePath, len: u64) -> Result<Box<dyn FsFile>> {
        self.step("create", path)?;
        Ok(self.wrap(self.inner.create_new(path, len)?, path))
    }

    fn open_read(&self, path: &StoragePath) -> Result<Box<dyn FsFile>> {
        self.step("open", path)?;
        Ok(self.wrap(self.inner.open_read(path)?, path))
    }

    fn mkdir(&self, path: &StoragePath) -> Result<()> {
        self.step("create directory", path)?;
        self.inner.mkdir(path)
    }

    fn sync_dir(&self, path: &StoragePath) -> Result<()> {
        self.step("fsync directory", path)?;
        self.inner.sync_dir(path)
    }

    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        self.step("rename", from)?;
        self.inner.rename_noreplace(from, to)
    }

    fn rename_exchange(&self, a: &StoragePath, b: &StoragePath) -> Result<()> {
        self.step("exchange", a)?;
        self.inner.rename_exchange(a, b)
    }

    fn remove_file(&self, path: &StoragePath) -> Result<()> {
        self.step("remove", path)?;
        self.inner.remove_file(path)
    }

    fn symlink(&self, target: &str, link: &StoragePath) -> Result<()> {
        self.step("symlink", link)?;
        self.inner.symlink(target, link)
    }

    fn hard_link(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        self.step("hard link", to)?;
        self.inner.hard_link(from, to)
    }

    fn remove_dir(&self, path: &StoragePath) -> Result<()> {
        self.step("remove directory", path)?;
        self.inner.remove_dir(path)
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        self.step("list", dir)?;
        self.inner.list(dir)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        self.step("stat", path)?;
        self.inner.stat(path)
    }
}

/// A file opened through a [`FaultyFs`]: writes and syncs are counted, reads are not.
struct FaultyFile {
    inner: Box<dyn FsFile>,
    path: PathBuf,
    injector: Arc<Injector>,
}

impl FsFile for FaultyFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn direct_part(&self) -> Option<u64> {
        self.inner.direct_part()
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let fate = self.injector.next("write", &self.path, true)?;
        self.injector.reserve(&self.path, data.len() as u64)?;
        match fate {
            Fate::Proceed => self.inner.write_at(offset, data),
            Fate::Tear(op_index) => {
                let half = &data[..data.len() / 2];
                if !half.is_empty() {
                    self.inner.write_at(offset, half)?;
                }
                Err(Error::InjectedFault {
                    op_index,
                    op: "write (torn)",
                    path: self.path.clone(),
                })
            }
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn sync(&self) -> Result<()> {
        self.injector.next("fsync", &self.path, false)?;
        self.inner.sync()
    }

    fn mapped(&self) -> Option<&[u8]> {
        self.inner.mapped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryFs;

    #[test]
    fn counts_and_injects_in_order() {
        let memory = MemoryFs::new();
        let plan = FailpointPlan::new(FaultKind::Fail, 2).and(FaultKind::Crash, 5);
        let fs = FaultyFs::new(Arc::new(memory.clone()), plan);
        let path = StoragePath::new("f").unwrap();
        let file = fs.create_new(&path, 4).unwrap(); // 1
        assert!(matches!(
            file.write_at(0, b"ab"),
            Err(Error::InjectedFault { op_index: 2, .. })
        ));
        file.write_at(0, b"abcd").unwrap(); // 3
        file.sync().unwrap(); // 4
        assert!(fs.stat(&path).is_err()); // 5: crashed
        assert!(file.sync().is_err()); // 6: still dead
        assert_eq!(fs.ops(), 6);
        assert_eq!(memory.snapshot()["f"], b"abcd");
    }

    #[test]
    fn torn_write_keeps_the_first_half() {
        let memory = MemoryFs::new();
        let fs = FaultyFs::new(
            Arc::new(memory.clone()),
            FailpointPlan::new(FaultKind::ShortWrite, 2),
        );
        let file = fs.create_new(&StoragePath::new("f").unwrap(), 6).unwrap();
        assert!(file.write_at(0, b"abcdef").is_err());
        assert_eq!(memory.snapshot()["f"], b"abc\0\0\0");
    }
}
