//! AutoResume: which committed checkpoint a run continues from. The knobs are NeMo's; the
//! choice ([`select`]) is pure and goes by the step in each commit record, never by modification
//! time or by parsing names; [`discover`] (in `discover.rs`) lists a checkpoints directory through
//! the storage layer and reads each checkpoint's summary, or its commit record where it has none;
//! [`select_confirmed`] checks the chosen one against its record. Only committed checkpoints
//! count. [`ResumePlan`] (in
//! `plan.rs`) applies the knobs to a directory: the checkpoint to continue from, the policy state
//! it carries and the deletions it left unfinished, for the run to apply.
//!
//! It must not load tensors or touch the caller's state (the run restores), nor talk to other
//! ranks (the run shares rank 0's choice).

mod discover;
mod plan;

pub(crate) use discover::select_confirmed_read;
pub use discover::{
    Confirm, Listed, Listing, Reading, Source, confirm, discover, discover_listed, read_record,
    record_completed, select_confirmed,
};
pub(crate) use plan::choose_read;
pub use plan::{ResumePlan, ResumePoint, choose};

use crate::engine::record_path;
use crate::error::{Error, Result};
use crate::format::RecordBinding;
use crate::restore::RestoreConfig;
use crate::storage::{EntryKind, Storage, StoragePath};
use std::path::PathBuf;

/// NeMo's AutoResume knobs.
///
/// ```
/// use waypoint::AutoResume;
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build().unwrap();
/// assert!(resume.resume_if_exists());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoResume {
    resume_if_exists: bool,
    resume_ignore_no_checkpoint: bool,
    resume_from_directory: Option<PathBuf>,
    resume_from_path: Option<PathBuf>,
    resume_past_end: bool,
    restore_config: Option<RestoreConfig>,
}

/// Builds an [`AutoResume`].
#[derive(Debug, Clone, Default)]
pub struct AutoResumeBuilder {
    inner: AutoResume,
}

impl AutoResume {
    /// Starts a builder with NeMo's defaults (everything off).
    pub fn builder() -> AutoResumeBuilder {
        AutoResumeBuilder::default()
    }

    /// Resume from the newest committed checkpoint of the run's checkpoints directory, if any.
    pub fn resume_if_exists(&self) -> bool {
        self.resume_if_exists
    }

    /// When resuming finds nothing, start from scratch (with a log line) instead of failing.
    pub fn resume_ignore_no_checkpoint(&self) -> bool {
        self.resume_ignore_no_checkpoint
    }

    /// The checkpoints directory to search instead of the run's own.
    pub fn resume_from_directory(&self) -> Option<&PathBuf> {
        self.resume_from_directory.as_ref()
    }

    /// One checkpoint to resume from; wins over everything else.
    pub fn resume_from_path(&self) -> Option<&PathBuf> {
        self.resume_from_path.as_ref()
    }

    /// Allow resuming from the checkpoint of a run that already completed.
    pub fn resume_past_end(&self) -> bool {
        self.resume_past_end
    }

    /// Another run's checkpoint (or a safetensors file, a Hugging Face directory) to start from
    /// when there is nothing to resume (NeMo's `restore_config`): a resumable checkpoint of this
    /// run (or `resume_from_path`) wins over it. See [`RestoreConfig`].
    pub fn restore_config(&self) -> Option<&RestoreConfig> {
        self.restore_config.as_ref()
    }
}

impl AutoResumeBuilder {
    /// See [`AutoResume::resume_if_exists`].
    pub fn resume_if_exists(mut self, on: bool) -> Self {
        self.inner.resume_if_exists = on;
        self
    }

    /// See [`AutoResume::resume_ignore_no_checkpoint`].
    pub fn resume_ignore_no_checkpoint(mut self, on: bool) -> Self {
        self.inner.resume_ignore_no_checkpoint = on;
        self
    }

