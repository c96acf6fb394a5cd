//! The engine on storage that demands whole parts (how object stores' multipart uploads fit the
//! same engine): every write is one whole part at a part boundary, each part is written once,
//! and the checkpoint reads back bit for bit. The wrapper checks the part rules on every write.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use waypoint::storage::{
    DirEntry, FsStorage, MemoryFs, ReadHandle, Storage, StoragePath, Transaction, WriteHandle,
};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, LoadOptions, SaveOptions, TensorRef};

const PART: u64 = 64 * 1024;

/// Wraps a storage so that its files accept whole parts only, recording every part written.
#[derive(Debug)]
struct Parts {
    inner: FsStorage,
    seen: Arc<Mutex<Vec<(String, u64, u64)>>>,
}

struct PartsTxn {
    inner: Box<dyn Transaction>,
    seen: Arc<Mutex<Vec<(String, u64, u64)>>>,
}

struct PartsFile {
    inner: Box<dyn WriteHandle>,
    name: String,
    len: u64,
    written: Mutex<BTreeSet<u64>>,
    seen: Arc<Mutex<Vec<(String, u64, u64)>>>,
}

impl Storage for Parts {
    fn describe(&self, path: &StoragePath) -> PathBuf {
        self.inner.describe(path)
    }
    fn list(&self, dir: &StoragePath) -> waypoint::Result<Vec<DirEntry>> {
        self.inner.list(dir)
    }
    fn stat(&self, path: &StoragePath) -> waypoint::Result<Option<DirEntry>> {
        self.inner.stat(path)
    }
    fn open(&self, path: &StoragePath) -> waypoint::Result<Box<dyn ReadHandle>> {
        self.inner.open(path)
    }
    fn begin(&self, dir: &StoragePath) -> waypoint::Result<Box<dyn Transaction>> {
        Ok(Box::new(PartsTxn {
            inner: self.inner.begin(dir)?,
            seen: self.seen.clone(),
        }))
    }
    fn remove_dir_all(&self, dir: &StoragePath, record: &StoragePath) -> waypoint::Result<()> {
        self.inner.remove_dir_all(dir, record)
    }
    fn cleanup_temporaries(&self, parent: &StoragePath) -> waypoint::Result<Vec<String>> {
        self.inner.cleanup_temporaries(parent)
    }
}

impl Transaction for PartsTxn {
    fn create(&self, rel: &StoragePath, len: u64) -> waypoint::Result<Box<dyn WriteHandle>> {
        Ok(Box::new(PartsFile {
            inner: self.inner.create(rel, len)?,
            name: rel.to_string(),
            len,
            written: Mutex::new(BTreeSet::new()),
            seen: self.seen.clone(),
        }))
    }
    fn commit(self: Box<Self>, rel: &StoragePath, record: &[u8]) -> waypoint::Result<()> {
        self.inner.commit(rel, record)
    }
    fn abort(self: Box<Self>) -> waypoint::Result<()> {
        self.inner.abort()
    }
}

impl WriteHandle for PartsFile {
    fn part_size(&self) -> Option<u64> {
        Some(PART)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> waypoint::Result<()> {
        let end = offset + data.len() as u64;
        assert_eq!(
            offset % PART,
            0,
            "{}: write at {offset} is not on a part boundary",
            self.name
        );
        assert!(
            data.len() as u64 == PART || end == self.len,
            "{}: a short part at {offset} that is not the last",
            self.name
        );
        assert!(
            self.written.lock().unwrap().insert(offset / PART),
            "{}: part {} written twice",
            self.name,
            offset / PART
        );
        self.seen
            .lock()
            .unwrap()
            .push((self.name.clone(), offset, data.len() as u64));
        self.inner.write_at(offset, data)
    }
    fn finish(self: Box<Self>) -> waypoint::Result<()> {
        let parts = self.len.div_ceil(PART);
        assert_eq!(
            self.written.lock().unwrap().len() as u64,
            parts,
            "{}: not every part was written",
            self.name
        );
        self.inner.finish()
    }
}

#[test]
fn saves_through_whole_parts_and_reads_back() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let storage = Arc::new(Parts {
        inner: FsStorage::new(Arc::new(MemoryFs::new())),
        seen: seen.clone(),
    });
    let cp = Checkpointer::new(storage).with_options(SaveOptions {
        block_size: 4096,
        max_shard_bytes: 150_000,
        ..Default::default()
    });
    // Sizes that straddle part boundaries, a big tensor, many small ones and an empty one.
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 31) as u8).collect();
    let small: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 1000 + i * 17]).collect();
    let mut tensors = vec![TensorRef::whole(
        "big",
        Dtype::U8,
        vec![big.len() as u64],
        big.as_slice(),
    )];
    for (i, s) in small.iter().enumerate() {
        tensors.push(TensorRef::whole(
            format!("small.{i}"),
            Dtype::U8,
            vec![s.len() as u64],
            s.as_slice(),
        ));
    }
    tensors.push(TensorRef::whole("empty", Dtype::F32, vec![0], &[][..]));
    let report = cp
        .save(
            &StoragePath::new("c").unwrap(),
            &CheckpointMeta::at_step(3),
            &tensors,
            &(),
        )
        .unwrap();
    assert!(report.files >= 2, "{report:?}");
    assert!(
        report.buffer_bytes <= 8 * PART,
        "part buffers are bounded by the threads: {report:?}"
    );
    let parts = seen.lock().unwrap().len();
    assert!(
        parts as u64 >= report.file_bytes / PART,
        "{parts} parts for {} bytes",
        report.file_bytes
    );

    let reader = cp.open(&StoragePath::new("c").unwrap()).unwrap();
    assert!(reader.verify().is_empty());
    let loaded = reader.load_all(&LoadOptions::default()).unwrap();
    assert_eq!(loaded["big"].data, big);
    for (i, s) in small.iter().enumerate() {
        assert_eq!(&loaded[&format!("small.{i}")].data, s);
    }
    assert!(loaded["empty"].data.is_empty());
}
