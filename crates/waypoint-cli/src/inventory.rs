//! What a checkpoints directory holds, for `ls` and `prune`: each committed checkpoint with the
//! facts its commit record gives (step, epoch, monitored value, top-k rank, `-last`, weights only,
//! size), what is there but not committed (and why), the run's lock and the checkpoint AutoResume
//! would pick. It reads commit records only, never a shard, and it deletes nothing.

use crate::cli::DirLocation;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use waypoint::Mode;
use waypoint::experiment::{LOCK_FILE, lock_holder};
use waypoint::format::{CommitRecord, RECORD_FILE, WEIGHTS_DIR};
use waypoint::policy::PolicyState;
use waypoint::resume::{Candidate, Selection, discover_each, select};
use waypoint::storage::{
    EntryKind, SharedStorage, StoragePath, TEMP_MARKER, local_storage, open_location,
};

/// The name of a run's checkpoints directory inside its version directory.
const CHECKPOINTS_DIR: &str = "checkpoints";

/// A committed checkpoint, as its record describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its directory name.
    pub name: String,
    /// The record's step.
    pub step: u64,
    /// The record's epoch.
    pub epoch: u64,
    /// The monitored value (from a policy state's top-k, else from the name); NaN is a value.
    pub value: Option<f64>,
    /// Its rank (1 = best) in the newest policy state's top-k.
    pub rank: Option<usize>,
    /// A `-last` checkpoint (by name, or the policy state's last).
    pub last: bool,
    /// Saved without the optimizer.
    pub weights_only: bool,
    /// Ends a completed run.
    pub completed: bool,
    /// The sum of the record's file sizes.
    pub bytes: u64,
    /// Seconds since the record was written (local directories only).
    pub age_s: Option<u64>,
}

/// AutoResume's choice among the committed checkpoints (`resume::select`, `resume_past_end` off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePick {
    /// The checkpoint it would continue from; `None` when it would not resume.
    pub name: Option<String>,
    /// Why.
    pub reason: String,
    /// The checkpoint prune must never delete: the pick, or a completed run's end checkpoint
    /// (what `resume_past_end` would pick).
    pub protected: Option<String>,
}

/// The run a checkpoints directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The version directory.
    pub path: String,
    /// Its name.
    pub version: String,
}

/// Everything `ls` shows and `prune` decides on.
#[derive(Debug)]
pub struct Inventory {
    /// The checkpoints directory, for messages.
    pub path: String,
    /// The storage rooted at the checkpoints directory.
    pub storage: SharedStorage,
    /// The run (when given a version directory).
    pub run: Option<RunInfo>,
    /// The live holder of the run's lock; `None` when free or unknown (object stores).
    pub locked_by: Option<String>,
    /// The monitored metric of the newest policy state.
    pub monitor: Option<String>,
    /// Its mode (`Max` without a monitor: ranked by step).
    pub mode: Mode,
    /// Committed checkpoints, newest step first (then name, descending).
    pub checkpoints: Vec<Item>,
    /// What is not a committed checkpoint, with the reason, sorted by name.
    pub other: Vec<(String, String)>,
    /// AutoResume's choice.
    pub resume: ResumePick,
}

/// Where the checkpoints are, and the version directory holding the lock.
struct Place {
    storage: SharedStorage,
    path: String,
    run: Option<RunInfo>,
    lock_dir: Option<PathBuf>,
    local: Option<PathBuf>,
}

/// Reads `dir`: a version directory (holding `checkpoints/`) or a checkpoints directory.
pub fn read(dir: &DirLocation) -> anyhow::Result<Inventory> {
    let place = match dir {
        DirLocation::Local(path) => local_place(path)?,
        DirLocation::Url(url) => url_place(url)?,
    };
    let locked_by = match &place.lock_dir {
        Some(dir) => lock_holder(dir)
            .with_context(|| format!("cannot tell whether a run holds {}", dir.display()))?,
        None => None,
    };
    let storage = place.storage.as_ref();
    let root = StoragePath::root();
    // Each record is read once, and only what the listing shows is kept of it.
    let mut records = Vec::new();
    let found = discover_each(storage, &root, &mut |candidate, record| {
        records.push(Summary::of(candidate, record));
    })
    .with_context(|| format!("cannot list the checkpoints of {}", place.path))?;
    let other = not_committed(&place, &found.committed, found.skipped)?;
    let resume = resume_pick(&found.committed);
    let (monitor, mode, checkpoints) = items(&records, place.local.as_deref());
    Ok(Inventory {
        path: place.path,
        storage: place.storage,
        run: place.run,
        locked_by,
        monitor,
        mode,
        checkpoints,
        other,
        resume,
    })
}

