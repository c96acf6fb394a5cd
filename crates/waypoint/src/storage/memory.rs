//! [`MemoryFs`]: an in-memory [`FileSystem`] that models POSIX durability, so that tests can cut
//! the power at any point and see what a real disk could hold afterwards.
//!
//! The model is an inode table. A file inode holds a *volatile* content (what readers see now)
//! and a *durable* content (what survives a power cut); [`FsFile::sync`] copies the first onto the
//! second. A directory inode holds a volatile and a durable map from names to inode ids;
//! [`FileSystem::sync_dir`] copies the first onto the second. Every entry change (create, remove,
//! rename, mkdir, hard link) touches only volatile maps. [`MemoryFs::power_cut`] makes every inode's volatile
//! side equal to its durable side; that is the whole crash model. This module must not grow any
//! other notion of durability.

use super::{DirEntry, EntryKind, FileSystem, FsFile, StoragePath};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

type NodeId = u64;

/// The root directory's inode id.
const ROOT: NodeId = 0;

/// An in-memory file system that models a power cut.
///
/// Clones share the same files: keep one clone to call [`MemoryFs::power_cut`] or
/// [`MemoryFs::snapshot`] while another sits under an [`super::FsStorage`].
///
/// ```
/// use std::sync::Arc;
/// use waypoint::storage::{FileSystem, FsStorage, MemoryFs, Storage, StoragePath};
///
/// let memory = MemoryFs::new();
/// let storage = FsStorage::new(Arc::new(memory.clone()));
/// let txn = storage.begin(&StoragePath::new("ckpt").unwrap()).unwrap();
/// txn.commit(&StoragePath::new("record.json").unwrap(), b"{}").unwrap();
/// let stray = memory.create_new(&StoragePath::new("stray.bin").unwrap(), 3).unwrap();
/// stray.write_at(0, b"abc").unwrap();
///
/// memory.power_cut(); // the commit synced what it wrote; nothing synced the stray file
/// assert_eq!(memory.snapshot().into_keys().collect::<Vec<_>>(), ["ckpt/record.json"]);
/// ```
#[derive(Clone, Default)]
pub struct MemoryFs {
    tree: Arc<Mutex<Tree>>,
}

struct Tree {
    nodes: HashMap<NodeId, Node>,
    next_id: NodeId,
}

enum Node {
    Dir(DirNode),
    /// Shared with open handles, which keep working after the entry is removed (as on POSIX).
    File(Arc<FileNode>),
    Symlink,
}

#[derive(Default)]
struct DirNode {
    volatile: BTreeMap<String, NodeId>,
    durable: BTreeMap<String, NodeId>,
}

#[derive(Default)]
struct FileNode {
    data: Mutex<FileData>,
}

#[derive(Default)]
struct FileData {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: HashMap::from([(ROOT, Node::Dir(DirNode::default()))]),
            next_id: ROOT + 1,
        }
    }
}

