//! ExperimentLogger end to end: every knob through a real setup, the run files and their
//! content, `run_<N>/` on a rerun, the lock (two live runs in one process and across processes,
//! a stale lock taken over), `context/` read back into the configuration type, preemption, and
//! the known problems of NeMo that concern the experiment directory.
//!
//! Tests that need their own environment, working directory or log routing run this binary
//! again as a child process (`child_process_entry`, ignored when run directly).

use crate::common::dir_names;
use crate::common::training::{Tiny, resume};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use waypoint::dist::RankInfo;
use waypoint::experiment::{LOCK_FILE, load_config};
use waypoint::{AutoResume, Error, Experiment, ExperimentLogger, ModelCheckpoint};

/// A configuration type, as a user's would be.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Config {
    lr: f64,
    steps: u64,
    model: ModelConfig,
    data: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ModelConfig {
    hidden: u32,
    activation: String,
}

fn config() -> Config {
    Config {
        lr: 1e-3,
        steps: 8,
        model: ModelConfig {
            hidden: 64,
            activation: "tanh".into(),
        },
        data: Some("/data/train.bin".into()),
    }
}

/// Saves every 2 steps, keeps everything, with a -last; synchronous so tests see saves at once.
fn policy() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .async_save(false)
        .build()
        .unwrap()
}

fn no_resume() -> AutoResume {
    AutoResume::default()
}

/// A logger under `root` with no preemption handlers (tests in one process share signals).
fn logger(root: &Path) -> waypoint::ExperimentLoggerBuilder {
    ExperimentLogger::builder()
        .log_dir(root)
        .name("exp")
        .checkpoint(policy())
        .preemption_signals(vec![])
}

/// Trains `toy` from its step to `to`, through the experiment's run.
fn train(experiment: &mut Experiment, toy: &mut Tiny, to: u64) {
    while toy.step < to {
        toy.train_step();
        experiment.run_mut().step_end(toy.step, 0, toy).unwrap();
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn host() -> String {
    read("/proc/sys/kernel/hostname").trim().to_owned()
}

#[test]
fn run_files_are_written_with_their_content() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = tmp.path().join("train.yaml");
    std::fs::write(&extra, "lr: 0.001\n").unwrap();
    let hparams = serde_json::Map::from_iter([
        ("lr".to_owned(), serde_json::json!(0.001)),
        ("hidden".to_owned(), serde_json::json!(64)),
    ]);
    let experiment = logger(&tmp.path().join("runs"))
        .version("v1")
        .hparams(hparams.clone())
        .files_to_copy(vec![extra])
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    let dir = experiment.version_dir().to_path_buf();
    assert_eq!(
        dir,
        tmp.path().join("runs/exp/v1").canonicalize().unwrap(),
        "log_dir/name/version"
    );
    assert_eq!(experiment.version(), Some("v1"));
    assert_eq!(experiment.checkpoint_dir(), dir.join("checkpoints"));

    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        read(dir.join("cmd-args.log")),
        format!("{}\n", args.join(" "))
    );
    let git = read(dir.join("git-info.log"));
    assert!(
        git.starts_with("commit hash: ") || git.starts_with("not inside a git work tree"),
        "{git}"
    );
    let yaml: serde_json::Map<String, serde_json::Value> =
        serde_norway::from_str(&read(dir.join("hparams.yaml"))).unwrap();
    assert_eq!(yaml, hparams);
    assert_eq!(experiment.hparams_path(), Some(dir.join("hparams.yaml")));
    assert_eq!(read(dir.join("train.yaml")), "lr: 0.001\n");
    let (text, errors) = experiment.log_files().unwrap();
    assert_eq!(text, dir.join("log_globalrank-0_localrank-0.txt"));
    assert_eq!(errors, dir.join("log_globalrank-0_localrank-0.err.txt"));
    assert!(text.is_file() && errors.is_file());
    let lock = read(dir.join(LOCK_FILE));
    let holder: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(holder["pid"], std::process::id());
    assert_eq!(holder["host"], host());
    assert!(holder["started"].as_str().unwrap().ends_with('Z'), "{lock}");
    assert_eq!(experiment.lock_path(), Some(dir.join(LOCK_FILE).as_path()));
    assert_eq!(
        experiment.child_env(),
        [("WAYPOINT_VERSION".to_owned(), "v1".to_owned())]
    );

    drop(experiment);
    assert_eq!(
        read(dir.join(LOCK_FILE)),
        "",
        "a clean release empties the lock"
    );
}

