//! The Run handle with several ranks (an in-process group): every rank saves the same
//! checkpoints at the same steps (rank 0 decides), asynchronous saves included; top-k rotation
//! and deletions happen once; a resume with the same number of ranks, or with a different one,
//! restores every rank's shards bit for bit.

use crate::common::dir_names;
use crate::common::training::resume;
use std::sync::Arc;
use tempfile::TempDir;
use waypoint::dist::{Coordinator, ThreadGroup};
use waypoint::storage::{SharedStorage, local_storage};
use waypoint::{
    AutoResume, Checkpointable, Dtype, ModelCheckpoint, RegionSlot, Run, SinkSlot, TensorRef,
};

const ROWS: u64 = 64;
const COLS: u64 = 256;

/// One rank's state: rows `first..first + rows` of the sharded weight `w` and of its optimizer
/// moment `m`, and the replicated bias `b`.
#[derive(Debug, Clone, PartialEq)]
struct Shard {
    first: u64,
    rows: u64,
    global_shape: [u64; 2],
    local_shape: [u64; 2],
    offsets: [u64; 2],
    w: Vec<f32>,
    m: Vec<f32>,
    b: Vec<f32>,
    step: u64,
}

fn as_bytes(v: &[f32]) -> &[u8] {
    // f32 has no padding and any bit pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl Shard {
    fn new(rank: u64, world: u64) -> Self {
        let first = ROWS * rank / world;
        let rows = ROWS * (rank + 1) / world - first;
        Shard {
            first,
            rows,
            global_shape: [ROWS, COLS],
            local_shape: [rows, COLS],
            offsets: [first, 0],
            w: vec![0.0; (rows * COLS) as usize],
            m: vec![0.0; (rows * COLS) as usize],
            b: vec![0.0; COLS as usize],
            step: 0,
        }
    }

    /// A deterministic update that depends on the global position of every element.
    fn train_step(&mut self) {
        self.step += 1;
        let s = self.step as f32;
        for r in 0..self.rows {
            for c in 0..COLS {
                let i = (r * COLS + c) as usize;
                let g = ((self.first + r) * COLS + c) as f32;
                self.m[i] = 0.9 * self.m[i] + 0.1 * (g * 0.001 + s);
                self.w[i] -= 0.01 * self.m[i];
            }
        }
        for (c, b) in self.b.iter_mut().enumerate() {
            *b += s * c as f32;
        }
    }

    fn val_loss(&self) -> f64 {
        (self.step as f64 - 7.0).abs() + 0.5
    }

    fn sharded<'a>(&self, name: &'a str, data: &'a [f32]) -> TensorRef<'a> {
        let mut t = TensorRef::whole(name, Dtype::F32, self.local_shape.to_vec(), as_bytes(data));
        t.global_shape = self.global_shape.to_vec();
        t.offsets = vec![self.first, 0];
        t
    }
}

impl Checkpointable for Shard {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![
            self.sharded("w", &self.w),
            TensorRef::whole("b", Dtype::F32, vec![COLS], as_bytes(&self.b)),
        ]
    }
    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![self.sharded("m", &self.m)]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![SinkSlot {
            name: "b",
            dtype: Dtype::F32,
            shape: &[COLS],
            data: as_bytes_mut(&mut self.b),
        }]
    }
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        let Shard {
            global_shape,
            local_shape,
            offsets,
            w,
            m,
            ..
        } = self;
        vec![
            RegionSlot {
                name: "w",
                dtype: Dtype::F32,
                global_shape: &global_shape[..],
                offsets: &offsets[..],
                shape: &local_shape[..],
                data: as_bytes_mut(w),
            },
            RegionSlot {
                name: "m",
                dtype: Dtype::F32,
                global_shape: &global_shape[..],
                offsets: &offsets[..],
                shape: &local_shape[..],
                data: as_bytes_mut(m),
            },
        ]
    }
    fn restore_trainer_state(&mut self, state: serde_json::Value) -> waypoint::Result<()> {
        self.step = state["step"].as_u64().unwrap_or(0);
        Ok(())
    }
}

fn policy() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .monitor("val_loss")
        .save_top_k(2)
        .every_n_train_steps(2)
        .async_save(true)
        .build()
        .unwrap()
}