impl fmt::Debug for MemoryFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFs")
            .field("inodes", &self.lock().nodes.len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn os_error(op: &'static str, path: PathBuf, errno: i32) -> Error {
    Error::io(op, path, std::io::Error::from_raw_os_error(errno))
}

impl MemoryFs {
    /// An empty file system (just the root directory, already durable).
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power cut: every file's content reverts to what was last synced and every
    /// directory's entries revert to what was last made durable by a directory sync. Entries that
    /// never became durable vanish; a file whose entry is durable but whose data never was has
    /// its durable content (empty if never synced).
    pub fn power_cut(&self) {
        let mut tree = self.lock();
        for node in tree.nodes.values_mut() {
            match node {
                Node::Dir(dir) => dir.volatile = dir.durable.clone(),
                Node::File(file) => {
                    let mut data = lock(&file.data);
                    data.volatile = data.durable.clone();
                }
                Node::Symlink => {}
            }
        }
        tree.collect_garbage();
    }

    /// Every file visible now (volatile state), as path → bytes. Symbolic links are left out.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let tree = self.lock();
        let mut files = BTreeMap::new();
        let mut pending = vec![(String::new(), ROOT)];
        while let Some((prefix, id)) = pending.pop() {
            let Some(Node::Dir(dir)) = tree.nodes.get(&id) else {
                continue;
            };
            for (name, child) in &dir.volatile {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                match tree.nodes.get(child) {
                    Some(Node::Dir(_)) => pending.push((path, *child)),
                    Some(Node::File(file)) => {
                        files.insert(path, lock(&file.data).volatile.clone());
                    }
                    _ => {}
                }
            }
        }
        files
    }

    /// Creates a symbolic link at `link` pointing to `target` (tests: waypoint must refuse it).
    /// Like every entry, it is volatile until its directory is synced; the target is never read.
    pub fn symlink(&self, target: &str, link: &StoragePath) -> Result<()> {
        tracing::debug!(target, link = %link, "memory file system: creating a symbolic link");
        self.add_entry(link, "symlink", Node::Symlink).map(|_| ())
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }

    /// Inserts a new node under a fresh name; fails if the name is taken.
    fn add_entry(&self, path: &StoragePath, op: &'static str, node: Node) -> Result<NodeId> {
        let mut tree = self.lock();
        let (parent, name) = self.parent_of(&tree, path, op)?;
        let id = tree.next_id;
        let Some(entries) = tree.entries_mut(parent) else {
            return Err(os_error(op, self.describe(path), libc::ENOTDIR));
        };
        if entries.contains_key(name) {
            return Err(Error::AlreadyExists {
                path: self.describe(path),
            });
        }
        entries.insert(name.to_owned(), id);
        tree.nodes.insert(id, node);
        tree.next_id += 1;
        Ok(id)
    }

    /// The directory holding `path` (every component before the last must be a real directory)
    /// and the last component.
    fn parent_of<'p>(
        &self,
        tree: &Tree,
        path: &'p StoragePath,
        op: &'static str,
    ) -> Result<(NodeId, &'p str)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::UnsafePath {
                path: String::new(),
                reason: "the storage root itself cannot be created, removed or renamed",
            });
        };
        let mut current = ROOT;
        let mut walked = StoragePath::root();
        for component in parent.components() {
            walked = walked.join(component)?;
            current = match tree
                .child(current, component)
                .map(|id| (id, tree.nodes.get(&id)))
            {
                Some((id, Some(Node::Dir(_)))) => id,
                Some((_, Some(Node::Symlink))) => {
                    return Err(Error::SymlinkRefused {
                        path: self.describe(&walked),
                    });
                }
                Some(_) => return Err(os_error(op, self.describe(path), libc::ENOTDIR)),
                None => {
                    return Err(Error::NotFound {
                        path: self.describe(&walked),
                    });
                }
            };
        }
        Ok((current, name))
    }

    /// The node at `path`, if any.
    fn lookup(&self, tree: &Tree, path: &StoragePath, op: &'static str) -> Result<Option<NodeId>> {
        if path.is_root() {
            return Ok(Some(ROOT));
        }
        let (parent, name) = self.parent_of(tree, path, op)?;
        Ok(tree.child(parent, name))
    }

    /// The node at `path`, which must exist.
    fn existing(&self, tree: &Tree, path: &StoragePath, op: &'static str) -> Result<NodeId> {
        self.lookup(tree, path, op)?.ok_or_else(|| Error::NotFound {
            path: self.describe(path),
        })
    }
}

impl Tree {
    fn child(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        match self.nodes.get(&dir) {
            Some(Node::Dir(dir)) => dir.volatile.get(name).copied(),
            _ => None,
        }
    }

    /// The directory `id`'s volatile entries; `parent_of` resolved `id` as a directory.
    fn entries_mut(&mut self, id: NodeId) -> Option<&mut BTreeMap<String, NodeId>> {
        match self.nodes.get_mut(&id) {
            Some(Node::Dir(dir)) => Some(&mut dir.volatile),
            _ => None,
        }
    }

    fn entry(&self, name: String, id: NodeId) -> DirEntry {
        let (kind, size) = match self.nodes.get(&id) {
            Some(Node::Dir(_)) => (EntryKind::Dir, 0),
            Some(Node::File(file)) => (EntryKind::File, lock(&file.data).volatile.len() as u64),
            Some(Node::Symlink) => (EntryKind::Symlink, 0),
            None => (EntryKind::Other, 0),
        };
        DirEntry { name, kind, size }
    }

    /// Drops the inodes that no directory references any more, volatile or durable.
    fn collect_garbage(&mut self) {
        let mut reachable = HashSet::from([ROOT]);
        let mut pending = vec![ROOT];
        while let Some(id) = pending.pop() {
            if let Some(Node::Dir(dir)) = self.nodes.get(&id) {
                for child in dir.volatile.values().chain(dir.durable.values()) {
                    if reachable.insert(*child) {
                        pending.push(*child);
                    }
                }
            }
        }
        self.nodes.retain(|id, _| reachable.contains(id));
    }
}

impl FileSystem for MemoryFs {
    fn symlink(&self, target: &str, link: &StoragePath) -> Result<()> {
        MemoryFs::symlink(self, target, link)
    }

