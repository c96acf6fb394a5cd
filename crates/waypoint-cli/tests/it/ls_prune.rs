//! `waypoint ls` and `waypoint prune`, run for real on a run directory made with the library:
//! four committed checkpoints carrying a top-k policy state (val_loss, min), a save interrupted
//! before its commit record, a save's temporary, and a directory that is no checkpoint.

use crate::waypoint;
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use waypoint::format::{Reserved, RunFacts};
use waypoint::policy::{PolicyState, TopKEntry};
use waypoint::storage::{StoragePath, TEMP_MARKER, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, Mode, TensorRef};

const S100: &str = "demo--val_loss=0.5000-step=100";
const S200: &str = "demo--val_loss=0.3000-step=200";
const S300: &str = "demo--val_loss=0.4000-step=300";
const LAST: &str = "demo--val_loss=0.4000-step=300-last";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(!text(out).contains("panicked"), "{}", text(out));
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

struct Run {
    _tmp: tempfile::TempDir,
    version: PathBuf,
}

impl Run {
    /// `run/version_0/checkpoints/` with the four checkpoints (saved in step order, each record
    /// carrying the top-2 state after its save) and the three things that are not checkpoints.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let version = tmp.path().join("run/version_0");
        let dir = version.join("checkpoints");
        std::fs::create_dir_all(&dir).unwrap();
        let checkpointer = Checkpointer::new(local_storage(&dir).unwrap());
        let e = |name: &str, score: f64| TopKEntry {
            name: name.into(),
            score,
        };
        let saves = [
            (S100, 100, vec![e(S100, 0.5)], false),
            (S200, 200, vec![e(S100, 0.5), e(S200, 0.3)], false),
            (S300, 300, vec![e(S200, 0.3), e(S300, 0.4)], false),
            (LAST, 300, vec![e(S200, 0.3), e(S300, 0.4)], true),
        ];
        let data = vec![1u8; 256];
        for (name, step, top_k, weights_only) in saves {
            let mut state = PolicyState::new(Some("val_loss".into()), Mode::Min, "ckpts");
            state.top_k = top_k;
            state.last_model_path = Some(LAST.into());
            let mut meta = CheckpointMeta::at_step(step);
            meta.epoch = step / 100;
            meta.waypoint = Reserved {
                model_checkpoint: Some(serde_json::to_value(&state).unwrap()),
                run: Some(RunFacts {
                    weights_only,
                    ..RunFacts::default()
                }),
                ..Reserved::default()
            };
            let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![256], data.as_slice())];
            checkpointer
                .save(
                    &StoragePath::new(name).unwrap(),
                    &meta,
                    &tensors,
                    &json!({}),
                )
                .unwrap();
        }
        std::fs::create_dir_all(dir.join("interrupted/weights")).unwrap();
        std::fs::create_dir_all(dir.join(format!(".step=400{TEMP_MARKER}x/weights"))).unwrap();
        std::fs::create_dir_all(dir.join("junk")).unwrap();
        Run { _tmp: tmp, version }
    }

    fn arg(&self) -> &str {
        self.version.to_str().unwrap()
    }

    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.version.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn ls_lists_checkpoints_newest_first_with_values_ranks_and_marks() {
    let run = Run::new();
    let out = waypoint(&["ls", run.arg(), "--json"]);
    assert_exit(&out, 0);
    let v = parse(&out);
    assert_eq!(names(&v["checkpoints"]), [LAST, S300, S200, S100]);
    assert_eq!(v["run"]["version"], "version_0");
    assert_eq!(v["locked_by"], Value::Null);
    assert_eq!(
        (v["monitor"].as_str(), v["mode"].as_str()),
        (Some("val_loss"), Some("min"))
    );
    let c = &v["checkpoints"];
    assert_eq!(c[2]["value"], 0.3);
    assert_eq!(c[2]["top_k_rank"], 1);
    assert_eq!(c[1]["top_k_rank"], 2);
    assert_eq!(c[3]["value"], 0.5, "from its own record's state");
    assert_eq!(c[3]["top_k_rank"], Value::Null, "displaced since");
    assert_eq!(c[0]["marks"], json!(["resume", "last", "weights-only"]));
    assert_eq!(c[3]["epoch"], 1);
    assert!(c[3]["bytes"].as_u64().unwrap() >= 256);
    assert!(c[3]["age_s"].as_u64().unwrap() < 3600);
    assert_eq!(v["resume"]["name"], LAST);
    assert!(
        v["resume"]["reason"]
            .as_str()
            .unwrap()
            .contains("highest committed step")
    );
    let other = names(&v["not_committed"]);
    assert_eq!(
        other,
        [
            format!(".step=400{TEMP_MARKER}x").as_str(),
            "interrupted",
            "junk"
        ]
    );
    assert!(
        v["not_committed"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );

    let out = waypoint(&["ls", run.arg()]);
    assert_exit(&out, 0);
    let printed = text(&out);
    assert!(!printed.contains('\x1b'), "no colour off a terminal");
    assert!(printed.contains("version     version_0"), "{printed}");
    assert!(printed.contains("lock        free"), "{printed}");
    let row = printed.lines().find(|l| l.starts_with(S200)).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..5], ["200", "2", "0.3", "1"], "{row}");
    assert!(printed.contains("4 checkpoints"), "{printed}");
    assert!(
        printed.contains("junk") && printed.contains("not a checkpoint"),
        "{printed}"
    );
}

