//! `waypoint tail`, run for real on event files written by waypoint's `TensorBoardLogger`: the
//! latest value of each scalar, a resumed run's values winning, what TensorBoard purged after a
//! resume left out (compared with the real TensorBoard on a run killed and resumed through
//! `ExperimentLogger`), a file cut mid-record read up to its last complete record, a damaged
//! record reported with its offset, and `-f` following a file that grows and a new file, until
//! Ctrl-C (exit 0).

use crate::waypoint;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};
use tfevents::{EventWriter, WriterOptions};
use waypoint::{
    AutoResume, Checkpointable, Dtype, ExperimentLogger, MetricLogger, ModelCheckpoint, SinkSlot,
    TensorBoardLogger, TensorRef,
};

/// How long the follower may take to show a value: generous, the test ends as soon as it does.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn assert_exit(out: &Output, code: i32) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

/// A model of one byte-sized weight per step, for the runs below.
struct Tiny {
    w: Vec<u8>,
    step: u64,
}

impl Checkpointable for Tiny {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![TensorRef::whole("w", Dtype::U8, vec![8], self.w.as_slice())]
    }
    fn trainer_state(&self) -> Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![SinkSlot {
            name: "w",
            dtype: Dtype::U8,
            shape: &[8],
            data: &mut self.w,
        }]
    }
    fn restore_trainer_state(&mut self, s: Value) -> waypoint::Result<()> {
        self.step = s["step"].as_u64().unwrap_or(0);
        Ok(())
    }
}

/// One process of the run `<root>/demo/v1` as a training loop drives it (TensorBoard on, a
/// checkpoint every 5 steps, resuming from the newest): trains to `until`, then is dropped
/// without finishing (killed). Logs `train_loss` every step, `val_loss` every 3 steps, and
/// `probe` at step 12 only.
fn session(root: &Path, session: u32, until: u64) {
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(5)
        .async_save(false)
        .build()
        .unwrap();
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()
        .unwrap();
    let mut experiment = ExperimentLogger::builder()
        .log_dir(root)
        .name("demo")
        .version("v1")
        .csv(false)
        .preemption_signals(vec![])
        .checkpoint(policy)
        .build()
        .unwrap()
        .setup(&resume)
        .unwrap();
    let mut tiny = Tiny {
        w: vec![0; 8],
        step: 0,
    };
    let run = experiment.run_mut();
    run.restore(&mut tiny).unwrap();
    let offset = f64::from(session);
    while tiny.step < until {
        tiny.step += 1;
        let step = tiny.step;
        tiny.w.fill(step as u8);
        let mut metrics = vec![("train_loss", 1.0 / step as f64 + offset)];
        if step.is_multiple_of(3) {
            metrics.push(("val_loss", 2.0 / step as f64 + offset));
        }
        if step == 12 {
            metrics.push(("probe", 0.5));
        }
        run.log_metrics(step, &metrics);
        run.step_end(step, 0, &tiny).unwrap();
    }
    drop(experiment);
}

/// A run killed after step 13 (checkpoints at 5 and 10), resumed at 11 and killed after 11:
/// TensorBoard purged what the first process logged after step 10 (`val_loss` at 12, `probe`),
/// and so does tail.
#[test]
fn after_a_resume_tail_shows_what_tensorboard_shows() {
    let tmp = tempfile::tempdir().unwrap();
    session(tmp.path(), 0, 13);
    session(tmp.path(), 1, 11);
    let version = tmp.path().join("demo/v1");
    let out = waypoint(&["tail", version.to_str().unwrap(), "--json"]);
    assert_exit(&out, 0);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown: serde_json::Map<String, Value> = json["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, p)| {
            let point = serde_json::json!({"step": p["step"], "value": p["value"]});
            (tag.clone(), point)
        })
        .collect();

    let script = test_python::scripts_dir().join("latest_scalars.py");
    let tb = Command::new(test_python::python())
        .arg(&script)
        .arg(version.join("tensorboard"))
        .output()
        .unwrap();
    assert!(tb.status.success(), "{}", text(&tb.stderr));
    let tensorboard: Value = serde_json::from_slice(&tb.stdout).unwrap();
    assert_eq!(
        Value::Object(shown.clone()),
        tensorboard,
        "tail vs TensorBoard"
    );
    assert_eq!(shown["train_loss"]["step"], 11);
    assert_eq!(
        shown["train_loss"]["value"],
        f64::from((1.0 / 11.0 + 1.0) as f32)
    );
    assert_eq!(shown["val_loss"]["step"], 9, "val_loss at 12 was purged");
    assert!(!shown.contains_key("probe"), "{shown:?}");
    assert_eq!(json["files"].as_array().unwrap().len(), 2);
    assert_eq!(json["damaged_records"], 0);

    // The table shows the same points, one line per tag in name order.
    let out = waypoint(&["tail", version.to_str().unwrap()]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    let lines: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    let mut want = vec![vec!["TAG".to_owned(), "STEP".into(), "VALUE".into()]];
    for (tag, p) in &shown {
        let value = p["value"].as_f64().unwrap() as f32;
        want.push(vec![tag.clone(), p["step"].to_string(), value.to_string()]);
    }
    assert_eq!(lines, want);
}

