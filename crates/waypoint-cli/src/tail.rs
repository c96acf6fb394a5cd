//! `waypoint tail <run dir> [-f] [--json]`: the latest value (and its step) of each scalar
//! series in a run's TensorBoard event files, and with `-f` the values that arrive afterwards.
//!
//! Event files are found under the path (or it is one), recursively, and read in name order,
//! which is TensorBoard's order: a resumed run's file sorts after the earlier ones. What is shown
//! is what TensorBoard shows (its `EventAccumulator`, default options): a `SessionLog` `START` at
//! step *s* purges the points at or after *s* read before it in the same directory (one
//! TensorBoard run), in every tag, so after a resume a tag's latest point is the newest one that
//! survived, and a tag left without points is not shown. Each file is read up to its last
//! complete record; a follower reads on from there when the file grows and picks up new files.
//! A read that meets a `START` is followed by a rescan of the files up to where they were read
//! (the purged points' predecessors are not kept in memory). A damaged record is reported on
//! stderr with its byte offset and skipped.
//!
//! It only reads: it must never write to or repair an event file. Framing, CRCs and decoding are
//! `tfevents`' `EventReader`'s, and tags are never trusted as printable (control characters are
//! escaped before printing).

use crate::cli::TailConfig;
use crate::output::{Out, safe};
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tfevents::EventReader;
use tfevents::proto::Event;
use tfevents::proto::event::What;
use tfevents::proto::session_log::SessionStatus;
use tfevents::proto::summary::value::Value as SummaryValue;

/// The latest point of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latest {
    step: i64,
    value: f32,
    wall_time: f64,
}

/// One event file being read.
struct File {
    reader: EventReader,
}

/// The files found so far and the latest point of each tag.
#[derive(Default)]
struct Tail {
    files: BTreeMap<PathBuf, File>,
    latest: BTreeMap<String, Latest>,
    /// Damaged records reported.
    damaged: u64,
}

impl Tail {
    /// Opens the event files not seen yet and reads every file on to its last complete record.
    /// Returns the tags whose latest point changed, in name order.
    fn poll(&mut self, root: &Path) -> anyhow::Result<Vec<String>> {
        for path in event_files(root)? {
            if let std::collections::btree_map::Entry::Vacant(entry) = self.files.entry(path) {
                let reader = EventReader::open(entry.key())
                    .with_context(|| format!("cannot open {}", entry.key().display()))?;
                entry.insert(File { reader });
            }
        }
        let before = self.latest.clone();
        let mut restarted = false;
        for file in self.files.values_mut() {
            for event in &mut file.reader {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        self.damaged += 1;
                        let _ = writeln!(std::io::stderr(), "waypoint: warning: {e}; skipped");
                        continue;
                    }
                };
                restarted |= start_step(&event).is_some();
                for (tag, point) in scalars(&event) {
                    self.latest.insert(tag, point);
                }
            }
        }
        if restarted {
            self.latest = self.rescan()?;
        }
        let changed: Vec<String> = self
            .latest
            .iter()
            .filter(|(tag, p)| before.get(*tag) != Some(*p))
            .map(|(tag, _)| tag.clone())
            .collect();
        Ok(changed)
    }

    /// The latest surviving point of each tag in the files up to where they have been read,
    /// by TensorBoard's rule (see the module documentation): one pass finds the `START`s, a
    /// second keeps each point no later `START` of its directory purges.
    fn rescan(&self) -> anyhow::Result<BTreeMap<String, Latest>> {
        // Per directory, the `START`s as (index of the event in reading order, step).
        let mut starts: BTreeMap<&Path, Vec<(u64, i64)>> = BTreeMap::new();
        self.replay(|dir, index, event| {
            if let Some(step) = start_step(event) {
                starts.entry(dir).or_default().push((index, step));
            }
        })?;
        // The smallest `START` step at or after each `START`, from the last one back.
        for list in starts.values_mut() {
            for i in (0..list.len().saturating_sub(1)).rev() {
                list[i].1 = list[i].1.min(list[i + 1].1);
            }
        }
        let mut latest = BTreeMap::new();
        self.replay(|dir, index, event| {
            let limit = starts.get(dir).and_then(|list| {
                let later = list.partition_point(|(at, _)| *at <= index);
                list.get(later).map(|(_, step)| *step)
            });
            if limit.is_some_and(|limit| event.step >= limit) {
                return; // purged by a later START
            }
            for (tag, point) in scalars(event) {
                latest.insert(tag, point);
            }
        })?;
        Ok(latest)
    }

    /// Reads each file again from its start up to where it has been read, handing each event
    /// (damaged records skipped, already reported) with its directory and its index in reading
    /// order to `each`.
    fn replay<'a>(&'a self, mut each: impl FnMut(&'a Path, u64, &Event)) -> anyhow::Result<()> {
        let mut index = 0u64;
        for (path, file) in &self.files {
            let dir = path.parent().unwrap_or(Path::new(""));
            let end = file.reader.offset();
            let mut reader = EventReader::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            while reader.offset() < end {
                let Some(event) = reader.next() else {
                    break;
                };
                if let Ok(event) = event {
                    each(dir, index, &event);
                }
                index += 1;
            }
        }
        Ok(())
    }

    /// Notes on stderr the files that end with an unfinished record.
    fn report_unfinished(&self) {
        for (path, file) in &self.files {
            let leftover = file.reader.leftover();
            if leftover > 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "waypoint: note: {} ends with {leftover} bytes of an unfinished record \
                     (a writer stopped mid-record, or still writing); read up to byte {}",
                    path.display(),
                    file.reader.offset()
                );
            }
        }
    }
}

