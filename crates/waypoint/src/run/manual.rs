//! The loop's own requests beside the triggers: a manual save ([`Run::save_now`], Lightning's
//! `trainer.save_checkpoint`), Orbax's queries (`should_save`, `latest_step`, `all_steps`,
//! `best_step`), and the check of a monitor never reported (`on_missing_monitor`).
//!
//! It must not decide names or what is kept (the policy does) nor save by itself: a manual save
//! goes through `events.rs` and `saves.rs` like any other.

use super::{Checkpointable, Run, SavedCheckpoint};
use crate::error::{Error, Result};
use crate::policy::{Event, MissingMonitor, Policy};

impl Run {
    /// Saves a checkpoint now, outside the triggers (Lightning's `trainer.save_checkpoint`):
    /// through the same engine, commit and naming rules as any save, asynchronous when
    /// `async_save` is (then [`Run::wait_for_saves`] waits for it; with `max_pending_saves` in
    /// flight it waits for the oldest, whatever `when_pending_full` says). Its name is the filename
    /// template's at `step` with `-<tag>` appended (`-vN` on a collision, with the version
    /// counter on); it is kept for good (rotation never deletes it), and it also enters the
    /// top-k when the monitored value was reported at `step` and is good enough. It changes
    /// neither the `-last` nor the triggers: a trigger due at the same step still saves. Every
    /// rank calls it at the same point. Returns the checkpoints committed by this call (none
    /// yet when asynchronous, or saves in flight finalized first).
    ///
    /// The tag is 1 to 64 ASCII letters, digits, `-`, `_`, `.`, not ending in `last`
    /// ([`Policy::check_tag`]); anything else is an [`Error::InvalidArgument`] naming `tag`.
    pub fn save_now(
        &mut self,
        tag: &str,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        Policy::check_tag(tag)?;
        let now_s = (self.clock)();
        self.handle_manual(Event::Manual { step, epoch, now_s }, tag, &mut { state })
    }

    /// Whether [`Run::step_end`] at `step` will save (Orbax's `should_save(step)`), by the run's
    /// clock now: at a multiple of `every_n_train_steps`, once `train_time_interval` passed, or
    /// when a save that waited for an earlier step's validation is due; never at step 0 nor
    /// twice at one step, never for epoch triggers (they save at epoch or validation ends). A
    /// due save whose monitored value is not reported yet may wait for the step's validation
    /// end. A loop can skip building anything a step without a save does not need.
    pub fn should_save(&self, step: u64) -> bool {
        self.policy.should_save(&self.state, step, (self.clock)())
    }

    /// The newest step among the checkpoints the policy keeps (Orbax's `latest_step`), saves
    /// still in flight included ([`Run::wait_for_saves`] first for committed ones only); after a
    /// resume, those of the directory the restored state manages.
    pub fn latest_step(&self) -> Option<u64> {
        self.state.latest_step()
    }

    /// The steps of the checkpoints the policy keeps, ascending (Orbax's `all_steps`), as
    /// [`Run::latest_step`] counts them.
    pub fn all_steps(&self) -> Vec<u64> {
        self.state.all_steps()
    }

    /// The step of the best checkpoint (Orbax's `best_step`): the best by the monitor, the
    /// newest without one; `None` before anything was ranked.
    pub fn best_step(&self) -> Option<u64> {
        self.state.best_step()
    }

    /// After a validation end: the monitored metric never reported at all warns once, loudly, or
    /// fails with `on_missing_monitor(Error)`.
    pub(super) fn check_monitor(&mut self, step: u64) -> Result<()> {
        let Some(monitor) = self.policy.missing_monitor(&self.metrics) else {
            return Ok(());
        };
        let reported = self
            .metrics
            .keys()
            .filter(|k| !k.starts_with("checkpoint/"))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        match self.policy.config().on_missing_monitor() {
            MissingMonitor::Error => Err(Error::MonitorMissing {
                monitor: monitor.to_owned(),
                step,
                reported,
            }),
            MissingMonitor::Warn => {
                if !self.monitor_warned && self.coordinator.is_root() {
                    tracing::warn!(
                        monitor,
                        step,
                        reported = %reported,
                        "MONITORED METRIC NEVER REPORTED: a validation ended but {monitor:?} was never logged, so no checkpoint can be ranked (only -last and keep rules apply). Log it with Run::log_metrics at the validation's step or fix `monitor`; on_missing_monitor(Error) makes this an error"
                    );
                }
                self.monitor_warned = true;
                Ok(())
            }
        }
    }
}
