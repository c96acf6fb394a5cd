//! Crashes inside the run directory's own file operations: the lock, the move of an earlier
//! run's files into `run_<N>/`, and the CSV logger's atomic rewrite. A child process runs one
//! session of a small experiment (set up, resume, train to step 8 logging `a` at every step
//! and `b` from step 4, save every 2 steps, finish) and aborts at a named point
//! (`WAYPOINT_ABORT_AT`, feature `fault-injection`), at each of its hits in turn. After each
//! abort the same session runs again to its end, and then: the lock names no holder, nothing an
//! earlier session wrote is lost (each finished session's `cmd-args.log` is somewhere in the
//! directory), no loose temporary of the CSV remains, and `metrics.csv` holds each step once
//! with the values of an uninterrupted run.

use crate::common::training::{Tiny, resume};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use waypoint::storage::{ABORT_AT_ENV, ABORT_POINTS};
use waypoint::{ExperimentLogger, ModelCheckpoint};

const ROOT_ENV: &str = "WAYPOINT_CRASH_POINTS_ROOT";
const STEPS: u64 = 8;

/// The child: one session of the experiment under `$WAYPOINT_CRASH_POINTS_ROOT`.
#[test]
#[ignore = "the child process of crash_points' tests, run by them with --ignored --exact"]
fn crash_points_child() {
    let root = PathBuf::from(
        std::env::var_os(ROOT_ENV).expect("run by crash_points' tests, which set its root"),
    );
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .async_save(false)
        .build()
        .unwrap();
    let mut experiment = ExperimentLogger::builder()
        .log_dir(&root)
        .name("exp")
        .version("v1")
        .max_steps(STEPS)
        .preemption_signals(vec![])
        .checkpoint(policy)
        .build()
        .unwrap()
        .setup(&resume())
        .unwrap();
    let mut tiny = Tiny::new();
    let point = experiment.run_mut().restore(&mut tiny).unwrap();
    let completed = point.is_some_and(|p| p.completed);
    while !completed && tiny.step < STEPS {
        tiny.train_step();
        let step = tiny.step;
        let run = experiment.run_mut();
        run.log_metrics(step, &[("a", step as f64)]);
        if step >= 4 {
            run.log_metrics(step, &[("b", step as f64 / 2.0)]); // a new column: a rewrite
        }
        run.step_end(step, 0, &tiny).unwrap();
    }
    experiment.finish(tiny.step, 0, &tiny).unwrap();
}

/// Runs one session in a child, aborting at `abort_at` if given; returns whether it aborted.
fn session(root: &Path, abort_at: Option<&str>) -> bool {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_points::crash_points_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROOT_ENV, root)
    .env_remove(ABORT_AT_ENV)
    .env_remove("WAYPOINT_VERSION")
    .env_remove("RUST_LOG");
    if let Some(point) = abort_at {
        cmd.env(ABORT_AT_ENV, point);
    }
    let out = cmd.output().unwrap();
    let aborted = out.status.signal() == Some(libc::SIGABRT);
    assert!(
        aborted || out.status.success(),
        "{abort_at:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    aborted
}

/// Every path below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// What a directory of finished sessions must hold; `sessions`: how many finished.
fn assert_sound(version_dir: &Path, sessions: usize, context: &str) {
    let files = tree(version_dir);
    let lock = std::fs::read(version_dir.join(waypoint::experiment::LOCK_FILE)).unwrap();
    assert!(
        lock.is_empty(),
        "{context}: the lock still names a holder: {}",
        String::from_utf8_lossy(&lock)
    );
    let cmd_args = files.iter().filter(|f| f.ends_with("cmd-args.log")).count();
    assert!(
        cmd_args >= sessions,
        "{context}: {sessions} sessions finished, {cmd_args} cmd-args.log left: {files:?}"
    );
    // Each earlier run's files are together in one run_<N>/, as many as a run leaves.
    let loose: Vec<&String> = files
        .iter()
        .filter(|f| !f.contains('/') && version_dir.join(f).is_file() && !f.starts_with('.'))
        .collect();
    for run_dir in files
        .iter()
        .filter(|f| f.starts_with("run_") && !f.contains('/'))
    {
        let inside: Vec<&String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(&format!("{run_dir}/")))
            .map(|_| run_dir)
            .collect();
        assert_eq!(
            inside.len(),
            loose.len(),
            "{context}: {run_dir} holds part of a run's files: {files:?}"
        );
    }
    let strays: Vec<&String> = files.iter().filter(|f| f.contains(".tmp-")).collect();
    assert!(strays.is_empty(), "{context}: temporaries left: {strays:?}");
    let csv = std::fs::read_to_string(version_dir.join("csv/metrics.csv")).unwrap();
    let mut want = String::from("step,a,b\n");
    for step in 1..=STEPS {
        let b = if step >= 4 {
            format!("{}", step as f64 / 2.0)
        } else {
            String::new()
        };
        want.push_str(&format!("{step},{},{b}\n", step as f64));
    }
    assert_eq!(csv, want, "{context}: metrics.csv");
}

/// For each named point and each of its hits in a session (one that resumes and finds an
/// earlier run's files, so that every point is met): abort there, run the session again, check.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "sets WAYPOINT_ABORT_AT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn an_abort_at_each_step_of_the_lock_the_run_dir_move_and_the_csv_rewrite_loses_nothing() {
    let mut fired = Vec::new();
    for point in ABORT_POINTS {
        for nth in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            let version_dir = tmp.path().join("exp/v1");
            // A first session to its end leaves the run files (moved by the next session), then
            // all its checkpoints but step 2's go, so that the next session resumes mid-run
            // and rewrites the CSV (dropping the rows it will log again).
            assert!(!session(tmp.path(), None));
            assert_sound(&version_dir, 1, "first session");
            let checkpoints = version_dir.join("checkpoints");
            for name in tree(&checkpoints)
                .into_iter()
                .filter(|n| !n.contains('/') && !n.contains("step=2"))
            {
                let path = checkpoints.join(&name);
                if path.is_symlink() || path.is_file() {
                    std::fs::remove_file(&path).unwrap();
                } else {
                    std::fs::remove_dir_all(&path).unwrap();
                }
            }
            let wanted = format!("{point}#{nth}");
            let context = format!("abort at {wanted}");
            if !session(tmp.path(), Some(&wanted)) {
                // Past the point's last hit: the session ran to its end.
                assert!(nth > 1, "{point} is never met by a session");
                assert_sound(&version_dir, 2, &format!("{context} (not met)"));
                break;
            }
            assert!(!session(tmp.path(), None), "{context}: the rerun aborted");
            assert_sound(&version_dir, 2, &context);
            fired.push(wanted);
        }
    }
    eprintln!("aborted at {} points: {fired:?}", fired.len());
}
