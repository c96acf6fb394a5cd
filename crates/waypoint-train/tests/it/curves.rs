//! The trainer's curves as the real TensorBoard shows them (`tests/python/check_curves.py`:
//! EventAccumulator with its defaults, `tensorboard --logdir` over HTTP with both loaders): a run
//! SIGKILLed mid-run, resumed to its end and then run again (already complete) shows exactly what
//! an uninterrupted run shows, each step once, with the values the trainer printed. Each event
//! file holds one `SessionLog` `START`: 0 in the first, the resume step in the resumed run's; the
//! complete run started again writes no file.

use crate::common::SHORT;
use crate::train::{MLP_RUST, Trigger, run_and_kill, run_ok};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tfevents::proto::event::What;
use tfevents::proto::session_log::SessionStatus;

/// The event files of a run, in name order.
fn event_files(log_dir: &Path) -> Vec<PathBuf> {
    let dir = log_dir.join("default/tensorboard");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn start_steps(file: &Path) -> Vec<i64> {
    tfevents::read_events(file)
        .unwrap()
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::SessionLog(l)) if l.status == SessionStatus::Start as i32 => Some(e.step),
            _ => None,
        })
        .collect()
}

/// Per tag, the points an uninterrupted run's stdout says it logged (`step N train_loss X`,
/// `step N val_loss X`; `lr` is constant), and the steps it saved at (the checkpoint scalars,
/// whose values are timings: any value, and a step whose save a kill cut short of its report
/// may be missing).
fn expected(stdout: &str) -> serde_json::Value {
    let mut tags: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    let mut saves: Vec<u64> = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["step", step, tag @ ("train_loss" | "val_loss"), value] => {
                let step: u64 = step.parse().unwrap();
                let value = f64::from(value.parse::<f32>().unwrap());
                tags.entry(tag).or_default().push(json!([step, value]));
                if *tag == "train_loss" {
                    tags.entry("lr")
                        .or_default()
                        .push(json!([step, f64::from(0.01f32)]));
                }
            }
            ["saved", _name, step, ..] => {
                let step: u64 = step.trim_start_matches("step=").parse().unwrap();
                if saves.last() != Some(&step) {
                    saves.push(step);
                }
            }
            _ => {}
        }
    }
    let mut tags: serde_json::Map<String, serde_json::Value> = tags
        .into_iter()
        .map(|(t, p)| (t.to_owned(), json!(p)))
        .collect();
    for tag in [
        "checkpoint/blocked_ms",
        "checkpoint/write_ms",
        "checkpoint/size_mib",
    ] {
        tags.insert(tag.to_owned(), json!({ "within": saves }));
    }
    json!(tags)
}

#[test]
fn killed_resumed_and_rerun_curves_in_the_real_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [SHORT, MLP_RUST].concat();
    let reference = run_ok(&tmp.path().join("reference"), &args);

    let killed = tmp.path().join("killed");
    // After the 50th step line: checkpoint at step 40, steps 41..50 (or more) lost with the kill.
    assert!(run_and_kill(&killed, &args, Trigger::StepLine(50)).killed);
    let resumed = run_ok(&killed, &args);
    let at: i64 = resumed
        .lines()
        .filter(|l| l.starts_with("resumed from "))
        .find_map(|l| l.split(" at step ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resume line:\n{resumed}"));
    let files = event_files(&killed);
    let starts: Vec<Vec<i64>> = files.iter().map(|f| start_steps(f)).collect();
    assert_eq!(starts, [vec![0], vec![at + 1]], "{files:?}");
    let again = run_ok(&killed, &args);
    assert!(again.contains("run already completed"), "{again}");
    assert_eq!(
        event_files(&killed),
        files,
        "the complete run wrote a new event file"
    );

    let want = expected(&reference);
    let runs = json!({
        "runs": {
            "reference/default/tensorboard": want,
            "killed/default/tensorboard": want,
        }
    });
    let expected_path = tmp.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_vec_pretty(&runs).unwrap()).unwrap();
    let output = std::process::Command::new(test_python::python())
        .arg(test_python::scripts_dir().join("check_curves.py"))
        .arg(tmp.path())
        .arg(&expected_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("curve checks passed"),
        "check_curves.py ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