#[test]
fn prune_dry_run_deletes_nothing_and_yes_deletes_exactly_the_listed_ones() {
    let run = Run::new();
    let before = run.listing();
    let out = waypoint(&["prune", run.arg(), "--keep-top-k", "1", "--json"]);
    assert_exit(&out, 0);
    let v = parse(&out);
    assert_eq!(v["dry_run"], true);
    assert_eq!(names(&v["delete"]), [S300, S100]);
    assert_eq!(names(&v["keep"]), [LAST, S200]);
    let pick_reason = v["keep"][0]["reasons"][0].as_str().unwrap();
    assert!(pick_reason.contains("AutoResume") && pick_reason.contains("would have deleted"));
    assert_eq!(run.listing(), before, "a dry run deletes nothing");

    let out = waypoint(&["prune", run.arg(), "--keep-top-k", "1"]);
    assert_exit(&out, 0);
    let printed = text(&out);
    let row = printed.lines().find(|l| l.contains(S100)).unwrap();
    assert!(row.starts_with("would delete"), "{row}");
    assert!(printed.contains("would delete 2 checkpoints"), "{printed}");

    let out = waypoint(&["prune", run.arg(), "--keep-top-k", "1", "--yes", "--json"]);
    assert_exit(&out, 0);
    let v = parse(&out);
    assert_eq!(v["deleted"], json!([S300, S100]));
    let mut want: Vec<String> = before
        .into_iter()
        .filter(|n| n != S300 && n != S100)
        .collect();
    want.sort();
    assert_eq!(run.listing(), want, "exactly the listed ones are gone");
    assert!(
        run.listing().iter().any(|n| n == LAST),
        "never the AutoResume pick"
    );
}