/// `(knobs, resume, expected directory under the root or "<datetime>")`.
type VersionCase = (
    &'static str,
    fn(waypoint::ExperimentLoggerBuilder) -> waypoint::ExperimentLoggerBuilder,
    bool,
    &'static str,
);

#[test]
fn version_knobs_choose_the_directory() {
    let table: Vec<VersionCase> = vec![
        ("explicit version", |b| b.version("v3"), false, "exp/v3"),
        (
            "explicit version wins over resume",
            |b| b.version("v3"),
            true,
            "exp/v3",
        ),
        ("resume without a version: none", |b| b, true, "exp"),
        ("datetime by default", |b| b, false, "exp/<datetime>"),
        (
            "no datetime: none",
            |b| b.use_datetime_version(false),
            false,
            "exp",
        ),
        (
            "another name",
            |b| b.name("other").use_datetime_version(false),
            false,
            "other",
        ),
    ];
    for (case, knobs, resuming, want) in table {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        let r = if resuming { resume() } else { no_resume() };
        let experiment = knobs(logger(&root)).build().unwrap().setup(&r).unwrap();
        let rel = experiment
            .version_dir()
            .strip_prefix(root.canonicalize().unwrap())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if want == "exp/<datetime>" {
            let v = experiment.version().unwrap();
            assert_eq!(rel, format!("exp/{v}"), "{case}");
            let shape: String = v
                .chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect();
            assert_eq!(shape, "9999-99-99_99-99-99", "{case}");
        } else {
            assert_eq!(rel, want, "{case}");
        }
        assert_eq!(
            experiment.checkpoint_dir(),
            experiment.version_dir().join("checkpoints"),
            "{case}"
        );
    }
}

#[test]
fn explicit_log_dir_is_used_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-run");
    let logger = ExperimentLogger::builder()
        .explicit_log_dir(&dir)
        .name("gpt")
        .checkpoint(policy())
        .preemption_signals(vec![])
        .build()
        .unwrap();
    let mut experiment = logger.setup(&resume()).unwrap();
    let dir = dir.canonicalize().unwrap();
    assert_eq!(experiment.version_dir(), dir);
    assert_eq!(experiment.version(), None);
    assert_eq!(experiment.checkpoint_dir(), dir.join("checkpoints"));
    assert!(dir.join("cmd-args.log").is_file());
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 2);
    // Checkpoints keep the experiment's name.
    let names = dir_names(&dir.join("checkpoints"));
    assert!(names.iter().all(|n| n.starts_with("gpt--")), "{names:?}");
    drop(experiment);
    // Rerunning resumes from the same directory.
    let experiment = logger.setup(&resume()).unwrap();
    assert_eq!(experiment.run().resume_point().unwrap().step, 2);
}

#[test]
fn logger_knobs_reach_the_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let on = logger(tmp.path())
        .version("a")
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    assert_eq!(on.logger_dir(), Some(on.version_dir()));
    assert!(on.tensorboard() && on.csv());
    assert_eq!(on.name(), "exp");
    assert_eq!(on.ranks(), RankInfo::SINGLE);
    let off = logger(tmp.path())
        .version("b")
        .update_logger_directory(false)
        .tensorboard(false)
        .csv(false)
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    assert_eq!(off.logger_dir(), None);
    assert!(!off.tensorboard() && !off.csv());
    assert_eq!(off.hparams(), None);
    assert!(!off.version_dir().join("hparams.yaml").exists());
}