#[test]
fn a_file_cut_mid_record_is_read_to_its_last_complete_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tb = TensorBoardLogger::new(tmp.path(), None).unwrap();
    for step in 1..=10u64 {
        tb.log_metrics(step, 1.7e9, &[("loss", step as f64)])
            .unwrap();
    }
    tb.flush().unwrap();
    let path = tb.path().unwrap().to_path_buf();
    drop(tb);
    // A writer killed in the middle of the record of step 10.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let out = waypoint(&["tail", tmp.path().to_str().unwrap(), "--json"]);
    assert_exit(&out, 0);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["scalars"]["loss"]["step"], 9);
    assert!(
        text(&out.stderr).contains("unfinished record"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_damaged_record_is_reported_with_its_offset_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(tmp.path(), &WriterOptions::default()).unwrap();
    w.add_scalars(1, 1.7e9, &[("a", 1.0f32)]).unwrap();
    let damaged_at = std::fs::metadata(w.path()).unwrap().len() + w.get_ref().buffer().len() as u64;
    w.add_scalars(2, 1.7e9, &[("b", 2.0f32)]).unwrap();
    w.add_scalars(3, 1.7e9, &[("c", 3.0f32)]).unwrap();
    w.flush().unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let mut bytes = std::fs::read(&path).unwrap();
    // A bit flipped in the data of step 2's record (after its 12-byte header).
    bytes[damaged_at as usize + 14] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let out = waypoint(&["tail", path.to_str().unwrap()]);
    assert_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("byte offset {damaged_at}")),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("a ") && stdout.contains("c ") && !stdout.contains("b "),
        "{stdout}"
    );
}

#[test]
fn a_missing_path_is_a_usage_error() {
    let out = waypoint(&["tail", "/nonexistent/waypoint-run"]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("/nonexistent/waypoint-run"));
    let tmp = tempfile::tempdir().unwrap();
    let out = waypoint(&["tail", tmp.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("no TensorBoard event file"));
}

/// Lines of the child's stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line satisfying `want`, returning the lines seen.
fn wait_for(lines: &Receiver<String>, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no such line ({e}); seen: {seen:?}"),
        }
    }
}

#[test]
fn follow_prints_values_as_they_arrive_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(tmp.path(), &WriterOptions::default()).unwrap();
    w.add_scalars(1, 1.7e9, &[("loss", 0.5f32)]).unwrap();
    w.flush().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["tail", "-f", "--json", "--poll-ms", "20"])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    let point = |tag: &'static str, step: i64| {
        move |line: &str| {
            let v: Value = serde_json::from_str(line).unwrap();
            v["tag"] == tag && v["step"] == step
        }
    };
    wait_for(&lines, point("loss", 1));

    // The file grows by a record, then by a record written in two halves.
    w.add_scalars(2, 1.7e9, &[("loss", 0.25f32), ("lr", 0.1)])
        .unwrap();
    w.flush().unwrap();
    wait_for(&lines, point("lr", 2));
    let record = scalars_record(2, &[("acc", 0.75)]);
    let (head, rest) = record.split_at(record.len() / 2);
    append(w.path(), head);
    // The follower may or may not poll while only the first half is there (the reader's own
    // tests cover a half record deterministically); either way the whole record arrives.
    append(w.path(), rest);
    wait_for(&lines, point("acc", 2));

    // A new file (a resumed run) is picked up.
    let mut resumed = EventWriter::create(tmp.path(), &WriterOptions::default()).unwrap();
    resumed.add_session_log_start(3, 1.7e9).unwrap();
    resumed
        .add_scalars(3, 1.7e9, &[("loss", 0.125f32)])
        .unwrap();
    resumed.flush().unwrap();
    let seen = wait_for(&lines, point("loss", 3));
    let last: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(last["value"], 0.125);

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let stderr_pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(FOLLOW_TIMEOUT)
        .expect("tail -f did not stop on SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut { stderr_pipe }, &mut stderr).unwrap();
    assert!(
        !stderr.contains("warning"),
        "a half-written record is not damage: {stderr}"
    );
}

/// The bytes of one record holding `values` at `step`.
fn scalars_record(step: i64, values: &[(&str, f32)]) -> Vec<u8> {
    let header_len = EventWriter::new(Vec::new(), "mem", 1.7e9)
        .unwrap()
        .into_inner()
        .unwrap()
        .len();
    let mut w = EventWriter::new(Vec::new(), "mem", 1.7e9).unwrap();
    w.add_scalars(step, 1.7e9, values).unwrap();
    w.into_inner().unwrap().split_off(header_len)
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}
