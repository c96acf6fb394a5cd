//! Finalizing background saves with several ranks is collective: rank 0 decides at which call
//! a finished save is finalized and every rank finalizes it there. When one rank's background
//! write fails, every rank returns the same error at the same call, no rank hangs, and no
//! committed record names a step its tensors were not taken at.
//!
//! The race is made certain, not left to timing: rank 0's background job is held inside its
//! abort (the last thing it does for the failed save) until the other ranks have gone past the
//! next step, so they see their own jobs finished long before rank 0 sees its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use waypoint::dist::{Coordinator, ThreadGroup};
use waypoint::storage::{CountingStorage, SharedStorage, StorageOp, StoragePath, local_storage};
use waypoint::{
    Checkpointable, Checkpointer, Dtype, LoadOptions, ModelCheckpoint, Run, SaveLast, SinkSlot,
    TensorRef,
};

const WORLD: u64 = 3;
const COLS: u64 = 4096;
/// Rank 2's writes fail in the checkpoint of this step (its second save).
const FAILING_STEP: u64 = 4;

/// One rank's row of the sharded tensor `w`, every byte the step it was taken at.
struct Row {
    rank: u64,
    w: Vec<u8>,
    step: u64,
}

impl Row {
    fn train_step(&mut self) {
        self.step += 1;
        self.w.fill(self.step as u8);
    }
}

impl Checkpointable for Row {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        let mut t = TensorRef::whole("w", Dtype::U8, vec![1, COLS], &self.w);
        t.global_shape = vec![WORLD, COLS];
        t.offsets = vec![self.rank, 0];
        vec![t]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        Vec::new()
    }
    fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
        Ok(())
    }
}

/// Counts the ranks other than 0 that returned from a call after the failing step, and lets a
/// waiter block until all of them did (or a bound passes, so that a broken protocol fails the
/// test instead of hanging it).
#[derive(Default)]
struct Followers {
    past: Mutex<u64>,
    changed: Condvar,
}

