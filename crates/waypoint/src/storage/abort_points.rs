//! Named abort points in the file operations a run makes outside its checkpoint storage (the
//! lock, the move of an earlier run's files into `run_<N>/`, the CSV logger's atomic rewrite),
//! for the crash tests: [`abort_point`] kills the process where [`ABORT_AT_ENV`] says. It owns
//! the names and the trigger; it must not change what the operations do, and without the
//! `fault-injection` feature it reads nothing and does nothing.

#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable naming a point of the run directory's own file operations (the lock,
/// the move of an earlier run's files into `run_<N>/`, the CSV logger's atomic rewrite) at which
/// the process aborts, as a crash there would: `WAYPOINT_ABORT_AT=csv-temp-written`, or
/// `run-file-moved#2` for the point's second hit. Read only with the `fault-injection` feature
/// (the crash tests); the points are [`ABORT_POINTS`].
pub const ABORT_AT_ENV: &str = "WAYPOINT_ABORT_AT";

/// The points [`ABORT_AT_ENV`] can name, in the order a run meets them.
pub const ABORT_POINTS: [&str; 7] = [
    // experiment/lock.rs: the lock file opened, not yet locked.
    "lock-opened",
    // The lock taken and its file emptied, the holder record not yet written.
    "lock-truncated",
    // The holder record written.
    "lock-written",
    // experiment/files.rs: `.run_<N>.moving/` created, nothing moved into it yet.
    "run-dir-created",
    // One more loose file of the earlier run moved into it (hit once per file).
    "run-file-moved",
    // loggers/csv_format.rs: the rewritten file complete in its temporary, not yet renamed.
    "csv-temp-written",
    // The temporary renamed over the file, the directory not yet synced.
    "csv-renamed",
];

/// Aborts the process if [`ABORT_AT_ENV`] names `point` (and this is its chosen hit). Without
/// the `fault-injection` feature it does nothing and reads nothing.
#[cfg(feature = "fault-injection")]
pub(crate) fn abort_point(point: &'static str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    debug_assert!(ABORT_POINTS.contains(&point), "{point}");
    let Ok(wanted) = std::env::var(ABORT_AT_ENV) else {
        return;
    };
    let (name, nth) = match wanted.split_once('#') {
        Some((name, nth)) => (name, nth.parse::<u64>().unwrap_or(1)),
        None => (wanted.as_str(), 1),
    };
    if name != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        tracing::warn!(
            point,
            nth,
            "injected abort at a named point: killing the process"
        );
        std::process::abort();
    }
}

/// Does nothing: this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn abort_point(_point: &'static str) {}
