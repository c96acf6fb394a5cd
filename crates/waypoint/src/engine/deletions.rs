//! Deleting checkpoints: one atomic delete of a checkpoint (a directory, or a `-last` link), and
//! [`Deletions`], the superseded checkpoints of a run being deleted, in the background or on the
//! caller's thread, with the ones that failed kept for a retry.
//!
//! It owns no decision: which checkpoints go, and when (only after their replacement committed),
//! is the policy's and the run's. It must never delete anything it was not told to.

use crate::error::Result;
use crate::storage::{EntryKind, SharedStorage, Storage, StoragePath};
use std::thread::JoinHandle;

/// Deletes the checkpoint `name` in `storage`: a `-last` link is unlinked; a directory is first
/// renamed to a temporary (atomic), so a crash never leaves a half-removed directory under a
/// checkpoint's name. Nothing there is fine.
pub fn delete_checkpoint(storage: &dyn Storage, name: &str) -> Result<()> {
    let path = StoragePath::new(name)?;
    match storage.stat(&path)? {
        Some(e) if e.kind == EntryKind::Symlink => storage.remove_link(&path),
        Some(_) => storage.remove_dir_all(&path, &super::record_path(&path)?),
        None => Ok(()),
    }
}

/// Deletes `names` in order and returns those that could not be deleted.
fn delete_all(storage: &dyn Storage, names: Vec<(String, &'static str)>) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, reason) in names {
        match delete_checkpoint(storage, &name) {
            Ok(()) => tracing::info!(checkpoint = %name, reason, "deleted"),
            Err(e) => {
                tracing::warn!(checkpoint = %name, error = %e, "could not delete a superseded checkpoint; retried after the next save");
                failed.push(name);
            }
        }
    }
    failed
}

/// The deletions of one run: at most one batch running on a thread of its own (removing a large
/// checkpoint takes a while, and an asynchronous run must not wait for it), and the names whose
/// deletion failed, retried with the next batch, by [`Deletions::retry`], and by a resumed run
/// (they are recorded as pending in every checkpoint saved meanwhile: [`Deletions::pending`]).
#[derive(Debug)]
pub(crate) struct Deletions {
    storage: SharedStorage,
    /// Run batches on a thread (asynchronous saves) instead of the caller's.
    background: bool,
    /// The names of the batch running, and its thread, which returns what failed.
    running: Option<(Vec<String>, JoinHandle<Vec<String>>)>,
    /// Names whose deletion failed.
    failed: Vec<String>,
}

impl Deletions {
    /// Deletions in `storage`; `background` runs each batch on a thread of its own.
    pub(crate) fn new(storage: SharedStorage, background: bool) -> Self {
        Deletions {
            storage,
            background,
            running: None,
            failed: Vec::new(),
        }
    }

    /// Starts deleting `names`, and the names that failed before, once the previous batch ended.
    pub(crate) fn start(&mut self, names: Vec<(String, &'static str)>) {
        self.collect();
        let retries = std::mem::take(&mut self.failed)
            .into_iter()
            .map(|n| (n, "retrying an earlier deletion"));
        let names: Vec<(String, &'static str)> = names.into_iter().chain(retries).collect();
        if names.is_empty() {
            return;
        }
        if !self.background {
            let failed = delete_all(self.storage.as_ref(), names);
            self.failed.extend(failed);
            return;
        }
        let storage = self.storage.clone();
        let in_flight: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        match std::thread::Builder::new()
            .name("waypoint-delete".into())
            .spawn(move || delete_all(storage.as_ref(), names))
        {
            Ok(handle) => self.running = Some((in_flight, handle)),
            Err(e) => {
                tracing::warn!(error = %e, "could not start a deletion thread; retried after the next save");
                self.failed.extend(in_flight);
            }
        }
    }

    /// Deletes `name` now, on the caller's thread (rolling back a failed decision); on failure it
    /// is kept for a retry and the error returned.
    pub(crate) fn delete_now(&mut self, name: &str) -> Result<()> {
        delete_checkpoint(self.storage.as_ref(), name).inspect_err(|_| {
            if !self.failed.iter().any(|f| f == name) {
                self.failed.push(name.to_owned());
            }
        })
    }

    /// Waits for the batch running; what failed is kept for a retry.
    pub(crate) fn collect(&mut self) {
        let Some((_, handle)) = self.running.take() else {
            return;
        };
        match handle.join() {
            Ok(failed) => {
                for name in failed {
                    if !self.failed.contains(&name) {
                        self.failed.push(name);
                    }
                }
            }
            Err(_) => tracing::warn!(
                "the deletion thread panicked; its checkpoints are retried by a resumed run"
            ),
        }
    }

    /// Waits for the batch running, then tries what failed once more on the caller's thread.
    pub(crate) fn retry(&mut self) {
        self.collect();
        for name in std::mem::take(&mut self.failed) {
            if let Err(e) = delete_checkpoint(self.storage.as_ref(), &name) {
                tracing::warn!(checkpoint = %name, error = %e, "could not delete a superseded checkpoint; a resumed run retries");
                self.failed.push(name);
            }
        }
    }

    /// The names not known to be deleted yet: the batch running and those that failed.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &str> {
        self.running
            .iter()
            .flat_map(|(names, _)| names.iter().map(String::as_str))
            .chain(self.failed.iter().map(String::as_str))
    }
}
