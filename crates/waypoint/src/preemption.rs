//! Preemption: a flag set by a signal (SIGTERM by default, as schedulers send before killing a
//! job; SIGUSR1 where a cluster is configured to warn with it). Hand the flag to
//! [`crate::RunBuilder::preemption`]: at the next step boundary the run saves its `-last`
//! checkpoint, waits for it, and [`crate::Run::should_stop`] turns true. The handler only sets an
//! atomic flag (async-signal-safe, through `signal-hook`); nothing else happens in signal context.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use signal_hook::consts::signal::{SIGINT, SIGTERM, SIGUSR1};

/// Registers `signals` to set the returned flag. Registering again adds another flag; the
/// process's default action for those signals (termination) is replaced while registered.
///
/// ```
/// let flag = waypoint::preemption::signal_flag(&[waypoint::preemption::SIGUSR1]).unwrap();
/// assert!(!flag.load(std::sync::atomic::Ordering::Relaxed));
/// ```
pub fn signal_flag(signals: &[i32]) -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for &signal in signals {
        signal_hook::flag::register(signal, flag.clone()).map_err(|e| Error::InvalidArgument {
            name: "preemption signal",
            reason: format!("cannot handle signal {signal}: {e}"),
        })?;
    }
    Ok(flag)
}
