//! [`ObjectStorage`]: the [`Storage`] contract on an object store (S3, GCS, Azure, or object_store's
//! in-memory store), where there is no rename.
//!
//! # Layout and commit rule
//! A checkpoint `P/n` is written straight to its final keys `<prefix>/P/n/...`. [`Storage::begin`]
//! first puts a small *pending marker* object `<prefix>/P/.n.waypoint-tmp-<process>-<k>` whose
//! content names the commit record's relative path; [`Transaction::commit`] puts the record with a
//! create-only conditional put (`PutMode::Create`: the first commit wins, a second one fails with
//! [`Error::AlreadyExists`]) and then deletes the marker.
//!
//! Visibility: a prefix `P/n` for which a marker exists in `P` is *uncommitted* unless the record
//! that marker names exists. `list`, `stat` and `open` treat an uncommitted prefix, and everything
//! below it, as nonexistent (the markers themselves show in listings under their temporary names,
//! which readers skip). [`Storage::remove_dir_all`] puts a marker first, deletes the record, then
//! the rest, then the marker: a crash midway leaves a hidden prefix, never a half-removed
//! checkpoint.
//!
//! # Orphans
//! A marker's name records its owner (host, pid, process start time, creation time: see
//! `storage::owner`). [`Storage::cleanup_temporaries`] removes the objects of an uncommitted save,
//! then its marker, only when its owner can no longer be using it: a marker of this process whose
//! transaction is no longer open, of a process of this host that is gone, of another host once a
//! day old (a marker of an earlier version, without an owner: once older than this storage). Any
//! other marker is a save in flight and is left alone. A marker whose record exists is a commit
//! that crashed before deleting its marker: only the marker goes.

mod names;
mod options;
mod read;
mod runtime;
mod write;

pub use options::ObjectStorageOptions;
pub(crate) use options::open_url;

use super::owner::{LiveGuard, new_tag};
use super::{DirEntry, EntryKind, ReadHandle, Storage, StoragePath, TEMP_MARKER, Transaction};
use crate::error::{Error, Result};
use crate::format::{RECORD_FILE, WEIGHTS_DIR};
use futures_util::TryStreamExt;
use names::{Level, Marker, decode_part, modified, with_root_cause};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use read::ObjectRead;
use runtime::{Gate, OwnedRuntime};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// What an object store must offer: plain objects and multipart uploads with explicit part numbers
/// (S3, GCS, Azure and the in-memory store all do).
pub trait ObjectBackend: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> ObjectBackend for T {}

/// The smallest part size object stores accept for every part but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Checkpoints on an object store. See the module documentation for the commit rule.
///
/// ```
/// use waypoint::storage::{ObjectStorage, ObjectStorageOptions, Storage, StoragePath};
///
/// let storage = ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap();
/// let dir = StoragePath::new("ckpt").unwrap();
/// let txn = storage.begin(&dir).unwrap();
/// let file = txn.create(&StoragePath::new("weights/a.bin").unwrap(), 3).unwrap();
/// file.write_at(0, b"abc").unwrap();
/// file.finish().unwrap();
/// assert_eq!(storage.stat(&dir).unwrap(), None, "invisible until committed");
/// txn.commit(&StoragePath::new("weights/metadata.json").unwrap(), b"{}").unwrap();
/// assert!(storage.stat(&dir).unwrap().is_some());
/// ```
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

/// What transactions and handles share with the storage.
struct Inner {
    store: Arc<dyn ObjectBackend>,
    /// The key prefix of the storage root (may be empty).
    prefix: String,
    /// The root as a URL, for messages (`s3://bucket/prefix`).
    url: String,
    options: ObjectStorageOptions,
    runtime: OwnedRuntime,
    /// Bounds the part uploads in flight, and with them the memory their copies hold.
    uploads: Gate,
    /// Orphans older than this are removed by `cleanup_temporaries`.
    started: SystemTime,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl ObjectStorage {
    /// Checkpoints under `url` on `store`, whose keys start with `prefix` (empty for the bucket's
    /// root). `url` is only used in messages.
    pub fn new(
        store: Arc<dyn ObjectBackend>,
        url: &str,
        prefix: &str,
        options: ObjectStorageOptions,
    ) -> Result<Self> {
        options.validate()?;
        let runtime = OwnedRuntime::new(options.runtime_threads)?;
        let prefix = prefix.trim_matches('/').to_owned();
        Ok(ObjectStorage {
            inner: Arc::new(Inner {
                store,
                prefix,
                // `memory://` stays as it is; `s3://bucket/prefix/` loses its trailing slash.
                url: match url.trim_end_matches('/') {
                    trimmed if trimmed.ends_with(':') => url.to_owned(),
                    trimmed => trimmed.to_owned(),
                },
                uploads: Gate::new(options.max_concurrent_parts),
                options,
                runtime,
                started: SystemTime::now(),
            }),
        })
    }

    /// An empty storage on object_store's in-memory store (tests, examples).
    pub fn in_memory(options: ObjectStorageOptions) -> Result<Self> {
        let store: Arc<dyn ObjectBackend> = Arc::new(object_store::memory::InMemory::new());
        Self::new(store, "memory://", "", options)
    }

    /// The options in force.
    pub fn options(&self) -> &ObjectStorageOptions {
        &self.inner.options
    }

    /// The root as a URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }
}

impl Inner {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        if path.is_root() {
            PathBuf::from(&self.url)
        } else {
            let slash = if self.url.ends_with('/') { "" } else { "/" };
            PathBuf::from(format!("{}{slash}{}", self.url, path.as_str()))
        }
    }