#[test]
fn other_ranks_write_only_what_is_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    // (ranks, rank-0-only knob, writes log files)
    let table: Vec<(RankInfo, &str, bool)> = vec![
        (RankInfo::new(1, 2).unwrap().with_local_rank(1), "", true),
        (
            RankInfo::new(1, 2).unwrap().with_local_rank(1),
            "global",
            false,
        ),
        (
            RankInfo::new(1, 2).unwrap().with_local_rank(0),
            "global",
            false,
        ),
        (
            RankInfo::new(1, 2).unwrap().with_local_rank(1),
            "local",
            false,
        ),
        (
            RankInfo::new(1, 2).unwrap().with_local_rank(0),
            "local",
            true,
        ),
        (
            RankInfo::new(0, 2).unwrap().with_local_rank(0),
            "global",
            true,
        ),
    ];
    for (i, (ranks, only, logs)) in table.into_iter().enumerate() {
        let version = format!("r{i}");
        let experiment = logger(tmp.path())
            .version(&version)
            .ranks(ranks)
            .log_global_rank_0_only(only == "global")
            .log_local_rank_0_only(only == "local")
            .hparams(serde_json::Map::new())
            .build()
            .unwrap()
            .setup(&no_resume())
            .unwrap();
        let dir = experiment.version_dir();
        let text = format!(
            "log_globalrank-{}_localrank-{}.txt",
            ranks.rank,
            ranks.local_rank.unwrap()
        );
        assert_eq!(dir.join(&text).is_file(), logs, "case {i}");
        assert_eq!(experiment.log_files().is_some(), logs, "case {i}");
        // Run files and the lock are global rank 0's.
        let rank0 = ranks.rank == 0;
        for f in ["cmd-args.log", "git-info.log", "hparams.yaml"] {
            assert_eq!(dir.join(f).is_file(), rank0, "case {i}: {f}");
        }
        assert_eq!(experiment.lock_path().is_some(), rank0, "case {i}");
    }
    // A rank other than 0 cannot invent a datetime version.
    let err = logger(tmp.path())
        .ranks(RankInfo::new(2, 4).unwrap().with_local_rank(0))
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidArgument {
                name: "use_datetime_version",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_rerun_moves_the_earlier_run_files_into_run_n() {
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path())
        .hparams(serde_json::Map::from_iter([("a".to_owned(), 1.into())]))
        .build()
        .unwrap();
    let mut toy = Tiny::new();
    let mut experiment = logger.setup(&resume()).unwrap();
    assert_eq!(experiment.previous_run_dir(), None);
    train(&mut experiment, &mut toy, 2);
    let dir = experiment.version_dir().to_path_buf();
    drop(experiment);
    let run_files = [
        "cmd-args.log",
        "git-info.log",
        "hparams.yaml",
        "log_globalrank-0_localrank-0.err.txt",
        "log_globalrank-0_localrank-0.txt",
    ];
    for n in 0..2 {
        let experiment = logger.setup(&resume()).unwrap();
        let moved = dir.join(format!("run_{n}"));
        assert_eq!(experiment.previous_run_dir(), Some(moved.as_path()));
        assert_eq!(dir_names(&moved), run_files, "run_{n}");
        // The new run's files are back; checkpoints and the lock stayed.
        for f in run_files {
            assert!(dir.join(f).is_file(), "{f}");
        }
        assert!(dir.join(LOCK_FILE).is_file());
        assert_eq!(experiment.run().resume_point().unwrap().step, 2);
    }
    let mut top = dir_names(&dir);
    top.retain(|n| !run_files.contains(&n.as_str()));
    // The loggers' directories stay too: their files are appended across resumes.
    assert_eq!(
        top,
        [
            LOCK_FILE,
            "checkpoints",
            "csv",
            "run_0",
            "run_1",
            "tensorboard"
        ]
    );
}

