//! burn-train's Learner through `LearnerRun` (feature `learner`): it trains with waypoint's
//! checkpointers, strategy and metric logger, keeps the top 2 epochs by `valid_loss` and `-last`,
//! is stopped after an epoch and resumed from it, and ends with the weights of an uninterrupted
//! run, bit for bit; its metrics are in the experiment's CSV log.

use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::AdamConfig;
use burn::train::metric::LossMetric;
use burn::train::metric::store::EventStoreClient;
use burn::train::{EarlyStoppingStrategy, Learner, SupervisedTraining};
use std::path::{Path, PathBuf};
use waypoint::{ExperimentLogger, ModelCheckpoint, SaveLast};
use waypoint_burn::LearnerRun;

/// The `learner` example's model and data.
#[path = "../../examples/learner/model.rs"]
mod model;
use model::{Regression, loaders};

/// The experiment under `dir`: top 2 by `valid_loss`, `-last`, a save at every epoch, CSV logs.
fn waypoint(dir: &Path) -> LearnerRun {
    let policy = ModelCheckpoint::builder()
        .monitor("valid_loss")
        .save_top_k(2)
        .save_last(SaveLast::Yes)
        .every_n_epochs(1)
        .build()
        .unwrap();
    let resume = crate::common::resume();
    let experiment = ExperimentLogger::builder()
        .log_dir(dir)
        .name("learner")
        .checkpoint(policy)
        .tensorboard(false)
        .csv(true)
        .build()
        .unwrap()
        .setup(&resume)
        .unwrap();
    LearnerRun::from_experiment(experiment).unwrap()
}

/// burn-train's early stopping after epoch `.0`: a Learner stopped before its last epoch.
#[derive(Clone)]
struct StopAfter(usize);

impl EarlyStoppingStrategy for StopAfter {
    fn should_stop(&mut self, epoch: usize, _: &EventStoreClient) -> bool {
        epoch >= self.0
    }
}

/// Trains a Learner of 5 epochs (resuming when there is a checkpoint), stopped early after
/// epoch `stop` when given. Returns the final weights' bytes.
fn train(waypoint: &LearnerRun, stop: Option<usize>) -> Vec<u8> {
    let device = crate::common::ndarray().autodiff();
    device.seed(7);
    let model = Regression::new(&device);
    let optim = AdamConfig::new().init();
    let scheduler = LinearLrSchedulerConfig::new(5e-2, 5e-3, 40).init().unwrap();
    let (train, valid) = loaders(3, 32);
    let burn_dir = tempfile::tempdir().unwrap(); // burn's own files: none with waypoint's hooks
    // The resumed epochs see the permutations an uninterrupted run would have drawn.
    let train = waypoint.resumed_order(train);
    let training = SupervisedTraining::new(burn_dir.path(), train, valid)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_application_logger(None);
    let training = match stop {
        Some(epoch) => training.early_stopping(StopAfter(epoch)),
        None => training,
    };
    let result = waypoint
        .attach(training, 5)
        .launch(Learner::new(model, optim, scheduler));
    assert!(result.error.is_none(), "{:?}", result.error);
    crate::common::contents(&result.model)
        .into_iter()
        .flat_map(|(_, _, _, bytes, _)| bytes)
        .collect()
}

/// The checkpoints kept by the experiment `learner` under `dir`, sorted.
fn kept(dir: &Path) -> Vec<String> {
    crate::common::kept(&dir.join("learner"))
}

