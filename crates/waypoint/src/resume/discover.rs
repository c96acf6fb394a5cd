//! Discovery: the committed checkpoints of a directory and the facts of each. One listing of the
//! directory, then per checkpoint one small read of its summary (`summary.json`,
//! [`crate::format::Summary`]); where there is none (a checkpoint written before summaries, or by
//! another tool) or it is refused (damaged, edited, of a newer version), its commit record, read
//! and validated as it always was. The reads run on a few threads: an object store answers each
//! GET in milliseconds, a local directory each read in microseconds.
//!
//! The commit record stays the commit point. A summary is only ever read inside a directory the
//! listing showed committed (never a temporary, never an object-store prefix whose save is in
//! flight), so it cannot make a checkpoint visible on its own; and before a run resumes from a
//! checkpoint chosen by its summary, [`select_confirmed`] reads that checkpoint's record and
//! checks it is byte for byte the record the summary was made from (length and CRC-32C), else it
//! reads every record of the directory and chooses again.
//!
//! It must not decide which checkpoint to resume from ([`super::select`] does, purely), nor write
//! anything.

use super::{Candidate, Discovery, Selection, select};
use crate::engine::record_path;
use crate::error::{Error, Result};
use crate::format::{
    CommitRecord, MAX_RECORD_LEN, MAX_SUMMARY_LEN, RecordBinding, SUMMARY_FILE, Summary,
    WEIGHTS_DIR,
};
use crate::storage::{DirEntry, EntryKind, Storage, StoragePath, TEMP_MARKER};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How discovery reads each checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Its summary where it has one that reads, else its commit record.
    Summaries,
    /// Its commit record, whatever summary it has: what a destructive command decides on
    /// (`waypoint prune`), and the fallback of [`select_confirmed`].
    Records,
}

/// Where the facts of a listed checkpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Its summary.
    Summary,
    /// Its commit record: it has no summary (`None`), or its summary was refused (`Some`, why),
    /// or records were asked for ([`Reading::Records`]).
    Record(Option<String>),
}

/// A committed checkpoint and its summary (read, or made from its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// What AutoResume's choice needs of it.
    pub candidate: Candidate,
    /// Its facts.
    pub summary: Summary,
    /// Where they came from.
    pub source: Source,
}

/// What [`discover_listed`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The committed checkpoints (in name order) and what is not committed.
    pub discovery: Discovery,
    /// The committed checkpoints with their summaries, in the order of `discovery.committed`.
    pub listed: Vec<Listed>,
    /// Every entry of the directory's one listing (files, links and temporaries included), for
    /// a caller that shows what is not committed without listing again.
    pub entries: Vec<DirEntry>,
    /// Set by [`select_confirmed`] when the chosen checkpoint's summary disagreed with its record
    /// and every record was read instead: why.
    pub fallback: Option<String>,
}

/// Lists `dir` and reads the summary (or the commit record) of each subdirectory. A missing
/// `dir` gives an empty discovery. Temporaries of saves are skipped silently; anything else
/// without a valid record is reported in `skipped`. Symbolic links (a `save_last = link`
/// checkpoint) are skipped: their target is listed itself.
pub fn discover(storage: &dyn Storage, dir: &StoragePath) -> Result<Discovery> {
    Ok(discover_listed(storage, dir, Reading::Summaries)?.discovery)
}

/// [`discover`], keeping each committed checkpoint's summary, read as `reading` says.
pub fn discover_listed(
    storage: &dyn Storage,
    dir: &StoragePath,
    reading: Reading,
) -> Result<Listing> {
    let entries = match storage.list(dir) {
        Ok(entries) => entries,
        Err(Error::NotFound { .. }) => return Ok(Listing::default()),
        Err(e) => return Err(e),
    };
    let names: Vec<String> = entries
        .iter()
        .filter(|e| {
            e.kind == EntryKind::Dir && !(e.name.starts_with('.') && e.name.contains(TEMP_MARKER))
        })
        .map(|e| e.name.clone())
        .collect();
    let outcomes = probe_all(storage, dir, &names, reading)?;
    let mut listing = Listing {
        entries,
        ..Listing::default()
    };
    for (name, outcome) in names.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Committed(listed) => {
                listing.discovery.committed.push(listed.candidate.clone());
                listing.listed.push(*listed);
            }
            Outcome::Skipped(reason) => listing.discovery.skipped.push((name, reason)),
            Outcome::Nothing => {}
        }
    }
    Ok(listing)
}

