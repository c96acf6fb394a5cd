//! AutoResume applied to a run's checkpoints directory: [`choose`] finds the checkpoint to
//! continue from ([`ResumePoint`]), [`ResumePlan::new`] reads what the run needs from it (the
//! policy state, the deletions a crash interrupted), and the run applies the plan.
//!
//! Reads only summaries and commit records; it must not load tensors, delete anything itself or talk to other
//! ranks.

use super::{
    AutoResume, Confirm, Reading, Selection, checkpoints_nearby, discover, discover_listed,
    read_record, select_confirmed_read,
};
use crate::error::{Error, Result};
use crate::format::{CommitRecord, Superseded};
use crate::policy::{Policy, PolicyState};
use crate::storage::{EntryKind, SharedStorage, StoragePath, is_url, local_storage, open_dir};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The checkpoint a run resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Where it is.
    pub path: PathBuf,
    /// Its name in its directory.
    pub name: String,
    /// The step in its commit record.
    pub step: u64,
    /// The epoch in its commit record.
    pub epoch: u64,
    /// Whether it ends a completed run (and `resume_past_end` is off): nothing is left to do.
    pub completed: bool,
    /// Why it was chosen.
    pub reason: String,
}

/// Applies AutoResume's rules to the checkpoints directory `dirpath` (kept in `storage`): which
/// checkpoint, if any, to continue from. `resume_from_path` names one; otherwise the newest
/// committed one in `resume_from_directory` or `dirpath` (see [`select`]).
pub fn choose(
    resume: &AutoResume,
    storage: &SharedStorage,
    dirpath: &Path,
) -> Result<Option<ResumePoint>> {
    Ok(choose_read(resume, storage, dirpath)?.map(|(point, _)| point))
}

/// [`choose`], also handing back the chosen checkpoint's commit record where choosing read and
/// validated it (`resume_from_path`, or the confirmation of a summary), for
/// [`ResumePlan::with_record`]: the record is then read and parsed once at start-up, not twice.
pub(crate) fn choose_read(
    resume: &AutoResume,
    storage: &SharedStorage,
    dirpath: &Path,
) -> Result<Option<(ResumePoint, Option<CommitRecord>)>> {
    if let Some(path) = resume.resume_from_path() {
        let (point, record) = from_path(path, resume.resume_past_end())?;
        return Ok(Some((point, Some(record))));
    }
    if !resume.resume_if_exists() {
        let existing = discover(storage.as_ref(), &StoragePath::root())?;
        if !existing.committed.is_empty() {
            tracing::warn!(
                dir = %dirpath.display(),
                checkpoints = existing.committed.len(),
                "checkpoints of an earlier run exist here, but resume_if_exists is off: training starts from scratch"
            );
        }
        return Ok(None);
    }
    let (search_dir, search_storage) = match resume.resume_from_directory() {
        Some(dir) => open_search_dir(dir)?,
        None => (dirpath.to_path_buf(), storage.clone()),
    };
    from_directory(resume, &search_dir, &search_storage)
}

/// The checkpoint `resume_from_path` names, and its record.
fn from_path(path: &Path, resume_past_end: bool) -> Result<(ResumePoint, CommitRecord)> {
    let path = if path.to_str().is_some_and(is_url) {
        path.to_path_buf()
    } else {
        std::fs::canonicalize(path).map_err(|e| Error::io("resolve resume_from_path", path, e))?
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Err(Error::InvalidArgument {
            name: "resume_from_path",
            reason: format!("{} is not a checkpoint directory", path.display()),
        });
    };
    let record = read_record(open_dir(parent)?.as_ref(), &StoragePath::new(name)?)?;
    let point = ResumePoint {
        completed: record.trainer_state.waypoint.completed() && !resume_past_end,
        name: name.to_owned(),
        step: record.step,
        epoch: record.epoch,
        reason: "resume_from_path names it".into(),
        path,
    };
    Ok((point, record))
}