/// Runs `waypoint tail`. Exit code 1 when damaged records were found (without `-f`) or when
/// there is no event file (without `-f`, which waits for one).
pub fn run(config: &TailConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    let mut tail = Tail::default();
    let changed = tail.poll(&config.path)?;
    if !config.follow {
        if tail.files.is_empty() {
            anyhow::bail!(
                "no TensorBoard event file (events.out.tfevents.*) under {}",
                config.path.display()
            );
        }
        if config.json {
            print_json(config, &tail, out)?;
        } else {
            print_table(&tail, out)?;
        }
        tail.report_unfinished();
        return Ok(if tail.damaged > 0 {
            ExitCode::from(crate::cli::EXIT_PROBLEM)
        } else {
            ExitCode::SUCCESS
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the Ctrl-C handler")?;
    }
    let mut width = 0;
    print_changes(&tail, &changed, config.json, &mut width, out)?;
    out.flush()?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(config.interval);
        let changed = tail.poll(&config.path)?;
        print_changes(&tail, &changed, config.json, &mut width, out)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The step of a `SessionLog` `START`.
fn start_step(event: &Event) -> Option<i64> {
    match &event.what {
        Some(What::SessionLog(log)) if log.status == SessionStatus::Start as i32 => {
            Some(event.step)
        }
        _ => None,
    }
}

/// The scalar points of an event, with their tags.
fn scalars(event: &Event) -> impl Iterator<Item = (String, Latest)> + '_ {
    event.summary().into_iter().flat_map(move |summary| {
        summary.value.iter().filter_map(move |v| match v.value {
            Some(SummaryValue::SimpleValue(value)) => Some((
                v.tag.clone(),
                Latest {
                    step: event.step,
                    value,
                    wall_time: event.wall_time,
                },
            )),
            _ => None,
        })
    })
}

/// The table: one line per tag, aligned.
fn print_table(tail: &Tail, out: &mut Out) -> anyhow::Result<()> {
    let width = tail
        .latest
        .keys()
        .map(|t| safe(t).chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    writeln!(out, "{:<width$}  {:>10}  VALUE", "TAG", "STEP")?;
    for (tag, p) in &tail.latest {
        writeln!(out, "{:<width$}  {:>10}  {}", safe(tag), p.step, p.value)?;
    }
    Ok(())
}

fn point_json(p: &Latest) -> serde_json::Value {
    json!({"step": p.step, "value": finite_or_text(p.value), "wall_time": p.wall_time})
}

/// A float as a JSON number, or its text (`"NaN"`, `"inf"`) where JSON has no number for it.
fn finite_or_text(value: f32) -> serde_json::Value {
    if value.is_finite() {
        json!(f64::from(value))
    } else {
        json!(value.to_string())
    }
}

/// One object: the files read and the latest point of each tag.
fn print_json(config: &TailConfig, tail: &Tail, out: &mut Out) -> anyhow::Result<()> {
    let scalars: serde_json::Map<String, serde_json::Value> = tail
        .latest
        .iter()
        .map(|(tag, p)| (tag.clone(), point_json(p)))
        .collect();
    let files: Vec<String> = tail.files.keys().map(|p| p.display().to_string()).collect();
    let value = json!({
        "path": config.path.display().to_string(),
        "files": files,
        "scalars": scalars,
        "damaged_records": tail.damaged,
    });
    writeln!(out, "{value}")?;
    Ok(())
}

/// Following: one line per changed tag (a JSON object per line with `--json`).
fn print_changes(
    tail: &Tail,
    changed: &[String],
    json: bool,
    width: &mut usize,
    out: &mut Out,
) -> anyhow::Result<()> {
    for tag in changed {
        let Some(p) = tail.latest.get(tag) else {
            continue;
        };
        if json {
            let mut line = point_json(p);
            if let Some(object) = line.as_object_mut() {
                object.insert("tag".into(), json!(tag));
            }
            writeln!(out, "{line}")?;
        } else {
            *width = (*width).max(safe(tag).chars().count());
            writeln!(
                out,
                "{:<w$}  step {:>8}  {}",
                safe(tag),
                p.step,
                p.value,
                w = *width
            )?;
        }
    }
    Ok(())
}

/// The event files at or under `root`, in path order (links are not followed into
/// directories; a directory that vanished meanwhile is skipped).
fn event_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if root.is_file() {
        found.push(root.to_path_buf());
        return Ok(found);
    }
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if entry
                .file_name()
                .to_str()
                .is_some_and(tfevents::file_name::is_event_file_name)
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
