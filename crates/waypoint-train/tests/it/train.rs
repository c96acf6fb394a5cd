//! The trainer as a user runs it: the real binary in a temporary directory per test, training its
//! default candle model (tiny configurations) unless a test says `--model mlp-rust`. Completion
//! and "already completed", determinism across processes and across a clean interruption, real
//! SIGKILLs (most of them inside a save), and aborts at chosen storage operations
//! (`WAYPOINT_FAILPOINT=abort@N`), SIGTERM (preemption: exit 75 after a `-last` save), and a
//! second live run of the same directory (refused). After every interruption the same command
//! must finish with the digest of an uninterrupted run and leave exactly the checkpoints that run
//! leaves; after every kill and abort, each visible checkpoint verifies with the library's reader.

use crate::common::{BIN, SHORT, assert_disk_sound, trainer};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

/// The pure-Rust model instead of the default candle one.
pub(crate) const MLP_RUST: &[&str] = &["--model", "mlp-rust"];

/// Runs the trainer to its end; panics (with its stderr) unless it exits 0. Returns stdout.
pub(crate) fn run_ok(log_dir: &Path, args: &[&str]) -> String {
    let output = trainer(log_dir, args)
        .output()
        .expect("spawn waypoint-train");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "waypoint-train {args:?} failed ({}):\nstdout tail: {}\nstderr: {}",
        output.status,
        tail(&stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The digest on the last line, checked to be 64 hex digits.
fn final_hash(stdout: &str) -> String {
    let last = stdout.lines().last().expect("no output");
    let hash = last
        .strip_prefix("final_state_sha256=")
        .unwrap_or_else(|| panic!("last line is not the digest: {last:?}"));
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash:?}"
    );
    hash.to_owned()
}

/// `(step, val_loss)` of every `step N val_loss X` line.
fn val_losses(stdout: &str) -> Vec<(u64, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let (step, value) = rest.split_once(" val_loss ")?;
            Some((step.parse().unwrap(), value.parse().unwrap()))
        })
        .collect()
}

fn checkpoints_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("default").join("checkpoints")
}

