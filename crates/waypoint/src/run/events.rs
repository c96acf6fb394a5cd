//! One event of the loop (a step, validation or epoch end, the end of training, a preemption),
//! from the policy's decision to the saves: rank 0 decides, in rounds, whether saves in flight
//! are finalized first (those finished; the oldest when the queue is full and
//! `when_pending_full = wait`; all of them before a synchronous save), whether a due save is
//! skipped, or what to save and delete; with several ranks each round is broadcast, numbered and
//! tagged with the step and event, and every rank applies it at the same call. So a background
//! save's failure surfaces on every rank at the same call, and no rank applies a decision meant
//! for another step.
//!
//! It must not write or finalize anything itself: `saves.rs` does.

use super::ranks::{self, Decided};
use super::saves::SaveRequest;
use super::{Checkpointable, Run, SavedCheckpoint};
use crate::engine::Admission;
use crate::error::{Error, Result};
use crate::policy::{Action, DecideContext, Event};
use crate::storage::StoragePath;

/// Where a save of the loop's state gets it: handed over ready, or built only when a save is due
/// ([`Run::step_end_with`]).
pub(super) trait StateSource {
    /// Calls `save` with the state.
    fn with_state(
        &mut self,
        save: &mut dyn FnMut(&dyn Checkpointable) -> Result<Vec<SavedCheckpoint>>,
    ) -> Result<Vec<SavedCheckpoint>>;
}

impl StateSource for &dyn Checkpointable {
    fn with_state(
        &mut self,
        save: &mut dyn FnMut(&dyn Checkpointable) -> Result<Vec<SavedCheckpoint>>,
    ) -> Result<Vec<SavedCheckpoint>> {
        save(*self)
    }
}

/// A state built by the caller's closure when (and each time) a save needs it.
pub(super) struct Lazy<F>(pub(super) F);

impl<F, C, E> StateSource for Lazy<F>
where
    F: FnMut() -> std::result::Result<C, E>,
    C: Checkpointable,
    E: Into<Error>,
{
    fn with_state(
        &mut self,
        save: &mut dyn FnMut(&dyn Checkpointable) -> Result<Vec<SavedCheckpoint>>,
    ) -> Result<Vec<SavedCheckpoint>> {
        let state = (self.0)().map_err(Into::into)?;
        save(&state)
    }
}

impl Run {
    /// Handles `event` with the loop's `state`; `completed` marks the checkpoints as the end of
    /// a completed run.
    pub(super) fn handle(
        &mut self,
        event: Event,
        state: &mut dyn StateSource,
        completed: bool,
    ) -> Result<Vec<SavedCheckpoint>> {
        self.handle_event(event, state, completed, false, None)
    }

    /// Handles a manual save ([`Event::Manual`]) tagged `tag`.
    pub(super) fn handle_manual(
        &mut self,
        event: Event,
        tag: &str,
        state: &mut dyn StateSource,
    ) -> Result<Vec<SavedCheckpoint>> {
        self.handle_event(event, state, false, false, Some(tag))
    }

    /// Saves what the run needs to resume at `step` (the `-last` checkpoint, with the optimizer),
    /// synchronously, after every save in flight: the preemption path.
    pub(super) fn save_for_preemption(
        &mut self,
        step: u64,
        epoch: u64,
        state: &mut dyn StateSource,
    ) -> Result<Vec<SavedCheckpoint>> {
        let mut saved = self.finalize_all()?;
        let now_s = (self.clock)();
        let event = Event::TrainEnd { step, epoch, now_s };
        saved.extend(self.handle_event(event, state, false, true, None)?);
        if self.state.last_save_step != Some(step) {
            tracing::warn!(
                step,
                "preempted, but save_last is off: the progress since the previous checkpoint is lost"
            );
        }
        Ok(saved)
    }