fn local_place(path: &Path) -> anyhow::Result<Place> {
    let nested = path.join(CHECKPOINTS_DIR);
    let (checkpoints, run_dir) = if nested.is_dir() {
        (nested, Some(path.to_path_buf()))
    } else {
        let parent = path
            .parent()
            .filter(|p| path.ends_with(CHECKPOINTS_DIR) && p.join(LOCK_FILE).exists());
        (path.to_path_buf(), parent.map(Path::to_path_buf))
    };
    let storage = local_storage(&checkpoints)
        .with_context(|| format!("cannot use directory {}", checkpoints.display()))?;
    let run = (checkpoints != path).then(|| RunInfo {
        path: path.display().to_string(),
        version: file_name(path),
    });
    Ok(Place {
        storage,
        path: checkpoints.display().to_string(),
        run,
        lock_dir: run_dir,
        local: Some(checkpoints),
    })
}

fn url_place(url: &str) -> anyhow::Result<Place> {
    let storage = open_location(url).with_context(|| format!("cannot open {url}"))?;
    let nested = StoragePath::new(CHECKPOINTS_DIR)?;
    let is_run = matches!(storage.stat(&nested)?, Some(e) if e.kind == EntryKind::Dir);
    if !is_run {
        return Ok(Place {
            storage,
            path: url.to_owned(),
            run: None,
            lock_dir: None,
            local: None,
        });
    }
    let inner = format!("{url}/{CHECKPOINTS_DIR}");
    Ok(Place {
        storage: open_location(&inner).with_context(|| format!("cannot open {inner}"))?,
        path: inner,
        run: Some(RunInfo {
            path: url.to_owned(),
            version: url.rsplit('/').next().unwrap_or(url).to_owned(),
        }),
        lock_dir: None,
        local: None,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Everything listed that is not a committed checkpoint, with the reason.
fn not_committed(
    place: &Place,
    committed: &[Candidate],
    skipped: Vec<(String, String)>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut other: BTreeMap<String, String> = skipped.into_iter().collect();
    let entries = match place.storage.list(&StoragePath::root()) {
        Ok(entries) => entries,
        Err(waypoint::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", place.path)),
    };
    // A set, not a scan of `committed` per entry: 10,000 checkpoints made that 5·10⁷ string
    // comparisons, 40 % of `waypoint ls` (docs/BENCHMARKS.md).
    let names: std::collections::HashSet<&str> =
        committed.iter().map(|c| c.name.as_str()).collect();
    for entry in entries {
        if names.contains(entry.name.as_str()) || other.contains_key(&entry.name) {
            continue;
        }
        let reason = match entry.kind {
            _ if entry.name.contains(TEMP_MARKER) => {
                "temporary of a save (or a deletion) that was interrupted or is in progress"
            }
            EntryKind::Dir => "no weights/metadata.json: not a checkpoint",
            EntryKind::Symlink => "a link (save_last = link): its target is listed",
            _ => "a file, not a checkpoint",
        };
        other.insert(entry.name, reason.to_owned());
    }
    Ok(other.into_iter().collect())
}

/// AutoResume's choice, as a resumed run with `resume_past_end` off would make it.
fn resume_pick(committed: &[Candidate]) -> ResumePick {
    match select(committed, false) {
        Selection::Resume { candidate, reason } => ResumePick {
            name: Some(candidate.name.clone()),
            reason,
            protected: Some(candidate.name),
        },
        Selection::Completed { candidate } => ResumePick {
            name: None,
            reason: format!(
                "{} ends a completed run: AutoResume does not resume past the end (unless resume_past_end)",
                candidate.name
            ),
            protected: Some(candidate.name),
        },
        Selection::Nothing => ResumePick {
            name: None,
            reason: "no committed checkpoint: a run would start from scratch".into(),
            protected: None,
        },
    }
}

/// The policy state a record carries, if any.
/// What the listing keeps of one committed checkpoint's record.
struct Summary {
    candidate: Candidate,
    state: Option<PolicyState>,
    weights_only: bool,
    bytes: u64,
}

impl Summary {
    fn of(candidate: &Candidate, record: &CommitRecord) -> Summary {
        Summary {
            candidate: candidate.clone(),
            state: policy_state(record),
            weights_only: record.trainer_state.waypoint.weights_only(),
            bytes: record.files.values().map(|f| f.size).sum(),
        }
    }
}

fn policy_state(record: &CommitRecord) -> Option<PolicyState> {
    let value = record.trainer_state.waypoint.model_checkpoint.as_ref()?;
    serde_json::from_value(value.clone()).ok()
}

/// The items, newest step first, with the newest policy state's monitor and mode.
fn items(records: &[Summary], local: Option<&Path>) -> (Option<String>, Mode, Vec<Item>) {
    let states: Vec<(u64, &PolicyState)> = records
        .iter()
        .filter_map(|r| r.state.as_ref().map(|s| (r.candidate.step, s)))
        .collect();
    let newest = states.iter().max_by_key(|(step, _)| *step).map(|(_, s)| *s);
    let monitor = newest.and_then(|s| s.monitor.clone());
    let mode = newest.map_or(Mode::Max, |s| s.mode);
    let ranks = newest
        .map(|s| ranking(&s.top_k, s.mode))
        .unwrap_or_default();
    let last_name = newest.and_then(|s| s.last_model_path.clone());
    // A checkpoint's score: what its own record's state says, else any other state.
    let mut scores: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, state) in &states {
        for entry in &state.top_k {
            scores.entry(entry.name.as_str()).or_insert(entry.score);
        }
    }
    let now = SystemTime::now();
    let mut items: Vec<Item> = records
        .iter()
        .map(|r| {
            let c = &r.candidate;
            let own = r
                .state
                .as_ref()
                .and_then(|s| s.top_k.iter().find(|e| e.name == c.name).map(|e| e.score));
            let value = own
                .or_else(|| scores.get(c.name.as_str()).copied())
                .or_else(|| monitor.as_deref().and_then(|m| value_in_name(&c.name, m)));
            Item {
                value: if monitor.is_some() { value } else { None },
                rank: ranks.get(c.name.as_str()).copied(),
                last: is_last(&c.name) || last_name.as_deref() == Some(c.name.as_str()),
                weights_only: r.weights_only,
                completed: c.completed,
                bytes: r.bytes,
                age_s: local.and_then(|dir| age_s(&dir.join(&c.name), now)),
                name: c.name.clone(),
                step: c.step,
                epoch: c.epoch,
            }
        })
        .collect();
    items.sort_by(|a, b| (b.step, &b.name).cmp(&(a.step, &a.name)));
    (monitor, mode, items)
}

/// Name → rank (1 = best) of top-k entries, best first by `mode` (NaN last; ties keep order).
fn ranking(entries: &[waypoint::policy::TopKEntry], mode: Mode) -> BTreeMap<&str, usize> {
    let mut sorted: Vec<&waypoint::policy::TopKEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| better_first(mode, a.score, b.score));
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i + 1))
        .collect()
}