/// Every entry of the checkpoints directory, sorted.
fn entries(log_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(checkpoints_dir(log_dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The step in a checkpoint's name (`…-step=N` or `…-step=N-last`).
fn step_of(name: &str) -> u64 {
    let digits: String = name
        .rsplit("step=")
        .next()
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Asserts that the directory holds exactly `top_k` ranked checkpoints and one `-last`, each a
/// committed checkpoint, and nothing else (no temporaries, no leftovers).
fn assert_top_k_and_last(log_dir: &Path, top_k: usize, context: &str) -> Vec<String> {
    let names = entries(log_dir);
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "{context}: temporaries left: {names:?}"
    );
    let lasts = names.iter().filter(|n| n.ends_with("-last")).count();
    assert_eq!(
        (names.len(), lasts),
        (top_k + 1, 1),
        "{context}: expected {top_k} ranked checkpoints and one -last: {names:?}"
    );
    for name in &names {
        let record = checkpoints_dir(log_dir)
            .join(name)
            .join("weights")
            .join("metadata.json");
        assert!(record.is_file(), "{context}: {name} has no commit record");
    }
    names
}

/// `args` with the value of `--max-steps` replaced by `max_steps`.
fn with_max_steps<'a>(args: &[&'a str], max_steps: &'a str) -> Vec<&'a str> {
    let mut args = args.to_vec();
    let at = args
        .iter()
        .position(|a| *a == "--max-steps")
        .expect("--max-steps in args");
    args[at + 1] = max_steps;
    args
}

/// A tiny SplitMix64, for the kill schedule.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// When to kill a run: right after its k-th `save-begin` line, or its k-th `step …` line, or
/// while its k-th storage write is in progress (the library, told `pause-write@k` through
/// `WAYPOINT_FAILPOINT`, says so on stderr and holds that write until the kill: needs the
/// `fault-injection` feature).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger {
    SaveBegin(u64),
    StepLine(u64),
    InsideWrite(u64),
}

/// The line the library prints on stderr when it holds a write for [`Trigger::InsideWrite`].
const PAUSED: &str = "waypoint failpoint: paused in write ";

/// What happened to one run of [`run_and_kill`].
pub(crate) struct Attempt {
    /// Killed by our SIGKILL (false: it ran to completion first).
    pub(crate) killed: bool,
    /// Every line it printed on stdout.
    lines: Vec<String>,
    /// The library's line saying which write it held, when the kill landed there.
    paused: Option<String>,
}

/// Spawns the trainer and kills it with SIGKILL when `trigger` is seen on its output.
pub(crate) fn run_and_kill(log_dir: &Path, args: &[&str], trigger: Trigger) -> Attempt {
    let (status, lines, stderr, sent_kill) = run_and_signal(log_dir, args, trigger, libc::SIGKILL);
    let killed = status.signal() == Some(libc::SIGKILL);
    if !killed {
        assert!(
            status.success(),
            "{status} without our kill (sent: {sent_kill}); stderr: {stderr}"
        );
    }
    let paused = stderr
        .lines()
        .find(|l| l.starts_with(PAUSED))
        .map(str::to_owned);
    assert_eq!(
        paused.is_some(),
        killed && matches!(trigger, Trigger::InsideWrite(_)),
        "{trigger:?}: a held write exactly when the kill was sent there; stderr: {stderr}"
    );
    Attempt {
        killed,
        lines,
        paused,
    }
}

/// Spawns the trainer and sends it `signal` when `trigger` is seen on its output. Lines of
/// stdout and stderr are read by threads and delivered through one channel, so reading never
/// delays the signal. Returns the exit status, every stdout line, stderr, and whether the signal
/// was sent.
fn run_and_signal(
    log_dir: &Path,
    args: &[&str],
    trigger: Trigger,
    signal: i32,
) -> (ExitStatus, Vec<String>, String, bool) {
    let mut command = trainer(log_dir, args);
    if let Trigger::InsideWrite(k) = trigger {
        command.env("WAYPOINT_FAILPOINT", format!("pause-write@{k}"));
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    // (from stderr, line)
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let forward = |from_stderr: bool, stream: Box<dyn Read + Send>| {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send((from_stderr, line)).is_err() {
                    break;
                }
            }
        })
    };
    let readers = [
        forward(false, Box::new(stdout)),
        forward(true, Box::new(stderr)),
    ];
    drop(tx);
    let (mut lines, mut errors) = (Vec::new(), String::new());
    let mut keep = |(from_stderr, line): (bool, String)| {
        if from_stderr {
            errors.push_str(&line);
            errors.push('\n');
        } else {
            lines.push(line);
        }
    };
    let mut seen = 0;
    let mut sent_kill = false;
    for (from_stderr, line) in &rx {
        let counts = match trigger {
            Trigger::SaveBegin(_) => !from_stderr && line.starts_with("save-begin "),
            Trigger::StepLine(_) => !from_stderr && line.starts_with("step "),
            Trigger::InsideWrite(_) => from_stderr && line.starts_with(PAUSED),
        };
        keep((from_stderr, line));
        if !counts {
            continue;
        }
        seen += 1;
        let fire = match trigger {
            Trigger::SaveBegin(k) | Trigger::StepLine(k) => seen == k,
            // The library holds the write until the kill.
            Trigger::InsideWrite(_) => true,
        };
        if fire {
            // SAFETY: kill(2) on our own child, which has not been waited for yet.
            let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
            sent_kill = true;
            break;
        }
    }
    let status = child.wait().unwrap();
    // Everything it printed before it died: the readers reach end of file once it is gone.
    rx.iter().for_each(&mut keep);
    for reader in readers {
        reader.join().unwrap();
    }
    (status, lines, errors, sent_kill)
}

#[test]
fn a_short_run_learns_completes_and_is_not_repeated() {
    short_run_learns_completes_and_is_not_repeated(&[]);
}

