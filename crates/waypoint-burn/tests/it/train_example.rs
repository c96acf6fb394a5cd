//! The example trainer (`examples/train.rs`): a run that completes and is not repeated, one
//! preempted by SIGTERM (exit 75) and resumed, and one killed with SIGKILL again and again (most
//! kills in the middle of a save) and resumed: each ends with the digest of an uninterrupted
//! run, and keeps the same checkpoints.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

/// The example's binary, built by `cargo test` beside this test binary.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("examples").join("train");
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

/// 60 steps, a save every 5, validation every 10: fast, and many saves to be killed in.
const ARGS: &[&str] = &[
    "--max-steps",
    "60",
    "--ckpt-every",
    "5",
    "--val-every",
    "10",
    "--hidden",
    "8",
];

fn command(log_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(example());
    cmd.arg("--log-dir").arg(log_dir).args(ARGS).args(extra);
    cmd.env_remove("WAYPOINT_FAILPOINT").env_remove("RUST_LOG");
    cmd
}

fn run_ok(log_dir: &Path, extra: &[&str]) -> String {
    crate::common::stdout_of_success(&mut command(log_dir, extra))
}

/// The checkpoints kept by the experiment `burn` under `log_dir`, sorted.
fn kept(log_dir: &Path) -> Vec<String> {
    crate::common::kept(&log_dir.join("burn"))
}

/// Spawns the example and sends `signal` right after the `k`-th line starting with `prefix`.
/// Returns its exit status and every line it printed.
fn run_and_signal(
    log_dir: &Path,
    prefix: &str,
    k: usize,
    signal: i32,
) -> (ExitStatus, Vec<String>) {
    let mut child = command(log_dir, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (mut lines, mut seen) = (Vec::new(), 0);
    for line in &rx {
        let counts = line.starts_with(prefix);
        lines.push(line);
        if counts {
            seen += 1;
            if seen == k {
                // SAFETY: kill(2) on our own child, not waited for yet.
                let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
                assert_eq!(rc, 0);
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    lines.extend(rx.iter());
    reader.join().unwrap();
    let stderr = errors.join().unwrap();
    assert!(
        status.signal().is_some() || status.code().is_some(),
        "{stderr}"
    );
    (status, lines)
}

#[test]
fn a_run_completes_is_not_repeated_and_resumes_after_sigterm_and_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let reference_dir = tmp.path().join("reference");
    let first = run_ok(&reference_dir, &["--sync"]);
    assert!(first.contains("starting fresh"), "{first}");
    let vals: Vec<f64> = first
        .lines()
        .filter_map(|l| l.split_once(" val_loss ").map(|(_, v)| v.parse().unwrap()))
        .collect();
    assert!(
        vals.len() == 7 && vals[6] < vals[0] / 2.0,
        "it learns: {vals:?}"
    );
    let reference = crate::common::final_digest(&first);
    let expected = kept(&reference_dir);
    assert!(
        expected.iter().any(|n| n.ends_with("-last")),
        "{expected:?}"
    );
    assert_eq!(expected.len(), 3, "top 2 and -last: {expected:?}");
    let again = run_ok(&reference_dir, &[]);
    assert!(
        again.contains("run already completed at step 60"),
        "{again}"
    );
    assert_eq!(crate::common::final_digest(&again), reference);

    // SIGTERM: the step finishes, -last is saved, exit 75; the same command resumes.
    let dir = tmp.path().join("preempted");
    let (status, lines) = run_and_signal(&dir, "step 23 train_loss", 1, libc::SIGTERM);
    assert_eq!(status.code(), Some(75), "{lines:?}");
    assert!(
        lines.last().unwrap().starts_with("preempted at step "),
        "{lines:?}"
    );
    let resumed = run_ok(&dir, &[]);
    assert!(resumed.contains("resumed from "), "{resumed}");
    assert_eq!(
        crate::common::final_digest(&resumed),
        reference,
        "preempted and resumed"
    );

    // SIGKILL, mostly right after a save began (asynchronous saves: still in flight).
    let dir = tmp.path().join("killed");
    let (mut kills, mut inside_save) = (0, 0);
    for i in 0..8 {
        let (prefix, k) = if i % 4 == 3 {
            ("step ", 7)
        } else {
            ("save-begin ", 1 + i % 3)
        };
        let (status, lines) = run_and_signal(&dir, prefix, k, libc::SIGKILL);
        if status.signal() != Some(libc::SIGKILL) {
            assert!(status.success(), "{status}: {lines:?}");
            break;
        }
        kills += 1;
        let begun = lines.iter().rposition(|l| l.starts_with("save-begin "));
        let committed = begun.is_some_and(|b| lines[b..].iter().any(|l| l.starts_with("saved ")));
        inside_save += usize::from(begun.is_some() && !committed);
    }
    let finished = run_ok(&dir, &[]);
    assert!(
        kills >= 4 && inside_save >= 1,
        "{kills} kills, {inside_save} inside a save"
    );
    assert_eq!(
        crate::common::final_digest(&finished),
        reference,
        "killed and resumed"
    );
    assert_eq!(
        kept(&dir),
        expected,
        "killed and resumed: other checkpoints kept"
    );
}
