//! The preemption signals of a live [`crate::Experiment`]: the first one sets the run's
//! preemption flag (the run saves its `-last` at the next step boundary and stops); a second one
//! while the flag is set takes the signal's default action (termination), so a stuck run can
//! still be stopped. When no Experiment handles a signal any more, its default action is back
//! (signal-hook cannot restore a handler, so a process-wide action performs the default while no
//! Experiment is registered). Nothing but atomic stores and the default action runs in signal
//! context.

use crate::error::{Error, Result};
use signal_hook::SigId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Per signal: how many Experiments handle it, and the flag that lets the process-wide action
/// perform the default (true while none does).
static HANDLED: Mutex<BTreeMap<i32, (usize, Arc<AtomicBool>)>> = Mutex::new(BTreeMap::new());

/// Refuses signals that cannot be handled (SIGKILL, SIGSTOP, and the faults signal-hook forbids)
/// or that are not signal numbers.
pub(crate) fn check(signals: &[i32]) -> Result<()> {
    for &s in signals {
        if signal_hook::consts::FORBIDDEN.contains(&s)
            || signal_hook::low_level::signal_name(s).is_none()
        {
            return Err(Error::InvalidArgument {
                name: "preemption_signals",
                reason: format!(
                    "signal {s} cannot be handled (unknown, or one of SIGKILL, SIGSTOP, SIGILL, SIGFPE, SIGSEGV)"
                ),
            });
        }
    }
    Ok(())
}

/// Registered handlers; unregistered on drop.
#[derive(Debug)]
pub(crate) struct Preemption {
    flag: Arc<AtomicBool>,
    ids: Vec<SigId>,
    signals: Vec<i32>,
}

impl Preemption {
    /// Registers `signals` (checked by [`check`]) to set a new flag.
    pub fn register(signals: &[i32]) -> Result<Preemption> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut me = Preemption {
            flag: flag.clone(),
            ids: Vec::new(),
            signals: Vec::new(),
        };
        let fail = |s: i32, e: std::io::Error| Error::InvalidArgument {
            name: "preemption_signals",
            reason: format!("cannot handle signal {s}: {e}"),
        };
        for &s in signals {
            {
                let mut handled = HANDLED.lock().unwrap_or_else(PoisonError::into_inner);
                match handled.get_mut(&s) {
                    Some((count, idle)) => {
                        *count += 1;
                        idle.store(false, Ordering::SeqCst);
                    }
                    None => {
                        let idle = Arc::new(AtomicBool::new(false));
                        signal_hook::flag::register_conditional_default(s, idle.clone())
                            .map_err(|e| fail(s, e))?;
                        handled.insert(s, (1, idle));
                    }
                }
            }
            me.signals.push(s);
            // The default action first: it only fires when the flag was already set.
            me.ids.push(
                signal_hook::flag::register_conditional_default(s, flag.clone())
                    .map_err(|e| fail(s, e))?,
            );
            me.ids
                .push(signal_hook::flag::register(s, flag.clone()).map_err(|e| fail(s, e))?);
        }
        Ok(me)
    }

    /// The flag the signals set.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }
}

impl Drop for Preemption {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        let mut handled = HANDLED.lock().unwrap_or_else(PoisonError::into_inner);
        for s in &self.signals {
            if let Some((count, idle)) = handled.get_mut(s) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    idle.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhandleable_signals_are_refused() {
        for s in [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, 0, 10_000] {
            assert!(check(&[s]).is_err(), "{s}");
        }
        check(&[libc::SIGTERM, libc::SIGUSR1, libc::SIGINT]).unwrap();
    }

    #[test]
    fn a_signal_sets_the_flag_of_a_live_registration() {
        // SIGUSR2: no other test in this binary uses it.
        let p = Preemption::register(&[libc::SIGUSR2]).unwrap();
        assert!(!p.flag().load(Ordering::SeqCst));
        signal_hook::low_level::raise(libc::SIGUSR2).unwrap();
        assert!(p.flag().load(Ordering::SeqCst));
    }
}
