//! Who owns a temporary. Every temporary a storage makes (a save's directory or pending marker, a
//! checkpoint being removed) carries its owner in its name: `<host>.<pid>.<start>-<created>-<k>`
//! after [`super::TEMP_MARKER`], where `host` is a hash of the host name and the pid namespace,
//! `start` the process's start time (clock ticks since the epoch, from `/proc`), `created` the
//! temporary's creation time (seconds since the epoch) and `k` a counter of this process. This
//! module writes and parses that tag, keeps the registry of this process's live temporaries, and
//! says whether a temporary's owner may still be using it ([`Tag::may_be_live`]).
//!
//! It removes nothing: cleanup (`fs.rs`, `object/mod.rs`) acts on its answers. The rule, safest
//! first: a temporary of this process is live while registered; of another process on this host,
//! while a process with its pid and start time runs; of another host (or pid namespace), whose
//! processes cannot be checked, until it is [`FOREIGN_GRACE`] old.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

/// How long a temporary of another host is kept by cleanup: a save never takes that long, and
/// its owner cannot be checked from here.
pub const FOREIGN_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Numbers the temporaries this process makes (unique in the process, so names never collide).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The names of this process's temporaries that are in use (transactions not yet committed,
/// aborted or dropped; removals running).
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A temporary's owner and creation time, as its name records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Hash of the host name and the pid namespace.
    pub host: u32,
    /// The owner's process id.
    pub pid: u32,
    /// The owner's start time, clock ticks since the epoch (0: unknown).
    pub start: u64,
    /// When the temporary was made, seconds since the epoch.
    pub created: u64,
}

/// This process: (host hash, pid, start time).
fn me() -> (u32, u32, u64) {
    static ME: OnceLock<(u32, u32, u64)> = OnceLock::new();
    *ME.get_or_init(|| {
        let pid = std::process::id();
        (host_hash(), pid, process_start(pid).unwrap_or(0))
    })
}

/// A new tag for a temporary of this process: `<host>.<pid>.<start>-<created>-<k>`.
pub(crate) fn new_tag() -> String {
    let (host, pid, start) = me();
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{host:08x}.{pid}.{start}-{created}-{k}")
}

impl Tag {
    /// Parses the owner part of a temporary's name (what follows the marker); `None` for names of
    /// earlier versions, which recorded no owner.
    pub(crate) fn parse(rest: &str) -> Option<Tag> {
        let mut parts = rest.split('-');
        let owner = parts.next()?;
        let created = parts.next()?.parse().ok()?;
        parts.next()?.parse::<u64>().ok()?;
        let mut fields = owner.split('.');
        let host = u32::from_str_radix(fields.next()?, 16).ok()?;
        let pid = fields.next()?.parse().ok()?;
        let start = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        Some(Tag {
            host,
            pid,
            start,
            created,
        })
    }

    /// Whether the temporary `name` with this tag may still be in use by its owner, at `now`.
    pub(crate) fn may_be_live(&self, name: &str, now: SystemTime) -> bool {
        let (host, pid, start) = me();
        if self.host != host {
            let created = SystemTime::UNIX_EPOCH + Duration::from_secs(self.created);
            return now.duration_since(created).unwrap_or_default() < FOREIGN_GRACE;
        }
        if self.pid == pid && self.start == start {
            return is_registered(name);
        }
        match process_start(self.pid) {
            Some(running) => self.start == 0 || running == self.start,
            // No /proc entry: the process is gone (or /proc is not there: ask the kernel).
            None => pid_exists(self.pid) && !proc_available(),
        }
    }
}

/// Marks this process's temporary `name` as in use until the guard is dropped.
#[derive(Debug)]
pub(crate) struct LiveGuard(String);