    fn key(&self, path: &StoragePath) -> Key {
        match (self.prefix.is_empty(), path.is_root()) {
            (true, _) => Key::from(path.as_str()),
            (false, true) => Key::from(self.prefix.as_str()),
            (false, false) => Key::from(format!("{}/{}", self.prefix, path.as_str())),
        }
    }

    /// Maps an object_store error about `path` to waypoint's: not found, already exists, or a
    /// request failure naming the URL.
    fn error(&self, op: &'static str, path: &StoragePath, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound {
                path: self.describe(path),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Error::AlreadyExists {
                path: self.describe(path),
            },
            other => Error::ObjectStore {
                op,
                url: self.describe(path).display().to_string(),
                reason: with_root_cause(&other),
            },
        }
    }

    /// Runs one request on the runtime and maps its error.
    fn request<T, F, Fut>(&self, op: &'static str, path: &StoragePath, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ObjectBackend>, Key) -> Fut,
        Fut: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let store = self.store.clone();
        let key = self.key(path);
        let future = f(store, key);
        let result = self.runtime.run(op, async move { Ok(future.await) })?;
        result.map_err(|e| self.error(op, path, e))
    }

    /// The objects and sub-prefixes directly under `dir`.
    fn level(&self, dir: &StoragePath) -> Result<Level> {
        let listing = self.request("list", dir, |store, key| async move {
            let prefix = (!key.as_ref().is_empty()).then_some(key);
            store.list_with_delimiter(prefix.as_ref()).await
        })?;
        let mut level = Level::default();
        for object in listing.objects {
            if let Some(name) = object.location.filename() {
                level
                    .files
                    .push((decode_part(name), object.size, modified(&object)));
            }
        }
        for prefix in listing.common_prefixes {
            if let Some(name) = prefix.filename() {
                level.dirs.push(decode_part(name));
            }
        }
        Ok(level)
    }

    /// Whether the object at `path` exists.
    fn exists(&self, path: &StoragePath) -> Result<bool> {
        match self.request(
            "head",
            path,
            |store, key| async move { store.head(&key).await },
        ) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The record path a marker names (relative to its checkpoint directory).
    fn marker_record(&self, parent: &StoragePath, marker: &Marker) -> Result<Option<StoragePath>> {
        let path = parent.join(&marker.name)?;
        let bytes = match self.request("get", &path, |store, key| async move {
            store.get(&key).await?.bytes().await
        }) {
            Ok(bytes) => bytes,
            // The marker went away meanwhile: its save committed or was cleaned up.
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&bytes);
        let rel = if text.is_empty() {
            default_record()
        } else {
            StoragePath::new(text.trim())?
        };
        Ok(Some(rel))
    }

    /// Whether the directory `parent/name` is committed, given the listing of `parent`: true when no
    /// marker covers it or when the record a marker names exists.
    fn committed(&self, parent: &StoragePath, level: &Level, name: &str) -> Result<bool> {
        for marker in level.markers().filter(|m| m.dir == name) {
            let Some(record) = self.marker_record(parent, &marker)? else {
                continue;
            };
            if !self.exists(&parent.join(name)?.join(record.as_str())?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks that no ancestor of `path` (itself included) is uncommitted, and returns the listing
    /// of `path`'s parent (`None` for the root).
    fn visible(&self, path: &StoragePath) -> Result<Option<Level>> {
        let mut parent = StoragePath::root();
        let mut last = None;
        for component in path.components() {
            let level = self.level(&parent)?;
            if !self.committed(&parent, &level, component)? {
                return Err(Error::NotFound {
                    path: self.describe(path),
                });
            }
            parent = parent.join(component)?;
            last = Some(level);
        }
        Ok(last)
    }

    /// Every object key below `dir` (recursively), as paths relative to the storage root.
    fn objects_below(&self, dir: &StoragePath) -> Result<Vec<Key>> {
        self.request("list", dir, |store, key| async move {
            store.list(Some(&key)).try_collect::<Vec<_>>().await
        })
        .map(|objects| objects.into_iter().map(|o| o.location).collect())
    }

    /// Deletes every object below `dir`.
    fn delete_below(&self, dir: &StoragePath) -> Result<usize> {
        let keys = self.objects_below(dir)?;
        let count = keys.len();
        self.request("delete", dir, |store, _| async move {
            let keys: futures_util::stream::BoxStream<'static, object_store::Result<Key>> =
                Box::pin(futures_util::stream::iter(keys.into_iter().map(Ok)));
            store
                .delete_stream(keys)
                .try_collect::<Vec<_>>()
                .await
                .map(|_| ())
        })?;
        Ok(count)
    }

    fn delete(&self, path: &StoragePath) -> Result<()> {
        match self.request("delete", path, |store, key| async move {
            store.delete(&key).await
        }) {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn put(&self, path: &StoragePath, bytes: Vec<u8>, mode: PutMode) -> Result<()> {
        self.request("put", path, |store, key| async move {
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            store
                .put_opts(&key, PutPayload::from(bytes), options)
                .await
                .map(|_| ())
        })
    }

    /// Puts a new pending marker for `dir` naming `record`, marked in use by this process until
    /// the guard returned with its name is dropped.
    fn put_marker(
        &self,
        dir: &StoragePath,
        suffix: &str,
        record: &StoragePath,
    ) -> Result<(String, LiveGuard)> {
        let (parent, name) = split(dir)?;
        let marker = format!(".{name}{TEMP_MARKER}{}{suffix}", new_tag());
        let live = LiveGuard::new(&marker);
        self.put(
            &parent.join(&marker)?,
            record.as_str().as_bytes().to_vec(),
            PutMode::Create,
        )?;
        Ok((marker, live))
    }
}

/// The commit record's path inside a checkpoint, as the engine lays it out.
fn default_record() -> StoragePath {
    StoragePath::new(&format!("{WEIGHTS_DIR}/{RECORD_FILE}")).unwrap_or_default()
}

/// `dir`'s parent and name; the root is refused.
fn split(dir: &StoragePath) -> Result<(StoragePath, &str)> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Error::UnsafePath {
            path: dir.to_string(),
            reason: "a checkpoint cannot be the storage root itself",
        }),
    }
}

impl Storage for ObjectStorage {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.inner.describe(path)
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        let inner = &self.inner;
        inner.visible(dir)?;
        let level = inner.level(dir)?;
        if !dir.is_root() && level.files.is_empty() && level.dirs.is_empty() {
            return Err(Error::NotFound {
                path: inner.describe(dir),
            });
        }
        let mut entries = Vec::new();
        for (name, size, _) in &level.files {
            entries.push(DirEntry {
                name: name.clone(),
                kind: EntryKind::File,
                size: *size,
            });
        }
        for name in &level.dirs {
            if inner.committed(dir, &level, name)? {
                entries.push(DirEntry {
                    name: name.clone(),
                    kind: EntryKind::Dir,
                    size: 0,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        let Some(name) = path.file_name() else {
            return Ok(Some(DirEntry {
                name: String::new(),
                kind: EntryKind::Dir,
                size: 0,
            }));
        };
        let level = match self.inner.visible(path) {
            Ok(level) => level.unwrap_or_default(),
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some((_, size, _)) = level.files.iter().find(|(n, _, _)| n == name) {
            return Ok(Some(DirEntry {
                name: name.to_owned(),
                kind: EntryKind::File,
                size: *size,
            }));
        }
        Ok(level.dirs.iter().any(|d| d == name).then(|| DirEntry {
            name: name.to_owned(),
            kind: EntryKind::Dir,
            size: 0,
        }))
    }

    fn open(&self, path: &StoragePath) -> Result<Box<dyn ReadHandle>> {
        match self.stat(path)? {
            Some(DirEntry {
                kind: EntryKind::File,
                size,
                ..
            }) => Ok(Box::new(ObjectRead {
                inner: self.inner.clone(),
                path: path.clone(),
                len: size,
            })),
            Some(_) => Err(Error::io(
                "open",
                self.inner.describe(path),
                std::io::Error::other("a directory (key prefix), not an object"),
            )),
            None => Err(Error::NotFound {
                path: self.inner.describe(path),
            }),
        }
    }

    fn begin(&self, dir: &StoragePath) -> Result<Box<dyn Transaction>> {
        let (_, name) = split(dir)?;
        if name.contains(TEMP_MARKER) || name.starts_with('.') {
            return Err(Error::UnsafePath {
                path: dir.to_string(),
                reason: "names starting with '.' are reserved for temporaries",
            });
        }
        if self.stat(dir)?.is_some() {
            return Err(Error::AlreadyExists {
                path: self.inner.describe(dir),
            });
        }
        let (marker, live) = self.inner.put_marker(dir, "", &default_record())?;
        tracing::debug!(dir = %self.inner.describe(dir).display(), marker, "object storage: save begun");
        Ok(Box::new(write::ObjectTransaction::new(
            self.inner.clone(),
            dir.clone(),
            marker,
            Some(live),
        )))
    }

    fn join(&self, dir: &StoragePath, token: &str) -> Result<Box<dyn Transaction>> {
        let (parent, name) = split(dir)?;
        let prefix = format!(".{name}{TEMP_MARKER}");
        if !token.starts_with(&prefix) || token.contains('/') || token.len() == prefix.len() {
            return Err(Error::InvalidArgument {
                name: "transaction token",
                reason: format!("{token:?} does not name an uncommitted save of {dir}"),
            });
        }
        let marker = parent.join(token)?;
        if !self.inner.exists(&marker)? {
            return Err(Error::NotFound {
                path: self.inner.describe(&marker),
            });
        }
        Ok(Box::new(write::ObjectTransaction::new(
            self.inner.clone(),
            dir.clone(),
            token.to_owned(),
            None,
        )))
    }

    fn add_dir(&self, dir: &StoragePath, sub: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        super::add_dir::check_names(sub, files)?;
        if !matches!(self.stat(dir)?, Some(e) if e.kind == EntryKind::Dir) {
            return Err(Error::NotFound {
                path: self.describe(dir),
            });
        }
        let target = dir.join(sub)?;
        if self.stat(&target)?.is_some() {
            return Err(Error::AlreadyExists {
                path: self.describe(&target),
            });
        }
        // Each file is one create-only put: whole or absent, never replacing another's.
        for (name, bytes) in files {
            (self.inner).put(&target.join(name)?, bytes.clone(), PutMode::Create)?;
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &StoragePath, record: &StoragePath) -> Result<()> {
        let inner = &self.inner;
        match self.stat(dir)? {
            Some(DirEntry {
                kind: EntryKind::Dir,
                ..
            }) => {}
            _ => {
                return Err(Error::NotFound {
                    path: inner.describe(dir),
                });
            }
        }
        let (parent, _) = split(dir)?;
        let rel = record
            .as_str()
            .strip_prefix(dir.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .map(StoragePath::new)
            .transpose()?
            .unwrap_or_else(default_record);
        // The marker hides the directory as soon as the record is gone; a crash midway leaves a
        // hidden prefix for cleanup_temporaries, never a half-removed checkpoint under its name.
        let (marker, _live) = inner.put_marker(dir, "-removed", &rel)?;
        inner.delete(&dir.join(rel.as_str())?)?;
        inner.delete_below(dir)?;
        inner.delete(&parent.join(&marker)?)
    }

    fn cleanup_temporaries(&self, parent: &StoragePath) -> Result<Vec<String>> {
        let inner = &self.inner;
        let level = match inner.visible(parent).and_then(|_| inner.level(parent)) {
            Ok(level) => level,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let markers: Vec<Marker> = level.markers().collect();
        let now = SystemTime::now();
        // The owner rule of `storage::owner`; markers of earlier versions, which record no owner,
        // are orphans once older than this storage.
        let orphan = |m: &Marker| match m.tag {
            Some(tag) => !tag.may_be_live(&m.name, now),
            None => m.modified < inner.started,
        };
        let mut removed = Vec::new();
        for marker in &markers {
            let Some(record) = inner.marker_record(parent, marker)? else {
                continue;
            };
            let dir = parent.join(&marker.dir)?;
            if inner.exists(&dir.join(record.as_str())?)? {
                // A commit that crashed after its record: the checkpoint is complete.
                inner.delete(&parent.join(&marker.name)?)?;
                continue;
            }
            if !orphan(marker) {
                tracing::info!(
                    marker = marker.name,
                    "object storage: leaving a save in flight alone"
                );
                continue;
            }
            let live_sibling = markers
                .iter()
                .any(|m| m.dir == marker.dir && m.name != marker.name && !orphan(m));
            if !live_sibling {
                let objects = inner.delete_below(&dir)?;
                tracing::warn!(
                    marker = marker.name,
                    objects,
                    "removed the leftovers of an interrupted save"
                );
            }
            inner.delete(&parent.join(&marker.name)?)?;
            removed.push(marker.name.clone());
        }
        Ok(removed)
    }
}
