//! Restoring the loop's state from the checkpoint the run resumes from: model and optimizer
//! tensors in place (a weights-only checkpoint leaves the optimizer as it is), the regions this
//! rank holds, the trainer state, then the loggers (their resume states, and where the resumed
//! run's curves continue). It must not choose the checkpoint (AutoResume did) nor write anything.

use super::{Checkpointable, Run};
use crate::engine::{Checkpointer, LoadOptions};
use crate::error::{Error, Result};
use crate::resume::ResumePoint;
use crate::storage::{StoragePath, open_dir};

impl Run {
    /// Restores `state` from the resume checkpoint: model and optimizer tensors in place, then the
    /// trainer state. Returns the resume point, or `None` when starting from scratch. A
    /// weights-only checkpoint restores the model and leaves the optimizer as it is, with a warning.
    pub fn restore(&mut self, state: &mut dyn Checkpointable) -> Result<Option<ResumePoint>> {
        let Some(point) = self.resume.clone() else {
            return Ok(None);
        };
        let (parent, name) = match (point.path.parent(), StoragePath::new(&point.name)) {
            (Some(p), Ok(n)) => (p.to_path_buf(), n),
            _ => {
                return Err(Error::NotFound {
                    path: point.path.clone(),
                });
            }
        };
        let storage = if parent == self.dirpath {
            self.storage.clone()
        } else {
            open_dir(&parent)?
        };
        let reader = Checkpointer::new(storage).open(&name)?;
        let weights_only = reader.record().trainer_state.waypoint.weights_only();
        let user = reader.record().trainer_state.user.clone();
        {
            let mut slots = state.restore_slots();
            let missing: Vec<String> = slots
                .iter()
                .filter(|s| !reader.record().tensors.contains_key(s.name))
                .map(|s| s.name.to_owned())
                .collect();
            if !missing.is_empty() {
                if !weights_only {
                    return Err(Error::MissingTensor {
                        tensor: missing.join(", "),
                        path: point.path.clone(),
                    });
                }
                tracing::warn!(checkpoint = %point.path.display(), missing = ?missing, "weights-only checkpoint: these tensors (optimizer state) keep their current values");
                slots.retain(|s| !missing.iter().any(|m| m == s.name));
            }
            reader.load_into(&mut slots, &LoadOptions::default())?;
        }
        {
            let mut regions = state.restore_regions();
            if weights_only {
                regions.retain(|r| reader.record().tensors.contains_key(r.name));
            }
            reader.load_regions(&mut regions, &LoadOptions::default())?;
        }
        state.restore_trainer_state(user)?;
        if let Some(loggers) = &mut self.loggers {
            let states = &reader.record().trainer_state.waypoint.loggers;
            if !states.is_empty() {
                loggers.restore_state(states);
            }
            // What earlier runs logged after the checkpoint is superseded from here on; what
            // they logged up to it stays, and is not logged twice.
            loggers.resumed(point.step + 1);
        }
        self.logged_from = point.step + 1;
        tracing::info!(checkpoint = %point.path.display(), step = point.step, "restored");
        Ok(Some(point))
    }
}
