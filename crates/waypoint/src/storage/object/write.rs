//! Writing a checkpoint to an object store: the transaction (final keys, record last with a
//! create-only put, marker removed after) and the files, either buffered and put whole (files no
//! larger than one part) or uploaded part by part with a multipart upload (bounded by the
//! storage's upload gate, completed on `finish`, aborted on failure or drop).
//!
//! It must never overwrite a committed record (a second commit of the same name fails with
//! `AlreadyExists`) nor remove the objects of a save whose record exists. A create-only put that
//! answers "already exists" is resolved by reading the record back: our bytes are our commit,
//! another writer's fail the save and stay, none fail it as a transient error, keeping the marker. Beginning and joining a
//! transaction, and cleaning up stale markers, are `mod.rs`'s.

use super::{Inner, default_record};
use crate::error::{Error, Result};
use crate::storage::owner::LiveGuard;
use crate::storage::{DirEntry, EntryKind, StoragePath, Transaction, WriteHandle};
use object_store::MultipartId;
use object_store::multipart::PartId;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

pub(super) struct ObjectTransaction {
    inner: Arc<Inner>,
    dir: StoragePath,
    /// The pending marker's name (in `dir`'s parent): the transaction's token.
    marker: String,
    /// Whether this rank began the transaction (and so commits or removes it), or joined it.
    owner: bool,
    /// The record path the marker names (relative to `dir`).
    record: StoragePath,
    done: bool,
    /// Marks the marker as in use while the owner holds the transaction.
    live: Option<LiveGuard>,
}

impl ObjectTransaction {
    /// A transaction of `dir` under `marker`; `live` is the owner's guard (`None`: joined).
    pub(super) fn new(
        inner: Arc<Inner>,
        dir: StoragePath,
        marker: String,
        live: Option<LiveGuard>,
    ) -> Self {
        ObjectTransaction {
            inner,
            dir,
            marker,
            owner: live.is_some(),
            record: default_record(),
            done: false,
            live,
        }
    }

    fn marker_path(&self) -> Result<StoragePath> {
        self.dir.parent().unwrap_or_default().join(&self.marker)
    }

    /// Removes what this save wrote, unless its record exists (then a commit won, possibly another
    /// transaction's for the same name, and its objects are not ours to remove), then the marker.
    fn remove(&self) -> Result<()> {
        if !self.inner.exists(&self.dir.join(self.record.as_str())?)? {
            self.inner.delete_below(&self.dir)?;
        }
        self.inner.delete(&self.marker_path()?)
    }
}

impl ObjectTransaction {
    /// The create-only put of the record answered "already exists", which is ambiguous: our own
    /// earlier attempt may have landed (a retry after a lost answer), another writer may have
    /// committed, or the store may have refused with nothing written (some S3 implementations
    /// answer 409 ConditionalRequestConflict). The record read back decides.
    fn resolve_conflict(&mut self, record_path: &StoragePath, record: &[u8]) -> Result<()> {
        self.done = true;
        let there = match self
            .inner
            .request("get", record_path, |store, key| async move {
                store.get(&key).await?.bytes().await
            }) {
            Ok(bytes) => Some(bytes),
            Err(Error::NotFound { .. }) => None,
            Err(e) => {
                // Unknown: keep everything (marker included), so that cleanup decides later.
                self.live = None;
                return Err(e);
            }
        };
        match there {
            Some(bytes) if bytes.as_ref() == record => {
                tracing::info!(dir = %self.inner.describe(&self.dir).display(), "object storage: the record put answered 'already exists' with our own record there: committed");
                if let Err(e) = self.inner.delete(&self.marker_path()?) {
                    tracing::warn!(marker = self.marker, error = %e, "committed, but could not delete the pending marker");
                }
                Ok(())
            }
            Some(_) => {
                // Another writer's commit: its record and objects are not ours to touch.
                self.inner.delete(&self.marker_path()?)?;
                Err(Error::AlreadyExists {
                    path: self.inner.describe(&self.dir),
                })
            }
            None => {
                // Nothing written: the marker stays, so the prefix stays invisible, and cleanup
                // removes it once this process no longer uses it.
                self.live = None;
                Err(Error::ObjectStore {
                    op: "put",
                    url: self.inner.describe(record_path).display().to_string(),
                    reason: "the create-only put of the commit record answered 'already exists', but no record is there (a conflicting request in flight?); nothing was committed, the save's objects stay hidden until cleanup: retry the save".to_owned(),
                })
            }
        }
    }
}

