//! Checkpoints written by every rank of a real MPI job (`mpirun -np 4`): one commit, readable by
//! 2 ranks (resharded) and by one process; a rank whose save fails makes every rank report it
//! with nothing committed; a rank killed mid-save ends the job with nothing committed, and the
//! next job resumes from the previous checkpoint and finishes with the right state.

use crate::support;

use std::path::Path;
use support::mpirun;
use waypoint::Checkpointer;
use waypoint::resume::discover;
use waypoint::storage::{StoragePath, TEMP_MARKER, local_storage};

/// The committed checkpoints in `dir`, as (name, step), oldest first.
fn committed(dir: &Path) -> Vec<(String, u64)> {
    let found = discover(local_storage(dir).unwrap().as_ref(), &StoragePath::root()).unwrap();
    let mut c: Vec<(String, u64)> = found
        .committed
        .into_iter()
        .map(|c| (c.name, c.step))
        .collect();
    c.sort();
    c
}

/// The distinct steps of the committed checkpoints (a top-k checkpoint and its `-last` share one).
fn steps(dir: &Path) -> Vec<u64> {
    let mut s: Vec<u64> = committed(dir).into_iter().map(|(_, s)| s).collect();
    s.sort();
    s.dedup();
    s
}

fn train(dir: &Path, until: u64, fault: &[&str]) -> support::Job {
    let mut args = vec![dir.to_str().unwrap().to_string(), until.to_string()];
    args.extend(fault.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mpirun(4, "ckpt-train", &args, &[])
}

#[test]
fn four_processes_save_once_and_two_load_it_resharded() {
    let tmp = tempfile::tempdir().unwrap();
    let job = train(tmp.path(), 4, &[]);
    job.assert_success();
    assert_eq!(job.agreed(4, "final"), "4");
    assert_eq!(job.agreed(4, "resumed"), "none");
    assert_eq!(job.agreed(4, "consistent"), "true");
    assert_eq!(
        steps(tmp.path()),
        vec![2, 4],
        "the saves of every rank, committed once"
    );
    let (name, _) = committed(tmp.path())
        .into_iter()
        .find(|(n, s)| *s == 4 && !n.ends_with("-last"))
        .unwrap();

    // One process reads it: written by 4 ranks, complete, every checksum right.
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let dir = StoragePath::new(&name).unwrap();
    let report = checkpointer.verify(&dir, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.record.world_size, 4);
    let ranks: std::collections::BTreeSet<u64> =
        report.record.files.values().map(|f| f.rank).collect();
    assert_eq!(ranks.len(), 4, "every rank wrote shard files");

    // Two ranks of another job load their rows of it.
    let job = mpirun(2, "ckpt-load", &[tmp.path().to_str().unwrap(), &name], &[]);
    job.assert_success();
    assert_eq!(job.agreed(2, "step"), "4");
    assert_eq!(job.agreed(2, "saved_by"), "4");
    assert_eq!(job.agreed(2, "consistent"), "true");
}

#[test]
fn several_saves_in_flight_each_commit_once() {
    // Up to 3 background saves in flight at once, each on a communicator of its own: none takes
    // another's messages, and every one commits, complete.
    let tmp = tempfile::tempdir().unwrap();
    let args = [tmp.path().to_str().unwrap(), "12"];
    let job = mpirun(
        4,
        "ckpt-train",
        &args,
        &[("WAYPOINT_HARNESS_MAX_PENDING", "3")],
    );
    job.assert_success();
    assert_eq!(job.agreed(4, "final"), "12");
    assert_eq!(job.agreed(4, "consistent"), "true");
    assert_eq!(steps(tmp.path()), vec![2, 4, 6, 8, 10, 12]);
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    for (name, _) in committed(tmp.path()) {
        let report = checkpointer
            .verify(&StoragePath::new(&name).unwrap(), &mut |_| {})
            .unwrap();
        assert!(report.is_ok(), "{name}: {:?}", report.problems);
    }
}

#[test]
fn a_failing_rank_fails_every_rank_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    train(tmp.path(), 4, &[]).assert_success();
    let before = committed(tmp.path());
    // Rank 2's first write of the step-6 save fails.
    let job = train(tmp.path(), 6, &["fail", "2"]);
    job.assert_success();
    assert_eq!(job.agreed(4, "error_rank"), "2");
    assert_eq!(committed(tmp.path()), before, "nothing committed");
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(TEMP_MARKER))
        .collect();
    assert!(
        leftovers.is_empty(),
        "rank 0 removed the temporary: {leftovers:?}"
    );
}

/// A background save that fails on one rank while training goes on: rank 0 decides when it is
/// finalized, so all four processes report the same failure at the same step (none hangs, none
/// goes on a step late), nothing of that save is committed, and the next job resumes from the
/// checkpoint before it with every shard consistent with its step.
#[test]
fn a_background_save_failing_on_one_rank_fails_all_ranks_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let job = train(tmp.path(), 12, &["fail-at", "2", "6"]);
    job.assert_success();
    assert_eq!(job.agreed(4, "error_rank"), "2");
    let at: u64 = job.agreed(4, "error_step").parse().unwrap();
    assert!(
        at > 6,
        "the failure of the step-6 save surfaced at step {at}"
    );
    assert_eq!(
        steps(tmp.path()),
        [2, 4],
        "only the saves before the failed one"
    );
    let job = train(tmp.path(), 8, &[]);
    job.assert_success();
    assert_eq!(job.agreed(4, "resumed"), "4");
    assert_eq!(job.agreed(4, "final"), "8");
    assert_eq!(job.agreed(4, "consistent"), "true");
}

#[test]
fn a_killed_rank_ends_the_job_and_the_next_job_resumes_from_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    train(tmp.path(), 4, &[]).assert_success();
    let before = committed(tmp.path());
    // Rank 3's process aborts in the middle of the step-6 save.
    let job = train(tmp.path(), 6, &["abort", "3"]);
    assert!(!job.status.success(), "the job must fail:\n{}", job.stdout);
    assert!(
        !job.stdout.contains("final="),
        "no rank finished:\n{}",
        job.stdout
    );
    assert_eq!(committed(tmp.path()), before, "nothing committed");

    // The same command again: every rank resumes from step 4 and reaches step 6.
    let job = train(tmp.path(), 6, &[]);
    job.assert_success();
    assert_eq!(job.agreed(4, "resumed"), "4");
    assert_eq!(job.agreed(4, "final"), "6");
    assert_eq!(job.agreed(4, "consistent"), "true");
    assert_eq!(steps(tmp.path()), vec![2, 4, 6]);
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(TEMP_MARKER))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the killed save's temporary was cleaned up: {leftovers:?}"
    );
}