#[test]
fn two_live_runs_on_one_directory_conflict_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path()).version("v1").build().unwrap();
    let first = logger.setup(&no_resume()).unwrap();
    let err = logger.setup(&no_resume()).unwrap_err();
    match &err {
        Error::RunLocked { path, holder } => {
            assert_eq!(path, &first.version_dir().join(LOCK_FILE));
            assert!(
                holder.starts_with(&format!("pid {} on host {}", std::process::id(), host())),
                "{holder}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("another live run"), "{err}");
    // The refused setup changed nothing of the first run's.
    assert!(first.version_dir().join("cmd-args.log").is_file());
    assert!(!first.version_dir().join("run_0").exists());
    drop(first);
    let again = logger.setup(&no_resume()).unwrap();
    assert_eq!(again.stale_lock(), None, "a clean release is not stale");
}

#[test]
fn a_failed_setup_releases_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path())
        .version("v1")
        .files_to_copy(vec![tmp.path().join("missing.yaml")])
        .build()
        .unwrap();
    let err = logger.setup(&no_resume()).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = logger.setup(&no_resume()).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "not locked: {err}");
}

#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exp/v1");
    std::fs::create_dir_all(&dir).unwrap();
    let dead = dead_pid();
    std::fs::write(
        dir.join(LOCK_FILE),
        format!(r#"{{"pid":{dead},"host":"node7","started":"2025-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    let experiment = logger(tmp.path())
        .version("v1")
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    let stale = experiment.stale_lock().unwrap();
    assert_eq!(
        stale,
        format!("pid {dead} on host node7, started 2025-01-01T00:00:00Z")
    );
    let holder: serde_json::Value = serde_json::from_str(&read(dir.join(LOCK_FILE))).unwrap();
    assert_eq!(holder["pid"], std::process::id());
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn io_json_in_a_checkpoint_reads_back_into_the_config_type() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config();
    let mut experiment = logger(tmp.path())
        .version("v1")
        .config(&cfg)
        .model_config(&cfg.model)
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 4);
    let checkpoints = experiment.checkpoint_dir().to_path_buf();
    experiment.finish(toy.step, 0, &toy).unwrap();
    let names = dir_names(&checkpoints);
    assert!(!names.is_empty());
    for name in names {
        let ckpt = checkpoints.join(&name);
        let back: Config = load_config(&ckpt).unwrap();
        assert_eq!(back, cfg, "{name}");
        let model: ModelConfig =
            serde_norway::from_str(&read(ckpt.join("context/model.yaml"))).unwrap();
        assert_eq!(model, cfg.model, "{name}");
    }
    // A damaged io.json is an error naming the file.
    let ckpt = checkpoints.join(dir_names(&checkpoints)[0].clone());
    std::fs::write(ckpt.join("context/io.json"), b"{\"lr\": ").unwrap();
    match load_config::<Config>(&ckpt) {
        Err(Error::InvalidContext { path, .. }) => {
            assert_eq!(path, ckpt.join("context/io.json"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn preemption_saves_the_last_checkpoint_and_stops_the_loop() {
    let tmp = tempfile::tempdir().unwrap();
    // SIGUSR1: the only test of this binary that handles it.
    let logger = logger(tmp.path())
        .preemption_signals(vec![waypoint::preemption::SIGUSR1])
        .build()
        .unwrap();
    let mut experiment = logger.setup(&resume()).unwrap();
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 3);
    assert!(!experiment.preemption_requested());
    signal_hook::low_level::raise(waypoint::preemption::SIGUSR1).unwrap();
    assert!(experiment.preemption_requested());
    let mut stopped_at = None;
    for _ in 0..3 {
        toy.train_step();
        experiment.run_mut().step_end(toy.step, 0, &toy).unwrap();
        if experiment.run().should_stop() {
            stopped_at = Some(toy.step);
            break;
        }
    }
    assert_eq!(stopped_at, Some(4), "stops at the next step end");
    let dir = experiment.checkpoint_dir().to_path_buf();
    drop(experiment);
    let lasts: Vec<String> = dir_names(&dir)
        .into_iter()
        .filter(|n| n.ends_with("-last"))
        .collect();
    assert_eq!(lasts, ["exp--epoch=0-step=4-last"]);
    // Running again resumes there.
    let experiment = logger.setup(&resume()).unwrap();
    assert_eq!(experiment.run().resume_point().unwrap().step, 4);
}

#[test]
fn reopen_keeps_the_directory_and_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path()).max_steps(4).build().unwrap();
    let mut experiment = logger.setup(&resume()).unwrap();
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 4);
    experiment.finish(toy.step, 0, &toy).unwrap();
    let mut experiment = logger.setup(&resume()).unwrap();
    assert!(experiment.run().resume_point().unwrap().completed);
    let past_end = AutoResume::builder()
        .resume_if_exists(true)
        .resume_past_end(true)
        .build()
        .unwrap();
    experiment.reopen(&past_end).unwrap();
    let point = experiment.run().resume_point().unwrap();
    assert!(!point.completed && point.step == 4);
    assert!(matches!(
        logger.setup(&resume()),
        Err(Error::RunLocked { .. })
    ));
    assert_eq!(
        experiment.previous_run_dir().unwrap().file_name().unwrap(),
        "run_0"
    );
}

// --- Known problems of the reference (shared/reference/nemo-and-lightning.md) ---

#[test]
fn rerunning_without_a_version_resumes() {
    // NeMo: with resume_if_exists and no version there is no version directory, so the same
    // command finds the checkpoints again (a datetime version would start over every time).
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path()).build().unwrap();
    assert!(logger.use_datetime_version());
    let mut experiment = logger.setup(&resume()).unwrap();
    assert_eq!(experiment.version(), None);
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 6);
    drop(experiment);
    let mut experiment = logger.setup(&resume()).unwrap();
    let mut fresh = Tiny::new();
    let point = experiment.run_mut().restore(&mut fresh).unwrap().unwrap();
    assert_eq!((point.step, fresh.step, fresh.w[0]), (6, 6, 6));
}

