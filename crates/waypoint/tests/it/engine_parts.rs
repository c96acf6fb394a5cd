//! The engine on storage that demands whole parts (how object stores' multipart uploads fit the
//! same engine): every write is one whole part at a part boundary, each part is written once,
//! and the checkpoint reads back bit for bit. The library's `CountingStorage` announces the part
//! size over the in-memory file system, and its hook checks the part rules on every write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use waypoint::storage::{CountingStorage, FsStorage, MemoryFs, Operation, StorageOp, StoragePath};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, LoadOptions, SaveOptions, TensorRef};

const PART: u64 = 64 * 1024;

/// What the part checker saw: each file's length and the parts written to it, and every write.
#[derive(Default)]
struct Parts {
    files: BTreeMap<String, (u64, BTreeSet<u64>)>,
    seen: Vec<(String, u64, u64)>,
}

impl Parts {
    /// Checks one operation against the part rules: every write one whole part at a part
    /// boundary (the file's last part may be shorter), each part written once, and every part
    /// written before the file is finished. A broken rule fails the operation, naming the file.
    fn check(&mut self, op: &Operation<'_>) -> waypoint::Result<()> {
        let name = op.path.to_string();
        let broken = |reason: String| {
            Err(waypoint::Error::InvalidArgument {
                name: "part rule",
                reason: format!("{name}: {reason}"),
            })
        };
        match op.kind {
            StorageOp::Create => {
                self.files.insert(name, (op.len, BTreeSet::new()));
            }
            StorageOp::Write => {
                let Some((len, written)) = self.files.get_mut(&name) else {
                    return broken("a write to a file never created".into());
                };
                let end = op.offset + op.len;
                if !op.offset.is_multiple_of(PART) {
                    return broken(format!("write at {} is not on a part boundary", op.offset));
                }
                if op.len != PART && end != *len {
                    return broken(format!(
                        "a short part at {} that is not the last",
                        op.offset
                    ));
                }
                if !written.insert(op.offset / PART) {
                    return broken(format!("part {} written twice", op.offset / PART));
                }
                self.seen.push((name, op.offset, op.len));
            }
            StorageOp::Finish => {
                let parts = self.files.get(&name).map_or(0, |(_, w)| w.len() as u64);
                if parts != op.len.div_ceil(PART) {
                    return broken(format!(
                        "finished after {parts} of {} parts",
                        op.len.div_ceil(PART)
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn saves_through_whole_parts_and_reads_back() {
    let parts = Arc::new(Mutex::new(Parts::default()));
    let checker = parts.clone();
    let storage = Arc::new(
        CountingStorage::new(Arc::new(FsStorage::new(Arc::new(MemoryFs::new()))))
            .with_part_size(PART)
            .with_fault_hook(move |op| checker.lock().unwrap().check(op)),
    );
    let cp = Checkpointer::new(storage.clone()).with_options(SaveOptions {
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
    let written = parts.lock().unwrap().seen.len();
    assert!(
        written as u64 >= report.file_bytes / PART,
        "{written} parts for {} bytes",
        report.file_bytes
    );
    // Every shard byte went through the wrapper once, in whole parts; then the summary (one
    // part of its own) and the record.
    let part_bytes: u64 = parts
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(name, _, _)| name.contains("/weights/"))
        .map(|(_, _, len)| len)
        .sum();
    assert_eq!(part_bytes, report.file_bytes);
    let counts = storage.counts();
    assert_eq!(counts.of(StorageOp::Write), written as u64);
    assert_eq!(counts.of(StorageOp::Commit), 1);
    assert!(counts.bytes_written > part_bytes, "{counts:?}");

    let reader = cp.open(&StoragePath::new("c").unwrap()).unwrap();
    assert!(reader.verify().is_empty());
    let loaded = reader.load_all(&LoadOptions::default()).unwrap();
    assert_eq!(loaded["big"].data, big);
    for (i, s) in small.iter().enumerate() {
        assert_eq!(&loaded[&format!("small.{i}")].data, s);
    }
    assert!(loaded["empty"].data.is_empty());
}