/// Every `metrics.csv` below `dir`.
fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(csv_files(&path));
        } else if path.file_name().is_some_and(|n| n == "metrics.csv") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_learner_keeps_top_k_and_last_is_stopped_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let reference_dir = tmp.path().join("reference");
    let reference_run = waypoint(&reference_dir);
    assert_eq!(reference_run.resume_epoch(), None);
    let reference = train(&reference_run, None);
    assert_eq!(reference_run.step(), 40, "8 iterations per epoch");
    let losses = reference_run.epoch_values(&burn::train::metric::store::Split::Valid);
    assert_eq!(losses.len(), 5, "{losses:?}");
    assert!(losses[4].2 < losses[0].2 / 2.0, "it learns: {losses:?}");
    reference_run.finish().unwrap();
    let expected = kept(&reference_dir);
    assert_eq!(expected.len(), 3, "top 2 and -last: {expected:?}");
    assert!(
        expected.iter().any(|n| n.ends_with("-last")),
        "{expected:?}"
    );
    assert!(
        waypoint(&reference_dir).completed(),
        "a finished run is not trained again"
    );

    // Stopped after epoch 3 (the process ends without finishing), then resumed to epoch 5.
    let dir = tmp.path().join("stopped");
    let first = waypoint(&dir);
    train(&first, Some(3));
    assert_eq!(first.step(), 24);
    let saved = first.close().unwrap();
    assert!(saved.iter().any(|s| s.name.ends_with("-last")), "{saved:?}");
    let second = waypoint(&dir);
    assert_eq!(second.resume_epoch(), Some(3));
    assert_eq!(second.step(), 24);
    let resumed = train(&second, None);
    assert_eq!(second.step(), 40);
    second.finish().unwrap();
    assert_eq!(resumed, reference, "stopped and resumed: the same weights");
    assert_eq!(kept(&dir), expected, "the same checkpoints kept");

    let csv: String = csv_files(&dir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(csv.contains("valid_loss"), "{csv}");
    assert!(csv.contains("train_loss"), "{csv}");
}

/// The Learner example (`examples/learner.rs`), built by `cargo test` beside this test binary.
fn learner_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("examples").join("learner");
    assert!(path.exists(), "{} not built", path.display());
    path
}

fn learner_command(log_dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(learner_example());
    // 1,024 iterations an epoch (~0.2 s here): after any kill point below, two epochs or more
    // are left to run, so the kill lands before the run ends even when this test's thread is
    // slow to read.
    cmd.arg("--log-dir")
        .arg(log_dir)
        .args(["--epochs", "6", "--points", "4096"]);
    cmd.env_remove("WAYPOINT_FAILPOINT")
        .env("RUST_LOG", "waypoint_burn=debug");
    cmd
}

/// The example run to its end: its stdout.
fn learner_run_ok(log_dir: &Path) -> String {
    crate::common::stdout_of_success(&mut learner_command(log_dir))
}

/// Runs the example and kills it (SIGKILL) right after its `k`-th epoch save began (the
/// `burn epoch checkpointed` line on stderr: the save is then in waypoint's background writer).
/// Whether it was killed.
fn learner_killed_after(log_dir: &Path, k: usize) -> bool {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let mut child = learner_command(log_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("burn epoch checkpointed") {
            seen += 1;
            if seen == k {
                // SAFETY: kill(2) on our own child, not waited for yet.
                let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                assert_eq!(rc, 0);
                break;
            }
        }
    }
    lines.for_each(drop);
    let status = child.wait().unwrap();
    match status.signal() {
        Some(libc::SIGKILL) => true,
        _ => {
            assert!(status.success(), "{status}");
            false
        }
    }
}

/// The Learner example killed with SIGKILL right after epoch saves began, again and again, then
/// run to its end: the weights of an uninterrupted run, bit for bit, and the same checkpoints.
#[test]
fn the_learner_example_killed_during_its_saves_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let reference_dir = tmp.path().join("reference");
    let first = learner_run_ok(&reference_dir);
    assert!(first.contains("starting fresh"), "{first}");
    let reference = crate::common::final_digest(&first);
    let expected = kept(&reference_dir);
    assert_eq!(expected.len(), 3, "top 2 and -last: {expected:?}");
    let again = learner_run_ok(&reference_dir);
    assert!(again.contains("run already completed"), "{again}");

    let dir = tmp.path().join("killed");
    // Each process is killed after its k-th epoch save began: 4 epochs at most in all, so
    // every one of the 6-epoch run's processes is still training when its kill lands.
    for (i, k) in [1, 2, 1].into_iter().enumerate() {
        assert!(
            learner_killed_after(&dir, k),
            "process {i} ended before its kill"
        );
    }
    let finished = learner_run_ok(&dir);
    assert!(finished.contains("resumed from epoch"), "{finished}");
    assert_eq!(
        crate::common::final_digest(&finished),
        reference,
        "killed and resumed"
    );
    assert_eq!(kept(&dir), expected, "the same checkpoints kept");
}
