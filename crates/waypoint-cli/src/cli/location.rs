//! Resolving a checkpoint given on the command line, a local path or an object-store URL, into a
//! [`CheckpointLocation`]. It must exist (a [`UsageError`] otherwise) and hold a commit record;
//! when it holds none, the error names the committed checkpoints directly below it, as the
//! library's own discovery (`waypoint::resume::discover`) finds them. Nothing here reads the
//! checkpoint's content beyond that.

use super::{CheckpointLocation, UsageError};
use std::path::{Path, PathBuf};
use waypoint::format::{RECORD_FILE, WEIGHTS_DIR};
use waypoint::resume::discover;
use waypoint::storage::{ObjectUrl, Storage, StoragePath, is_url, open_dir, open_location};

/// How many committed checkpoints a hint names at most.
const HINT_LIMIT: usize = 5;

impl CheckpointLocation {
    /// Resolves a checkpoint directory given on the command line: it must exist ([`UsageError`]
    /// otherwise) and hold `weights/metadata.json` (an error naming it otherwise, with the
    /// committed checkpoints found directly below it, if any, as a hint).
    pub fn resolve(given: &Path) -> anyhow::Result<Self> {
        if let Some(url) = given.to_str().filter(|g| is_url(g)) {
            return Self::resolve_url(url);
        }
        let path = given.canonicalize().map_err(|e| {
            UsageError(format!(
                "checkpoint path {} cannot be used: {e}",
                given.display()
            ))
        })?;
        if !path.is_dir() {
            anyhow::bail!(
                "{}",
                not_committed_message(&given.display().to_string(), &[], |_| String::new())
            );
        }
        let here = open_dir(&path)?;
        let root = StoragePath::root();
        // An error is the library's to report, naming what is wrong, when the command runs.
        if !has_record(here.as_ref(), &root).unwrap_or(true) {
            let found = committed_children(here.as_ref(), &root);
            anyhow::bail!(
                "{}",
                not_committed_message(&given.display().to_string(), &found, |name| given
                    .join(name)
                    .display()
                    .to_string())
            );
        }
        let (Some(root), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(UsageError(format!(
                "{} has no parent directory to serve as the storage root",
                path.display()
            ))
            .into());
        };
        let name = name.to_str().ok_or_else(|| {
            UsageError(format!(
                "the checkpoint directory name in {} is not UTF-8",
                path.display()
            ))
        })?;
        let dir = StoragePath::new(name).map_err(|e| UsageError(e.to_string()))?;
        tracing::debug!(root = %root.display(), dir = %dir.as_str(), "resolved checkpoint");
        Ok(CheckpointLocation {
            root: root.to_path_buf(),
            path,
            dir,
        })
    }

    /// Resolves a checkpoint given as an object-store URL (`s3://bucket/prefix/step=10-…`): its
    /// parent prefix is the storage root; it must hold a commit record.
    fn resolve_url(url: &str) -> anyhow::Result<Self> {
        let parsed = ObjectUrl::parse(url).map_err(|e| UsageError(e.to_string()))?;
        let Some(parsed) = parsed.filter(|p| !p.prefix.is_empty()) else {
            return Err(UsageError(format!(
                "{url} names a bucket, not a checkpoint inside it (s3://bucket/prefix/checkpoint)"
            ))
            .into());
        };
        let normalised = parsed.to_url();
        let (root, name) = normalised.rsplit_once('/').unwrap_or((&normalised, ""));
        let dir = StoragePath::new(name).map_err(|e| UsageError(e.to_string()))?;
        let storage = open_location(root).map_err(|e| UsageError(e.to_string()))?;
        if !has_record(storage.as_ref(), &dir)? {
            let found = committed_children(storage.as_ref(), &dir);
            anyhow::bail!(
                "{}",
                not_committed_message(&normalised, &found, |child| format!("{normalised}/{child}"))
            );
        }
        Ok(CheckpointLocation {
            path: PathBuf::from(&normalised),
            root: PathBuf::from(root),
            dir,
        })
    }
}

/// Whether `dir/weights/metadata.json` is there in `storage` (a link counts: the library refuses
/// it, naming it).
fn has_record(storage: &dyn Storage, dir: &StoragePath) -> waypoint::Result<bool> {
    let record = dir.join(WEIGHTS_DIR)?.join(RECORD_FILE)?;
    Ok(storage.stat(&record)?.is_some())
}

/// The error for `given`, which holds no commit record, with a hint naming up to [`HINT_LIMIT`]
/// of the committed checkpoints `found` below it (`child` says how to write one's location).
fn not_committed_message(given: &str, found: &[String], child: impl Fn(&str) -> String) -> String {
    let mut message =
        format!("{given} is not a committed checkpoint: it has no {WEIGHTS_DIR}/{RECORD_FILE}");
    if let Some(first) = found.first() {
        let shown: Vec<&str> = found.iter().take(HINT_LIMIT).map(String::as_str).collect();
        let more = found.len().saturating_sub(HINT_LIMIT);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        message.push_str(&format!(
            "\nhint: it looks like a directory of checkpoints: {}{more}; pass one of them, e.g. {}",
            shown.join(", "),
            child(first),
        ));
    }
    message
}

/// The names (sorted) of the committed checkpoints directly below `dir`, as AutoResume discovers
/// them (temporaries of saves in progress, links and directories without a valid record are not
/// among them). A failure means no names: this is only a hint.
fn committed_children(storage: &dyn Storage, dir: &StoragePath) -> Vec<String> {
    match discover(storage, dir) {
        Ok(found) => {
            let mut names: Vec<String> = found.committed.into_iter().map(|c| c.name).collect();
            names.sort();
            names
        }
        Err(e) => {
            tracing::debug!(error = %e, "no hint: listing the checkpoints below failed");
            Vec::new()
        }
    }
}