#[test]
fn nemo_14259_resume_from_directory_at_the_log_root_says_where_checkpoints_are() {
    let tmp = tempfile::tempdir().unwrap();
    let mut experiment = logger(tmp.path())
        .version("v1")
        .build()
        .unwrap()
        .setup(&no_resume())
        .unwrap();
    let mut toy = Tiny::new();
    train(&mut experiment, &mut toy, 2);
    drop(experiment);
    let strict = AutoResume::builder()
        .resume_if_exists(true)
        .resume_from_directory(tmp.path())
        .build()
        .unwrap();
    let logger = logger(tmp.path()).version("v2").build().unwrap();
    let err = logger.setup(&strict).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NoCheckpoint { .. }), "{text}");
    assert!(text.contains("exp/v1/checkpoints"), "{text}");
    // The refused setup left its directory unlocked.
    assert!(logger.setup(&no_resume()).is_ok());
}

#[test]
fn nemo_14837_weights_in_files_beside_context_only_directories_are_never_resumed() {
    // NeMo #14837: "-last.ckpt" files held the weights while "-last/" directories held only the
    // context. Neither is a committed checkpoint: nothing is resumed, nothing is deleted.
    let tmp = tempfile::tempdir().unwrap();
    let checkpoints = tmp.path().join("exp/checkpoints");
    let last = checkpoints.join("exp--step=4-last");
    std::fs::create_dir_all(last.join("context")).unwrap();
    std::fs::write(last.join("context/io.json"), "{}").unwrap();
    std::fs::write(checkpoints.join("exp--step=4-last.ckpt"), b"weights").unwrap();
    let logger = logger(tmp.path()).build().unwrap();
    let experiment = logger.setup(&resume()).unwrap();
    assert!(experiment.run().resume_point().is_none(), "starts fresh");
    drop(experiment);
    let strict = AutoResume::builder()
        .resume_if_exists(true)
        .build()
        .unwrap();
    let err = logger.setup(&strict).unwrap_err();
    assert!(matches!(err, Error::NoCheckpoint { .. }), "{err}");
    assert_eq!(
        dir_names(&checkpoints),
        ["exp--step=4-last", "exp--step=4-last.ckpt"]
    );
}

// --- Child processes ---