    fn describe(&self, path: &StoragePath) -> PathBuf {
        PathBuf::from(format!("memory:/{}", path.as_str()))
    }

    fn create_new(&self, path: &StoragePath, len: u64) -> Result<Box<dyn FsFile>> {
        let size = usize::try_from(len).map_err(|_| Error::NoSpace {
            path: self.describe(path),
        })?;
        let node = Arc::new(FileNode::default());
        lock(&node.data).volatile = vec![0; size];
        self.add_entry(path, "create", Node::File(node.clone()))?;
        Ok(Box::new(MemoryFile {
            node,
            path: self.describe(path),
            writable: true,
        }))
    }

    fn open_read(&self, path: &StoragePath) -> Result<Box<dyn FsFile>> {
        let tree = self.lock();
        let id = self.existing(&tree, path, "open")?;
        match tree.nodes.get(&id) {
            Some(Node::File(node)) => Ok(Box::new(MemoryFile {
                node: node.clone(),
                path: self.describe(path),
                writable: false,
            })),
            Some(Node::Symlink) => Err(Error::SymlinkRefused {
                path: self.describe(path),
            }),
            _ => Err(os_error("open", self.describe(path), libc::EISDIR)),
        }
    }

    fn mkdir(&self, path: &StoragePath) -> Result<()> {
        self.add_entry(path, "create directory", Node::Dir(DirNode::default()))
            .map(|_| ())
    }

