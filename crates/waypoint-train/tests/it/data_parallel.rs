//! `--data-parallel` under a real `mpirun` (oversubscribed: 4 ranks on 2 cores), with the pure-Rust
//! model: a 4-rank run is reproducible, a rank SIGKILLed in the middle of a save leaves only
//! committed checkpoints and the same command ends with the uninterrupted digest, and a 4-rank
//! checkpoint resumes on 2 ranks (the moments resharded). The binary must be built with the
//! `mpi` feature (and `fault-injection` for the kill); scripts/test.sh builds `--all-features`.
//! Jobs run one at a time, each under `timeout`, so a hang fails instead of blocking the suite.

use crate::common::{BIN, assert_disk_sound};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

/// mpirun's flags for this machine (as root in a container, more ranks than cores, shared
/// memory without CMA): docs/MPI.md, "Launching".
const MPIRUN_FLAGS: &[&str] = &[
    "--allow-run-as-root",
    "--oversubscribe",
    "--mca",
    "mpi_yield_when_idle",
    "1",
    "--mca",
    "btl",
    "self,vader",
    "--mca",
    "btl_vader_single_copy_mechanism",
    "none",
];

/// A job that runs longer than this is hung (killed by `timeout`).
const JOB_LIMIT: Duration = Duration::from_secs(120);

static ONE_JOB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The run: 12 steps of the tiny pure-Rust model, saves and validations every 4 steps.
fn flags(max_steps: u64) -> Vec<String> {
    let max = max_steps.to_string();
    [
        "--data-parallel",
        "--model",
        "mlp-rust",
        "--hidden",
        "16",
        "--max-steps",
        &max,
        "--ckpt-every",
        "4",
        "--val-every",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

/// `mpirun -np <ranks> waypoint-train --log-dir <dir> <flags>` under `timeout`; each rank goes
/// through `sh`, which writes its pid to `<dir>/rank-<r>.pid` and, for rank `pause.0`, sets
/// `WAYPOINT_FAILPOINT=pause-write@<pause.1>`.
fn mpirun(ranks: u64, dir: &Path, flags: &[String], pause: Option<(u64, u64)>) -> Command {
    let (victim, write) = pause.unwrap_or((u64::MAX, 0));
    let script = format!(
        "r=${{OMPI_COMM_WORLD_RANK:?}}; echo $$ > \"{dir}/rank-$r.pid\"; \
         if [ \"$r\" = {victim} ]; then export WAYPOINT_FAILPOINT=pause-write@{write}; fi; \
         exec \"$0\" \"$@\"",
        dir = dir.display()
    );
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10")
        .arg(JOB_LIMIT.as_secs().to_string())
        .arg("mpirun")
        .args(MPIRUN_FLAGS)
        .arg("-np")
        .arg(ranks.to_string())
        .args(["sh", "-c", &script, BIN, "--log-dir"])
        .arg(dir.join("runs"))
        .args(flags);
    cmd.env_remove("WAYPOINT_FAILPOINT").env_remove("RUST_LOG");
    cmd
}

/// Runs the job to its end; panics unless it succeeded. Returns its stdout.
fn run_job(ranks: u64, dir: &Path, flags: &[String]) -> String {
    let _turn = ONE_JOB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out: Output = mpirun(ranks, dir, flags, None)
        .output()
        .expect("running mpirun under timeout (install openmpi-bin: scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mpirun -np {ranks} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The digest every rank printed, which must be the same on all `ranks`.
fn digest(stdout: &str, ranks: usize) -> String {
    let digests: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("final_state_sha256="))
        .collect();
    assert_eq!(digests.len(), ranks, "one digest per rank:\n{stdout}");
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "ranks disagree:\n{stdout}"
    );
    digests[0].to_string()
}

/// The validation loss printed (by rank 0) at `step`.
fn val_loss(stdout: &str, step: u64) -> f64 {
    let prefix = format!("step {step} val_loss ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no val_loss at step {step}:\n{stdout}"));
    line.trim().parse().unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs waypoint-train built with --features mpi and openmpi-bin (scripts/test.sh has both)"
)]
fn four_ranks_train_reproducibly_saving_weights_once_and_moments_by_rank() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = run_job(4, a.path(), &flags(12));
    let second = run_job(4, b.path(), &flags(12));
    assert_eq!(digest(&first, 4), digest(&second, 4));
    // Rank 0 alone prints the run's lines.
    assert_eq!(first.matches("starting fresh").count(), 1, "{first}");
    let checkpoints = a.path().join("runs/default/checkpoints");
    let names = assert_disk_sound(&checkpoints, "4-rank run");
    assert!(
        names.iter().any(|n| n.ends_with("step=12-last")),
        "{names:?}"
    );
    let newest = checkpoints.join(names.iter().find(|n| n.ends_with("step=12-last")).unwrap());
    // The commit record: the replicated weights written once, spread over the ranks; each
    // rank's rows of the moments (16 rows of layer1 over 4 ranks: 4 each) in its own file.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest.join("weights/metadata.json")).unwrap())
            .unwrap();
    assert_eq!(record["world_size"], 4);
    let tensors = record["tensors"].as_object().unwrap();
    let mut weight_files = std::collections::BTreeSet::new();
    for (name, t) in tensors.iter().filter(|(n, _)| n.starts_with("model.")) {
        let chunks = t["chunks"].as_array().unwrap();
        assert_eq!(chunks.len(), 1, "{name} is written once: {t}");
        weight_files.insert(chunks[0]["file"].as_str().unwrap().to_string());
    }
    assert!(weight_files.len() > 1, "weights spread: {weight_files:?}");
    for moment in ["optim.m.layer1.weight", "optim.v.layer1.weight"] {
        let chunks: Vec<(String, u64)> = tensors[moment]["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let file = c["file"].as_str().unwrap().to_string();
                (file, c["offsets"][0].as_u64().unwrap())
            })
            .collect();
        let expected: Vec<(String, u64)> = (0..4)
            .map(|r| (format!("__{r}_0.safetensors"), 4 * r))
            .collect();
        assert_eq!(chunks, expected, "{moment}");
    }
}