impl Followers {
    fn arrive(&self) {
        *self.past.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    fn wait_all(&self) {
        let past = self.past.lock().unwrap();
        let _ = self
            .changed
            .wait_timeout_while(past, Duration::from_secs(30), |p| *p < WORLD - 1)
            .unwrap();
    }
}

/// Rank 2's storage fails every write of its second save; rank 0's holds the abort of a failed
/// save until the followers went past the next step.
fn storage_for(rank: u64, base: &SharedStorage, followers: &Arc<Followers>) -> SharedStorage {
    let counting = CountingStorage::new(base.clone());
    match rank {
        2 => {
            let joins = AtomicU64::new(0);
            Arc::new(counting.with_fault_hook(move |op| {
                if op.kind == StorageOp::Join {
                    joins.store(op.nth, Ordering::SeqCst);
                }
                if op.kind == StorageOp::Write && joins.load(Ordering::SeqCst) == 2 {
                    return Err(waypoint::Error::InjectedFault {
                        op_index: op.nth,
                        op: "write",
                        path: op.path.as_str().into(),
                    });
                }
                Ok(())
            }))
        }
        0 => {
            let followers = followers.clone();
            Arc::new(counting.with_fault_hook(move |op| {
                if op.kind == StorageOp::Abort {
                    followers.wait_all();
                }
                Ok(())
            }))
        }
        _ => Arc::new(counting),
    }
}

/// What one rank saw: the step of the call that failed, and the error.
type Outcome = Option<(u64, String)>;

fn train_until_failure(base: &SharedStorage, log_dir: &std::path::Path) -> Vec<Outcome> {
    train(base, log_dir, false)
        .into_iter()
        .map(|(failed, _)| failed)
        .collect()
}

/// Trains every rank to step 10 (or, unless `carry_on`, to its first error); each rank's first
/// failure, and the errors of any later call (`wait_for_saves` at the end included).
fn train(
    base: &SharedStorage,
    log_dir: &std::path::Path,
    carry_on: bool,
) -> Vec<(Outcome, Vec<String>)> {
    let followers = Arc::new(Followers::default());
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(SaveLast::No)
        .every_n_train_steps(2)
        .async_save(true)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::with_timeout(WORLD, Duration::from_secs(60))
            .into_iter()
            .map(|group| {
                let (followers, policy) = (followers.clone(), policy.clone());
                s.spawn(move || {
                    let rank = group.rank();
                    let mut run = Run::builder()
                        .log_dir(log_dir)
                        .storage(storage_for(rank, base, &followers))
                        .checkpoint(policy)
                        .coordinator(Arc::new(group))
                        .build()
                        .unwrap();
                    let mut row = Row {
                        rank,
                        w: vec![0; COLS as usize],
                        step: 0,
                    };
                    let (mut failed, mut later) = (None, Vec::new());
                    while row.step < 10 && (carry_on || failed.is_none()) {
                        row.train_step();
                        if let Err(e) = run.step_end(row.step, 0, &row) {
                            match failed {
                                None => failed = Some((row.step, e.to_string())),
                                Some(_) => later.push(format!("step {}: {e}", row.step)),
                            }
                        }
                        if rank != 0 && row.step == FAILING_STEP + 1 {
                            followers.arrive();
                        }
                    }
                    if carry_on && let Err(e) = run.wait_for_saves() {
                        later.push(format!("wait_for_saves: {e}"));
                    }
                    (failed, later)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

#[test]
fn a_failed_background_write_on_one_rank_fails_every_rank_at_the_same_call() {
    let tmp = tempfile::tempdir().unwrap();
    let base = local_storage(tmp.path()).unwrap();
    let outcomes = train_until_failure(&base, tmp.path());

    let first = outcomes[0].clone().expect("rank 0 saw no error");
    for (rank, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            outcome.as_ref(),
            Some(&first),
            "rank {rank} differs from rank 0"
        );
    }
    let (step, error) = first;
    assert!(step > FAILING_STEP, "the failure surfaced at step {step}");
    assert!(
        error.contains(&format!(
            "save of step {FAILING_STEP} failed on rank 2 of 3"
        )),
        "{error}"
    );

    // What is committed is the step-2 checkpoint, and its tensors were taken at step 2.
    let checkpointer = Checkpointer::new(base.clone());
    let names: Vec<String> = waypoint::resume::discover(base.as_ref(), &StoragePath::root())
        .unwrap()
        .committed
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    for name in names {
        let reader = checkpointer
            .open(&StoragePath::new(&name).unwrap())
            .unwrap();
        let step = reader.record().step;
        let w = reader.load_tensor("w", &LoadOptions::default()).unwrap();
        assert_eq!(step, 2, "{name}");
        assert!(
            w.data.iter().all(|&b| u64::from(b) == step),
            "{name} holds another step's tensors"
        );
    }
}

/// After one rank's background save failed and every rank returned the error at the same call,
/// the ranks carry on (as a loop that logs and continues would): every later save is finalized
/// collectively and commits, and each committed checkpoint verifies and holds its step's rows.
#[test]
fn after_one_ranks_failed_save_every_rank_carries_on_and_later_saves_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let base = local_storage(tmp.path()).unwrap();
    let outcomes = train(&base, tmp.path(), true);
    let first = outcomes[0].0.clone().expect("rank 0 saw no error");
    for (rank, (failed, later)) in outcomes.iter().enumerate() {
        assert_eq!(
            failed.as_ref(),
            Some(&first),
            "rank {rank} differs from rank 0"
        );
        assert!(later.is_empty(), "rank {rank} failed again: {later:?}");
    }
    let checkpointer = Checkpointer::new(base.clone());
    let mut steps = Vec::new();
    for candidate in waypoint::resume::discover(base.as_ref(), &StoragePath::root())
        .unwrap()
        .committed
    {
        let path = StoragePath::new(&candidate.name).unwrap();
        let report = checkpointer.verify(&path, &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{}: {:?}", candidate.name, report.problems);
        let w = checkpointer
            .open(&path)
            .unwrap()
            .load_tensor("w", &LoadOptions::default())
            .unwrap();
        assert!(
            w.data.iter().all(|&b| u64::from(b) == candidate.step),
            "{} holds another step's rows",
            candidate.name
        );
        steps.push(candidate.step);
    }
    steps.sort_unstable();
    // Step 4's save failed; the save of the call that returned its error may have been skipped.
    let expected: Vec<u64> = [2, 6, 8, 10]
        .into_iter()
        .filter(|&s| s != first.0 || steps.contains(&s))
        .collect();
    assert_eq!(
        steps, expected,
        "committed steps (the failure surfaced at step {})",
        first.0
    );
}
