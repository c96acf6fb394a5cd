//! Many ranks through the in-process group: one checkpoint written by 4 ranks (sharded rows and
//! columns, replicated tensors written once and spread, a tensor only one rank holds), committed
//! once, read back by 1, 2, 3 and 8 ranks with any partition (bit-identical), and by Python's
//! safetensors; a rank that fails or dies mid-save leaves nothing committed and the previous
//! checkpoint intact, with the same error on every rank.

use serde_json::{Map, Value, json};
use std::process::Command;
use std::sync::Arc;
use tempfile::TempDir;
use waypoint::dist::{Coordinator, SharedCoordinator, ThreadGroup};
use waypoint::storage::{
    FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, LocalFs, SharedStorage, StoragePath,
    local_storage,
};
use waypoint::{
    CheckpointMeta, Checkpointer, Dtype, Error, LoadOptions, RegionSlot, SaveOptions, TensorRef,
};

/// A global tensor of the test state and how the 4 saving ranks hold it.
pub(crate) struct Global {
    pub(crate) name: &'static str,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<u64>,
    pub(crate) data: Vec<u8>,
    held: Held,
}

enum Held {
    /// Rank r holds the r-th of these (offsets, shape) boxes.
    Sharded(Vec<(Vec<u64>, Vec<u64>)>),
    /// Every rank holds the whole tensor.
    Replicated,
    /// Only this rank holds it (whole).
    Only(u64),
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn elem(dtype: Dtype) -> usize {
    dtype.byte_len(1).unwrap() as usize
}

fn count(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

/// The 4-rank test state (also loaded by PyTorch in `torch_interop`).
pub(crate) fn state() -> Vec<Global> {
    let rows = |n: u64, parts: &[u64], cols: u64| -> Held {
        let mut start = 0;
        Held::Sharded(
            parts
                .iter()
                .map(|&p| {
                    let b = (vec![start, 0], vec![p, cols]);
                    start += p;
                    assert!(start <= n);
                    b
                })
                .collect(),
        )
    };
    let mk = |name, dtype: Dtype, shape: Vec<u64>, seed, held| Global {
        name,
        dtype,
        data: bytes(seed, count(&shape) * elem(dtype)),
        shape,
        held,
    };
    vec![
        mk(
            "embed.weight",
            Dtype::F32,
            vec![64, 32],
            1,
            rows(64, &[16, 16, 16, 16], 32),
        ),
        mk(
            "proj.weight",
            Dtype::F32,
            vec![32, 48],
            2,
            Held::Sharded((0..4).map(|r| (vec![0, 12 * r], vec![32, 12])).collect()),
        ),
        // Uneven rows of a BF16 tensor.
        mk(
            "head.weight",
            Dtype::BF16,
            vec![10, 6],
            3,
            rows(10, &[3, 3, 2, 2], 6),
        ),
        // 2 MiB, replicated: written once, spread over the 4 replicas.
        mk(
            "norm.weight",
            Dtype::F32,
            vec![512, 1024],
            4,
            Held::Replicated,
        ),
        mk("norm.bias", Dtype::F32, vec![7], 5, Held::Replicated),
        mk("step_scale", Dtype::F64, vec![], 6, Held::Replicated),
        mk("rank3.buffer", Dtype::U8, vec![5], 7, Held::Only(3)),
    ]
}

/// The row-major bytes of the box `offsets`/`shape` of a global tensor.
fn boxed(g: &Global, offsets: &[u64], shape: &[u64]) -> Vec<u8> {
    let e = elem(g.dtype);
    if g.shape.is_empty() {
        return g.data.clone();
    }
    let mut out = Vec::with_capacity(count(shape) * e);
    let inner: usize = count(&g.shape[1..]);
    let box_inner: usize = count(&shape[1..]);
    for r in 0..shape[0] {
        let row = (offsets[0] + r) as usize;
        if g.shape.len() == 1 {
            let start = row * e;
            out.extend_from_slice(&g.data[start..start + e]);
            continue;
        }
        // Two dimensions at most in this state.
        let start = (row * inner + offsets[1] as usize) * e;
        out.extend_from_slice(&g.data[start..start + box_inner * e]);
    }
    out
}

/// A chunk as a rank holds it: name, dtype, global shape, offsets, shape, bytes.
type HeldChunk = (String, Dtype, Vec<u64>, Vec<u64>, Vec<u64>, Vec<u8>);

/// What rank `rank` hands to the save.
fn rank_tensors(globals: &[Global], rank: u64) -> Vec<HeldChunk> {
    let mut out = Vec::new();
    for g in globals {
        let whole = || {
            (
                g.shape.iter().map(|_| 0).collect::<Vec<u64>>(),
                g.shape.clone(),
            )
        };
        let (offsets, shape) = match &g.held {
            Held::Sharded(boxes) => boxes[rank as usize].clone(),
            Held::Replicated => whole(),
            Held::Only(r) if *r == rank => whole(),
            Held::Only(_) => continue,
        };
        let data = boxed(g, &offsets, &shape);
        out.push((
            g.name.to_string(),
            g.dtype,
            g.shape.clone(),
            offsets,
            shape,
            data,
        ));
    }
    out
}

fn refs(held: &[HeldChunk]) -> Vec<TensorRef<'_>> {
    held.iter()
        .map(|(name, dtype, global, offsets, shape, data)| {
            let mut t = TensorRef::whole(name.as_str(), *dtype, shape.clone(), data.as_slice());
            t.global_shape = global.clone();
            t.offsets = offsets.clone();
            t
        })
        .collect()
}

/// Saves the state from `world` ranks as `name`; each rank's storage comes from `storage(rank)`.
/// Returns each rank's outcome.
pub(crate) fn save_from_ranks(
    world: u64,
    storage: &(dyn Fn(u64) -> SharedStorage + Sync),
    name: &str,
    step: u64,
    coordinator: &(dyn Fn(ThreadGroup) -> SharedCoordinator + Sync),
) -> Vec<Result<waypoint::SaveReport, Error>> {
    save_from_group(ThreadGroup::new(world), storage, name, step, coordinator)
}

/// [`save_from_ranks`] over the handles of a group made by the caller.
fn save_from_group(
    group: Vec<ThreadGroup>,
    storage: &(dyn Fn(u64) -> SharedStorage + Sync),
    name: &str,
    step: u64,
    coordinator: &(dyn Fn(ThreadGroup) -> SharedCoordinator + Sync),
) -> Vec<Result<waypoint::SaveReport, Error>> {
    let globals = state();
    let dir = StoragePath::new(name).unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = group
            .into_iter()
            .map(|group| {
                let (globals, dir) = (&globals, &dir);
                s.spawn(move || {
                    let rank = group.rank();
                    let held = rank_tensors(globals, rank % 4);
                    let checkpointer = Checkpointer::new(storage(rank))
                        .with_options(SaveOptions {
                            max_shard_bytes: 1 << 20,
                            ..SaveOptions::default()
                        })
                        .with_coordinator(coordinator(group));
                    let meta = CheckpointMeta::at_step(step);
                    checkpointer.save(dir, &meta, &refs(&held), &json!({"rank": rank}))
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

/// The group itself as the coordinator.
pub(crate) fn plain(group: ThreadGroup) -> SharedCoordinator {
    Arc::new(group)
}

/// Loads every tensor as `world` ranks would: tensor split along dimension 0 (or 1 when
/// `by_columns`) into `world` near-equal regions, each read with `load_regions`, reassembled.
fn load_as_ranks(checkpointer: &Checkpointer, dir: &StoragePath, world: u64, by_columns: bool) {
    let reader = checkpointer.open(dir).unwrap();
    for g in state() {
        let dim = if by_columns && g.shape.len() > 1 {
            1
        } else {
            0
        };
        let mut regions: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
        if g.shape.is_empty() {
            regions.push((vec![], vec![]));
        } else {
            let n = g.shape[dim];
            for r in 0..world {
                let (start, end) = (n * r / world, n * (r + 1) / world);
                let mut offsets = vec![0; g.shape.len()];
                let mut shape = g.shape.clone();
                offsets[dim] = start;
                shape[dim] = end - start;
                regions.push((offsets, shape));
            }
        }
        for (offsets, shape) in regions {
            let mut buf = vec![0u8; count(&shape) * elem(g.dtype)];
            let mut slots = [RegionSlot {
                name: g.name,
                dtype: g.dtype,
                global_shape: &g.shape,
                offsets: &offsets,
                shape: &shape,
                data: &mut buf,
            }];
            reader
                .load_regions(&mut slots, &LoadOptions::default())
                .unwrap();
            assert_eq!(
                buf,
                boxed(&g, &offsets, &shape),
                "{} region {offsets:?}+{shape:?} loaded by {world} ranks",
                g.name
            );
        }
    }
}

#[test]
fn four_ranks_save_once_and_any_number_of_ranks_loads_it_bit_identical() {
    let tmp = TempDir::new().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    let outcomes = save_from_ranks(4, &|_| storage.clone(), "step-3", 3, &plain);
    for (rank, outcome) in outcomes.iter().enumerate() {
        let report = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert!(report.files >= 1, "rank {rank} wrote no file");
        assert_eq!(report.step, 3);
    }
    let checkpointer = Checkpointer::new(storage);
    let dir = StoragePath::new("step-3").unwrap();
    let reader = checkpointer.open(&dir).unwrap();
    let record = reader.record();
    assert_eq!(record.world_size, 4);
    // Rank 0's trainer state is the checkpoint's.
    assert_eq!(record.trainer_state.user, json!({"rank": 0}));
    // Every rank wrote shard files; the replicated 2 MiB tensor is written once, a quarter by
    // each rank; the small replicated ones once.
    let ranks: std::collections::BTreeSet<u64> = record.files.values().map(|f| f.rank).collect();
    assert_eq!(ranks, (0..4).collect());
    let norm = &record.tensors["norm.weight"];
    let writers: Vec<u64> = norm
        .chunks
        .iter()
        .map(|c| record.files[&c.file].rank)
        .collect();
    assert_eq!(writers, vec![0, 1, 2, 3]);
    assert!(norm.chunks.iter().all(|c| c.sizes == vec![128, 1024]));
    assert_eq!(record.tensors["norm.bias"].chunks.len(), 1);
    assert_eq!(record.tensors["step_scale"].chunks.len(), 1);
    assert_eq!(record.tensors["proj.weight"].chunks.len(), 4);
    let total: u64 = state().iter().map(|g| g.data.len() as u64).sum();
    assert_eq!(
        record.total_bytes(),
        total,
        "every byte written exactly once"
    );
    // Nothing but the checkpoint in the directory (no temporaries).
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["step-3".to_string()]);

    // One rank: whole tensors.
    for g in state() {
        let t = reader.load_tensor(g.name, &LoadOptions::default()).unwrap();
        assert_eq!(t.data, g.data, "{}", g.name);
    }
    // 2, 3 and 8 ranks, by rows and by columns.
    for world in [2, 3, 8] {
        load_as_ranks(&checkpointer, &dir, world, false);
        load_as_ranks(&checkpointer, &dir, world, true);
    }
    assert!(checkpointer.verify(&dir, &mut |_| {}).unwrap().is_ok());
}

/// Saves [`state`] from 4 ranks as `dir/ckpt`; returns its path and its commit record as JSON.
pub(crate) fn four_rank_checkpoint(dir: &std::path::Path) -> (std::path::PathBuf, Value) {
    let storage = local_storage(dir).unwrap();
    for outcome in save_from_ranks(4, &|_| storage.clone(), "ckpt", 1, &plain) {
        outcome.unwrap();
    }
    let ckpt = dir.join("ckpt");
    let record: Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("weights/metadata.json")).unwrap())
            .unwrap();
    (ckpt, record)
}

#[test]
fn python_safetensors_reads_every_shard_of_a_four_rank_checkpoint() {
    let tmp = TempDir::new().unwrap();
    let (ckpt, record) = four_rank_checkpoint(tmp.path());
    // Expectations: the global truth, and the chunks as the record places them.
    let mut files: Map<String, Value> = Map::new();
    let mut chunks = Map::new();
    for (name, tensor) in record["tensors"].as_object().unwrap() {
        let mut handed = Vec::new();
        for chunk in tensor["chunks"].as_array().unwrap() {
            let file = chunk["file"].as_str().unwrap();
            let entry = files.entry(file.to_owned()).or_insert_with(|| json!({}));
            entry[name.as_str()] = json!({"offsets": chunk["offsets"], "sizes": chunk["sizes"]});
            handed.push(json!({"offsets": chunk["offsets"], "sizes": chunk["sizes"]}));
        }
        chunks.insert(name.clone(), Value::Array(handed));
    }
    let mut tensors = Map::new();
    for g in state() {
        let hex: String = g.data.iter().map(|b| format!("{b:02x}")).collect();
        tensors.insert(
            g.name.to_string(),
            json!({"dtype": g.dtype.to_string(), "shape": g.shape, "hex": hex}),
        );
    }
    let expect_path = tmp.path().join("expected.json");
    std::fs::write(
        &expect_path,
        serde_json::to_vec(&json!({"tensors": tensors, "chunks": chunks, "files": files})).unwrap(),
    )
    .unwrap();
    let script = test_python::scripts_dir().join("check_interop.py");
    let out = Command::new(test_python::python())
        .arg(script)
        .arg(&ckpt)
        .arg(&expect_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("interop OK"),
        "check_interop.py: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A checkpoint directory with `step-1` committed by 4 ranks, for the failure tests.
fn with_previous() -> (TempDir, SharedStorage) {
    let tmp = TempDir::new().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    for outcome in save_from_ranks(4, &|_| storage.clone(), "step-1", 1, &plain) {
        outcome.unwrap();
    }
    (tmp, storage)
}

/// Only `step-1` is there, intact, and no temporary is left.
fn assert_only_previous(tmp: &TempDir, storage: &SharedStorage) {
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["step-1".to_string()], "leftovers: {names:?}");
    let checkpointer = Checkpointer::new(storage.clone());
    let report = checkpointer
        .verify(&StoragePath::new("step-1").unwrap(), &mut |_| {})
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn a_rank_whose_storage_fails_mid_save_fails_every_rank_and_commits_nothing() {
    // Rank 2's storage fails at its 1st, 2nd, … operation (its join, its file creation, its
    // writes, its fsyncs): every rank reports rank 2's error.
    let mut op = 0;
    loop {
        op += 1;
        let (tmp, storage) = with_previous();
        let faulty: SharedStorage = {
            let fs: Arc<dyn FileSystem> = Arc::new(LocalFs::new(tmp.path()).unwrap());
            Arc::new(FsStorage::new(Arc::new(FaultyFs::new(
                fs,
                FailpointPlan::new(FaultKind::Fail, op),
            ))))
        };
        let outcomes = save_from_ranks(
            4,
            &|rank| {
                if rank == 2 {
                    faulty.clone()
                } else {
                    storage.clone()
                }
            },
            "step-2",
            2,
            &plain,
        );
        if outcomes.iter().all(Result::is_ok) {
            // Past rank 2's last operation: the save succeeds.
            assert!(op > 4, "rank 2 performed only {} operations", op - 1);
            break;
        }
        for (rank, outcome) in outcomes.into_iter().enumerate() {
            let m = outcome.expect_err("all ranks fail together").to_string();
            assert!(
                m.contains("failed on rank 2 of 4") && m.contains("injected fault"),
                "op {op}, rank {rank}: {m}"
            );
        }
        assert_only_previous(&tmp, &storage);
    }
}

/// A coordinator that dies (its handle dropped, the call failing) at its `at`-th collective, as
/// a killed rank would.
#[derive(Debug)]
struct Dying {
    inner: std::sync::Mutex<Option<ThreadGroup>>,
    calls: std::sync::atomic::AtomicU64,
    at: u64,
    rank: u64,
    world: u64,
}

impl Dying {
    fn call<T>(&self, f: impl FnOnce(&ThreadGroup) -> waypoint::Result<T>) -> waypoint::Result<T> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut inner = self.inner.lock().unwrap();
        if n >= self.at {
            inner.take(); // the rank is gone
        }
        match inner.as_ref() {
            Some(g) => f(g),
            None => Err(Error::InvalidArgument {
                name: "test",
                reason: "this rank was killed".into(),
            }),
        }
    }
}

impl Coordinator for Dying {
    fn rank(&self) -> u64 {
        self.rank
    }
    fn world_size(&self) -> u64 {
        self.world
    }
    fn all_gather(&self, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        self.call(|g| g.all_gather(data))
    }
    fn broadcast(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<u8>> {
        self.call(|g| g.broadcast(root, data))
    }
    fn gather(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        self.call(|g| g.gather(root, data))
    }
    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> waypoint::Result<Vec<u8>> {
        self.call(|g| g.scatter(root, parts))
    }
    fn duplicate(&self) -> waypoint::Result<Box<dyn Coordinator>> {
        self.call(|g| g.duplicate())
    }
}

#[test]
fn a_rank_killed_at_any_step_of_the_protocol_leaves_nothing_committed() {
    // The protocol has 5 collectives (announce: gather and scatter, open, report, commit
    // outcome); a rank dying before each of the first four, rank 0 included, leaves nothing
    // committed. Dying before the last one is dying after the commit: the checkpoint is complete.
    for victim in [0u64, 3] {
        for at in 1..=5u64 {
            let (tmp, storage) = with_previous();
            let outcomes = save_from_ranks(4, &|_| storage.clone(), "step-2", 2, &|group| {
                let rank = group.rank();
                if rank == victim {
                    Arc::new(Dying {
                        inner: std::sync::Mutex::new(Some(group)),
                        calls: Default::default(),
                        at,
                        rank,
                        world: 4,
                    })
                } else {
                    Arc::new(group)
                }
            });
            if at == 5 {
                let committed = waypoint::resume::discover(storage.as_ref(), &StoragePath::root())
                    .unwrap()
                    .committed;
                assert_eq!(committed.len(), 2, "victim {victim}: step-2 is committed");
                let report = Checkpointer::new(storage.clone())
                    .verify(&StoragePath::new("step-2").unwrap(), &mut |_| {})
                    .unwrap();
                assert!(report.is_ok(), "{:?}", report.problems);
                continue;
            }
            for (rank, outcome) in outcomes.into_iter().enumerate() {
                let e = outcome.expect_err("no rank may succeed");
                let m = e.to_string();
                if rank as u64 != victim {
                    assert!(
                        m.contains(&format!("rank {victim} left the group")),
                        "victim {victim} at {at}, rank {rank}: {m}"
                    );
                }
            }
            // Nothing committed, and nothing left for the next setup: the dying rank's calls fail
            // but its code still runs, so rank 0 (victim or not) removes the temporary it
            // created when the save fails. What a real kill leaves is the crash tests' concern
            // (engine_crash.rs, the trainer's SIGKILLs, mpirun's in crates/mpi-harness).
            let removed = Checkpointer::new(storage.clone())
                .cleanup_temporaries(&StoragePath::root())
                .unwrap();
            assert!(
                removed.is_empty(),
                "victim {victim} at {at}: rank 0 left {removed:?}"
            );
            assert_only_previous(&tmp, &storage);
            // Resume finds the previous checkpoint.
            let found = waypoint::resume::discover(storage.as_ref(), &StoragePath::root()).unwrap();
            let steps: Vec<u64> = found.committed.iter().map(|c| c.step).collect();
            assert_eq!(steps, vec![1]);
        }
    }
}

/// A rank's channel that hands it garbage instead of the `at`-th collective's answer (a message
/// of another conversation), and stays in the group (as an MPI rank would: nothing tells the
/// others it gave up).
#[derive(Debug)]
struct Garbling {
    inner: Arc<ThreadGroup>,
    calls: std::sync::atomic::AtomicU64,
    at: u64,
}

impl Garbling {
    fn garble(&self, answer: &mut [u8]) {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.at {
            answer.iter_mut().for_each(|b| *b = b'w');
        }
    }
}

impl Coordinator for Garbling {
    fn rank(&self) -> u64 {
        self.inner.rank()
    }
    fn world_size(&self) -> u64 {
        self.inner.world_size()
    }
    fn all_gather(&self, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        let mut all = self.inner.all_gather(data)?;
        self.garble(&mut all[0]);
        Ok(all)
    }
    fn broadcast(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<u8>> {
        let mut told = self.inner.broadcast(root, data)?;
        self.garble(&mut told);
        Ok(told)
    }
    fn gather(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        let mut all = self.inner.gather(root, data)?;
        if let Some(first) = all.first_mut() {
            self.garble(first);
        } else {
            self.garble(&mut []);
        }
        Ok(all)
    }
    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> waypoint::Result<Vec<u8>> {
        let mut told = self.inner.scatter(root, parts)?;
        self.garble(&mut told);
        Ok(told)
    }
    fn duplicate(&self) -> waypoint::Result<Box<dyn Coordinator>> {
        self.inner.duplicate()
    }
}

#[test]
fn an_unreadable_transaction_token_fails_every_rank_and_commits_nothing() {
    // Rank 2 cannot read rank 0's token (the open step's broadcast, the 3rd collective) but
    // stays in the group: it reports that in the next step, so every rank fails together and
    // rank 0 aborts, instead of the others waiting for it (here: until the group's timeout).
    let (tmp, storage) = with_previous();
    let kept = std::sync::Mutex::new(Vec::new());
    let group = ThreadGroup::with_timeout(4, std::time::Duration::from_secs(10));
    let outcomes = save_from_group(group, &|_| storage.clone(), "step-2", 2, &|group| {
        let inner = Arc::new(group);
        kept.lock().unwrap().push(inner.clone());
        match inner.rank() {
            2 => Arc::new(Garbling {
                inner,
                calls: Default::default(),
                at: 3,
            }),
            _ => inner,
        }
    });
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        let m = outcome.expect_err("no rank may succeed").to_string();
        assert!(
            m.contains("failed on rank 2 of 4") && m.contains("unreadable transaction token"),
            "rank {rank}: {m}"
        );
    }
    drop(kept);
    assert_only_previous(&tmp, &storage);
}

#[test]
fn inconsistent_ranks_are_refused_before_anything_is_written() {
    let tmp = TempDir::new().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    let dir = StoragePath::new("bad").unwrap();
    let outcomes: Vec<String> = std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|group| {
                let (storage, dir) = (storage.clone(), dir.clone());
                s.spawn(move || {
                    // The ranks disagree on the global shape.
                    let rank = group.rank();
                    let data = [0u8; 8];
                    let mut t = TensorRef::whole("w", Dtype::U8, vec![8], &data);
                    t.global_shape = vec![16 + rank];
                    t.offsets = vec![8 * rank];
                    Checkpointer::new(storage)
                        .with_coordinator(Arc::new(group))
                        .save(&dir, &CheckpointMeta::at_step(1), &vec![t], &())
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for m in outcomes {
        assert!(
            m.contains("tensor \"w\": rank 0 has U8 [16] but rank 1 has U8 [17]"),
            "{m}"
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