    /// See [`AutoResume::resume_from_directory`].
    pub fn resume_from_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.inner.resume_from_directory = Some(dir.into());
        self
    }

    /// See [`AutoResume::resume_from_path`].
    pub fn resume_from_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.inner.resume_from_path = Some(path.into());
        self
    }

    /// See [`AutoResume::resume_past_end`].
    pub fn resume_past_end(mut self, on: bool) -> Self {
        self.inner.resume_past_end = on;
        self
    }

    /// See [`AutoResume::restore_config`].
    pub fn restore_config(mut self, config: RestoreConfig) -> Self {
        self.inner.restore_config = Some(config);
        self
    }

    /// Validates the combination.
    pub fn build(self) -> Result<AutoResume> {
        let r = &self.inner;
        if let Some(config) = &r.restore_config {
            config.check()?;
        }
        if r.resume_from_path.is_some() && r.resume_from_directory.is_some() {
            return Err(Error::InvalidArgument {
                name: "resume_from_path",
                reason: "resume_from_path and resume_from_directory exclude each other: the path names one checkpoint, the directory a place to search".into(),
            });
        }
        for (name, p) in [
            ("resume_from_path", &r.resume_from_path),
            ("resume_from_directory", &r.resume_from_directory),
        ] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(Error::InvalidArgument {
                    name,
                    reason: "must not be empty".into(),
                });
            }
        }
        Ok(self.inner)
    }
}

/// A committed checkpoint found in a checkpoints directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its directory name.
    pub name: String,
    /// The step in its commit record.
    pub step: u64,
    /// The epoch in its commit record.
    pub epoch: u64,
    /// Whether its record says the run completed with it (or its name ends in `-end`, NeMo's
    /// end-of-training checkpoint).
    pub completed: bool,
    /// Set when the facts above come from the checkpoint's summary rather than from its commit
    /// record (read and validated): the record the summary was made from, which
    /// [`select_confirmed`] checks before a run resumes from it.
    pub from_summary: Option<RecordBinding>,
}

/// What [`discover`] found in a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Committed checkpoints.
    pub committed: Vec<Candidate>,
    /// Directories that are not (or not yet) checkpoints, with the reason: a save in progress or
    /// interrupted, a damaged record.
    pub skipped: Vec<(String, String)>,
}

/// The decision of [`select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Resume from this checkpoint.
    Resume {
        /// The chosen candidate.
        candidate: Candidate,
        /// Why this one, for the log.
        reason: String,
    },
    /// Nothing committed to resume from.
    Nothing,
    /// The newest checkpoint ends a completed run and `resume_past_end` is off.
    Completed {
        /// The end-of-run checkpoint.
        candidate: Candidate,
    },
}

/// Chooses the checkpoint to resume from: the highest step among committed checkpoints; among
/// several at that step, a `-last` one, then the lexicographically last name (deterministic).
/// A completed run's checkpoint at that step stops the choice unless `resume_past_end`.
pub fn select(candidates: &[Candidate], resume_past_end: bool) -> Selection {
    let Some(top) = candidates.iter().map(|c| c.step).max() else {
        return Selection::Nothing;
    };
    let mut at_top: Vec<&Candidate> = candidates.iter().filter(|c| c.step == top).collect();
    at_top.sort_by(|a, b| {
        let last = |c: &Candidate| c.name.ends_with("-last") || c.name.contains("-last-v");
        (a.completed, last(a), &a.name).cmp(&(b.completed, last(b), &b.name))
    });
    let Some(chosen) = at_top.last() else {
        return Selection::Nothing;
    };
    if chosen.completed && !resume_past_end {
        return Selection::Completed {
            candidate: (*chosen).clone(),
        };
    }
    let reason = if at_top.len() == 1 {
        format!(
            "step {top} is the highest committed step among {} checkpoint(s)",
            candidates.len()
        )
    } else {
        // A few of the others by name, then a count: the reason is one log line.
        const NAMED: usize = 3;
        let others: Vec<&str> = at_top
            .iter()
            .rev()
            .skip(1)
            .take(NAMED)
            .map(|c| c.name.as_str())
            .collect();
        let more = match at_top.len() - 1 {
            n if n > NAMED => format!(" and {} more", n - NAMED),
            _ => String::new(),
        };
        format!(
            "step {top} is the highest committed step among {} checkpoint(s); preferred over {others:?}{more} at the same step (completed, then -last, then name order)",
            candidates.len()
        )
    };
    Selection::Resume {
        candidate: (*chosen).clone(),
        reason,
    }
}