/// An ordering that puts the better score first in `mode`, NaN last.
pub fn better_first(mode: Mode, a: f64, b: f64) -> std::cmp::Ordering {
    if mode.is_better(a, b) {
        std::cmp::Ordering::Less
    } else if mode.is_better(b, a) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// A NeMo `-last` name (`…-last`, `…-last-v2`), as AutoResume recognises it.
fn is_last(name: &str) -> bool {
    name.ends_with("-last") || name.contains("-last-v")
}

/// The value of `monitor` in a name like `demo--val_loss=0.1234-epoch=2`: the longest text
/// after `monitor=` that ends at a `-` (or the end) and reads as a number.
pub fn value_in_name(name: &str, monitor: &str) -> Option<f64> {
    let start = name.find(&format!("{monitor}="))? + monitor.len() + 1;
    let rest = name.get(start..)?;
    let ends = rest
        .char_indices()
        .filter(|&(i, c)| c == '-' && i > 0)
        .map(|(i, _)| i)
        .chain([rest.len()]);
    let mut ends: Vec<usize> = ends.collect();
    ends.reverse();
    ends.into_iter()
        .find_map(|end| rest.get(..end).and_then(|t| t.parse::<f64>().ok()))
}

/// Seconds since the checkpoint's commit record was written; `None` when unknown.
fn age_s(checkpoint: &Path, now: SystemTime) -> Option<u64> {
    let record = checkpoint.join(WEIGHTS_DIR).join(RECORD_FILE);
    let modified = std::fs::symlink_metadata(record).ok()?.modified().ok()?;
    Some(now.duration_since(modified).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_in_names() {
        let table = [
            ("demo--val_loss=0.1234-step=100", Some(0.1234)),
            ("demo--val_loss=-0.5-step=100", Some(-0.5)),
            ("demo--val_loss=1e-05-step=3", Some(1e-5)),
            ("demo--val_loss=0.25", Some(0.25)),
            ("demo--step=100", None),
            ("demo--val_loss=x-step=1", None),
        ];
        for (name, want) in table {
            assert_eq!(value_in_name(name, "val_loss"), want, "{name}");
        }
        assert!(value_in_name("a--val_loss=nan-step=1", "val_loss").is_some_and(f64::is_nan));
    }

    #[test]
    fn ranks_best_first_with_nan_last() {
        let e = |name: &str, score: f64| waypoint::policy::TopKEntry {
            name: name.into(),
            score,
        };
        let entries = [e("a", 0.5), e("b", f64::NAN), e("c", 0.1)];
        let min = ranking(&entries, Mode::Min);
        assert_eq!((min["c"], min["a"], min["b"]), (1, 2, 3));
        let max = ranking(&entries, Mode::Max);
        assert_eq!((max["a"], max["c"], max["b"]), (1, 2, 3));
    }
}
