//! The last check before a commit: the `weights/` of the transaction, listed as it is now, holds
//! exactly the files of the record about to be committed, each with its recorded size. A file
//! another process removed (a cleanup that took a live save for a leftover) or put there fails
//! the save instead of committing a checkpoint no reader accepts.
//!
//! It reads only the listing, never the bytes (those were checksummed as they were written), and
//! decides nothing about what happens after a failure: the protocols abort.

use crate::error::{Error, Result};
use crate::format::{CommitRecord, WEIGHTS_DIR};
use crate::storage::{DirEntry, EntryKind, StoragePath, Transaction};
use std::collections::BTreeMap;
use std::path::Path;

/// Checks the files written by `txn` against `record`; `described` is the record's path, for
/// messages. A transaction that cannot list what it wrote is trusted.
pub(super) fn check_written(
    txn: &dyn Transaction,
    record: &CommitRecord,
    described: &Path,
) -> Result<()> {
    let entries = match txn.list_written(&StoragePath::new(WEIGHTS_DIR)?) {
        Ok(Some(entries)) => entries,
        Ok(None) => return Ok(()),
        Err(Error::NotFound { .. }) if record.files.is_empty() => return Ok(()),
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    match listing_problem(&entries, record) {
        None => Ok(()),
        Some(problem) => Err(Error::InvalidShard {
            path: described.with_file_name(problem.0),
            reason: format!(
                "{} just before the commit (another process removed or changed the save's files?); nothing was committed",
                problem.1
            ),
        }),
    }
}

/// The first file of `entries` that disagrees with `record` (missing, resized, unexpected, not a
/// plain file), and what is wrong with it.
fn listing_problem(entries: &[DirEntry], record: &CommitRecord) -> Option<(String, String)> {
    let listed: BTreeMap<&str, &DirEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for (name, file) in &record.files {
        match listed.get(name.as_str()) {
            None => return Some((name.clone(), "missing".to_owned())),
            Some(e) if e.kind != EntryKind::File => {
                return Some((name.clone(), format!("a {:?}, not a file", e.kind)));
            }
            Some(e) if e.size != file.size => {
                return Some((
                    name.clone(),
                    format!("{} bytes where {} were written", e.size, file.size),
                ));
            }
            Some(_) => {}
        }
    }
    entries
        .iter()
        .find(|e| !record.files.contains_key(&e.name))
        .map(|e| (e.name.clone(), "not written by this save".to_owned()))
}
