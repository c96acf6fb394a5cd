//! Starting a fresh run from another run's tensors (NeMo's `AutoResume.restore_config`):
//! [`RestoreConfig`] says where from and what to take, [`RestoreSource`] is where tensors come
//! from (a waypoint checkpoint, local or on an object store; a `.safetensors` file; a Hugging Face
//! directory; more kinds plug in as more implementations), and [`match_tensors`] decides, purely,
//! which of the run's tensors are loaded from which of the source's, under the prefix map and
//! the strictness.
//!
//! **Model or optimizer state.** A tensor of the run is optimizer state when the run's
//! [`crate::Checkpointable::optimizer_tensors`] names it, or its name starts with `optim.` (the
//! names of waypoint-candle's AdamW and the example trainer: `optim.m.<var>`, `optim.v.<var>`,
//! `optim.step`); every other tensor is model state. `load_model_state` asks for the model
//! state, `load_optim_state` for the optimizer state.
//!
//! It must not choose when a restore applies (the run does: only when nothing of its own is to
//! be resumed), write anything, or touch the trainer state: a restore starts at step 0.

mod dcp;
mod open;
mod safetensors;
mod source;

pub use dcp::DcpSource;
pub use open::open_source;
pub use safetensors::{HF_INDEX, HF_SINGLE, SafetensorsSource};
pub use source::{MAX_CONTEXT_FILE, RestoreSource, SourceTensor, WaypointSource};

use crate::error::{Error, MismatchedTensors, Result};
use crate::format::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The prefix that marks optimizer state by name (besides what the run's
/// `optimizer_tensors` names).
pub const OPTIMIZER_PREFIX: &str = "optim.";

/// How strictly the source must match the tensors asked for (NeMo's `ckpt_load_strictness`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strictness {
    /// Every tensor asked for is in the source with the same dtype and shape, or the restore
    /// fails before anything is loaded, naming each tensor (and both shapes). Tensors of the
    /// source the run does not have are listed in the report and logged (NeMo's
    /// `assume_ok_unexpected` / `raise_all` without the unexpected part).
    #[default]
    Strict,
    /// [`Strictness::Strict`], and a tensor of the source that the run does not have fails too
    /// (torch's `load_state_dict(strict=True)`, NeMo's `raise_all`).
    StrictAll,
    /// Loads what matches and keeps the run's current values for the rest; the report lists
    /// what was missing, unexpected or mismatched, and each is logged (NeMo's `log_all`).
    Report,
}

/// Where a fresh run takes its initial tensors from (NeMo's `RestoreConfig`). Applies only when
/// the run has nothing of its own to resume: a resumable checkpoint of this run wins.
///
/// ```
/// use waypoint::{AutoResume, restore::RestoreConfig};
/// let restore = RestoreConfig::new("pretrained/model.safetensors").prefix_map("model.", "");
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true)
///     .restore_config(restore).build().unwrap();
/// assert!(resume.restore_config().unwrap().load_model_state);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreConfig {
    /// A waypoint checkpoint directory (local or `s3://…`), a `.safetensors` file, or a Hugging
    /// Face directory (`model.safetensors.index.json`, or one `model.safetensors`).
    pub path: PathBuf,
    /// Load the model state (default true).
    pub load_model_state: bool,
    /// Load the optimizer state (default false: a fine-tune starts a fresh optimizer).
    pub load_optim_state: bool,
    /// Copy the files under the source's `context/` into this run's context (default true);
    /// this run's own context files of the same name win.
    pub load_artifacts: bool,
    /// How strictly the source must match.
    pub strictness: Strictness,
    /// Renames the source's tensors: a name starting with the first prefix of a pair has it
    /// replaced by the second (the first pair that matches applies); other names stay.
    pub prefix_map: Vec<(String, String)>,
}

impl RestoreConfig {
    /// Restores from `path` with NeMo's defaults: the model state and the artifacts, not the
    /// optimizer state; strict.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RestoreConfig {
            path: path.into(),
            load_model_state: true,
            load_optim_state: false,
            load_artifacts: true,
            strictness: Strictness::Strict,
            prefix_map: Vec::new(),
        }
    }

    /// See [`RestoreConfig::load_model_state`].
    pub fn load_model_state(mut self, on: bool) -> Self {
        self.load_model_state = on;
        self
    }

    /// See [`RestoreConfig::load_optim_state`].
    pub fn load_optim_state(mut self, on: bool) -> Self {
        self.load_optim_state = on;
        self
    }

    /// See [`RestoreConfig::load_artifacts`].
    pub fn load_artifacts(mut self, on: bool) -> Self {
        self.load_artifacts = on;
        self
    }

    /// See [`Strictness`].
    pub fn strictness(mut self, strictness: Strictness) -> Self {
        self.strictness = strictness;
        self
    }

    /// Adds a rename: source names starting with `from` start with `to` instead (`"model."` →
    /// `""` for a checkpoint whose names carry a `model.` prefix the run's do not).
    pub fn prefix_map(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.prefix_map.push((from.into(), to.into()));
        self
    }

    /// The run's name of the source's tensor `name`.
    pub fn map_name(&self, name: &str) -> String {
        for (from, to) in &self.prefix_map {
            if let Some(rest) = name.strip_prefix(from.as_str()) {
                return format!("{to}{rest}");
            }
        }
        name.to_owned()
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidArgument {
                name: "restore_config.path",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// A tensor whose dtype or shape differs between the run and the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The run's name.
    pub tensor: String,
    /// The source's name.
    pub source_name: String,
    /// The run's dtype and shape.
    pub expected: (Dtype, Vec<u64>),
    /// The source's dtype and shape.
    pub found: (Dtype, Vec<u64>),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: the run has {} {:?}, the source {}{} {:?}",
            self.tensor,
            self.expected.0,
            self.expected.1,
            match self.source_name == self.tensor {
                true => String::new(),
                false => format!("({:?}) ", self.source_name),
            },
            self.found.0,
            self.found.1
        )
    }
}