/// `resume_from_directory`, opened: a URL as it is, a local directory resolved.
fn open_search_dir(dir: &Path) -> Result<(PathBuf, SharedStorage)> {
    if dir.to_str().is_some_and(is_url) {
        return Ok((dir.to_path_buf(), open_dir(dir)?));
    }
    if !dir.is_dir() {
        return Err(Error::NoCheckpoint {
            searched: dir.to_path_buf(),
            skipped: Vec::new(),
            nearby: Vec::new(),
        });
    }
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| Error::io("resolve resume_from_directory", dir, e))?;
    let storage = local_storage(&dir)?;
    Ok((dir, storage))
}

/// The newest committed checkpoint in `search_dir` (with its record when its confirmation read
/// it), or why there is none.
fn from_directory(
    resume: &AutoResume,
    search_dir: &Path,
    storage: &SharedStorage,
) -> Result<Option<(ResumePoint, Option<CommitRecord>)>> {
    let root = StoragePath::root();
    let listing = discover_listed(storage.as_ref(), &root, Reading::Summaries)?;
    let (selection, listing, record) = select_confirmed_read(
        storage.as_ref(),
        &root,
        listing,
        resume.resume_past_end(),
        Confirm::Full,
    )?;
    let found = listing.discovery;
    for (name, why) in &found.skipped {
        tracing::warn!(checkpoint = %name, reason = %why, "not a committed checkpoint; ignored by resume");
    }
    let (candidate, completed, reason) = match selection {
        Selection::Resume { candidate, reason } => {
            tracing::info!(checkpoint = %candidate.name, step = candidate.step, "resuming: {reason}");
            (candidate, false, reason)
        }
        Selection::Completed { candidate } => {
            tracing::info!(checkpoint = %candidate.name, step = candidate.step, "the run already completed");
            let reason = "the newest checkpoint ends a completed run (resume_past_end is off)";
            (candidate, true, reason.to_owned())
        }
        Selection::Nothing => {
            let nearby = checkpoints_nearby(storage.as_ref(), &StoragePath::root());
            // resume_ignore_no_checkpoint allows starting over, but not when a directory given
            // explicitly was simply the wrong one and checkpoints lie below it (NeMo #14259).
            let misdirected = resume.resume_from_directory().is_some() && !nearby.is_empty();
            if resume.resume_ignore_no_checkpoint() && !misdirected {
                tracing::info!(dir = %search_dir.display(), "no committed checkpoint to resume from: training from scratch");
                return Ok(None);
            }
            return Err(Error::NoCheckpoint {
                nearby,
                searched: search_dir.to_path_buf(),
                skipped: found.skipped.into_iter().map(|(n, _)| n).collect(),
            });
        }
    };
    let point = ResumePoint {
        path: search_dir.join(&candidate.name),
        name: candidate.name,
        step: candidate.step,
        epoch: candidate.epoch,
        completed,
        reason,
    };
    Ok(Some((point, record)))
}

/// What a run starts from: the checkpoint it resumes (if any), the policy state to continue
/// with, the checkpoint the policy must not touch until its replacement committed, and the
/// deletions the resumed checkpoint's decision had planned but a crash interrupted.
#[derive(Debug, Clone)]
pub struct ResumePlan {
    /// The checkpoint to resume from, `None` to start from scratch.
    pub point: Option<ResumePoint>,
    /// The policy's state: restored from the checkpoint when it belongs to this directory,
    /// otherwise fresh.
    pub policy_state: PolicyState,
    /// The resumed checkpoint's name when it is in this directory: protected from the policy
    /// unless the policy manages it.
    pub protected: Option<String>,
    /// Superseded checkpoints still committed that the interrupted run meant to delete, by name
    /// and step; never the resumed checkpoint, one the restored state keeps, or a name that holds
    /// another checkpoint now.
    pub pending_deletes: Vec<Superseded>,
}

impl ResumePlan {
    /// The plan for resuming from `point` in the checkpoints directory `dirpath` (kept in
    /// `storage`) under `policy`. A checkpoint from elsewhere (`resume_from_path`, another
    /// directory) restores the tensors and trainer state only: the policy starts fresh here.
    pub fn new(
        point: Option<ResumePoint>,
        policy: &Policy,
        storage: &SharedStorage,
        dirpath: &Path,
    ) -> Result<ResumePlan> {
        Self::with_record(point, None, policy, storage, dirpath)
    }