/// How [`select_confirmed`] checks the chosen checkpoint's summary against its commit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// The record is the one the summary was made from: its length and CRC-32C (one read of the
    /// record's bytes, no parse). What `waypoint ls` does: it catches a record changed, replaced
    /// or removed since its summary was written, not a summary rewritten with a valid checksum.
    Binding,
    /// That, and the record parses and validates (`CommitRecord::from_json`) and makes this very
    /// summary. What a run resuming from the checkpoint does (it reads that record next anyway).
    Full,
}

/// AutoResume's choice over `listing` ([`select`]). When the chosen checkpoint's facts came from
/// its summary, its commit record is read and checked against it (`how`). When they disagree (the
/// record missing, changed, unreadable, or saying something else), the summary is not believed:
/// every record of the directory is read ([`Reading::Records`]) and the choice made again over
/// them, with a warning; the listing returned is then that one, its `fallback` saying why.
pub fn select_confirmed(
    storage: &dyn Storage,
    dir: &StoragePath,
    listing: Listing,
    resume_past_end: bool,
    how: Confirm,
) -> Result<(Selection, Listing)> {
    select_confirmed_read(storage, dir, listing, resume_past_end, how)
        .map(|(selection, listing, _)| (selection, listing))
}

/// [`select_confirmed`], also handing back the chosen checkpoint's commit record when
/// [`Confirm::Full`] read and validated it, so that the caller does not read and parse it again
/// (at the 100 B layout, 252 MB and seconds of parsing).
pub(crate) fn select_confirmed_read(
    storage: &dyn Storage,
    dir: &StoragePath,
    listing: Listing,
    resume_past_end: bool,
    how: Confirm,
) -> Result<(Selection, Listing, Option<CommitRecord>)> {
    let selection = select(&listing.discovery.committed, resume_past_end);
    let chosen = match &selection {
        Selection::Resume { candidate, .. } | Selection::Completed { candidate } => candidate,
        Selection::Nothing => return Ok((selection, listing, None)),
    };
    let Some(listed) = listing
        .listed
        .iter()
        .find(|l| l.candidate.name == chosen.name && l.source == Source::Summary)
    else {
        return Ok((selection, listing, None));
    };
    let why = match confirm_read(storage, &dir.join(&chosen.name)?, &listed.summary, how) {
        Ok(record) => return Ok((selection, listing, record)),
        Err(why) => format!(
            "the summary of {} does not match its commit record ({why}): every record was read instead",
            chosen.name
        ),
    };
    tracing::warn!(checkpoint = %chosen.name, "{why}");
    let mut listing = discover_listed(storage, dir, Reading::Records)?;
    listing.fallback = Some(why);
    Ok((
        select(&listing.discovery.committed, resume_past_end),
        listing,
        None,
    ))
}

/// Checks `summary` against the commit record of checkpoint `ckpt` as `how` says; why not.
pub fn confirm(
    storage: &dyn Storage,
    ckpt: &StoragePath,
    summary: &Summary,
    how: Confirm,
) -> std::result::Result<(), String> {
    confirm_read(storage, ckpt, summary, how).map(|_| ())
}

/// [`confirm`], also handing back the record it parsed ([`Confirm::Full`]).
fn confirm_read(
    storage: &dyn Storage,
    ckpt: &StoragePath,
    summary: &Summary,
    how: Confirm,
) -> std::result::Result<Option<CommitRecord>, String> {
    let path = record_path(ckpt).map_err(|e| e.to_string())?;
    let binding = summary.binding();
    if how == Confirm::Full {
        let bytes = crate::storage::read_to_vec(storage, &path, MAX_RECORD_LEN)
            .map_err(|e| e.to_string())?;
        check_binding(bytes.len() as u64, crc32c::crc32c(&bytes), binding)?;
        let record =
            CommitRecord::from_json(&bytes, &storage.describe(&path)).map_err(|e| e.to_string())?;
        if Summary::of(&record, &bytes) != *summary {
            return Err("the record says otherwise: the summary was edited".into());
        }
        return Ok(Some(record));
    }
    let handle = storage.open(&path).map_err(|e| e.to_string())?;
    if handle.len() != binding.record_len {
        return check_binding(handle.len(), 0, binding).map(|()| None);
    }
    let crc = match handle.mapped() {
        Some(bytes) => crc32c::crc32c(bytes),
        None => {
            const PIECE: u64 = 4 << 20;
            let mut buf = vec![0u8; PIECE.min(handle.len()) as usize];
            let (mut crc, mut at) = (0u32, 0u64);
            while at < handle.len() {
                let n = PIECE.min(handle.len() - at) as usize;
                let piece = &mut buf[..n];
                handle.read_at(at, piece).map_err(|e| e.to_string())?;
                crc = crc32c::crc32c_append(crc, piece);
                at += n as u64;
            }
            crc
        }
    };
    check_binding(handle.len(), crc, binding).map(|()| None)
}