#[test]
fn a_short_run_of_the_pure_rust_model_learns_completes_and_is_not_repeated() {
    short_run_learns_completes_and_is_not_repeated(MLP_RUST);
}

fn short_run_learns_completes_and_is_not_repeated(model: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let short = [SHORT, model].concat();
    let short = short.as_slice();
    let stdout = run_ok(tmp.path(), short);
    let hash = final_hash(&stdout);
    let vals = val_losses(&stdout);
    assert_eq!(
        vals.iter().map(|v| v.0).collect::<Vec<_>>(),
        [0, 40, 80, 120],
        "{stdout}"
    );
    let (first, last) = (vals[0].1, vals[3].1);
    assert!(
        last < first / 3.0,
        "validation loss {first} → {last}: did not fall 3×"
    );
    assert!(stdout.contains("starting fresh"), "{}", tail(&stdout));
    // Where the curves are, and how to open them.
    let tensorboard = tmp.path().join("default").join("tensorboard");
    assert!(
        stdout.contains(&format!(
            "curves: tensorboard --logdir {}\n",
            tensorboard.display()
        )),
        "{}",
        stdout.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    assert!(tensorboard.is_dir());

    // The top-k are the two best validated saves (every validation step here is a save step).
    let names = assert_top_k_and_last(tmp.path(), 2, "short run");
    let mut by_loss = vals[1..].to_vec();
    by_loss.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut best: Vec<u64> = by_loss[..2].iter().map(|v| v.0).collect();
    best.sort_unstable();
    let mut ranked: Vec<u64> = names
        .iter()
        .filter(|n| !n.ends_with("-last"))
        .map(|n| step_of(n))
        .collect();
    ranked.sort_unstable();
    assert_eq!(ranked, best, "{names:?} vs {vals:?}");
    assert!(
        names.iter().any(|n| n.ends_with("step=120-last")),
        "{names:?}"
    );

    // The same command again: nothing to do, the same digest, the same directory.
    let again = run_ok(tmp.path(), short);
    assert!(
        again.contains("run already completed at step 120 (checkpoint "),
        "{again}"
    );
    assert!(!again.contains("train_loss"), "it trained again:\n{again}");
    assert_eq!(final_hash(&again), hash);
    assert_eq!(entries(tmp.path()), names);

    // --quiet: the digest only.
    let quiet = run_ok(tmp.path(), &[short, &["--quiet"]].concat());
    assert_eq!(quiet, format!("final_state_sha256={hash}\n"));
}

#[test]
fn same_flags_same_digest_across_processes_and_clean_interruptions() {
    same_digest_across_processes_and_clean_interruptions(&[]);
}

#[test]
fn the_pure_rust_model_gives_the_same_digest_across_processes_and_clean_interruptions() {
    same_digest_across_processes_and_clean_interruptions(MLP_RUST);
}

fn same_digest_across_processes_and_clean_interruptions(model: &[&str]) {
    let short = [SHORT, model].concat();
    let short = short.as_slice();
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let reference = final_hash(&run_ok(&dir("a"), short));
    assert_eq!(
        final_hash(&run_ok(&dir("b"), short)),
        reference,
        "two fresh runs differ"
    );

    // Stopped at 60 (a save step) or at 50 (the end-of-training save marks the run completed),
    // then continued to 120 by the same command with a larger --max-steps.
    for stop in ["60", "50"] {
        let d = dir(&format!("stop{stop}"));
        let first = run_ok(&d, &with_max_steps(short, stop));
        assert_ne!(final_hash(&first), reference);
        let rest = run_ok(&d, short);
        assert!(
            rest.contains("resumed from default--val_loss="),
            "{}",
            tail(&rest)
        );
        assert!(
            rest.contains(&format!(" at step {stop} ")),
            "{}",
            tail(&rest)
        );
        assert!(!rest.contains("step 1 train_loss"), "it started over");
        assert_eq!(
            final_hash(&rest),
            reference,
            "stopped at {stop} and continued: a different state"
        );
    }
    // The digest covers the state: another seed gives another one.
    assert_ne!(
        final_hash(&run_ok(&dir("seed"), &[short, &["--seed", "1"]].concat())),
        reference
    );
}

/// 16 MiB of extra state in two 8 MiB shards and more: saves take long enough to be killed inside.
const BIG: &[&str] = &[
    "--extra-state-mib",
    "16",
    "--max-shard-mib",
    "8",
    "--max-steps",
    "200",
    "--ckpt-every",
    "10",
    "--val-every",
    "20",
    "--hidden",
    "16",
];

/// The SIGKILL test: a reference run, then the same command killed again and again at seeded
/// moments and finally run to its end, in another directory; `mode` adds `--sync` or nothing.
/// Most kills land while the library holds one of the process's first writes (it says so on
/// stderr, naming the file inside the save's temporary): inside a save by construction, counted
/// exactly. After every kill, each visible checkpoint verifies and no temporary is visible.
fn killed_runs_end_like_the_reference(mode: &[&str], seed: u64) {
    let args = [BIG, mode].concat();
    let tmp = tempfile::tempdir().unwrap();
    let reference_dir = tmp.path().join("reference");
    let reference = final_hash(&run_ok(&reference_dir, &args));
    let expected = assert_top_k_and_last(&reference_dir, 2, "uninterrupted run");
    let shards = std::fs::read_dir(
        checkpoints_dir(&reference_dir)
            .join(&expected[0])
            .join("weights"),
    )
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".safetensors")
    })
    .count();
    assert!(
        shards >= 2,
        "the state should span several shard files, found {shards}"
    );

    let dir = tmp.path().join("killed");
    let mut schedule = Schedule(seed);
    let (mut kills, mut inside_save) = (0, 0);
    for _ in 0..12 {
        // Three kills in four while one of the first 60 writes of this process is held: a save
        // makes about 20, so the kill lands in its first, second or third save (the first is
        // the one the previous process was killed in: the later ones make progress). The others
        // after one of its first 25 step lines, anywhere.
        let trigger = if schedule.next(4) < 3 {
            Trigger::InsideWrite(1 + schedule.next(60))
        } else {
            Trigger::StepLine(1 + schedule.next(25))
        };
        let attempt = run_and_kill(&dir, &args, trigger);
        if !attempt.killed {
            eprintln!("{mode:?} {trigger:?}: the run completed first");
            break;
        }
        kills += 1;
        if let Some(paused) = &attempt.paused {
            assert!(
                paused.contains(waypoint::storage::TEMP_MARKER),
                "the held write is not inside a save's temporary: {paused}"
            );
            inside_save += 1;
        }
        let context = format!("{mode:?} kill {kills} ({trigger:?})");
        let visible = assert_disk_sound(&checkpoints_dir(&dir), &context);
        let last = attempt.lines.last().map_or("", String::as_str);
        eprintln!(
            "{context}: last line {last:?}, held write: {:?}, committed: {visible:?}",
            attempt.paused
        );
    }
    let finished = run_ok(&dir, &args);
    eprintln!("{mode:?}: {kills} SIGKILLs, {inside_save} of them inside a save's write");
    assert!(kills >= 5);
    assert!(
        inside_save * 2 >= kills,
        "{inside_save} of {kills} kills landed inside a save's write"
    );
    assert!(finished.contains("resumed from "), "{}", tail(&finished));
    assert_eq!(
        final_hash(&finished),
        reference,
        "killed and resumed: a different final state"
    );
    assert_eq!(
        assert_top_k_and_last(&dir, 2, "killed and resumed"),
        expected,
        "killed and resumed: other checkpoints kept"
    ); // The metric logs of the killed-and-resumed run read like the uninterrupted run's: one CSV row
    // per step with the same values, and TensorBoard curves that never double back.
    let csv = |d: &Path| std::fs::read_to_string(d.join("default/csv/metrics.csv")).unwrap();
    let (theirs, ours) = (csv(&reference_dir), csv(&dir));
    let steps: Vec<u64> = ours
        .lines()
        .skip(1)
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    let max: u64 = BIG[BIG.iter().position(|a| *a == "--max-steps").unwrap() + 1]
        .parse()
        .unwrap();
    assert_eq!(
        steps,
        (0..=max).collect::<Vec<_>>(),
        "one CSV row per step (0: the initial validation)"
    );
    assert_eq!(
        ours, theirs,
        "the CSV of the resumed run differs from the uninterrupted run's"
    );
    let scalars = |d: &Path| -> Vec<(u64, f32)> {
        let tb = d.join("default/tensorboard");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&tb)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let mut points: Vec<(u64, f32)> = Vec::new();
        for f in files {
            for p in tfevents::read_scalars(&f)
                .unwrap()
                .into_iter()
                .filter(|p| p.tag == "train_loss")
            {
                let step = p.step as u64;
                points.retain(|&(s, _)| s < step); // TensorBoard's purge on a resumed run's START
                points.push((step, p.value));
            }
        }
        points
    };
    let (theirs, ours) = (scalars(&reference_dir), scalars(&dir));
    assert_eq!(ours.len() as u64, max);
    assert_eq!(
        ours, theirs,
        "TensorBoard's train_loss curve differs after kills and resumes"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "holds a write through WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn sigkill_during_asynchronous_saves_changes_nothing() {
    killed_runs_end_like_the_reference(&[], 0x5EED);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "holds a write through WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn sigkill_during_synchronous_saves_changes_nothing() {
    killed_runs_end_like_the_reference(&["--sync"], 0xC0FFEE);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "holds a write through WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn sigkill_during_saves_of_the_pure_rust_model_changes_nothing() {
    killed_runs_end_like_the_reference(MLP_RUST, 0xB0A7);
}

