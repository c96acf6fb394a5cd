//! The engine's worker pool: items handed out to scoped threads in order, a per-thread scratch
//! buffer, the first error stopping the others. Saves and loads both run on it.
//!
//! It owns only the scheduling (and the lower priority of background writers' threads), the first
//! error and the panic of a worker (`WorkerPanicked`). It
//! must not know what an item is or do any I/O itself: the save and load code hands it the work as
//! a closure.

use crate::error::{Error, Result};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The number of threads for `items` units of work: `wanted` (0 = the CPUs, at most 8), at least
/// one and at most one per item.
pub(crate) fn thread_count(wanted: usize, items: usize) -> usize {
    let auto = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let wanted = if wanted == 0 { auto } else { wanted };
    wanted.clamp(1, items.max(1))
}

/// Runs `f` on every item with `threads` threads (inline when one), each thread with its own
/// scratch buffer. Returns the first error; `what` names the job if a worker panics.
pub(crate) fn for_each<T: Sync>(
    items: &[T],
    threads: usize,
    what: &str,
    f: impl Fn(&T, &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let worker = || {
        let mut scratch = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            if let Err(e) = f(item, &mut scratch) {
                failed.store(true, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
    };
    let panicked = if threads <= 1 {
        worker();
        false
    } else {
        std::thread::scope(|s| {
            let spawned: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            spawned.into_iter().map(|h| h.join()).any(|r| r.is_err())
        })
    };
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if panicked {
        return Err(Error::WorkerPanicked { what: what.into() });
    }
    Ok(())
}

/// Background writers run at a lower CPU priority (nice +10) and the lowest best-effort I/O
/// priority (class 2, level 7: the I/O they submit themselves, `sync_file_range` and fsync,
/// yields to the loop's reads and writes where the block scheduler honours priorities), both
/// inherited by the writer threads they start, so that when cores or the disk are scarce the
/// training loop wins them.
pub(super) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory-safety preconditions; on Linux, `who = 0` with
        // PRIO_PROCESS names the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!("could not lower the background writer's priority");
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_BE: libc::c_long = 2;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        let ioprio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7;
        // SAFETY: ioprio_set takes three integers and touches no memory of ours; `who = 0`
        // names the calling thread.
        let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio) };
        if rc != 0 {
            tracing::debug!("could not lower the background writer's I/O priority");
        }
    }
}