/// Trains `world` ranks up to `until` (resuming from what is there), stopping without `finish`
/// when `stop_early`. Returns each rank's final state and the checkpoint names it saved.
fn train(
    world: u64,
    storage: &SharedStorage,
    log_dir: &std::path::Path,
    until: u64,
    finish: bool,
) -> Vec<(Shard, Vec<String>, Option<u64>)> {
    std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|group| {
                let storage = storage.clone();
                s.spawn(move || {
                    let rank = group.rank();
                    let mut shard = Shard::new(rank, world);
                    let mut run = Run::builder()
                        .log_dir(log_dir)
                        .storage(storage)
                        .checkpoint(policy())
                        .resume(resume())
                        .max_steps(until)
                        .coordinator(Arc::new(group))
                        .build()
                        .unwrap();
                    let resumed = run.restore(&mut shard).unwrap().map(|p| p.step);
                    let mut names = Vec::new();
                    while shard.step < until {
                        shard.train_step();
                        run.log_metrics(shard.step, &[("val_loss", shard.val_loss())]);
                        for saved in run.step_end(shard.step, 0, &shard).unwrap() {
                            names.push(saved.name);
                        }
                    }
                    if finish {
                        for saved in run.finish(shard.step, 0, &shard).unwrap() {
                            names.push(saved.name);
                        }
                    } else {
                        for saved in run.wait_for_saves().unwrap() {
                            names.push(saved.name);
                        }
                    }
                    (shard, names, resumed)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

/// The state a single process reaches after `steps` steps, split for `world` ranks.
fn reference(world: u64, steps: u64) -> Vec<Shard> {
    (0..world)
        .map(|rank| {
            let mut s = Shard::new(rank, world);
            for _ in 0..steps {
                s.train_step();
            }
            s
        })
        .collect()
}

#[test]
fn four_ranks_save_the_same_checkpoints_and_resume_with_four_or_two() {
    let tmp = TempDir::new().unwrap();
    let ckpts = tmp.path().join("checkpoints");
    let storage = local_storage(&ckpts).unwrap();

    // 10 steps on 4 ranks, interrupted (no finish).
    let ranks = train(4, &storage, tmp.path(), 10, false);
    let names = &ranks[0].1;
    assert!(!names.is_empty());
    for (rank, (shard, saved, resumed)) in ranks.iter().enumerate() {
        assert_eq!(
            saved, names,
            "rank {rank} saved other checkpoints than rank 0"
        );
        assert_eq!(*resumed, None);
        assert_eq!(shard, &reference(4, 10)[rank]);
    }
    // Top-2 by val_loss (steps 6 and 8 are nearest to 7) and the -last of step 10, nothing else.
    let on_disk = dir_names(&ckpts);
    assert_eq!(on_disk.len(), 3, "{on_disk:?}");
    assert!(on_disk.iter().any(|n| n.contains("step=6")), "{on_disk:?}");
    assert!(on_disk.iter().any(|n| n.contains("step=8")), "{on_disk:?}");
    assert!(
        on_disk
            .iter()
            .any(|n| n.contains("step=10") && n.ends_with("-last")),
        "{on_disk:?}"
    );

    // Resume on 4 ranks: every rank continues from step 10 with its own shards.
    let ranks = train(4, &storage, tmp.path(), 14, false);
    for (rank, (shard, _, resumed)) in ranks.iter().enumerate() {
        assert_eq!(*resumed, Some(10), "rank {rank}");
        assert_eq!(
            shard,
            &reference(4, 14)[rank],
            "rank {rank} after resuming on 4 ranks"
        );
    }

    // Resume on 2 ranks: the checkpoint of step 14 (saved by 4) is resharded.
    let ranks = train(2, &storage, tmp.path(), 18, true);
    for (rank, (shard, _, resumed)) in ranks.iter().enumerate() {
        assert_eq!(*resumed, Some(14), "rank {rank}");
        assert_eq!(
            shard,
            &reference(2, 18)[rank],
            "rank {rank} after resuming on 2 ranks"
        );
    }
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ckpts
                .join(
                    dir_names(&ckpts)
                        .iter()
                        .find(|n| n.ends_with("-last"))
                        .unwrap(),
                )
                .join("weights/metadata.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["world_size"], 2);
    assert_eq!(record["step"], 18);
}

#[test]
fn an_experiment_with_ranks_agrees_on_rank_0s_version_directory() {
    let tmp = TempDir::new().unwrap();
    let results: Vec<(Option<String>, std::path::PathBuf, Vec<String>)> = std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|group| {
                let log_dir = tmp.path().to_path_buf();
                s.spawn(move || {
                    let rank = group.rank();
                    // No version given and no resume: a datetime version, which only rank 0
                    // may choose; the others learn it from rank 0.
                    let logger = waypoint::ExperimentLogger::builder()
                        .log_dir(&log_dir)
                        .name("exp")
                        .checkpoint(policy())
                        .tensorboard(false)
                        .csv(false)
                        .preemption_signals(Vec::new())
                        .coordinator(Arc::new(group))
                        .build()
                        .unwrap();
                    let mut experiment = logger.setup(&AutoResume::default()).unwrap();
                    let mut shard = Shard::new(rank, 3);
                    let mut saved = Vec::new();
                    for _ in 0..4 {
                        shard.train_step();
                        let run = experiment.run_mut();
                        run.log_metrics(shard.step, &[("val_loss", shard.val_loss())]);
                        saved.extend(
                            run.step_end(shard.step, 0, &shard)
                                .unwrap()
                                .into_iter()
                                .map(|c| c.name),
                        );
                    }
                    let version = experiment.version().map(str::to_owned);
                    let dir = experiment.checkpoint_dir().to_path_buf();
                    saved.extend(
                        experiment
                            .finish(shard.step, 0, &shard)
                            .unwrap()
                            .into_iter()
                            .map(|c| c.name),
                    );
                    (version, dir, saved)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let (version, dir, saved) = &results[0];
    assert!(version.is_some(), "a datetime version");
    for r in &results {
        assert_eq!(&r.0, version);
        assert_eq!(&r.1, dir);
        assert_eq!(&r.2, saved);
    }
    let version_dir = tmp.path().join("exp").join(version.as_ref().unwrap());
    assert!(
        version_dir.join("cmd-args.log").is_file(),
        "rank 0 wrote the run files"
    );
    // One version directory only: no rank made its own.
    assert_eq!(
        dir_names(&tmp.path().join("exp")),
        vec![version.clone().unwrap()]
    );
    let last = dir_names(dir)
        .into_iter()
        .find(|n| n.ends_with("-last"))
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(last).join("weights/metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["world_size"], 3);
}