/// This test binary, running `child_process_entry` with `scenario`.
fn child(scenario: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "experiment::child_process_entry",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("WAYPOINT_EXPERIMENT_CHILD", scenario)
    .env("WAYPOINT_EXPERIMENT_ROOT", dir)
    .env_remove("WAYPOINT_VERSION")
    .env_remove("WAYPOINT_RANK")
    .env_remove("WAYPOINT_WORLD_SIZE")
    .env_remove("WAYPOINT_LOCAL_RANK")
    .env_remove("RUST_LOG");
    cmd
}

/// Runs a child to its end; returns its `RESULT ` lines' payloads, panicking on failure.
fn child_results(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| Some(&l[l.find("RESULT ")? + "RESULT ".len()..]))
        .map(str::to_owned)
        .collect()
}

/// Spawns a child that sets up `exp/v1` under `dir`, prints `LOCKED <pid>` and holds the
/// experiment until its stdin closes.
fn holding_child(dir: &Path) -> (Child, u32) {
    let mut child = child("hold", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let pid = loop {
        let line = lines.next().expect("child ended before locking").unwrap();
        // libtest's "test child_process_entry ... " may precede it on the line.
        if let Some(at) = line.find("LOCKED ") {
            let pid = &line[at + "LOCKED ".len()..];
            break pid.parse().unwrap();
        }
    };
    // Keep reading, so that the child's last lines never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, pid)
}

#[test]
fn a_live_run_in_another_process_holds_the_directory_and_its_death_frees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let logger = logger(tmp.path()).version("v1").build().unwrap();

    // A clean exit releases the lock.
    let (mut holder, pid) = holding_child(tmp.path());
    assert_eq!(pid, holder.id());
    match logger.setup(&no_resume()) {
        Err(Error::RunLocked { holder: who, .. }) => {
            assert!(
                who.starts_with(&format!("pid {pid} on host {}", host())),
                "{who}"
            )
        }
        other => panic!("{other:?}"),
    }
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    let experiment = logger.setup(&no_resume()).unwrap();
    assert_eq!(experiment.stale_lock(), None);
    drop(experiment);

    // SIGKILL: the kernel drops the lock; the next run takes the stale record over.
    let (mut holder, pid) = holding_child(tmp.path());
    assert!(matches!(
        logger.setup(&no_resume()),
        Err(Error::RunLocked { .. })
    ));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let experiment = logger.setup(&no_resume()).unwrap();
    let stale = experiment.stale_lock().expect("the dead holder is named");
    assert!(stale.starts_with(&format!("pid {pid} on host ")), "{stale}");
}

#[test]
fn the_stale_lock_warning_and_setup_lines_reach_the_log_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exp/v1");
    std::fs::create_dir_all(&dir).unwrap();
    let dead = dead_pid();
    std::fs::write(
        dir.join(LOCK_FILE),
        format!(r#"{{"pid":{dead},"host":"node7","started":"x"}}"#),
    )
    .unwrap();
    child_results(&mut child("setup", tmp.path()));
    let errors = read(dir.join("log_globalrank-0_localrank-0.err.txt"));
    assert!(errors.contains("WARN"), "{errors}");
    assert!(errors.contains("stale lock"), "{errors}");
    assert!(
        errors.contains(&format!("pid {dead} on host node7")),
        "{errors}"
    );
    let text = read(dir.join("log_globalrank-0_localrank-0.txt"));
    assert!(
        text.contains("INFO") && text.contains("experiment directory"),
        "{text}"
    );
    assert!(
        text.contains("stale lock"),
        "warnings are in the text log too: {text}"
    );
}