impl LiveGuard {
    pub(crate) fn new(name: &str) -> LiveGuard {
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
        LiveGuard(name.to_owned())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

fn is_registered(name: &str) -> bool {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(name)
}

/// FNV-1a of the host name and the pid namespace: two containers sharing a host name but not
/// their processes get different hashes (their pids mean different processes).
fn host_hash() -> u32 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in host.trim().bytes().chain([0]).chain(namespace.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn proc_available() -> bool {
    std::path::Path::new("/proc/self/stat").exists()
}

/// Whether a process `pid` exists (signal 0: no signal is sent).
fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The start time of process `pid` in clock ticks since the epoch (boot time from `/proc/stat`
/// plus field 22 of `/proc/<pid>/stat`), or `None` when it does not exist or has exited (a
/// zombie not yet reaped).
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // A zombie (Z) or a dying process (X) has exited: it writes nothing more.
    if matches!(after.split_whitespace().next(), Some("Z" | "X" | "x")) {
        return None;
    }
    let since_boot: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some(boot_ticks().saturating_add(since_boot))
}

/// The boot time in clock ticks since the epoch.
fn boot_ticks() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        btime.saturating_mul(u64::try_from(ticks).unwrap_or(100))
    })
}

/// The tag of a temporary named `.<dir><marker><tag>[-suffix]`, if it records one.
pub(crate) fn tag_of(name: &str) -> Option<Tag> {
    let (_, rest) = name.strip_prefix('.')?.split_once(super::TEMP_MARKER)?;
    Tag::parse(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_child_not_yet_reaped_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it: it stays a zombie until `child.wait()`.
        // SAFETY: `info` is a valid out-parameter; WNOWAIT leaves the child to `wait` below.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        assert_eq!(rc, 0);
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(state.contains(") Z "), "{state}");
        assert_eq!(process_start(pid), None, "a zombie counted as running");
        child.wait().unwrap();
        assert!(process_start(std::process::id()).is_some());
    }

    #[test]
    fn tags_parse_table() {
        type Parsed = Option<(u32, u32, u64, u64)>;
        let table: [(&str, Parsed); 7] = [
            (
                "0000abcd.12.345-1700000000-3",
                Some((0xabcd, 12, 345, 1_700_000_000)),
            ),
            (
                "0000abcd.12.345-1700000000-3-removed",
                Some((0xabcd, 12, 345, 1_700_000_000)),
            ),
            ("12-3", None), // earlier versions: pid and counter only
            ("zz.12.345-1-3", None),
            ("0000abcd.12-1-3", None),
            ("0000abcd.12.345.6-1-3", None),
            ("0000abcd.12.345-x-3", None),
        ];
        for (rest, want) in table {
            let got = Tag::parse(rest).map(|t| (t.host, t.pid, t.start, t.created));
            assert_eq!(got, want, "{rest}");
        }
    }

    #[test]
    fn this_process_is_live_only_while_registered() {
        let name = format!(".ckpt{}{}", crate::storage::TEMP_MARKER, new_tag());
        let tag = tag_of(&name).unwrap();
        assert_eq!(tag.pid, std::process::id());
        assert!(!tag.may_be_live(&name, SystemTime::now()));
        let guard = LiveGuard::new(&name);
        assert!(tag.may_be_live(&name, SystemTime::now()));
        drop(guard);
        assert!(!tag.may_be_live(&name, SystemTime::now()));
    }

    #[test]
    fn other_processes_and_hosts() {
        let now = SystemTime::now();
        let (host, _, _) = me();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let start = process_start(child.id()).unwrap();
        let alive = Tag {
            host,
            pid: child.id(),
            start,
            created: 0,
        };
        assert!(alive.may_be_live("x", now));
        let reused = Tag {
            start: start + 1,
            ..alive
        };
        assert!(!reused.may_be_live("x", now), "same pid, another process");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive.may_be_live("x", now), "the owner died");
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let foreign = Tag {
            host: host ^ 1,
            pid: 1,
            start: 1,
            created: secs - 3600,
        };
        assert!(foreign.may_be_live("x", now), "another host, an hour old");
        let stale = Tag {
            created: secs - FOREIGN_GRACE.as_secs() - 1,
            ..foreign
        };
        assert!(
            !stale.may_be_live("x", now),
            "another host, older than the grace"
        );
    }
}