    /// [`ResumePlan::new`] given the resume point's commit record where [`choose_read`] read it
    /// (`None`: it is read here).
    pub(crate) fn with_record(
        point: Option<ResumePoint>,
        record: Option<CommitRecord>,
        policy: &Policy,
        storage: &SharedStorage,
        dirpath: &Path,
    ) -> Result<ResumePlan> {
        let dirpath_text = dirpath.display().to_string();
        let mut plan = ResumePlan {
            policy_state: policy.initial_state(&dirpath_text),
            protected: None,
            pending_deletes: Vec::new(),
            point,
        };
        let Some(point) = plan
            .point
            .as_ref()
            .filter(|p| p.path.parent() == Some(dirpath))
        else {
            return Ok(plan);
        };
        let record = match record {
            Some(record) => record,
            None => read_record(storage.as_ref(), &StoragePath::new(&point.name)?)?,
        };
        let reserved = &record.trainer_state.waypoint;
        let restored = reserved
            .model_checkpoint
            .as_ref()
            .and_then(|v| serde_json::from_value::<PolicyState>(v.clone()).ok());
        let committed = committed_steps(storage)?;
        // A `-last` link is not listed by discovery (its target is) and is never read through:
        // one the restored state saved counts at the step it was saved at, or the resumed run
        // would forget it and never rotate it (a link dangling once its target is displaced).
        let links: std::collections::BTreeMap<String, u64> = restored
            .as_ref()
            .map(|s| s.saved.clone())
            .unwrap_or_default();
        let (state, notes) = policy.restore(restored, &dirpath_text, &|n: &str| {
            committed
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, s)| *s)
                .or_else(|| {
                    let entry = storage.stat(&StoragePath::new(n).ok()?).ok()??;
                    (entry.kind == EntryKind::Symlink).then(|| links.get(n).copied())?
                })
        });
        for note in notes {
            tracing::info!("{note}");
        }
        // What any retention rule of the restored state keeps (top-k, last, latest, permanent).
        let kept = |name: &str| name == point.name || state.keeps(name);
        let committed_at = |name: &str| committed.iter().find(|(c, _)| c == name).map(|(_, s)| *s);
        // A name may have been reused by a newer checkpoint since the record was written: only
        // the checkpoint of the recorded step goes. Older records name no step: a checkpoint they
        // name goes only if it is older than the record's own.
        let legacy = reserved
            .pending_deletes
            .iter()
            .flatten()
            .filter_map(|name| {
                let step = committed_at(name).filter(|s| *s < record.step)?;
                Some(Superseded {
                    name: name.clone(),
                    step,
                })
            });
        // Another process may have committed its own checkpoint under the name and step since
        // (the run's deletion finished, then the name was free): only a checkpoint this run's
        // experiment wrote goes (its record's run facts, or their absence, are the resumed one's).
        let own = |name: &str| {
            let facts = |r: &crate::format::CommitRecord| {
                (r.trainer_state.waypoint.run.as_ref())
                    .map(|f| (f.experiment.clone(), f.version.clone()))
            };
            StoragePath::new(name)
                .and_then(|p| read_record(storage.as_ref(), &p))
                .is_ok_and(|r| facts(&r) == facts(&record))
        };
        let mut pending: Vec<Superseded> = Vec::new();
        for d in reserved.superseded.iter().flatten().cloned().chain(legacy) {
            if !kept(&d.name)
                && committed_at(&d.name) == Some(d.step)
                && !pending.contains(&d)
                && own(&d.name)
            {
                pending.push(d);
            }
        }
        plan.pending_deletes = pending;
        plan.protected = Some(point.name.clone());
        plan.policy_state = state;
        Ok(plan)
    }
}

/// The steps of every committed checkpoint in the run's directory.
fn committed_steps(storage: &SharedStorage) -> Result<Vec<(String, u64)>> {
    let found = discover(storage.as_ref(), &StoragePath::root())?;
    Ok(found
        .committed
        .into_iter()
        .map(|c| (c.name, c.step))
        .collect())
}
