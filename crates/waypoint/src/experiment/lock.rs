//! The version directory's lock: `.waypoint.lock`, an exclusive advisory lock (`flock` through
//! std's `File::try_lock`) held by global rank 0 for the [`crate::Experiment`]'s lifetime, so that
//! two live runs can never write into one version directory. The file records its holder (pid,
//! host, start time) for the error the second run gets. The kernel drops the lock when its
//! holder dies, however it dies; a clean release also empties the file, so a file that still
//! names a holder while nobody holds the lock was left by a process that died: the next run takes
//! it over with a warning naming that process. The lock is never deleted (deleting a lock file
//! races with a process that has just opened it), never opened through a symbolic link, and a
//! file under its name that is not ours (someone's data, a hard link to another file) is refused,
//! never truncated.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the lock file in the version directory.
pub const LOCK_FILE: &str = ".waypoint.lock";

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub pid: u32,
    pub host: String,
    pub started: String,
}

impl Holder {
    /// This process.
    pub fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            started: jiff::Timestamp::now().to_string(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "pid {} on host {}, started {}",
            self.pid, self.host, self.started
        )
    }
}

/// What a lock file's bytes say about its holder: the recorded fields, or the raw text (bounded)
/// when the file is not a record (being written right now, or written by hand).
fn describe(bytes: &[u8]) -> String {
    match serde_json::from_slice::<Holder>(bytes) {
        Ok(holder) => holder.describe(),
        Err(_) if bytes.is_empty() => "holder not recorded yet".to_owned(),
        Err(_) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            format!("unreadable holder record {:?}", text.trim())
        }
    }
}

