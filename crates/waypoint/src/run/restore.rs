//! Restoring the loop's state from the checkpoint the run resumes from: model and optimizer
//! tensors in place (a weights-only checkpoint leaves the optimizer as it is), the regions this
//! rank holds, the trainer state, then the loggers (their resume states, and where the resumed
//! run's curves continue). A run with nothing to resume and AutoResume's `restore_config` starts
//! from another run's tensors instead ([`Elsewhere`]): the model (and optionally optimizer)
//! tensors, matched by `crate::restore`, and that source's `context/` files; the trainer state
//! stays the run's own (step 0). It must not choose the checkpoint (AutoResume did) nor write
//! anything.

use super::{Checkpointable, Run};
use crate::engine::{Checkpointer, LoadOptions, RegionSlot, SinkSlot};
use crate::error::{Error, Result};
use crate::restore::{
    OPTIMIZER_PREFIX, RestoreConfig, RestoreReport, RestoreSource, Wanted, match_tensors,
    open_source,
};
use crate::resume::{AutoResume, ResumePoint};
use crate::storage::{StoragePath, open_dir};
use std::collections::{BTreeMap, BTreeSet};

/// AutoResume's `restore_config` for a run with nothing of its own to resume, until
/// [`Run::restore`] applied it; then what it restored.
#[derive(Debug)]
pub(super) enum Elsewhere {
    /// To restore at [`Run::restore`].
    Pending(RestoreConfig),
    /// Restored.
    Done(RestoreReport),
}

impl Elsewhere {
    /// NeMo's rule: the restore config applies only when nothing is resumed (a checkpoint of
    /// this run, `resume_from_path`, or a completed run, which trains nothing).
    pub(super) fn applies(resume: &AutoResume, point: Option<&ResumePoint>) -> Option<Elsewhere> {
        let config = resume.restore_config()?;
        if let Some(point) = point {
            tracing::info!(
                checkpoint = %point.path.display(),
                restore_config = %config.path.display(),
                "resuming this run's own checkpoint: restore_config does not apply"
            );
            return None;
        }
        Some(Elsewhere::Pending(config.clone()))
    }
}

impl Run {
    /// Restores `state` from the resume checkpoint: model and optimizer tensors in place, then the
    /// trainer state. Returns the resume point, or `None` when starting from scratch. A
    /// weights-only checkpoint restores the model and leaves the optimizer as it is, with a warning.
    ///
    /// With nothing to resume and AutoResume's `restore_config`, it loads the tensors that
    /// config asks for from its source instead (see [`crate::restore`]), copies the source's
    /// `context/` files into this run's context (`load_artifacts`), hands the loop its own
    /// trainer state back (`restore_trainer_state(trainer_state())`, so a loop that applies
    /// staged tensors there works unchanged) and returns `None`: training starts at step 0 from
    /// those weights. [`Run::restored_from`] then says what was loaded.
    pub fn restore(&mut self, state: &mut dyn Checkpointable) -> Result<Option<ResumePoint>> {
        let Some(point) = self.resume.clone() else {
            if let Some(Elsewhere::Pending(config)) = &self.elsewhere {
                let config = config.clone();
                let report = self.restore_elsewhere(&config, state)?;
                self.elsewhere = Some(Elsewhere::Done(report));
            }
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

impl Run {
    /// What AutoResume's `restore_config` loaded, once [`Run::restore`] applied it; `None` when
    /// it did not apply (nothing configured, or this run's own checkpoint was resumed).
    pub fn restored_from(&self) -> Option<&RestoreReport> {
        match &self.elsewhere {
            Some(Elsewhere::Done(report)) => Some(report),
            _ => None,
        }
    }

    /// Loads what `config` asks for from its source into `state`, checked whole before a byte is
    /// loaded, then takes the source's context files.
    fn restore_elsewhere(
        &mut self,
        config: &RestoreConfig,
        state: &mut dyn Checkpointable,
    ) -> Result<RestoreReport> {
        let source = open_source(&config.path)?;
        let location = source.location();
        let wanted = wanted_tensors(state);
        let matching = match_tensors(config, &wanted, source.tensors(), &location)?;
        let mut report = matching.report;
        let own_state = state.trainer_state();
        load_matched(source.as_ref(), &matching.load, state)?;
        state.restore_trainer_state(own_state)?;
        if config.load_artifacts {
            report.artifacts = self.take_artifacts(source.as_ref())?;
        }
        for (kind, names) in [
            ("missing", &report.missing),
            ("unexpected", &report.unexpected),
        ] {
            if !names.is_empty() {
                tracing::warn!(source = %location.display(), kind, tensors = ?names, "restore_config: tensors that did not match");
            }
        }
        for m in &report.mismatched {
            tracing::warn!(source = %location.display(), "restore_config: mismatched tensor kept its current value: {m}");
        }
        tracing::info!(source = %location.display(), "restored another run's state: {}", report.summary());
        Ok(report)
    }

    /// The source's `context/` files into this run's context; the run's own files of the same
    /// name win. Returns the names taken.
    fn take_artifacts(&mut self, source: &dyn RestoreSource) -> Result<Vec<String>> {
        let mut taken = Vec::new();
        for (name, bytes) in source.context_files()? {
            if self.config.context.iter().any(|(n, _)| *n == name) {
                tracing::info!(file = %name, "restore_config: this run's own context file wins over the source's");
                continue;
            }
            self.config.context.push((name.clone(), bytes));
            taken.push(name);
        }
        self.config.context.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(taken)
    }
}

/// The run's tensors, whole and in regions, each marked model or optimizer state (the rule in
/// [`crate::restore`]).
fn wanted_tensors(state: &mut dyn Checkpointable) -> Vec<Wanted> {
    let optimizer: BTreeSet<String> = state
        .optimizer_tensors()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    let is_optimizer = |name: &str| optimizer.contains(name) || name.starts_with(OPTIMIZER_PREFIX);
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    for s in state.restore_slots() {
        wanted.entry(s.name.to_owned()).or_insert_with(|| Wanted {
            name: s.name.to_owned(),
            dtype: s.dtype,
            shape: s.shape.to_vec(),
            optimizer: is_optimizer(s.name),
        });
    }
    for r in state.restore_regions() {
        wanted.entry(r.name.to_owned()).or_insert_with(|| Wanted {
            name: r.name.to_owned(),
            dtype: r.dtype,
            shape: r.global_shape.to_vec(),
            optimizer: is_optimizer(r.name),
        });
    }
    wanted.into_values().collect()
}

/// Loads the matched tensors (run name → source name), whole ones and regions.
fn load_matched(
    source: &dyn RestoreSource,
    load: &BTreeMap<String, String>,
    state: &mut dyn Checkpointable,
) -> Result<()> {
    {
        let mut slots: Vec<SinkSlot<'_>> = state
            .restore_slots()
            .into_iter()
            .filter_map(|s| {
                let from = load.get(s.name)?;
                Some(SinkSlot {
                    name: from.as_str(),
                    dtype: s.dtype,
                    shape: s.shape,
                    data: s.data,
                })
            })
            .collect();
        source.load(&mut slots)?;
    }
    let mut regions: Vec<RegionSlot<'_>> = state
        .restore_regions()
        .into_iter()
        .filter_map(|r| {
            let from = load.get(r.name)?;
            Some(RegionSlot {
                name: from.as_str(),
                dtype: r.dtype,
                global_shape: r.global_shape,
                offsets: r.offsets,
                shape: r.shape,
                data: r.data,
            })
        })
        .collect();
    source.load_regions(&mut regions)
}