#[test]
fn prune_rules_combine_and_every_n_keeps_multiples() {
    let run = Run::new();
    let out = waypoint(&[
        "prune",
        run.arg(),
        "--keep-every-n-steps",
        "200",
        "--keep-last",
        "--json",
    ]);
    assert_exit(&out, 0);
    let v = parse(&out);
    assert_eq!(names(&v["delete"]), [S300, S100]);
    assert_eq!(names(&v["keep"]), [LAST, S200]);
    let last = v["keep"][0]["reasons"].to_string();
    assert!(
        last.contains("--keep-last") && last.contains("AutoResume"),
        "{last}"
    );
    // Nothing is old enough: --older-than keeps everything.
    let out = waypoint(&["prune", run.arg(), "--older-than", "7d", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(parse(&out)["delete"], json!([]));
    // At least one rule is required.
    assert_exit(&waypoint(&["prune", run.arg()]), 2);
    assert_exit(&waypoint(&["prune", run.arg(), "--older-than", "7y"]), 2);
}

/// Takes the run lock as a live run does: an exclusive `flock` and the holder's record.
fn hold_lock(version: &Path) -> File {
    let mut file = File::create(version.join(waypoint::experiment::LOCK_FILE)).unwrap();
    file.try_lock().unwrap();
    file.write_all(br#"{"pid":4242,"host":"trainer-7","started":"2026-01-01T00:00:00Z"}"#)
        .unwrap();
    file
}

#[test]
fn a_live_run_holding_the_lock_stops_prune() {
    let run = Run::new();
    let before = run.listing();
    let lock = hold_lock(&run.version);
    for yes in [false, true] {
        let mut args = vec!["prune", run.arg(), "--keep-top-k", "1"];
        if yes {
            args.push("--yes");
        }
        let out = waypoint(&args);
        assert_exit(&out, 2);
        assert!(
            text(&out).contains("pid 4242 on host trainer-7"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(run.listing(), before, "nothing deleted");
    let v = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert!(v["locked_by"].as_str().unwrap().contains("trainer-7"));
    drop(lock);
    let v = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert_eq!(
        v["locked_by"],
        Value::Null,
        "a file left behind is not a live run"
    );
}

#[test]
fn ls_on_a_checkpoints_directory_and_a_missing_one() {
    let run = Run::new();
    let dir = run.version.join("checkpoints");
    let out = waypoint(&["ls", dir.to_str().unwrap(), "--json"]);
    assert_exit(&out, 0);
    let v = parse(&out);
    assert_eq!(v["run"], Value::Null);
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 4);
    assert_exit(&waypoint(&["ls", "/nonexistent/waypoint/dir"]), 2);
}

/// The lock as the library takes it: an experiment set up in the run's version directory.
#[test]
fn a_live_experiment_stops_prune_until_it_ends() {
    let run = Run::new();
    let policy = waypoint::ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .async_save(false)
        .build()
        .unwrap();
    let experiment = waypoint::ExperimentLogger::builder()
        .explicit_log_dir(&run.version)
        .name("demo")
        .checkpoint(policy)
        .tensorboard(false)
        .csv(false)
        .preemption_signals(vec![])
        .build()
        .unwrap()
        .setup(&waypoint::AutoResume::default())
        .unwrap();
    // Setting up removed the save's temporary, as a live run does.
    let before = run.listing();
    let out = waypoint(&["prune", run.arg(), "--keep-last", "--yes"]);
    assert_exit(&out, 2);
    let me = format!("pid {}", std::process::id());
    assert!(text(&out).contains(&me), "{}", text(&out));
    assert_eq!(run.listing(), before, "nothing deleted");
    drop(experiment);
    let out = waypoint(&["prune", run.arg(), "--keep-last", "--yes", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(parse(&out)["deleted"], json!([S300, S200, S100]));
}

/// `ls --json` without the keys that differ between two listings of the same checkpoints: their
/// age, where their facts came from, and the mark of a refused summary.
fn comparable(mut v: Value) -> Value {
    for c in v["checkpoints"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("age_s");
        c.remove("summary");
        let marks = c["marks"].as_array_mut().unwrap();
        marks.retain(|m| m != "summary-refused");
    }
    v
}

/// The listing is the same read from summaries, from records (checkpoints of earlier versions,
/// without summaries), or from a mix; a summary that cannot be believed is marked and its
/// record read instead.
#[test]
fn ls_is_the_same_with_and_without_summaries_and_marks_a_damaged_one() {
    let run = Run::new();
    let dir = run.version.join("checkpoints");
    let with = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert!(
        with["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["summary"] == "read"),
        "{with}"
    );
    // A summary edited by hand: its checksum no longer matches.
    let file = dir.join(S200).join("summary.json");
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"step\":200", "\"step\":900");
    std::fs::write(&file, edited).unwrap();
    let damaged = parse(&waypoint(&["ls", run.arg(), "--json"]));
    let c = &damaged["checkpoints"][2];
    assert_eq!(
        (c["name"].as_str(), c["step"].as_u64()),
        (Some(S200), Some(200))
    );
    assert!(c["marks"].to_string().contains("summary-refused"), "{c}");
    assert!(
        c["summary"]["refused"].to_string().contains("CRC-32C"),
        "{c}"
    );
    assert_eq!(comparable(damaged), comparable(with.clone()));
    let printed = text(&waypoint(&["ls", run.arg()]));
    let row = printed.lines().find(|l| l.starts_with(S200)).unwrap();
    assert!(row.ends_with("summary-refused"), "{row}");
    // No summaries at all.
    for name in [S100, S200, S300, LAST] {
        std::fs::remove_file(dir.join(name).join("summary.json")).unwrap();
    }
    let without = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert!(
        without["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["summary"] == "none"),
        "{without}"
    );
    assert_eq!(comparable(without), comparable(with));
}

/// A summary left behind by a record replaced since: `ls` checks the pick's record against its
/// summary and reads every record when they disagree, as AutoResume does; a record of another
/// length than its summary says is read instead of the summary; a record removed leaves the
/// directory not committed, whatever its summary says.
#[test]
fn ls_does_not_believe_a_summary_whose_record_changed_or_went() {
    let run = Run::new();
    let dir = run.version.join("checkpoints");
    let record = |name: &str| dir.join(name).join("weights/metadata.json");
    std::fs::copy(record(S100), record(LAST)).unwrap();
    let v = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert_eq!(v["resume"]["name"], S300, "{v}");
    let reason = v["resume"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not match its commit record"),
        "{reason}"
    );
    let last = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == LAST)
        .unwrap();
    assert_eq!(last["step"], 100, "the record's step");

    let run = Run::new();
    let dir = run.version.join("checkpoints");
    std::fs::remove_file(dir.join(S100).join("weights/metadata.json")).unwrap();
    let v = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert_eq!(names(&v["checkpoints"]), [LAST, S300, S200]);
    let gone = v["not_committed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == S100)
        .unwrap();
    assert!(
        gone["reason"].to_string().contains("no commit record"),
        "{gone}"
    );
}

/// `prune` decides on the commit records: a summary rewritten (with a valid checksum) to claim a
/// newer step changes nothing of what it keeps and deletes.
#[test]
fn prune_decides_on_records_not_summaries() {
    let run = Run::new();
    let before = parse(&waypoint(&[
        "prune",
        run.arg(),
        "--keep-every-n-steps",
        "200",
        "--json",
    ]));
    let file = run
        .version
        .join("checkpoints")
        .join(S100)
        .join("summary.json");
    let mut summary =
        waypoint::format::Summary::from_json(&std::fs::read(&file).unwrap(), &file).unwrap();
    summary.step = 400;
    std::fs::write(&file, summary.to_json()).unwrap();
    let listed = parse(&waypoint(&["ls", run.arg(), "--json"]));
    assert_eq!(
        listed["checkpoints"][0]["step"], 400,
        "ls believes a valid summary"
    );
    let after = parse(&waypoint(&[
        "prune",
        run.arg(),
        "--keep-every-n-steps",
        "200",
        "--json",
    ]));
    assert_eq!(after, before);
    assert_eq!(names(&after["delete"]), [S300, S100]);
}