impl Transaction for ObjectTransaction {
    fn create(&self, rel: &StoragePath, len: u64) -> Result<Box<dyn WriteHandle>> {
        if rel.is_root() {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "a file needs a name",
            });
        }
        let path = self.dir.join(rel.as_str())?;
        let part = self.inner.options.part_size;
        if len <= part {
            let size = usize::try_from(len).map_err(|_| Error::NoSpace {
                path: self.inner.describe(&path),
            })?;
            return Ok(Box::new(BufferedWrite {
                inner: self.inner.clone(),
                path,
                data: Mutex::new(vec![0; size]),
            }));
        }
        let id = self
            .inner
            .request("create multipart upload", &path, |store, key| async move {
                store.create_multipart(&key).await
            })?;
        Ok(Box::new(MultipartWrite {
            inner: self.inner.clone(),
            path,
            id,
            len,
            parts: Mutex::new(BTreeMap::new()),
            done: false,
        }))
    }

    fn commit(mut self: Box<Self>, rel: &StoragePath, record: &[u8]) -> Result<()> {
        if !self.owner {
            return Err(Error::InvalidArgument {
                name: "transaction",
                reason: format!(
                    "{} was joined, not begun, by this rank: only its owner commits it",
                    self.inner.describe(&self.dir).display()
                ),
            });
        }
        if *rel != self.record {
            // The marker must name the record actually written, so that a reader (and cleanup)
            // recognise the commit.
            self.inner.put(
                &self.marker_path()?,
                rel.as_str().as_bytes().to_vec(),
                PutMode::Overwrite,
            )?;
            self.record = rel.clone();
        }
        let record_path = self.dir.join(rel.as_str())?;
        match self
            .inner
            .put(&record_path, record.to_vec(), PutMode::Create)
        {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) => return self.resolve_conflict(&record_path, record),
            Err(e) => return Err(e),
        }
        self.done = true;
        if let Err(e) = self.inner.delete(&self.marker_path()?) {
            // Committed all the same: readers see the record; cleanup removes the marker later.
            tracing::warn!(marker = self.marker, error = %e, "committed, but could not delete the pending marker");
        }
        Ok(())
    }

    fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        if !self.owner {
            return Ok(());
        }
        self.remove()
    }

    fn token(&self) -> String {
        self.marker.clone()
    }

    fn list_written(&self, rel: &StoragePath) -> Result<Option<Vec<DirEntry>>> {
        let level = self.inner.level(&self.dir.join(rel.as_str())?)?;
        let files = level.files.into_iter().map(|(name, size, _)| DirEntry {
            name,
            kind: EntryKind::File,
            size,
        });
        let dirs = level.dirs.into_iter().map(|name| DirEntry {
            name,
            kind: EntryKind::Dir,
            size: 0,
        });
        Ok(Some(files.chain(dirs).collect()))
    }

    fn carry(&self, rel: &StoragePath, source: &StoragePath, len: u64) -> Result<bool> {
        let _ = len;
        if rel.is_root() {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "a file needs a name",
            });
        }
        let path = self.dir.join(rel.as_str())?;
        let from = self.inner.key(source);
        // A server-side copy (S3 CopyObject, GCS rewrite, Azure copy blob): the bytes stay in
        // the store. It lands under this save's prefix, so abort removes it like a written file.
        match self.inner.request("copy", &path, |store, to| async move {
            store.copy(&from, &to).await
        }) {
            Ok(()) => Ok(true),
            // Writing the bytes is always correct: a source gone meanwhile, or a store that
            // cannot copy this object (S3 copies at most 5 GiB in one request), is no failure.
            Err(e) => {
                tracing::info!(source = %self.inner.describe(source).display(), error = %e, "object storage: no server-side copy; writing the bytes");
                Ok(false)
            }
        }
    }

    fn abandon(mut self: Box<Self>) {
        // As a crashed process would: the objects and the marker stay, no longer in use.
        self.done = true;
        self.live = None;
    }
}