/// The failpoint test: a reference run, then for N = 1, 2, … a run that the library aborts at
/// its N-th storage operation (`WAYPOINT_FAILPOINT=abort@N`), the disk checked with the reader's
/// own `verify`, then the same command to its end, each in a directory of its own; `mode` adds
/// `--sync` or nothing. Every operation is tried: N runs on until three runs in a row complete
/// (N is past the run's last operation). A run that completes before that made fewer
/// operations than N (asynchronously, when the background deletions ran changes what they
/// find): each is listed, and none may come before the first.
fn aborted_runs_end_like_the_reference(mode: &[&str]) {
    // Saves at 10, 20, 30, 40 (ranked at the validations 20 and 40): commits, -last
    // replacements and deletions, in about 150 operations.
    let args = [
        &[
            "--max-steps",
            "40",
            "--ckpt-every",
            "10",
            "--val-every",
            "20",
            "--hidden",
            "16",
        ],
        mode,
    ]
    .concat();
    // An abort loses nothing the kernel holds (no power cut), so a memory file system gives the
    // same outcomes as the disk, without the fsyncs' wait: about a third of the time.
    let shm = Path::new("/dev/shm");
    let tmp = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .unwrap();
    let reference_dir = tmp.path().join("reference");
    let reference = final_hash(&run_ok(&reference_dir, &args));
    let expected = assert_top_k_and_last(&reference_dir, 2, "uninterrupted run");
    let (mut aborted, mut completed) = (Vec::new(), Vec::new());
    let mut n = 0;
    while completed.len() < 3 || completed[completed.len() - 3..] != [n - 2, n - 1, n] {
        n += 1;
        let dir = tmp.path().join(format!("abort{n}"));
        let output = trainer(&dir, &args)
            .env("WAYPOINT_FAILPOINT", format!("abort@{n}"))
            .output()
            .unwrap();
        match output.status.signal() {
            // SIGABRT: the library aborted at operation n.
            Some(libc::SIGABRT) => aborted.push(n),
            _ => {
                assert!(
                    output.status.success(),
                    "abort@{n}: {} ; stderr: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                completed.push(n);
            }
        }
        let context = format!("{mode:?} abort@{n}");
        assert_disk_sound(&checkpoints_dir(&dir), &context);
        let finished = run_ok(&dir, &args);
        assert_eq!(
            final_hash(&finished),
            reference,
            "{context} then resumed: a different final state"
        );
        assert_eq!(
            assert_top_k_and_last(&dir, 2, &format!("{context} then resumed")),
            expected,
            "{context} then resumed: other checkpoints kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let early: Vec<u64> = completed.iter().copied().filter(|&c| c < n - 2).collect();
    eprintln!(
        "{mode:?}: aborted at each of {} operations, the last {}; completed before its N (fewer operations): {early:?}",
        aborted.len(),
        aborted.last().copied().unwrap_or(0)
    );
    assert!(
        aborted.len() > 50,
        "a run makes many storage operations: {aborted:?}"
    );
    let first = completed[0];
    assert_eq!(
        aborted.iter().take_while(|&&a| a < first).count() as u64,
        first - 1,
        "every operation before the first completed run aborted"
    );
    assert!(
        early.len() <= 3,
        "runs that completed although later operations abort: {early:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "sets WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn aborts_at_storage_operations_during_asynchronous_saves_change_nothing() {
    aborted_runs_end_like_the_reference(&[]);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "sets WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn aborts_at_storage_operations_during_synchronous_saves_change_nothing() {
    aborted_runs_end_like_the_reference(&["--sync"]);
}

/// The step of the `preempted at step N: …` line, which must be the last.
fn preempted_step(lines: &[String]) -> u64 {
    let last = lines.last().map_or("", String::as_str);
    let rest = last
        .strip_prefix("preempted at step ")
        .unwrap_or_else(|| panic!("the last line is not the preemption's: {last:?}"));
    assert!(
        rest.ends_with(": the -last checkpoint is saved; run the same command again to resume"),
        "{last}"
    );
    rest.split(':').next().unwrap().parse().unwrap()
}

#[test]
fn sigterm_saves_the_last_checkpoint_exits_75_and_the_same_command_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    // (mode, when SIGTERM is sent)
    let cases: [(&[&str], Trigger); 4] = [
        (&[], Trigger::SaveBegin(2)),
        (&[], Trigger::StepLine(17)),
        (&["--sync"], Trigger::SaveBegin(1)),
        (&["--sync"], Trigger::StepLine(33)),
    ];
    for (i, (mode, trigger)) in cases.into_iter().enumerate() {
        let args = [BIG, mode].concat();
        let reference_dir = tmp.path().join(format!("reference{i}"));
        let reference = final_hash(&run_ok(&reference_dir, &args));
        let expected = assert_top_k_and_last(&reference_dir, 2, "uninterrupted run");

        let dir = tmp.path().join(format!("term{i}"));
        let (status, lines, stderr, sent) = run_and_signal(&dir, &args, trigger, libc::SIGTERM);
        assert!(
            sent,
            "{mode:?} {trigger:?}: the run ended before the signal"
        );
        assert_eq!(
            status.code(),
            Some(75),
            "{mode:?} {trigger:?}: {status}; stderr: {stderr}"
        );
        let step = preempted_step(&lines);
        assert!(step < 200, "{step}");
        // The -last of that step is committed, and it is the newest checkpoint.
        let names = entries(&dir);
        let last: Vec<&String> = names.iter().filter(|n| n.ends_with("-last")).collect();
        assert_eq!(last.len(), 1, "{names:?}");
        assert!(
            last[0].ends_with(&format!("-step={step}-last")),
            "{names:?}"
        );
        assert!(
            checkpoints_dir(&dir)
                .join(last[0])
                .join("weights/metadata.json")
                .is_file()
        );
        assert!(names.iter().all(|n| step_of(n) <= step), "{names:?}");
        eprintln!("{mode:?} {trigger:?}: preempted at step {step}");

        let rest = run_ok(&dir, &args);
        assert!(
            rest.contains(&format!(" at step {step} (")),
            "did not resume at {step}: {}",
            tail(&rest)
        );
        assert!(!rest.contains("\nstep 1 train_loss"), "it started over");
        assert_eq!(
            final_hash(&rest),
            reference,
            "preempted and resumed: a different state"
        );
        assert_eq!(
            assert_top_k_and_last(&dir, 2, "preempted and resumed"),
            expected,
            "preempted and resumed: other checkpoints kept"
        );
    }

    // What the experiment directory holds after a preempted run and its rerun.
    let run_dir = tmp.path().join("term0").join("default");
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let cmd = read(run_dir.join("cmd-args.log"));
    assert!(
        cmd.starts_with(BIN) && cmd.contains(" --extra-state-mib 16 "),
        "{cmd}"
    );
    assert_eq!(read(run_dir.join("run_0").join("cmd-args.log")), cmd);
    assert!(read(run_dir.join("git-info.log")).len() > 10);
    assert_eq!(
        read(run_dir.join("hparams.yaml")),
        "hidden: 16\nlr: 0.003\nmodel: \"candle\"\nseed: 0\nsteps: 200\n"
    );
    let preempted_errors = read(
        run_dir
            .join("run_0")
            .join("log_globalrank-0_localrank-0.err.txt"),
    );
    assert!(
        preempted_errors.contains("preemption requested"),
        "{preempted_errors}"
    );
    let log = read(run_dir.join("log_globalrank-0_localrank-0.txt"));
    assert!(log.contains("restored"), "{log}");
    assert_eq!(read(run_dir.join(".waypoint.lock")), "", "released cleanly");
    // Each checkpoint's context: all the flags as JSON, the model's part as YAML.
    let names = entries(&tmp.path().join("term0"));
    let ckpt = checkpoints_dir(&tmp.path().join("term0")).join(&names[0]);
    let io: serde_json::Value = serde_json::from_str(&read(ckpt.join("context/io.json"))).unwrap();
    assert_eq!(io["max_steps"], 200);
    assert_eq!(io["extra_state_mib"], 16);
    assert_eq!(io["name"], "default");
    assert_eq!(io["model"], "candle");
    assert_eq!(io["threads"], 1);
    assert_eq!(
        read(ckpt.join("context/model.yaml")),
        "extra_state_mib: 16\nhidden: 16\nmodel: \"candle\"\nseed: 0\nthreads: 1\n"
    );
}

#[test]
fn resuming_with_the_other_model_fails_naming_the_problem_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let rust = [SHORT, MLP_RUST].concat();
    run_ok(tmp.path(), &with_max_steps(&rust, "40"));
    let before = entries(tmp.path());
    let output = trainer(tmp.path(), SHORT).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not restore the checkpoint to resume from")
            && stderr.contains("this run trains --model candle --hidden 16")
            && stderr.contains("model.layer"),
        "{stderr}"
    );
    assert_eq!(entries(tmp.path()), before, "the checkpoints changed");
    // The right model still resumes from them.
    let rest = run_ok(tmp.path(), &rust);
    assert!(rest.contains(" at step 40 ("), "{}", tail(&rest));
}

#[test]
fn a_second_live_run_of_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A live run, stopped (SIGSTOP) once it trains: it holds the directory's lock.
    let mut first = trainer(tmp.path(), BIG)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let training = lines.any(|l| l.unwrap().starts_with("step 1 train_loss"));
    assert!(training, "the first run never trained");
    let signal = |sig: i32| {
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        let rc = unsafe { libc::kill(first.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    };
    signal(libc::SIGSTOP);
    let second = trainer(tmp.path(), BIG).output().unwrap();
    signal(libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("held by another live run"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {} on host ", first.id())),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&second.stdout).is_empty(),
        "the second run printed"
    );
    // The first run goes on undisturbed, to the digest of an uninterrupted run.
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(first.wait().unwrap().success());
    let reference = final_hash(&run_ok(&tmp.path().join("reference"), BIG));
    assert_eq!(final_hash(&rest.join("\n")), reference);
}