    fn sync_dir(&self, path: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let id = self.existing(&tree, path, "fsync directory")?;
        match tree.nodes.get_mut(&id) {
            Some(Node::Dir(dir)) => dir.durable = dir.volatile.clone(),
            _ => {
                return Err(os_error(
                    "fsync directory",
                    self.describe(path),
                    libc::ENOTDIR,
                ));
            }
        }
        tree.collect_garbage();
        Ok(())
    }

    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let (from_parent, from_name) = self.parent_of(&tree, from, "rename")?;
        let (to_parent, to_name) = self.parent_of(&tree, to, "rename")?;
        let Some(id) = tree.child(from_parent, from_name) else {
            return Err(Error::NotFound {
                path: self.describe(from),
            });
        };
        if tree.child(to_parent, to_name).is_some() {
            return Err(Error::AlreadyExists {
                path: self.describe(to),
            });
        }
        if to.as_str().starts_with(&format!("{}/", from.as_str())) {
            return Err(os_error("rename", self.describe(to), libc::EINVAL));
        }
        // Both parents were resolved as directories above, under the same lock.
        if let Some(entries) = tree.entries_mut(from_parent) {
            entries.remove(from_name);
        }
        if let Some(entries) = tree.entries_mut(to_parent) {
            entries.insert(to_name.to_owned(), id);
        }
        Ok(())
    }

    fn hard_link(&self, from: &StoragePath, to: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let id = self.existing(&tree, from, "hard link")?;
        match tree.nodes.get(&id) {
            Some(Node::File(_)) => {}
            Some(Node::Symlink) => {
                return Err(Error::SymlinkRefused {
                    path: self.describe(from),
                });
            }
            _ => return Err(os_error("hard link", self.describe(from), libc::EPERM)),
        }
        let (parent, name) = self.parent_of(&tree, to, "hard link")?;
        if tree.child(parent, name).is_some() {
            return Err(Error::AlreadyExists {
                path: self.describe(to),
            });
        }
        // A second name of the same inode: its data (and what of it is durable) is shared.
        if let Some(entries) = tree.entries_mut(parent) {
            entries.insert(name.to_owned(), id);
        }
        Ok(())
    }

    fn rename_exchange(&self, a: &StoragePath, b: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let (a_parent, a_name) = self.parent_of(&tree, a, "exchange")?;
        let (b_parent, b_name) = self.parent_of(&tree, b, "exchange")?;
        let (Some(a_id), Some(b_id)) = (tree.child(a_parent, a_name), tree.child(b_parent, b_name))
        else {
            return Err(Error::NotFound {
                path: self.describe(a),
            });
        };
        let nested =
            |x: &StoragePath, y: &StoragePath| y.as_str().starts_with(&format!("{}/", x.as_str()));
        if nested(a, b) || nested(b, a) {
            return Err(os_error("exchange", self.describe(b), libc::EINVAL));
        }
        // Both parents were resolved as directories above, under the same lock.
        if let Some(entries) = tree.entries_mut(a_parent) {
            entries.insert(a_name.to_owned(), b_id);
        }
        if let Some(entries) = tree.entries_mut(b_parent) {
            entries.insert(b_name.to_owned(), a_id);
        }
        Ok(())
    }

    fn remove_file(&self, path: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let (parent, name) = self.parent_of(&tree, path, "remove")?;
        match tree.child(parent, name).map(|id| tree.nodes.get(&id)) {
            None => {
                return Err(Error::NotFound {
                    path: self.describe(path),
                });
            }
            Some(Some(Node::Dir(_))) => {
                return Err(os_error("remove", self.describe(path), libc::EISDIR));
            }
            Some(_) => {}
        }
        tree.entries_mut(parent).map(|entries| entries.remove(name));
        tree.collect_garbage();
        Ok(())
    }

    fn remove_dir(&self, path: &StoragePath) -> Result<()> {
        let mut tree = self.lock();
        let (parent, name) = self.parent_of(&tree, path, "remove directory")?;
        match tree.child(parent, name).map(|id| tree.nodes.get(&id)) {
            None => {
                return Err(Error::NotFound {
                    path: self.describe(path),
                });
            }
            Some(Some(Node::Dir(dir))) if dir.volatile.is_empty() => {}
            Some(Some(Node::Dir(_))) => {
                return Err(os_error(
                    "remove directory",
                    self.describe(path),
                    libc::ENOTEMPTY,
                ));
            }
            Some(_) => {
                return Err(os_error(
                    "remove directory",
                    self.describe(path),
                    libc::ENOTDIR,
                ));
            }
        }
        tree.entries_mut(parent).map(|entries| entries.remove(name));
        tree.collect_garbage();
        Ok(())
    }

    fn list(&self, dir: &StoragePath) -> Result<Vec<DirEntry>> {
        let tree = self.lock();
        let id = self.existing(&tree, dir, "list")?;
        match tree.nodes.get(&id) {
            // BTreeMap iterates in name order.
            Some(Node::Dir(node)) => Ok(node
                .volatile
                .iter()
                .map(|(name, child)| tree.entry(name.clone(), *child))
                .collect()),
            Some(Node::Symlink) => Err(Error::SymlinkRefused {
                path: self.describe(dir),
            }),
            _ => Err(os_error("list", self.describe(dir), libc::ENOTDIR)),
        }
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<DirEntry>> {
        let tree = self.lock();
        let found = match self.lookup(&tree, path, "stat") {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(found.map(|id| tree.entry(path.file_name().unwrap_or_default().to_owned(), id)))
    }
}

/// An open file of a [`MemoryFs`]; it keeps its inode alive.
struct MemoryFile {
    node: Arc<FileNode>,
    path: PathBuf,
    writable: bool,
}

impl FsFile for MemoryFile {
    fn len(&self) -> u64 {
        lock(&self.node.data).volatile.len() as u64
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(os_error("write", self.path.clone(), libc::EBADF));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .and_then(|end| usize::try_from(end).ok());
        let Some(end) = end else {
            return Err(Error::NoSpace {
                path: self.path.clone(),
            });
        };
        let mut file = lock(&self.node.data);
        if file.volatile.len() < end {
            file.volatile.resize(end, 0);
        }
        file.volatile[end - data.len()..end].copy_from_slice(data);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let file = lock(&self.node.data);
        let len = file.volatile.len() as u64;
        let range = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= len)
            .and_then(|end| file.volatile.get(offset as usize..end as usize));
        let Some(bytes) = range else {
            return Err(read_past_end(&self.path, offset, buf.len(), len));
        };
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut file = lock(&self.node.data);
        file.durable = file.volatile.clone();
        Ok(())
    }
}

