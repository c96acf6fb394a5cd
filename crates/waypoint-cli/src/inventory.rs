//! What a checkpoints directory holds, for `ls` and `prune`: each committed checkpoint with the
//! facts its summary (or, without one, its commit record) gives (step, epoch, monitored value,
//! top-k rank, `-last`, weights only, size), what is there but not committed (and why), the run's
//! lock and the checkpoint AutoResume would pick (`waypoint::resume::select_confirmed`, the very
//! choice a run makes). It reads summaries and commit records only, never a shard, and it
//! deletes nothing. A summary that cannot be believed is marked, and the record read instead.

use crate::cli::DirLocation;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use waypoint::Mode;
use waypoint::experiment::{LOCK_FILE, lock_holder};
use waypoint::format::{CommitRecord, MAX_RECORD_LEN, RECORD_FILE, Summary, WEIGHTS_DIR};
use waypoint::policy::PolicyState;
use waypoint::resume::{
    Candidate, Confirm, Listed, Reading, Selection, Source, discover_listed, select_confirmed,
};
use waypoint::storage::{
    DirEntry, EntryKind, SharedStorage, Storage, StoragePath, TEMP_MARKER, local_storage,
    open_location,
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
    /// Where the facts came from.
    pub facts: Facts,
}

/// Where a listed checkpoint's facts came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// Its summary (`summary.json`).
    Summary,
    /// Its commit record: it has no summary.
    Record,
    /// Its commit record, because its summary could not be believed (why): damaged, edited, of
    /// a newer version, or made from another record than the one there now.
    SummaryRefused(String),
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

