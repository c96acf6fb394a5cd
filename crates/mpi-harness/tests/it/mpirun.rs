//! The MPI coordinator under a real `mpirun` (Open MPI): four ranks of `mpi-harness`, each printing
//! `rank=R key=value` lines that these tests compare across ranks and with values computed here.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::mpirun;

#[test]
fn ranks_agree_on_all_gather_broadcast_and_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let job = mpirun(4, "collectives", &[dir.path().to_str().unwrap()], &[]);
    job.assert_success();
    let by_rank = job.by_rank();
    assert_eq!(
        by_rank.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for (rank, seen) in &by_rank {
        assert_eq!(seen["world"], format!("{rank}/4"));
        assert_eq!(seen["gather"], "|r1|r2r2|r3r3r3", "rank {rank}");
        let at2 = if *rank == 2 { "|r1|r2r2|r3r3r3" } else { "" };
        assert_eq!(seen["gather_at2"], at2, "rank {rank}");
        let own = format!("to{rank}").repeat(*rank as usize);
        assert_eq!(seen["scatter"], own, "rank {rank}");
        for root in 0..4 {
            assert_eq!(
                seen[&format!("bcast{root}")],
                format!("from{root}"),
                "rank {rank}"
            );
        }
        assert_eq!(seen["barrier_saw"], "4,4,4", "rank {rank}");
    }
    assert_eq!(files_in(dir.path()), 12);
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn two_hundred_rounds_of_small_collectives_agree() {
    let job = mpirun(4, "repeat", &["200"], &[]);
    job.assert_success();
    assert_eq!(job.agreed(4, "rounds"), "200");
    // Every rank received the same bytes in the same order.
    let digest = job.agreed(4, "digest");
    assert_eq!(digest.len(), 8, "{digest}");
}

/// What rank `seed` sends in the `large` mode (src/modes/large.rs), computed independently.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 131 + seed * 7) % 251) as u8)
        .collect()
}

#[test]
fn eight_mebibyte_messages_arrive_intact() {
    let bytes = 8 << 20;
    let job = mpirun(4, "large", &[&bytes.to_string()], &[]);
    job.assert_success();
    let lens: Vec<String> = (0..4).map(|r| (bytes + r).to_string()).collect();
    let crcs: Vec<String> = (0..4)
        .map(|r| format!("{:08x}", crc32c::crc32c(&pattern(r as u64, bytes + r))))
        .collect();
    assert_eq!(job.agreed(4, "gather_lens"), lens.join(","));
    assert_eq!(job.agreed(4, "gather_crcs"), crcs.join(","));
    assert_eq!(job.agreed(4, "bcast_len"), bytes.to_string());
    assert_eq!(
        job.agreed(4, "bcast_crc"),
        format!("{:08x}", crc32c::crc32c(&pattern(100, bytes)))
    );
}

#[test]
fn duplicated_communicators_carry_independent_traffic_from_their_own_threads() {
    let job = mpirun(4, "duplicates", &["100"], &[]);
    job.assert_success();
    for channel in ["world", "first", "second"] {
        assert_eq!(job.agreed(4, channel), "100", "{channel}");
    }
}

#[test]
fn the_coordinator_and_the_programs_own_mpi_traffic_do_not_mix() {
    let job = mpirun(4, "beside-program", &["100"], &[]);
    job.assert_success();
    assert_eq!(job.agreed(4, "program"), "100");
    assert_eq!(job.agreed(4, "coordinator"), "100");
}

#[test]
fn a_killed_rank_ends_the_job_with_a_failure_instead_of_a_hang() {
    let job = mpirun(4, "killed-rank", &["2", "5", "crash"], &[]);
    assert!(
        !job.status.success(),
        "the job succeeded although rank 2 aborted:\n{}",
        job.stdout
    );
    let by_rank = job.by_rank();
    assert_eq!(by_rank[&2]["leaving_at"], "5", "{}", job.stdout);
    assert!(
        by_rank.values().all(|seen| !seen.contains_key("finished")),
        "a survivor finished past the dead rank's collective:\n{}",
        job.stdout
    );
    let all = format!("{}{}", job.stdout, job.stderr);
    assert!(
        all.contains("rank 2") && all.contains("signal 6"),
        "mpirun does not say that rank 2 died of SIGABRT:\n{all}"
    );
    assert!(
        job.elapsed < Duration::from_secs(60),
        "ending the job took {:?}",
        job.elapsed
    );
}

#[test]
fn a_rank_that_fails_aborts_the_job_instead_of_leaving_the_others_waiting() {
    let job = mpirun(4, "killed-rank", &["1", "3", "error"], &[]);
    assert_eq!(job.status.code(), Some(1), "{}\n{}", job.stdout, job.stderr);
    let by_rank = job.by_rank();
    assert_eq!(by_rank[&1]["leaving_at"], "3", "{}", job.stdout);
    assert!(
        by_rank.values().all(|seen| !seen.contains_key("finished")),
        "{}",
        job.stdout
    );
    assert!(
        job.stderr
            .contains("mpi-harness killed-rank: rank 1: failing on purpose at round 3"),
        "{}",
        job.stderr
    );
    assert!(
        job.elapsed < Duration::from_secs(60),
        "ending the job took {:?}",
        job.elapsed
    );
}

#[test]
fn a_launcher_environment_naming_another_rank_is_refused_when_joining() {
    let job = mpirun(
        2,
        "hello",
        &[],
        &[("WAYPOINT_RANK", "0"), ("WAYPOINT_WORLD_SIZE", "2")],
    );
    assert!(!job.status.success(), "{}", job.stdout);
    // Rank 0 agrees with the variables and joins; rank 1 is told which variables disagree.
    assert_eq!(job.by_rank()[&0]["world"], "0/2", "{}", job.stdout);
    assert!(
        job.stderr.contains(
            "rank 1: init between ranks failed: MPI says rank 1 of 2, but WAYPOINT_RANK=0 and WAYPOINT_WORLD_SIZE=2"
        ),
        "{}",
        job.stderr
    );
}

#[test]
fn an_unknown_mode_lists_the_modes() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpi-harness"))
        .arg("no-such-mode")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown mode \"no-such-mode\"") && stderr.contains("collectives"),
        "{stderr}"
    );
}