/// The error for a read that runs past the end of a file, naming the file and the range.
pub(super) fn read_past_end(path: &std::path::Path, offset: u64, wanted: usize, len: u64) -> Error {
    Error::Io {
        op: "read",
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{wanted} bytes at offset {offset} run past the end of the {len}-byte file"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoragePath {
        StoragePath::new(s).unwrap()
    }

    fn write(fs: &MemoryFs, path: &str, bytes: &[u8], sync: bool) {
        let file = fs.create_new(&p(path), bytes.len() as u64).unwrap();
        file.write_at(0, bytes).unwrap();
        if sync {
            file.sync().unwrap();
        }
    }

    #[test]
    fn unsynced_entry_vanishes_and_unsynced_data_reverts() {
        let fs = MemoryFs::new();
        write(&fs, "durable", b"abc", true);
        write(&fs, "entry-only", b"xyz", false);
        fs.sync_dir(&StoragePath::root()).unwrap();
        write(&fs, "data-only", b"123", true);
        assert_eq!(fs.snapshot().len(), 3);

        fs.power_cut();
        let files = fs.snapshot();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["durable", "entry-only"]);
        assert_eq!(files["durable"], b"abc");
        assert_eq!(
            files["entry-only"], b"",
            "data never synced: the durable content is empty"
        );
    }

    #[test]
    fn rename_becomes_durable_per_side() {
        let fs = MemoryFs::new();
        fs.mkdir(&p("a")).unwrap();
        fs.mkdir(&p("b")).unwrap();
        write(&fs, "a/f", b"data", true);
        fs.sync_dir(&p("a")).unwrap();
        fs.sync_dir(&StoragePath::root()).unwrap();

        fs.rename_noreplace(&p("a/f"), &p("b/g")).unwrap();
        fs.sync_dir(&p("b")).unwrap();
        fs.power_cut();
        // Only the destination side was synced: the file shows under both names.
        assert_eq!(fs.snapshot().keys().collect::<Vec<_>>(), ["a/f", "b/g"]);

        fs.remove_file(&p("a/f")).unwrap();
        fs.sync_dir(&p("a")).unwrap();
        fs.power_cut();
        assert_eq!(
            fs.snapshot(),
            BTreeMap::from([("b/g".to_owned(), b"data".to_vec())])
        );
    }

    #[test]
    fn directory_rename_moves_the_subtree() {
        let fs = MemoryFs::new();
        fs.mkdir(&p("tmp")).unwrap();
        fs.mkdir(&p("tmp/w")).unwrap();
        write(&fs, "tmp/w/x", b"1", true);
        fs.sync_dir(&p("tmp/w")).unwrap();
        fs.sync_dir(&p("tmp")).unwrap();
        fs.rename_noreplace(&p("tmp"), &p("final")).unwrap();
        assert_eq!(fs.snapshot().keys().collect::<Vec<_>>(), ["final/w/x"]);
        assert!(
            fs.rename_noreplace(&p("final"), &p("final/w/inside"))
                .is_err()
        );

        fs.power_cut();
        assert!(
            fs.snapshot().is_empty(),
            "root never synced: neither name survives"
        );
        fs.mkdir(&p("tmp")).unwrap();
        fs.sync_dir(&StoragePath::root()).unwrap();
        fs.rename_noreplace(&p("tmp"), &p("final")).unwrap();
        fs.sync_dir(&StoragePath::root()).unwrap();
        fs.power_cut();
        assert_eq!(fs.list(&StoragePath::root()).unwrap()[0].name, "final");
    }

    #[test]
    fn errors_name_the_path() {
        let fs = MemoryFs::new();
        write(&fs, "f", b"ab", true);
        fs.mkdir(&p("d")).unwrap();
        fs.symlink("/elsewhere", &p("link")).unwrap();
        assert!(matches!(
            fs.create_new(&p("f"), 1),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            fs.open_read(&p("missing")),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            fs.open_read(&p("link")),
            Err(Error::SymlinkRefused { .. })
        ));
        assert!(matches!(
            fs.stat(&p("link/x")),
            Err(Error::SymlinkRefused { .. })
        ));
        assert!(matches!(
            fs.list(&p("link")),
            Err(Error::SymlinkRefused { .. })
        ));
        assert!(fs.remove_dir(&StoragePath::root()).is_err());
        write(&fs, "d/inner", b"", false);
        assert!(fs.remove_dir(&p("d")).is_err(), "not empty");
        assert!(fs.stat(&p("f/x")).is_err(), "a file is not a directory");
        assert_eq!(fs.stat(&p("nope/x")).unwrap(), None);
        let err = fs
            .open_read(&p("f"))
            .unwrap()
            .read_at(1, &mut [0; 2])
            .unwrap_err();
        assert!(
            err.to_string().contains("memory:/f") && err.to_string().contains("offset 1"),
            "{err}"
        );
        let kinds: Vec<_> = fs
            .list(&StoragePath::root())
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EntryKind::Dir, EntryKind::File, EntryKind::Symlink]);
    }

    #[test]
    fn open_handle_outlives_removal() {
        let fs = MemoryFs::new();
        write(&fs, "f", b"abcd", true);
        let handle = fs.open_read(&p("f")).unwrap();
        fs.remove_file(&p("f")).unwrap();
        fs.sync_dir(&StoragePath::root()).unwrap();
        let mut buf = [0; 4];
        handle.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
        assert_eq!(format!("{fs:?}"), "MemoryFs { inodes: 1 }");
    }
}