#[test]
fn the_environment_sets_version_and_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let results = child_results(
        child("setup-env", tmp.path())
            .env("WAYPOINT_VERSION", "2024-01-02_03-04-05")
            .env("WAYPOINT_RANK", "3")
            .env("WAYPOINT_WORLD_SIZE", "4")
            .env("WAYPOINT_LOCAL_RANK", "1"),
    );
    assert_eq!(
        results,
        [
            "version=2024-01-02_03-04-05",
            "ranks=3/4/1",
            "log=log_globalrank-3_localrank-1.txt",
            "child_env=WAYPOINT_VERSION=2024-01-02_03-04-05",
        ]
    );
    // RankInfo's rule: a complete set or nothing; a half-set names what is missing.
    let refused: [(&[(&str, &str)], &str); 3] = [
        (
            &[("WAYPOINT_RANK", "x"), ("WAYPOINT_WORLD_SIZE", "4")],
            "error=invalid environment: WAYPOINT_RANK=\"x\" is not a non-negative integer",
        ),
        (
            &[("WAYPOINT_RANK", "3")],
            "error=invalid environment: WAYPOINT_RANK is set but WAYPOINT_WORLD_SIZE is not",
        ),
        (
            &[("WAYPOINT_LOCAL_RANK", "1")],
            "error=invalid environment: WAYPOINT_LOCAL_RANK is set but WAYPOINT_RANK and WAYPOINT_WORLD_SIZE are not",
        ),
    ];
    for (vars, want) in refused {
        let mut cmd = child("setup-env", tmp.path());
        cmd.envs(vars.iter().copied());
        let results = child_results(&mut cmd);
        assert_eq!(results.len(), 1, "{vars:?}: {results:?}");
        assert!(results[0].starts_with(want), "{vars:?}: {results:?}");
    }
    let results =
        child_results(child("setup-env", tmp.path()).env("WAYPOINT_VERSION", "../escape"));
    assert!(
        results[0].starts_with("error=invalid WAYPOINT_VERSION"),
        "{results:?}"
    );
}

#[test]
fn git_info_records_the_commit_and_the_diff_of_the_work_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("train.py"), "lr = 0.1\n").unwrap();
    git(&["add", "train.py"]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("train.py"), "lr = 0.2\n").unwrap();
    let sha = git(&["rev-parse", "HEAD"]);
    let runs = tmp.path().join("runs");
    child_results(child("setup", &runs).current_dir(&repo));
    let info = read(runs.join("exp/v1/git-info.log"));
    assert!(info.starts_with(&format!("commit hash: {sha}\n")), "{info}");
    assert!(info.contains("-lr = 0.1\n+lr = 0.2"), "{info}");

    // Outside a work tree: a line that says so.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    child_results(child("setup", &outside).current_dir(&outside));
    let info = read(outside.join("exp/v1/git-info.log"));
    assert!(info.starts_with("not inside a git work tree"), "{info}");
}

/// The child side: does what `WAYPOINT_EXPERIMENT_CHILD` says under `WAYPOINT_EXPERIMENT_ROOT`.
#[test]
#[ignore = "run as a child process by the tests above"]
fn child_process_entry() {
    let scenario = std::env::var("WAYPOINT_EXPERIMENT_CHILD")
        .expect("run by the tests above, which set WAYPOINT_EXPERIMENT_CHILD");
    let root = PathBuf::from(std::env::var("WAYPOINT_EXPERIMENT_ROOT").unwrap());
    match scenario.as_str() {
        "hold" => {
            let _experiment = logger(&root)
                .version("v1")
                .build()
                .unwrap()
                .setup(&no_resume())
                .unwrap();
            println!("LOCKED {}", std::process::id());
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink); // until the parent closes stdin
        }
        "setup" => {
            let experiment = logger(&root)
                .version("v1")
                .build()
                .unwrap()
                .setup(&no_resume())
                .unwrap();
            tracing::info!("child set up");
            drop(experiment); // flushes the log files
        }
        "setup-env" => match logger(&root).build().unwrap().setup(&no_resume()) {
            Ok(experiment) => {
                println!("RESULT version={}", experiment.version().unwrap_or(""));
                let r = experiment.ranks();
                let local = r.local_rank.unwrap_or(0);
                println!("RESULT ranks={}/{}/{local}", r.rank, r.world_size);
                let (text, _) = experiment.log_files().unwrap();
                println!("RESULT log={}", text.file_name().unwrap().to_str().unwrap());
                let env: Vec<String> = experiment
                    .child_env()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!("RESULT child_env={}", env.join(","));
            }
            Err(e) => println!("RESULT error={e}"),
        },
        other => panic!("unknown scenario {other}"),
    }
}