#[test]
#[cfg_attr(
    not(all(feature = "mpi", feature = "fault-injection")),
    ignore = "needs --features mpi,fault-injection and openmpi-bin (scripts/test.sh has them)"
)]
fn a_rank_killed_in_the_middle_of_a_save_leaves_committed_checkpoints_and_the_job_resumes() {
    let reference = tempfile::tempdir().unwrap();
    let expected = digest(&run_job(4, reference.path(), &flags(12)), 4);

    let dir = tempfile::tempdir().unwrap();
    let status = {
        let _turn = ONE_JOB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        // Rank 2's writes: 1 and 2 are its shards of the two step-4 checkpoints, 3 the first of
        // step 8's, which it holds until killed.
        let mut child = mpirun(4, dir.path(), &flags(12), Some((2, 3)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running mpirun under timeout");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let paused = rx
            .iter()
            .find(|l| l.contains("waypoint failpoint: paused in write 3"));
        assert!(paused.is_some(), "rank 2 never paused in its write");
        let pid = std::fs::read_to_string(dir.path().join("rank-2.pid")).unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        // SAFETY: kill(2) on the pid of the rank this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        child.wait().unwrap()
    };
    assert!(!status.success(), "the job must fail when a rank dies");
    assert_ne!(status.code(), Some(124), "the job hung after the kill");
    let checkpoints = dir.path().join("runs/default/checkpoints");
    let names = assert_disk_sound(&checkpoints, "after the kill");
    assert!(
        !names.is_empty() && names.iter().all(|n| n.contains("step=4")),
        "only the step-4 checkpoints committed: {names:?}"
    );

    let resumed = run_job(4, dir.path(), &flags(12));
    assert!(resumed.contains("at step 4"), "{resumed}");
    assert_eq!(digest(&resumed, 4), expected);
    assert_disk_sound(&checkpoints, "after the resume");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "needs waypoint-train built with --features mpi and openmpi-bin (scripts/test.sh has both)"
)]
fn a_four_rank_checkpoint_resumes_on_two_ranks_with_the_moments_resharded() {
    let four = tempfile::tempdir().unwrap();
    let straight = run_job(4, four.path(), &flags(16));

    let dir = tempfile::tempdir().unwrap();
    run_job(4, dir.path(), &flags(8));
    let two = run_job(2, dir.path(), &flags(16));
    assert!(
        two.contains("resumed from") && two.contains("at step 8"),
        "{two}"
    );
    assert!(two.contains("data-parallel: 2 ranks"), "{two}");
    digest(&two, 2);
    // The loss curve continues: another world size rounds differently (another split of each
    // minibatch, another order of the sums), so the values are close, not identical.
    for step in [12, 16] {
        let (a, b) = (val_loss(&straight, step), val_loss(&two, step));
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "step {step}: 4 ranks {a}, 4 then 2 ranks {b}"
        );
    }
    assert!(val_loss(&two, 16) < val_loss(&straight, 8));
    assert_disk_sound(
        &dir.path().join("runs/default/checkpoints"),
        "2-rank resume",
    );
}
