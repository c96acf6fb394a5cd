//! Running `mpi-harness` under a real `mpirun`, for this crate's test modules: [`mpirun`] starts
//! a job and returns a [`Job`] with what the ranks printed. Jobs run one at a time (four ranks
//! already oversubscribe a 2-core machine), each bounded by `timeout`, so a hang fails the test
//! instead of blocking the suite.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The flags that make mpirun work here: as root (containers), with more ranks than cores,
/// yielding the CPU while waiting, over shared memory without the single-copy mechanism (CMA
/// needs ptrace rights that containers usually lack).
pub const MPIRUN_FLAGS: &[&str] = &[
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

/// A job that outlives this is considered hung (and killed by `timeout`).
pub const JOB_LIMIT: Duration = Duration::from_secs(120);

static ONE_JOB_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Job {
    /// mpirun's exit status.
    pub status: ExitStatus,
    /// Every rank's stdout, as mpirun forwarded it.
    pub stdout: String,
    /// Every rank's stderr and mpirun's own messages.
    pub stderr: String,
    /// How long the job took.
    pub elapsed: Duration,
}

impl Job {
    /// Each rank's `key=value` pairs, from every `rank=R …` line of stdout.
    pub fn by_rank(&self) -> BTreeMap<u64, BTreeMap<String, String>> {
        let mut ranks: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
        for line in self.stdout.lines() {
            let mut pairs = line.split_whitespace().filter_map(|t| t.split_once('='));
            let Some(("rank", rank)) = pairs.next() else {
                continue;
            };
            let entry = ranks.entry(rank.parse().unwrap()).or_default();
            for (k, v) in pairs {
                entry.insert(k.to_string(), v.to_string());
            }
        }
        ranks
    }

    /// Panics, showing the output, unless mpirun exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "mpirun failed ({}) after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
        );
    }

    /// The value of `key` on every rank, which must be the same everywhere.
    pub fn agreed(&self, ranks: u64, key: &str) -> String {
        let by_rank = self.by_rank();
        let values: Vec<Option<&String>> = (0..ranks)
            .map(|r| by_rank.get(&r).and_then(|m| m.get(key)))
            .collect();
        let first =
            values[0].unwrap_or_else(|| panic!("rank 0 printed no {key}:\n{}", self.stdout));
        for (r, v) in values.iter().enumerate() {
            assert_eq!(
                *v,
                Some(first),
                "rank {r}'s {key} differs:\n{}",
                self.stdout
            );
        }
        first.clone()
    }
}

/// Runs `mpi-harness <mode> <args>` on `ranks` ranks, with `env` exported to every rank.
pub fn mpirun(ranks: u64, mode: &str, args: &[&str], env: &[(&str, &str)]) -> Job {
    let _turn = ONE_JOB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10")
        .arg(JOB_LIMIT.as_secs().to_string())
        .arg("mpirun")
        .args(MPIRUN_FLAGS)
        .arg("-np")
        .arg(ranks.to_string());
    for (k, v) in env {
        cmd.arg("-x").arg(format!("{k}={v}"));
    }
    cmd.arg(env!("CARGO_BIN_EXE_mpi-harness"))
        .arg(mode)
        .args(args);
    let start = Instant::now();
    let out = cmd
        .output()
        .expect("running mpirun under timeout (install openmpi-bin: scripts/test.sh does)");
    let job = Job {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    };
    assert_ne!(
        job.status.code(),
        Some(124),
        "mpirun {mode} hung: killed after {JOB_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
        job.stdout,
        job.stderr
    );
    job
}
