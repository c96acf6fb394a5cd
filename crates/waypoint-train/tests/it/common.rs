//! What the trainer's test modules share: the binary, its fast configuration, and the command
//! that runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The trainer under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_waypoint-train");

/// A short run: validations at 0, 40, 80, 120, saves every 20 steps.
pub const SHORT: &[&str] = &[
    "--max-steps",
    "120",
    "--ckpt-every",
    "20",
    "--val-every",
    "40",
    "--hidden",
    "16",
];

/// The trainer with `args`, its runs under `log_dir`, no inherited failpoint or log filter.
pub fn trainer(log_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--log-dir").arg(log_dir).args(args);
    cmd.env_remove("WAYPOINT_FAILPOINT").env_remove("RUST_LOG");
    cmd
}

/// [`SHORT`] made long enough (600 steps) for a server to be stopped while the run saves.
pub fn long_args() -> Vec<&'static str> {
    let mut a = SHORT.to_vec();
    a[1] = "600";
    a
}

/// Sets the object-store retry knobs of `cmd` low: a dead server must fail the run quickly, not
/// after minutes of retries.
pub fn fail_fast_on_dead_server(cmd: &mut Command) {
    cmd.env("WAYPOINT_OBJECT_MAX_RETRIES", "2")
        .env("WAYPOINT_OBJECT_RETRY_TIMEOUT_SECS", "3");
}

/// What a run whose server was stopped mid-save printed: the `save-begin` lines it reached, its
/// stdout lines, how it ended and its stderr.
pub struct StoppedRun {
    /// `save-begin` lines seen.
    pub saves: usize,
    /// Every stdout line.
    pub lines: Vec<String>,
    /// How the process ended.
    pub output: Output,
    /// Its stderr, as text.
    pub stderr: String,
}

impl StoppedRun {
    /// Asserts the run reached its third save, then failed with an error naming `location`.
    pub fn assert_failed_naming(&self, location: &str) {
        let (lines, stderr) = (&self.lines, &self.stderr);
        assert!(
            self.saves >= 3,
            "the run saved before the server stopped: {lines:?}"
        );
        assert!(
            !self.output.status.success(),
            "the run must fail without its server; stdout: {lines:?}"
        );
        assert!(
            stderr.contains(location),
            "the error names the location: {stderr}"
        );
    }
}

/// Runs `cmd` and calls `stop` (which stops its object-store server) at its third `save-begin`
/// line; the run then goes on until it exits.
pub fn run_stopping_at_third_save(mut cmd: Command, stop: impl FnOnce()) -> StoppedRun {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stop = Some(stop);
    let mut saves = 0;
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("save-begin") {
            saves += 1;
            if saves == 3
                && let Some(stop) = stop.take()
            {
                stop();
            }
        }
        lines.push(line);
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    StoppedRun {
        saves,
        lines,
        output,
        stderr,
    }
}

/// The final-state digest on the last line of a successful run's stdout; `what` goes into the
/// messages.
pub fn digest(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    last.strip_prefix("final_state_sha256=")
        .unwrap_or_else(|| panic!("{what}: last line is not the digest: {last:?}"))
        .to_owned()
}

/// What an interrupted run may leave in `checkpoints`, checked with the library's own reader:
/// every visible name is a committed checkpoint (or a `-last` link to one) that `verify` passes,
/// and every hidden entry is one of the library's temporaries (the next setup removes them).
/// Returns the visible names. `context` goes into the messages.
pub fn assert_disk_sound(checkpoints: &Path, context: &str) -> Vec<String> {
    use waypoint::storage::{StoragePath, TEMP_MARKER, local_storage};
    if !checkpoints.exists() {
        return Vec::new();
    }
    let storage = local_storage(checkpoints).unwrap();
    let root = StoragePath::root();
    let discovery = waypoint::resume::discover(storage.as_ref(), &root)
        .unwrap_or_else(|e| panic!("{context}: discover: {e}"));
    assert!(
        discovery.skipped.is_empty(),
        "{context}: visible directories that are not committed checkpoints: {:?}",
        discovery.skipped
    );
    let mut visible = Vec::new();
    for entry in std::fs::read_dir(checkpoints).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') {
            assert!(
                name.contains(TEMP_MARKER),
                "{context}: a hidden entry that is not the library's: {name}"
            );
            continue;
        }
        let report = waypoint::Checkpointer::new(storage.clone())
            .verify(&root.join(&name).unwrap(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{context}: verify {name}: {e}"));
        assert!(
            report.is_ok(),
            "{context}: {name} does not verify: {:?}",
            report.problems
        );
        visible.push(name);
    }
    visible.sort();
    visible
}
