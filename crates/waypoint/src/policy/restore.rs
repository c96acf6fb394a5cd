//! The policy's side of a resume: the fresh state of a new run, and the rules for adopting the
//! state stored in the checkpoint a run resumes from (another directory, a changed monitor, the
//! time trigger restarting). Pure: it reads no checkpoint itself (AutoResume's plan hands it the
//! stored state and what is committed).

use super::decide::Policy;
use super::state::PolicyState;

impl Policy {
    /// The fresh state for a run whose checkpoints go to `dirpath`.
    pub fn initial_state(&self, dirpath: impl Into<String>) -> PolicyState {
        let config = self.config();
        PolicyState::new(config.monitor().map(String::from), config.mode(), dirpath)
    }

    /// The state to continue with on resume, from the one stored in the checkpoint resumed from.
    ///
    /// - No restored state, or one written for another directory: a fresh state (Lightning).
    /// - A monitor or mode change: the old ranking is forgotten (those checkpoints stay on disk,
    ///   unmanaged); the last checkpoint is still rotated.
    /// - Then [`PolicyState::reconcile`] against what is committed in `dirpath`.
    /// - The time interval restarts with this run (the caller's clock may not survive a restart).
    /// - If `save_top_k` was lowered, the surplus is deleted at the next save (after it commits).
    ///
    /// Returns the state and notes for the log.
    pub fn restore(
        &self,
        restored: Option<PolicyState>,
        dirpath: &str,
        committed: &dyn Fn(&str) -> Option<u64>,
    ) -> (PolicyState, Vec<String>) {
        let fresh = self.initial_state(dirpath);
        let mut notes = Vec::new();
        let Some(restored) = restored else {
            return (fresh, notes);
        };
        let restored_dir = restored.dirpath.clone();
        let Some(mut state) = restored.for_dirpath(dirpath) else {
            notes.push(format!(
                "checkpoint state was saved for {restored_dir:?}, not {dirpath:?}: top-k and last start fresh"
            ));
            return (fresh, notes);
        };
        if state.monitor != fresh.monitor || state.mode != fresh.mode {
            notes.push(format!(
                "monitor changed from {:?} ({}) to {:?} ({}): the previous top-k is no longer managed",
                state.monitor, state.mode, fresh.monitor, fresh.mode
            ));
            state.top_k.clear();
            state.monitor = fresh.monitor;
            state.mode = fresh.mode;
        }
        state.start_time_s = None;
        state.last_save_time_s = None;
        // A save deferred (or left unranked) for a validation of the previous process is gone
        // with it; the trainer's call order it learned still holds, and so does the time
        // keep's clock (wall time).
        state.deferred_step = None;
        state.unranked_step = None;
        for name in state.reconcile(committed) {
            notes.push(format!(
                "{name} is no longer a committed checkpoint in {dirpath:?}: forgotten"
            ));
        }
        (state, notes)
    }
}
