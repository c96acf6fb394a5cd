//! Loggers as objects on an `ExperimentLogger` (NeMoLogger's `tensorboard=`, `wandb=`,
//! `extra_loggers=`): TensorBoard writes where `save_dir` / `name` / `version` say, a caller's
//! own `MetricLogger` receives what the built-in ones do, and the W&B run carries the given
//! `entity`, `project`, `name` and `config` as the pinned wandb reads it.

use crate::common::training::{tiny_experiment, tracker_experiment};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use waypoint::loggers::{LoggerFactory, TensorBoardSpec};
use waypoint::{CheckpointEvent, MetricLogger, RunStatus};

#[test]
fn tensorboard_writes_under_save_dir_name_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tb-root");
    let spec = TensorBoardSpec::default()
        .save_dir(&root)
        .name("mine")
        .version("v3");
    let logger = tracker_experiment(tmp.path(), "tb")
        .tensorboard_logger(spec)
        .build()
        .unwrap();
    tiny_experiment(logger, 10, true, "loss", |s| s as f64 / 2.0);
    let dir = root.join("mine/v3");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let loss: Vec<(i64, f32)> = tfevents::read_scalars(&files[0])
        .unwrap()
        .into_iter()
        .filter(|p| p.tag == "loss")
        .map(|p| (p.step, p.value))
        .collect();
    let want: Vec<(i64, f32)> = (1..=10).map(|s| (s, s as f32 / 2.0)).collect();
    assert_eq!(loss, want);
    assert!(!tmp.path().join("tb/v1/tensorboard").exists());

    // A name that is not one path component is refused at build, naming the knob.
    let err = tracker_experiment(tmp.path(), "tb")
        .tensorboard_logger(TensorBoardSpec::default().name("a/b"))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            waypoint::Error::InvalidArgument {
                name: "tensorboard",
                ..
            }
        ),
        "{err}"
    );
}

/// A logger that writes down what it receives.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl MetricLogger for Recorder {
    fn log_metrics(&mut self, step: u64, _: f64, metrics: &[(&str, f64)]) -> waypoint::Result<()> {
        for (name, value) in metrics {
            self.0
                .lock()
                .unwrap()
                .push(format!("{step} {name}={value}"));
        }
        Ok(())
    }
    fn log_hyperparams(
        &mut self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> waypoint::Result<()> {
        self.0.lock().unwrap().push(format!(
            "hparams {}",
            serde_json::Value::Object(params.clone())
        ));
        Ok(())
    }
    fn checkpoint_saved(&mut self, event: &CheckpointEvent) -> waypoint::Result<()> {
        self.0.lock().unwrap().push(format!("saved {}", event.step));
        Ok(())
    }
    fn resumed(&mut self, step: u64) -> waypoint::Result<()> {
        self.0.lock().unwrap().push(format!("resumed {step}"));
        Ok(())
    }
    fn flush(&mut self) -> waypoint::Result<()> {
        Ok(())
    }
    fn finalize(&mut self, status: RunStatus) -> waypoint::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("finalize {}", status.as_str()));
        Ok(())
    }
}

#[test]
fn extra_loggers_receive_what_the_built_in_ones_do() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dir_seen: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let factory = {
        let (seen, dir_seen) = (seen.clone(), dir_seen.clone());
        LoggerFactory::new(move |dir: &Path| {
            *dir_seen.lock().unwrap() = Some(dir.to_path_buf());
            Ok(Box::new(Recorder(seen.clone())) as Box<dyn MetricLogger>)
        })
    };
    let hparams = serde_json::json!({"lr": 0.5});
    let logger = tracker_experiment(tmp.path(), "extra")
        .hparams(hparams.as_object().unwrap().clone())
        .extra_loggers([factory])
        .build()
        .unwrap();
    tiny_experiment(logger, 10, true, "loss", |s| s as f64);
    assert_eq!(
        dir_seen.lock().unwrap().as_deref(),
        Some(tmp.path().join("extra/v1").as_path())
    );
    let seen = seen.lock().unwrap().clone();
    // In order: the hyperparameters, where the run starts, every metric, the end.
    let metrics: Vec<String> = (1..=10).map(|s| format!("{s} loss={s}")).collect();
    let mut want = vec!["hparams {\"lr\":0.5}".to_owned(), "resumed 0".to_owned()];
    want.extend(metrics);
    want.push("finalize success".into());
    let ordered: Vec<String> = seen
        .iter()
        .filter(|s| !s.starts_with("saved"))
        .cloned()
        .collect();
    assert_eq!(ordered, want);
    // The checkpoint events of the asynchronous saves (top-k and -last at steps 5 and 10), each
    // after its step's metrics.
    let mut saved: Vec<&String> = seen.iter().filter(|s| s.starts_with("saved")).collect();
    saved.dedup();
    assert_eq!(saved, ["saved 5", "saved 10"]);
    let at = |line: &str| seen.iter().position(|s| s == line).unwrap();
    assert!(at("saved 5") > at("5 loss=5") && at("saved 10") > at("10 loss=10"));
}

#[cfg(feature = "wandb")]
#[test]
fn the_wandb_run_has_the_entity_project_name_and_config_given() {
    use crate::wandb::{output, run_files, wandb};
    use waypoint::loggers::WandbSpec;
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"batch": 32, "lr": 1.0});
    let spec = WandbSpec::default()
        .entity("team-x")
        .project("proj-y")
        .name("display-z")
        .config(config.as_object().unwrap().clone());
    let logger = tracker_experiment(tmp.path(), "wb")
        .hparams(serde_json::json!({"lr": 0.5}).as_object().unwrap().clone())
        .wandb_logger(spec)
        .build()
        .unwrap();
    tiny_experiment(logger, 10, true, "loss", |s| s as f64);
    let files = run_files(&tmp.path().join("wb/v1"));
    assert_eq!(files.len(), 1, "{files:?}");
    let home = tmp.path().join("home");
    let summary: serde_json::Value = serde_json::from_str(&output(
        wandb(&home)
            .args(["leet", "inspect", "--summary", "--json"])
            .arg(&files[0]),
    ))
    .unwrap();
    assert_eq!(summary["project"], "proj-y", "{summary}");
    assert_eq!(summary["name"], "display-z", "{summary}");
    assert_eq!(summary["entity"], "team-x", "{summary}");
    // The hyperparameters merged over the given config.
    assert_eq!(
        summary["config"],
        serde_json::json!({"batch": 32, "lr": 0.5})
    );
}