    fn handle_event(
        &mut self,
        event: Event,
        state: &mut dyn StateSource,
        completed: bool,
        preempting: bool,
        tag: Option<&str>,
    ) -> Result<Vec<SavedCheckpoint>> {
        let (step, epoch, _) = event.parts();
        let train_end = matches!(event, Event::TrainEnd { .. });
        let asynchronous = self.policy.config().async_save() && !train_end;
        let mut finalized = Vec::new();
        let (next, actions) = loop {
            match self.next_decision(&event, asynchronous, tag)? {
                Decided::Finalize(count) => finalized.extend(self.finalize_oldest(count)?),
                Decided::Skip => return Ok(finalized),
                Decided::Act { next, actions } => break (*next, actions),
            }
        };
        if actions.is_empty() {
            // Nothing to save; the state still advances (the time trigger's clock).
            self.state = next;
            return Ok(finalized);
        }
        let config = self.policy.config();
        let request = SaveRequest {
            with_context: config.always_save_context()
                || (train_end && config.save_context_on_train_end()),
            completed: completed || self.config.max_steps.is_some_and(|m| step >= m),
            actions,
            next,
            step,
            epoch,
            preempting,
            asynchronous,
        };
        let mut request = Some(request);
        finalized.extend(state.with_state(&mut |state| match request.take() {
            Some(request) => self.save(request, state),
            None => Ok(Vec::new()),
        })?);
        Ok(finalized)
    }

    /// The next round of the event: rank 0 decides it and, with several ranks, broadcasts it;
    /// the other ranks receive it and check that it is for this call.
    fn next_decision(
        &mut self,
        event: &Event,
        asynchronous: bool,
        tag: Option<&str>,
    ) -> Result<Decided> {
        self.decisions += 1;
        if !self.coordinator.is_root() {
            return ranks::receive_decision(self.coordinator.as_ref(), self.decisions, event);
        }
        let decided = self.decide(event, asynchronous, tag);
        if self.coordinator.world_size() > 1 {
            ranks::send_decision(self.coordinator.as_ref(), self.decisions, event, &decided)?;
        }
        Ok(decided)
    }

    /// Rank 0's decision: finished saves are finalized first (in order), then the policy decides
    /// on the state they left; a due save waits for (or skips) a full queue, and a synchronous
    /// save waits for every save in flight.
    fn decide(&self, event: &Event, asynchronous: bool, tag: Option<&str>) -> Decided {
        let ready = self.queue.ready();
        if ready > 0 {
            return Decided::Finalize(ready);
        }
        let decision = self.decide_policy(event, tag);
        if decision.actions.is_empty() {
            return Decided::Act {
                next: Box::new(decision.next),
                actions: decision.actions,
            };
        }
        // No two saves in flight share a name: a name a save in flight still writes (possible
        // only with the version counter off, which reuses names) waits for that save.
        let wait = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Save { name, .. } | Action::Link { link: name, .. } => {
                    Some(self.queue.free_after(name))
                }
                Action::Delete { .. } => None,
            })
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Decided::Finalize(wait);
        }
        if !asynchronous {
            return match self.queue.len() {
                0 => Decided::Act {
                    next: Box::new(decision.next),
                    actions: decision.actions,
                },
                in_flight => Decided::Finalize(in_flight),
            };
        }
        match self.queue.admission() {
            Admission::Submit => Decided::Act {
                next: Box::new(decision.next),
                actions: decision.actions,
            },
            // A manual save was asked for by the loop: it waits rather than being skipped.
            Admission::WaitForOldest => Decided::Finalize(1),
            Admission::Skip if tag.is_some() => Decided::Finalize(1),
            Admission::Skip => {
                tracing::warn!(
                    step = event.parts().0,
                    in_flight = self.queue.len(),
                    "a save is due but the previous one is still being written: skipped (when_pending_full = skip)"
                );
                Decided::Skip
            }
        }
    }

    /// What the policy says at `event` (a manual save's with its `tag`), given what exists in
    /// the checkpoints directory.
    fn decide_policy(&self, event: &Event, tag: Option<&str>) -> crate::policy::Decision {
        let storage = self.storage.clone();
        let existing = |name: &str| -> bool {
            StoragePath::new(name)
                .ok()
                .and_then(|p| storage.stat(&p).ok().flatten())
                .is_some()
        };
        // The resumed checkpoint is protected from the policy when the policy does not manage it
        // (another run's, or forgotten after a monitor change). A managed one is rotated like any
        // other, and only after its replacement committed (saves come before deletes), so a resume
        // point is never lost and no stale -last outlives the restart.
        let protected = self
            .protected
            .as_deref()
            .filter(|p| !self.state.saved.contains_key(*p));
        let in_flight = |name: &str| self.queue.writes(name);
        let ctx = DecideContext {
            existing: &existing,
            in_flight: &in_flight,
            protected,
        };
        let decision = match tag {
            Some(tag) => self
                .policy
                .decide_manual(&self.state, event, tag, &self.metrics, &ctx),
            None => self.policy.decide(&self.state, event, &self.metrics, &ctx),
        };
        for note in &decision.notes {
            tracing::info!("{note}");
        }
        decision
    }
}