/// Whether a record of `len` bytes and CRC-32C `crc` is the one `binding` names; why not.
fn check_binding(len: u64, crc: u32, binding: RecordBinding) -> std::result::Result<(), String> {
    if len != binding.record_len {
        return Err(format!(
            "the record is {len} bytes, the summary says {}",
            binding.record_len
        ));
    }
    if crc != binding.record_crc32c {
        return Err(format!(
            "the record's CRC-32C is {crc}, the summary says {}: the record changed after its summary was written",
            binding.record_crc32c
        ));
    }
    Ok(())
}

/// Reads and validates the commit record of checkpoint `dir`.
pub fn read_record(storage: &dyn Storage, dir: &StoragePath) -> Result<CommitRecord> {
    let path = record_path(dir)?;
    let bytes = crate::storage::read_to_vec(storage, &path, MAX_RECORD_LEN)?;
    CommitRecord::from_json(&bytes, &storage.describe(&path))
}

/// Whether a record's reserved slot says the run completed with this checkpoint.
pub fn record_completed(record: &CommitRecord) -> bool {
    record.trainer_state.waypoint.completed()
}

/// What one directory of the listing is.
enum Outcome {
    Committed(Box<Listed>),
    Skipped(String),
    Nothing,
}

/// Directories each reading thread takes on, at least; and the most threads.
const PER_THREAD: usize = 32;
const MAX_THREADS: usize = 8;

/// [`probe`] of every name under `dir`, in the order of `names`, on up to [`MAX_THREADS`].
fn probe_all(
    storage: &dyn Storage,
    dir: &StoragePath,
    names: &[String],
    reading: Reading,
) -> Result<Vec<Outcome>> {
    let threads = names.len().div_ceil(PER_THREAD).clamp(1, MAX_THREADS);
    if threads == 1 {
        return names
            .iter()
            .map(|n| probe(storage, dir, n, reading))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(name) = names.get(i) else {
                return done;
            };
            done.push((i, probe(storage, dir, name, reading)));
        }
    };
    let mut done: Vec<(usize, Result<Outcome>)> = Vec::with_capacity(names.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        for handle in handles {
            match handle.join() {
                Ok(part) => done.extend(part),
                Err(_) => {
                    return Err(Error::WorkerPanicked {
                        what: "checkpoint discovery".into(),
                    });
                }
            }
        }
        Ok(())
    })?;
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, outcome)| outcome).collect()
}

/// What the directory `name` under `dir` is: a committed checkpoint (by its summary, or by its
/// record), an interrupted save, or not a checkpoint at all.
fn probe(
    storage: &dyn Storage,
    dir: &StoragePath,
    name: &str,
    reading: Reading,
) -> Result<Outcome> {
    let ckpt = dir.join(name)?;
    let mut refused = None;
    if reading == Reading::Summaries {
        let path = ckpt.join(SUMMARY_FILE)?;
        let read = storage
            .read_small(&path, MAX_SUMMARY_LEN)
            .and_then(|bytes| Summary::from_json(&bytes, &storage.describe(&path)));
        match read {
            Ok(summary) => return Ok(committed(name, summary, Source::Summary)),
            Err(Error::NotFound { .. }) => {}
            Err(e) => refused = Some(e.to_string()),
        }
    }
    let path = record_path(&ckpt)?;
    let read = storage.read_small(&path, MAX_RECORD_LEN).and_then(|bytes| {
        let record = CommitRecord::from_json(&bytes, &storage.describe(&path))?;
        Ok(Summary::of(&record, &bytes))
    });
    match read {
        Ok(summary) => Ok(committed(name, summary, Source::Record(refused))),
        Err(Error::NotFound { .. }) => {
            // A directory with weights/ but no record is an interrupted save; anything else is
            // not a checkpoint at all and is not worth a warning.
            match storage.stat(&ckpt.join(WEIGHTS_DIR)?)? {
                Some(_) => Ok(Outcome::Skipped(
                    "no commit record: a save was interrupted".into(),
                )),
                None => Ok(Outcome::Nothing),
            }
        }
        Err(e) => Ok(Outcome::Skipped(e.to_string())),
    }
}

fn committed(name: &str, summary: Summary, source: Source) -> Outcome {
    let candidate = Candidate {
        name: name.to_owned(),
        step: summary.step,
        epoch: summary.epoch,
        completed: summary.completed() || name.ends_with("-end"),
        from_summary: (source == Source::Summary).then(|| summary.binding()),
    };
    Outcome::Committed(Box::new(Listed {
        candidate,
        summary,
        source,
    }))
}