impl Drop for ObjectTransaction {
    fn drop(&mut self) {
        if !self.done
            && self.owner
            && let Err(e) = self.remove()
        {
            tracing::warn!(dir = %self.inner.describe(&self.dir).display(), error = %e, "could not remove an aborted save's objects; the next run's cleanup will");
        }
    }
}

/// The error for a write outside the file's declared length.
fn out_of_range(offset: u64, len: usize, file_len: u64) -> Error {
    Error::InvalidArgument {
        name: "write range",
        reason: format!("{offset}+{len} lies beyond the file's {file_len} bytes"),
    }
}

/// A file no larger than one part: collected in memory, put whole on `finish`.
struct BufferedWrite {
    inner: Arc<Inner>,
    path: StoragePath,
    data: Mutex<Vec<u8>>,
}

impl WriteHandle for BufferedWrite {
    fn part_size(&self) -> Option<u64> {
        Some(self.inner.options.part_size)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut buffer = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let len = buffer.len() as u64;
        let range = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= len)
            .and_then(|end| buffer.get_mut(offset as usize..end as usize));
        let Some(range) = range else {
            return Err(out_of_range(offset, data.len(), len));
        };
        range.copy_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let data = std::mem::take(&mut *self.data.lock().unwrap_or_else(PoisonError::into_inner));
        self.inner.put(&self.path, data, PutMode::Overwrite)
    }
}

/// A file larger than one part: a multipart upload, one part per write.
struct MultipartWrite {
    inner: Arc<Inner>,
    path: StoragePath,
    id: MultipartId,
    len: u64,
    parts: Mutex<BTreeMap<usize, PartId>>,
    done: bool,
}

impl MultipartWrite {
    fn abort_upload(&self) -> Result<()> {
        let id = self.id.clone();
        self.inner.request(
            "abort multipart upload",
            &self.path,
            |store, key| async move { store.abort_multipart(&key, &id).await },
        )
    }
}

impl WriteHandle for MultipartWrite {
    fn part_size(&self) -> Option<u64> {
        Some(self.inner.options.part_size)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let part = self.inner.options.part_size;
        let end = offset.checked_add(data.len() as u64);
        let Some(end) = end.filter(|end| *end <= self.len) else {
            return Err(out_of_range(offset, data.len(), self.len));
        };
        if !offset.is_multiple_of(part) || (data.len() as u64 != part && end != self.len) {
            return Err(Error::InvalidArgument {
                name: "write range",
                reason: format!(
                    "{}: {offset}+{} is not one whole {part}-byte part of the multipart upload",
                    self.inner.describe(&self.path).display(),
                    data.len()
                ),
            });
        }
        let index = usize::try_from(offset / part).unwrap_or(usize::MAX);
        if self
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&index)
        {
            return Err(Error::InvalidArgument {
                name: "write range",
                reason: format!(
                    "{}: part {index} written twice",
                    self.inner.describe(&self.path).display()
                ),
            });
        }
        // The permit bounds the parts in flight, and with them the copies below.
        let _permit = self.inner.uploads.enter();
        let payload = PutPayload::from(data.to_vec());
        let id = self.id.clone();
        let part_id = self
            .inner
            .request("upload part", &self.path, |store, key| async move {
                store.put_part(&key, &id, index, payload).await
            })?;
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(index, part_id);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let parts: Vec<PartId> =
            std::mem::take(&mut *self.parts.lock().unwrap_or_else(PoisonError::into_inner))
                .into_values()
                .collect();
        let expected = self.len.div_ceil(self.inner.options.part_size);
        if parts.len() as u64 != expected {
            return Err(Error::InvalidArgument {
                name: "multipart upload",
                reason: format!(
                    "{}: {} of {expected} parts were written before finish",
                    self.inner.describe(&self.path).display(),
                    parts.len()
                ),
            });
        }
        let id = self.id.clone();
        let result = self.inner.request("complete multipart upload", &self.path, |store, key| async move {
            store.complete_multipart(&key, &id, parts).await.map(|_| ())
        });
        if result.is_ok() {
            self.done = true;
        }
        result
    }
}

impl Drop for MultipartWrite {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = self.abort_upload()
        {
            tracing::warn!(file = %self.inner.describe(&self.path).display(), error = %e, "could not abort a multipart upload; a bucket lifecycle rule removes its parts");
        }
    }
}
