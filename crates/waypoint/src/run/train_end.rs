//! NeMo's `save_context_on_train_end` when the last step was already saved: training ends at a
//! step whose checkpoints `step_end` (or a validation) saved without `context/`
//! (`always_save_context` off), so the train-end event saves nothing new; the context goes into
//! those checkpoints instead, through [`crate::storage::Storage::add_dir`]: all or nothing on a
//! file system, each file whole on an object store, the commit record untouched (`context/` is
//! outside `weights/`, which the record lists), so each checkpoint verifies at every instant.
//!
//! It must not save, rename or delete checkpoints, nor write into one saved at another step or
//! by another writer.

use super::Run;
use crate::error::Result;
use crate::format::CONTEXT_DIR;
use crate::resume::read_record;
use crate::storage::{EntryKind, StoragePath};

impl Run {
    /// Writes the context into each committed checkpoint of this run saved at `step` that lacks
    /// one, when `save_context_on_train_end` asks for it and `always_save_context` did not
    /// already put it there. Rank 0 only. Returns the names written into.
    pub(super) fn context_on_train_end(&mut self, step: u64) -> Result<Vec<String>> {
        let config = self.policy.config();
        if config.always_save_context()
            || !config.save_context_on_train_end()
            || self.config.context.is_empty()
            || !self.coordinator.is_root()
        {
            return Ok(Vec::new());
        }
        // The policy's own checkpoints of this step (a `-last` link is skipped: its target is
        // one of them).
        let names: Vec<String> = (self.state.saved.iter())
            .filter(|(_, s)| **s == step)
            .map(|(n, _)| n.clone())
            .collect();
        let mut written = Vec::new();
        for name in names {
            let dir = StoragePath::new(&name)?;
            if !matches!(self.storage.stat(&dir)?, Some(e) if e.kind == EntryKind::Dir)
                || self.storage.stat(&dir.join(CONTEXT_DIR)?)?.is_some()
                || read_record(self.storage.as_ref(), &dir)?.step != step
            {
                continue;
            }
            self.storage
                .add_dir(&dir, CONTEXT_DIR, &self.config.context)?;
            tracing::info!(checkpoint = %name, step, "save_context_on_train_end: context/ written into the checkpoint already saved at the last step");
            written.push(name);
        }
        Ok(written)
    }
}