/// Reads `dir`: a version directory (holding `checkpoints/`) or a checkpoints directory, each
/// checkpoint as `reading` says (summaries for a listing, records for a decision to delete).
pub fn read(dir: &DirLocation, reading: Reading) -> anyhow::Result<Inventory> {
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
    let listing = discover_listed(storage, &root, reading)
        .with_context(|| format!("cannot list the checkpoints of {}", place.path))?;
    // AutoResume's own choice: when the pick's summary disagrees with its record, every record
    // is read and the listing is that one.
    let (selection, listing) =
        select_confirmed(storage, &root, listing, false, Confirm::Binding)
            .with_context(|| format!("cannot read the checkpoints of {}", place.path))?;
    let found = listing.discovery;
    let mut skipped = found.skipped;
    let mut records = Vec::with_capacity(listing.listed.len());
    for listed in listing.listed {
        match Facts::check(storage, listed, place.local.as_deref()) {
            Ok(record) => records.push(record),
            Err((name, why)) => skipped.push((name, why)),
        }
    }
    let other = not_committed(listing.entries, &found.committed, skipped);
    let mut resume = resume_pick(selection);
    if let Some(why) = listing.fallback {
        resume.reason = format!("{} ({why})", resume.reason);
    }
    let (monitor, mode, checkpoints) = items(storage, &records, place.local.as_deref());
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

/// Everything listed (`entries`, the directory's one listing) that is not a committed
/// checkpoint, with the reason.
fn not_committed(
    entries: Vec<DirEntry>,
    committed: &[Candidate],
    skipped: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut other: BTreeMap<String, String> = skipped.into_iter().collect();
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
    other.into_iter().collect()
}

/// AutoResume's choice, as a resumed run with `resume_past_end` off would make it.
fn resume_pick(selection: Selection) -> ResumePick {
    match selection {
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

/// What the listing keeps of one committed checkpoint.
struct Record {
    candidate: Candidate,
    summary: Summary,
    facts: Facts,
    /// The record's modification time (local directories).
    modified: Option<SystemTime>,
}

impl Facts {
    /// Checks what local directories allow at no extra cost (the listing stats each record for
    /// its age anyway): a checkpoint known by its summary must still have its record, of the
    /// length the summary says; a record of another length is read instead of the summary. A
    /// missing record makes the directory not committed: `Err((name, why))`.
    fn check(
        storage: &dyn Storage,
        listed: Listed,
        local: Option<&Path>,
    ) -> Result<Record, (String, String)> {
        let Listed {
            candidate,
            summary,
            source,
        } = listed;
        let facts = match source {
            Source::Summary => Facts::Summary,
            Source::Record(None) => Facts::Record,
            Source::Record(Some(why)) => Facts::SummaryRefused(why),
        };
        let Some(dir) = local else {
            return Ok(Record {
                candidate,
                summary,
                facts,
                modified: None,
            });
        };
        let meta = std::fs::symlink_metadata(
            dir.join(&candidate.name)
                .join(WEIGHTS_DIR)
                .join(RECORD_FILE),
        );
        let modified = meta.as_ref().ok().and_then(|m| m.modified().ok());
        match (&facts, meta) {
            (Facts::Summary, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err((
                candidate.name,
                "no commit record (its summary.json alone does not make a checkpoint)".into(),
            )),
            (Facts::Summary, Ok(m)) if m.len() != summary.record_len => {
                let why = format!(
                    "the record is {} bytes, its summary says {}",
                    m.len(),
                    summary.record_len
                );
                let summary = summary_of_record(storage, &candidate.name)
                    .map_err(|e| (candidate.name.clone(), e))?;
                let candidate = Candidate {
                    step: summary.step,
                    epoch: summary.epoch,
                    completed: summary.completed() || candidate.name.ends_with("-end"),
                    from_summary: None,
                    ..candidate
                };
                Ok(Record {
                    candidate,
                    summary,
                    facts: Facts::SummaryRefused(why),
                    modified,
                })
            }
            _ => Ok(Record {
                candidate,
                summary,
                facts,
                modified,
            }),
        }
    }

    /// The mark `ls` shows, if any.
    pub fn mark(&self) -> Option<&'static str> {
        match self {
            Facts::SummaryRefused(_) => Some("summary-refused"),
            _ => None,
        }
    }
}

/// The summary made from checkpoint `name`'s record, read and validated.
fn summary_of_record(storage: &dyn Storage, name: &str) -> Result<Summary, String> {
    let path = StoragePath::new(&format!("{name}/{WEIGHTS_DIR}/{RECORD_FILE}"))
        .map_err(|e| e.to_string())?;
    let bytes = waypoint::storage::read_to_vec(storage, &path, MAX_RECORD_LEN)
        .map_err(|e| e.to_string())?;
    let record =
        CommitRecord::from_json(&bytes, &storage.describe(&path)).map_err(|e| e.to_string())?;
    Ok(Summary::of(&record, &bytes))
}

/// The policy state a summary carries: its listed keys, or, when they were too large to copy,
/// the record's whole state (read for this one checkpoint).
fn policy_state(storage: &dyn Storage, r: &Record) -> Option<PolicyState> {
    if r.summary.model_checkpoint_omitted {
        let path =
            StoragePath::new(&format!("{}/{WEIGHTS_DIR}/{RECORD_FILE}", r.candidate.name)).ok()?;
        let bytes = waypoint::storage::read_to_vec(storage, &path, MAX_RECORD_LEN).ok()?;
        let record = CommitRecord::from_json(&bytes, &storage.describe(&path)).ok()?;
        let value = record.trainer_state.waypoint.model_checkpoint?;
        return serde_json::from_value(value).ok();
    }
    let keys = r.summary.model_checkpoint.clone()?;
    serde_json::from_value(serde_json::Value::Object(keys)).ok()
}

/// The items, newest step first, with the newest policy state's monitor and mode.
fn items(
    storage: &dyn Storage,
    records: &[Record],
    local: Option<&Path>,
) -> (Option<String>, Mode, Vec<Item>) {
    let states: Vec<Option<PolicyState>> =
        records.iter().map(|r| policy_state(storage, r)).collect();
    let newest = records
        .iter()
        .zip(&states)
        .filter_map(|(r, s)| s.as_ref().map(|s| (r.candidate.step, s)))
        .max_by_key(|(step, _)| *step)
        .map(|(_, s)| s);
    let monitor = newest.and_then(|s| s.monitor.clone());
    let mode = newest.map_or(Mode::Max, |s| s.mode);
    let ranks = newest
        .map(|s| ranking(&s.top_k, s.mode))
        .unwrap_or_default();
    let last_name = newest.and_then(|s| s.last_model_path.clone());
    // A checkpoint's score: what its own record's state says, else any other state.
    let mut scores: BTreeMap<&str, f64> = BTreeMap::new();
    for state in states.iter().flatten() {
        for entry in &state.top_k {
            scores.entry(entry.name.as_str()).or_insert(entry.score);
        }
    }
    let now = SystemTime::now();
    let mut items: Vec<Item> = records
        .iter()
        .zip(&states)
        .map(|(r, state)| {
            let c = &r.candidate;
            let own = state
                .as_ref()
                .and_then(|s| s.top_k.iter().find(|e| e.name == c.name).map(|e| e.score));
            let value = own
                .or_else(|| scores.get(c.name.as_str()).copied())
                .or_else(|| monitor.as_deref().and_then(|m| value_in_name(&c.name, m)));
            Item {
                value: if monitor.is_some() { value } else { None },
                rank: ranks.get(c.name.as_str()).copied(),
                last: is_last(&c.name) || last_name.as_deref() == Some(c.name.as_str()),
                weights_only: r.summary.weights_only(),
                completed: c.completed,
                bytes: r.summary.file_bytes,
                age_s: local
                    .and(r.modified)
                    .map(|m| now.duration_since(m).map_or(0, |d| d.as_secs())),
                name: c.name.clone(),
                step: c.step,
                epoch: c.epoch,
                facts: r.facts.clone(),
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