/// The host name: the kernel's (`/proc/sys/kernel/hostname`), else `$HOSTNAME`, else "unknown".
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A held lock; released (and emptied) on drop.
#[derive(Debug)]
pub(crate) struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir`. Another live holder → [`Error::RunLocked`] naming it. Returns
    /// the description of a dead holder whose lock was taken over, if any.
    pub fn acquire(dir: &Path) -> Result<(RunLock, Option<String>)> {
        let path = dir.join(LOCK_FILE);
        // O_NOFOLLOW: a lock file planted as a link to another file is refused (ELOOP, named),
        // never opened through; O_NONBLOCK: a FIFO under that name cannot hang the open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        crate::storage::abort_point("lock-opened");
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_all(&mut file, &path).map_or_else(
                    |e| format!("holder unreadable: {e}"),
                    |bytes| describe(&bytes),
                );
                return Err(Error::RunLocked { path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        let previous = read_all(&mut file, &path)?;
        ensure_ours(&file, &previous, &path)?;
        let stale = (!previous.is_empty()).then(|| describe(&previous));
        let me = serde_json::to_vec(&Holder::me()).map_err(|e| Error::InvalidArgument {
            name: "lock",
            reason: e.to_string(),
        })?;
        file.set_len(0)
            .map_err(|e| Error::io("write lock", &path, e))?;
        crate::storage::abort_point("lock-truncated");
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&me))
            .and_then(|()| file.flush())
            .map_err(|e| Error::io("write lock", &path, e))?;
        crate::storage::abort_point("lock-written");
        Ok((RunLock { file, path }, stale))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuses to take over (and so to truncate) a file that is not a lock file of ours: anything
/// but a regular file with one link, or content that is neither empty, a holder record, nor what
/// a holder that died while writing its record leaves (a torn record, or zeros after a power
/// cut).
fn ensure_ours(file: &File, content: &[u8], path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat lock", path, e))?;
    let refuse = |why: String| {
        let reason = format!(
            "{why}: not a waypoint lock file, left untouched (move it away if this directory is meant for a run)"
        );
        Error::io(
            "take the lock",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.nlink() != 1 {
        return Err(refuse(format!(
            "a file with {} hard links (another name shares its bytes)",
            meta.nlink()
        )));
    }
    let holder = serde_json::from_slice::<Holder>(content).is_ok();
    let torn = content.len() <= TORN_MAX
        && (content.iter().all(|&b| b == 0) || content.starts_with(RECORD_START));
    if content.is_empty() || holder || torn {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(&content[..content.len().min(60)]).into_owned();
    Err(refuse(format!("it holds {:?}", shown.trim())))
}

/// How a holder record begins (`serde_json` writes the fields in declaration order).
const RECORD_START: &[u8] = b"{\"pid\":";
/// The longest file still taken for a torn holder record.
const TORN_MAX: usize = 4096;

/// Who holds the lock of the version directory `dir` right now: the holder's description (pid,
/// host, start time) while a live process holds it, `None` when nobody does (no lock file, or a
/// file left by a run that ended or died). It never creates the lock file; to tell, it tries the
/// lock without waiting and releases it at once, so a run starting in that instant may be told
/// the directory is locked (it can simply start again).
pub fn lock_holder(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(LOCK_FILE);
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open lock", &path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            Ok(None)
        }
        Err(TryLockError::WouldBlock) => Ok(Some(describe(&read_all(&mut file, &path)?))),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

fn read_all(file: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.take(64 * 1024).read_to_end(&mut bytes))
        .map_err(|e| Error::io("read lock", path, e))?;
    Ok(bytes)
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Emptied first, then unlocked (closing the file unlocks it): a record with nobody
        // holding the lock then always means a holder that died.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!(lock = %self.path.display(), error = %e, "could not clear the lock file; the next run will call it stale");
        }
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_in_the_same_process_conflicts_and_a_release_is_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, stale) = RunLock::acquire(tmp.path()).unwrap();
        assert_eq!(stale, None);
        let me = format!("pid {} on host {}", std::process::id(), hostname());
        match RunLock::acquire(tmp.path()) {
            Err(Error::RunLocked { path, holder }) => {
                assert_eq!(path, tmp.path().join(LOCK_FILE));
                assert!(holder.starts_with(&me), "{holder}");
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        assert_eq!(std::fs::read(tmp.path().join(LOCK_FILE)).unwrap(), b"");
        let (_again, stale) = RunLock::acquire(tmp.path()).unwrap();
        assert_eq!(stale, None, "a clean release is not stale");
    }

    #[test]
    fn lock_holder_names_a_live_holder_only() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(lock_holder(tmp.path()).unwrap(), None, "no lock file");
        assert!(
            !tmp.path().join(LOCK_FILE).exists(),
            "the probe creates nothing"
        );
        let (held, _) = RunLock::acquire(tmp.path()).unwrap();
        let holder = lock_holder(tmp.path()).unwrap().unwrap();
        assert!(
            holder.starts_with(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        drop(held);
        assert_eq!(lock_holder(tmp.path()).unwrap(), None, "released");
        std::fs::write(
            tmp.path().join(LOCK_FILE),
            b"{\"pid\":1,\"host\":\"h\",\"started\":\"t\"}",
        )
        .unwrap();
        assert_eq!(
            lock_holder(tmp.path()).unwrap(),
            None,
            "a dead holder's file"
        );
    }

    /// A `.waypoint.lock` planted as a symbolic link to another file: refused, naming the lock,
    /// and the file it points to keeps every byte.
    #[test]
    fn a_planted_lock_symlink_is_refused_and_its_target_left_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim.txt");
        std::fs::write(&victim, b"precious data").unwrap();
        let dir = tmp.path().join("v1");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        let err = RunLock::acquire(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains(&dir.join(LOCK_FILE).display().to_string()),
            "{err}"
        );
        assert!(matches!(err, Error::SymlinkRefused { .. }), "{err:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious data");
        // The probe does not follow it either.
        assert!(lock_holder(&dir).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious data");
    }

    /// A lock file that is not ours (someone's data under that name, or a hard link to another
    /// file) is never truncated: refused, naming the file.
    #[test]
    fn a_lock_file_that_is_not_ours_is_never_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join(LOCK_FILE), b"not a lock: a user's notes").unwrap();
        let err = RunLock::acquire(&foreign).unwrap_err();
        assert!(
            err.to_string()
                .contains(&foreign.join(LOCK_FILE).display().to_string()),
            "{err}"
        );
        assert_eq!(
            std::fs::read(foreign.join(LOCK_FILE)).unwrap(),
            b"not a lock: a user's notes"
        );

        let linked = tmp.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        let victim = tmp.path().join("victim.json");
        let record = b"{\"pid\":1,\"host\":\"h\",\"started\":\"t\"}";
        std::fs::write(&victim, record).unwrap();
        std::fs::hard_link(&victim, linked.join(LOCK_FILE)).unwrap();
        let err = RunLock::acquire(&linked).unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), record);
    }

    /// A holder that died while writing its record (a torn record) is still ours: taken over.
    #[test]
    fn a_torn_holder_record_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        for torn in [&b"{\"pid\":12"[..], b"\0\0\0\0\0\0"] {
            std::fs::write(tmp.path().join(LOCK_FILE), torn).unwrap();
            let (lock, stale) = RunLock::acquire(tmp.path()).unwrap();
            assert!(stale.is_some());
            drop(lock);
        }
    }

    #[test]
    fn holder_descriptions() {
        assert_eq!(describe(b""), "holder not recorded yet");
        let h = Holder {
            pid: 7,
            host: "n1".into(),
            started: "2025-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            describe(&serde_json::to_vec(&h).unwrap()),
            "pid 7 on host n1, started 2025-01-01T00:00:00Z"
        );
        assert!(describe(b"{\"pi").contains("unreadable"));
    }
}