/// What a restore loaded and what did not match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The source.
    pub source: PathBuf,
    /// The run's tensors loaded (the run's names).
    pub loaded: Vec<String>,
    /// Tensors asked for that the source lacks (the run's names).
    pub missing: Vec<String>,
    /// Tensors of the source that the run does not have (after the prefix map; optimizer state
    /// not asked for is not counted).
    pub unexpected: Vec<String>,
    /// Tensors whose dtype or shape differ.
    pub mismatched: Vec<Mismatch>,
    /// The `context/` files copied into the run's context.
    pub artifacts: Vec<String>,
}

impl RestoreReport {
    /// Whether everything asked for was loaded and nothing else was there.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One line: the counts, then a few names of each kind.
    pub fn summary(&self) -> String {
        fn some(names: Vec<String>) -> String {
            const NAMED: usize = 5;
            let more = names.len().saturating_sub(NAMED);
            let mut text = names.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        }
        let mut parts = vec![format!("{} tensor(s) loaded", self.loaded.len())];
        if !self.missing.is_empty() {
            let names = self.missing.iter().map(|n| format!("{n:?}")).collect();
            parts.push(format!("{} missing ({})", self.missing.len(), some(names)));
        }
        if !self.mismatched.is_empty() {
            let names = self.mismatched.iter().map(Mismatch::to_string).collect();
            parts.push(format!(
                "{} mismatched ({})",
                self.mismatched.len(),
                some(names)
            ));
        }
        if !self.unexpected.is_empty() {
            let names = self.unexpected.iter().map(|n| format!("{n:?}")).collect();
            parts.push(format!(
                "{} unexpected ({})",
                self.unexpected.len(),
                some(names)
            ));
        }
        parts.join("; ")
    }
}

/// A tensor of the run: its name, dtype, (global) shape, and whether it is optimizer state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The run's name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its (global) shape.
    pub shape: Vec<u64>,
    /// Optimizer state (see the module's rule).
    pub optimizer: bool,
}

/// What [`match_tensors`] decided: for each run tensor to load, the source's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    /// Run name → source name, for every tensor to load.
    pub load: BTreeMap<String, String>,
    /// What matched and what did not.
    pub report: RestoreReport,
}

/// Decides which of the run's tensors (`run`) are loaded from which of the source's, under the
/// config's prefix map, `load_model_state` / `load_optim_state` and strictness. Fails (before
/// anything is loaded) as the strictness says, or when two source tensors map to one name.
pub fn match_tensors(
    config: &RestoreConfig,
    run: &[Wanted],
    source: &BTreeMap<String, SourceTensor>,
    location: &std::path::Path,
) -> Result<Matching> {
    let mut mapped: BTreeMap<String, (&str, &SourceTensor)> = BTreeMap::new();
    for (name, tensor) in source {
        let to = config.map_name(name);
        if let Some((other, _)) = mapped.insert(to.clone(), (name, tensor)) {
            return Err(Error::InvalidArgument {
                name: "restore_config.prefix_map",
                reason: format!(
                    "{}: the source's tensors {other:?} and {name:?} both become {to:?}",
                    location.display()
                ),
            });
        }
    }
    let mut matching = Matching::default();
    matching.report.source = location.to_path_buf();
    let asked = |w: &Wanted| match w.optimizer {
        true => config.load_optim_state,
        false => config.load_model_state,
    };
    for wanted in run.iter().filter(|w| asked(w)) {
        let Some((source_name, found)) = mapped.get(&wanted.name) else {
            matching.report.missing.push(wanted.name.clone());
            continue;
        };
        if found.dtype != wanted.dtype || found.shape != wanted.shape {
            matching.report.mismatched.push(Mismatch {
                tensor: wanted.name.clone(),
                source_name: (*source_name).to_owned(),
                expected: (wanted.dtype, wanted.shape.clone()),
                found: (found.dtype, found.shape.clone()),
            });
            continue;
        }
        matching.report.loaded.push(wanted.name.clone());
        matching
            .load
            .insert(wanted.name.clone(), (*source_name).to_owned());
    }
    let known: BTreeSet<&str> = run.iter().map(|w| w.name.as_str()).collect();
    matching.report.unexpected = mapped
        .keys()
        .filter(|n| !known.contains(n.as_str()))
        .filter(|n| config.load_optim_state || !n.starts_with(OPTIMIZER_PREFIX))
        .cloned()
        .collect();
    let report = &matching.report;
    let fails = match config.strictness {
        Strictness::Strict => !report.missing.is_empty() || !report.mismatched.is_empty(),
        Strictness::StrictAll => !report.is_exact(),
        Strictness::Report => false,
    };
    if fails {
        return Err(Error::RestoreMismatch {
            path: location.to_path_buf(),
            summary: report.summary(),
            tensors: Box::new(MismatchedTensors {
                missing: report.missing.clone(),
                mismatched: report.mismatched.iter().map(|m| m.tensor.clone()).collect(),
                unexpected: match config.strictness {
                    Strictness::StrictAll => report.unexpected.clone(),
                    _ => Vec::new(),
                },
            }),
        });
    }
    Ok(matching)
}

#[cfg(test)]
mod tests;
