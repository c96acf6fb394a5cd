//! Deleting checkpoints: one atomic delete of a checkpoint (a directory, or a `-last` link), and
//! [`Deletions`], the superseded checkpoints of a run being deleted, in the background or on the
//! caller's thread, with the ones that failed kept for a retry.
//!
//! It owns no decision: which checkpoints go, and when (only after their replacement committed),
//! is the policy's and the run's. It must never delete anything it was not told to: a checkpoint
//! is named with the step of its record ([`Superseded`]), and a name that now holds another
//! checkpoint (a newer one reused it) is left alone.

use crate::error::{Error, Result};
use crate::format::{MAX_RECORD_LEN, Superseded};
use crate::storage::{EntryKind, SharedStorage, Storage, StoragePath, read_to_vec};
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

/// What [`delete_superseded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// The checkpoint was deleted.
    Yes,
    /// Nothing had the name.
    Absent,
    /// The name holds another checkpoint now (its record says this step, or cannot be read):
    /// left alone.
    Other(Option<u64>),
}

/// Deletes `doomed` if its name still holds it: a directory whose commit record has its step, a
/// directory with no record (not a checkpoint any reader accepts: an interrupted save or
/// deletion), or a `-last` link (links are never followed, and hold no data). A name whose record
/// says another step, or cannot be read, is another checkpoint: left alone.
pub(crate) fn delete_superseded(storage: &dyn Storage, doomed: &Superseded) -> Result<Deleted> {
    let path = StoragePath::new(&doomed.name)?;
    let Some(entry) = storage.stat(&path)? else {
        return Ok(Deleted::Absent);
    };
    if entry.kind == EntryKind::Symlink {
        storage.remove_link(&path)?;
        return Ok(Deleted::Yes);
    }
    let record = super::record_path(&path)?;
    match recorded_step(storage, &record)? {
        Some(Some(step)) if step == doomed.step => {}
        None => {}
        Some(other) => return Ok(Deleted::Other(other)),
    }
    storage.remove_dir_all(&path, &record)?;
    Ok(Deleted::Yes)
}

/// The step of the commit record at `record`: `None` when there is no record, `Some(None)` when it
/// does not parse.
fn recorded_step(storage: &dyn Storage, record: &StoragePath) -> Result<Option<Option<u64>>> {
    #[derive(serde::Deserialize)]
    struct Step {
        step: u64,
    }
    match read_to_vec(storage, record, MAX_RECORD_LEN) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice::<Step>(&bytes).ok().map(|s| s.step),
        )),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes `doomed` in order and returns those that could not be deleted.
fn delete_all(storage: &dyn Storage, doomed: Vec<(Superseded, &'static str)>) -> Vec<Superseded> {
    let mut failed = Vec::new();
    for (d, reason) in doomed {
        match delete_superseded(storage, &d) {
            Ok(Deleted::Yes) => {
                tracing::info!(checkpoint = %d.name, step = d.step, reason, "deleted")
            }
            Ok(Deleted::Absent) => {
                tracing::debug!(checkpoint = %d.name, step = d.step, reason, "already gone")
            }
            Ok(Deleted::Other(step)) => {
                tracing::debug!(checkpoint = %d.name, step = d.step, now = ?step, reason, "not deleted: the name holds another checkpoint now")
            }
            Err(e) => {
                tracing::warn!(checkpoint = %d.name, error = %e, "could not delete a superseded checkpoint; retried after the next save");
                failed.push(d);
            }
        }
    }
    failed
}

/// The deletions of one run: at most one batch running on a thread of its own (removing a large
/// checkpoint takes a while, and an asynchronous run must not wait for it), and the checkpoints
/// whose deletion failed, retried with the next batch, by [`Deletions::retry`], and by a resumed
/// run (they are recorded as pending in every checkpoint saved meanwhile: [`Deletions::pending`]).
#[derive(Debug)]
pub(crate) struct Deletions {
    storage: SharedStorage,
    /// Run batches on a thread (asynchronous saves) instead of the caller's.
    background: bool,
    /// The checkpoints of the batch running, and its thread, which returns what failed.
    running: Option<(Vec<Superseded>, JoinHandle<Vec<Superseded>>)>,
    /// Checkpoints whose deletion failed, or was deferred.
    failed: Vec<Superseded>,
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

    /// Starts deleting `doomed`, and what failed before, once the previous batch ended. A
    /// checkpoint whose name `busy` says a save in flight writes is deferred (kept as failed):
    /// deleting it now could race with that save replacing it.
    pub(crate) fn start(
        &mut self,
        doomed: Vec<(Superseded, &'static str)>,
        busy: &dyn Fn(&str) -> bool,
    ) {
        self.collect();
        let retries = std::mem::take(&mut self.failed)
            .into_iter()
            .map(|d| (d, "retrying an earlier deletion"));
        let (deferred, doomed): (Vec<_>, Vec<_>) = doomed
            .into_iter()
            .chain(retries)
            .partition(|(d, _)| busy(&d.name));
        for (d, _) in deferred {
            tracing::debug!(checkpoint = %d.name, "deletion deferred: a save in flight writes this name");
            self.keep(d);
        }
        if doomed.is_empty() {
            return;
        }
        if !self.background {
            for d in delete_all(self.storage.as_ref(), doomed) {
                self.keep(d);
            }
            return;
        }
        let storage = self.storage.clone();
        let in_flight: Vec<Superseded> = doomed.iter().map(|(d, _)| d.clone()).collect();
        match std::thread::Builder::new()
            .name("waypoint-delete".into())
            .spawn(move || delete_all(storage.as_ref(), doomed))
        {
            Ok(handle) => self.running = Some((in_flight, handle)),
            Err(e) => {
                tracing::warn!(error = %e, "could not start a deletion thread; retried after the next save");
                for d in in_flight {
                    self.keep(d);
                }
            }
        }
    }

    /// Keeps `doomed` for a retry (once).
    fn keep(&mut self, doomed: Superseded) {
        if !self.failed.contains(&doomed) {
            self.failed.push(doomed);
        }
    }

    /// Deletes `doomed` now, on the caller's thread (rolling back a failed decision); on failure
    /// it is kept for a retry and the error returned.
    pub(crate) fn delete_now(&mut self, doomed: &Superseded) -> Result<Deleted> {
        delete_superseded(self.storage.as_ref(), doomed).inspect_err(|_| self.keep(doomed.clone()))
    }

    /// Waits for the batch running if it deletes `name`: a save of that name is about to start,
    /// and must not race with the deletion of the checkpoint it replaces.
    pub(crate) fn settle(&mut self, name: &str) {
        if self
            .running
            .as_ref()
            .is_some_and(|(doomed, _)| doomed.iter().any(|d| d.name == name))
        {
            self.collect();
        }
    }

    /// Waits for the batch running; what failed is kept for a retry.
    pub(crate) fn collect(&mut self) {
        let Some((_, handle)) = self.running.take() else {
            return;
        };
        match handle.join() {
            Ok(failed) => {
                for d in failed {
                    self.keep(d);
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
        let failed = std::mem::take(&mut self.failed)
            .into_iter()
            .map(|d| (d, "retrying an earlier deletion"))
            .collect();
        for d in delete_all(self.storage.as_ref(), failed) {
            self.keep(d);
        }
    }

    /// The checkpoints not known to be deleted yet: the batch running and those that failed.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &Superseded> {
        self.running
            .iter()
            .flat_map(|(doomed, _)| doomed.iter())
            .chain(self.failed.iter())
    }
}