/// Looks below `dir` (a few levels, a bounded number of entries) for directories that hold
/// committed checkpoints, for an error message that says where checkpoints actually are (NeMo
/// #14259: a resume directory pointed at the log root).
pub fn checkpoints_nearby(storage: &dyn Storage, dir: &StoragePath) -> Vec<PathBuf> {
    const MAX_DEPTH: usize = 4;
    const MAX_VISITS: usize = 2000;
    let mut found = Vec::new();
    let mut queue = vec![(dir.clone(), 0usize)];
    let mut visits = 0;
    while let Some((current, depth)) = queue.pop() {
        let Ok(entries) = storage.list(&current) else {
            continue;
        };
        for entry in entries
            .into_iter()
            .filter(|e| e.kind == EntryKind::Dir && !e.name.starts_with('.'))
        {
            visits += 1;
            if visits > MAX_VISITS {
                return found;
            }
            let Ok(child) = current.join(&entry.name) else {
                continue;
            };
            let has_record = record_path(&child)
                .ok()
                .and_then(|r| storage.stat(&r).ok().flatten())
                .is_some();
            if has_record {
                let parent = storage.describe(&current);
                if !found.contains(&parent) {
                    found.push(parent);
                }
            } else if depth < MAX_DEPTH {
                queue.push((child, depth + 1));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, step: u64, completed: bool) -> Candidate {
        Candidate {
            name: name.into(),
            step,
            epoch: 0,
            completed,
            from_summary: None,
        }
    }

    #[test]
    fn selection_table() {
        // (candidates, resume_past_end, expected name or "" for Nothing, "!" prefix for Completed)
        let table: Vec<(Vec<Candidate>, bool, &str)> = vec![
            (vec![], false, ""),
            (vec![c("a--step=10", 10, false)], false, "a--step=10"),
            // The highest step wins over a newer-looking name or a -last at a lower step.
            (
                vec![c("x-last", 100, false), c("x--step=200", 200, false)],
                false,
                "x--step=200",
            ),
            // At the same step, -last is preferred.
            (
                vec![
                    c("x--step=200", 200, false),
                    c("x--step=200-last", 200, false),
                ],
                false,
                "x--step=200-last",
            ),
            // A -last-v1 (version counter) is still a last.
            (
                vec![c("b", 5, false), c("a-last-v1", 5, false)],
                false,
                "a-last-v1",
            ),
            // Deterministic by name otherwise.
            (vec![c("b", 5, false), c("a", 5, false)], false, "b"),
            // A completed run stops resume unless resume_past_end.
            (
                vec![c("x-last", 300, true), c("x--step=300", 300, false)],
                false,
                "!x-last",
            ),
            (vec![c("x-last", 300, true)], true, "x-last"),
            // An older completed checkpoint does not matter when a newer one exists.
            (
                vec![c("old-end", 10, true), c("new", 20, false)],
                false,
                "new",
            ),
        ];
        for (i, (cands, past_end, want)) in table.into_iter().enumerate() {
            let got = select(&cands, past_end);
            let got = match got {
                Selection::Nothing => String::new(),
                Selection::Completed { candidate } => format!("!{}", candidate.name),
                Selection::Resume { candidate, reason } => {
                    assert!(
                        reason.contains("highest committed step"),
                        "case {i}: {reason}"
                    );
                    candidate.name
                }
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    /// The reason is one log line: with thousands of checkpoints at one step, it names three.
    #[test]
    fn the_reason_names_a_few_others_and_counts_the_rest() {
        let many: Vec<Candidate> = (0..2000)
            .map(|i| c(&format!("ck-{i:04}"), 4, false))
            .collect();
        let Selection::Resume { candidate, reason } = select(&many, false) else {
            panic!("nothing selected");
        };
        assert_eq!(candidate.name, "ck-1999");
        assert!(
            reason.contains(r#"["ck-1998", "ck-1997", "ck-1996"] and 1996 more"#),
            "{reason}"
        );
        assert!(reason.len() < 300, "{reason}");
    }

    #[test]
    fn builder_refuses_path_and_directory_together() {
        let err = AutoResume::builder()
            .resume_from_path("a")
            .resume_from_directory("b")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exclude each other"), "{err}");
        assert!(AutoResume::builder().resume_from_path("").build().is_err());
    }
}
