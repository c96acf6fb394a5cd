//! Tables for every knob of [`ExperimentLogger`] and every conflict the builder refuses.

use super::*;
use crate::ExperimentLogger as L;

type Knobs = fn(ExperimentLoggerBuilder) -> ExperimentLoggerBuilder;

#[test]
fn every_conflict_and_invalid_knob_is_refused_by_name() {
    // (case, knobs, the knob named, words in the reason)
    let table: Vec<(&str, Knobs, &str, &str)> = vec![
        (
            "explicit + log_dir",
            |b| b.explicit_log_dir("/x").log_dir("/y"),
            "explicit_log_dir",
            "log_dir",
        ),
        (
            "explicit + version",
            |b| b.explicit_log_dir("/x").version("v"),
            "explicit_log_dir",
            "version",
        ),
        (
            "explicit empty",
            |b| b.explicit_log_dir(""),
            "explicit_log_dir",
            "empty",
        ),
        (
            "both rank-0-only",
            |b| b.log_global_rank_0_only(true).log_local_rank_0_only(true),
            "log_global_rank_0_only",
            "log_local_rank_0_only",
        ),
        ("empty name", |b| b.name(""), "name", "empty"),
        (
            "name with a slash",
            |b| b.name("a/b"),
            "name",
            "one path component",
        ),
        ("hidden name", |b| b.name(".x"), "name", "'.'"),
        ("version ..", |b| b.version(".."), "version", "'.'"),
        ("empty log_dir", |b| b.log_dir(""), "log_dir", "empty"),
        (
            "copy without a file name",
            |b| b.files_to_copy(vec!["/".into()]),
            "files_to_copy",
            "file name",
        ),
        (
            "copy named like a run file",
            |b| b.files_to_copy(vec!["/tmp/cmd-args.log".into()]),
            "files_to_copy",
            "run file",
        ),
        (
            "copy named like the lock",
            |b| b.files_to_copy(vec![".waypoint.lock".into()]),
            "files_to_copy",
            "run file",
        ),
        (
            "copy named like a run dir",
            |b| b.files_to_copy(vec!["a/run_3".into()]),
            "files_to_copy",
            "run file",
        ),
        (
            "two copies, one name",
            |b| b.files_to_copy(vec!["a/c.yaml".into(), "b/c.yaml".into()]),
            "files_to_copy",
            "overwrite",
        ),
        (
            "SIGKILL",
            |b| b.preemption_signals(vec![libc::SIGKILL]),
            "preemption_signals",
            "SIGKILL",
        ),
        (
            "a config serde refuses",
            |b| b.config(&std::collections::HashMap::from([((1, 2), 3)])),
            "config",
            "JSON",
        ),
    ];
    for (case, knobs, knob, words) in table {
        match knobs(L::builder()).build() {
            Err(Error::InvalidArgument { name, reason }) => {
                assert_eq!(name, knob, "{case}: {reason}");
                assert!(reason.contains(words), "{case}: {reason}");
            }
            other => panic!("{case}: {other:?}"),
        }
    }
}

#[test]
fn every_knob_is_kept() {
    let ckpt = ModelCheckpoint::builder().save_top_k(1).build().unwrap();
    let hp = serde_json::Map::from_iter([("lr".to_owned(), serde_json::json!(0.1))]);
    let e = L::builder()
        .log_dir("/runs")
        .name("gpt")
        .version("v2")
        .use_datetime_version(false)
        .files_to_copy(vec!["conf/train.yaml".into()])
        .update_logger_directory(false)
        .log_local_rank_0_only(true)
        .checkpoint(ckpt.clone())
        .tensorboard(false)
        .csv(false)
        .config(&serde_json::json!({"lr": 0.1}))
        .model_config(&serde_json::json!({"hidden": 8}))
        .hparams(hp.clone())
        .preemption_signals(vec![libc::SIGUSR1])
        .ranks(RankInfo::new(2, 4).unwrap().with_local_rank(1))
        .max_steps(9)
        .build()
        .unwrap();
    assert_eq!(e.log_dir(), std::path::Path::new("/runs"));
    assert_eq!((e.name(), e.version()), ("gpt", Some("v2")));
    assert!(!e.use_datetime_version());
    assert_eq!(e.explicit_log_dir(), None);
    assert_eq!(e.files_to_copy(), [PathBuf::from("conf/train.yaml")]);
    assert!(!e.update_logger_directory());
    assert!(e.log_local_rank_0_only() && !e.log_global_rank_0_only());
    assert_eq!(e.checkpoint(), Some(&ckpt));
    assert!(!e.tensorboard() && !e.csv());
    assert_eq!(e.io_json(), Some(&b"{\n  \"lr\": 0.1\n}\n"[..]));
    assert_eq!(e.model_yaml(), Some(&b"hidden: 8\n"[..]));
    assert_eq!(e.hparams(), Some(&hp));
    assert_eq!(e.preemption_signals(), [libc::SIGUSR1]);
    assert_eq!(
        e.ranks().map(|r| (r.rank, r.world_size, r.local_rank)),
        Some((2, 4, Some(1)))
    );
    assert_eq!(e.max_steps(), Some(9));
    // The run's settings are one value, the getters' source.
    let c = e.run_config();
    assert_eq!((c.log_dir.as_path(), c.name.as_str()), (e.log_dir(), "gpt"));
    assert_eq!(
        (c.version.as_deref(), c.max_steps, c.checkpoint.as_ref()),
        (Some("v2"), Some(9), Some(&ckpt))
    );
    let names: Vec<&str> = c.context.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [IO_JSON, MODEL_YAML]);

    // NeMo's defaults.
    let d = L::builder().build().unwrap();
    assert_eq!(d.log_dir(), std::path::Path::new(DEFAULT_LOG_DIR));
    assert_eq!((d.name(), d.version()), ("default", None));
    assert!(d.use_datetime_version() && d.update_logger_directory());
    assert!(d.tensorboard() && d.csv());
    assert!(!d.log_local_rank_0_only() && !d.log_global_rank_0_only());
    assert_eq!(d.preemption_signals(), [libc::SIGTERM]);
    assert_eq!(
        (d.io_json(), d.model_yaml(), d.hparams()),
        (None, None, None)
    );

    // explicit_log_dir alone is fine (the datetime default does not conflict with it).
    let x = L::builder().explicit_log_dir("/runs/x").build().unwrap();
    assert_eq!(x.explicit_log_dir(), Some(std::path::Path::new("/runs/x")));
    // No preemption handling at all.
    assert!(L::builder().preemption_signals(vec![]).build().is_ok());
}

#[test]
fn tracker_knobs_are_refused_by_name() {
    // (case, knobs, the knob named, words in the reason), for this build's features.
    let mut table: Vec<(&str, Knobs, &str, &str)> = Vec::new();
    if cfg!(feature = "mlflow") {
        table.extend([
            (
                "a file store",
                (|b| b.mlflow("file:///tmp/mlruns")) as Knobs,
                "mlflow",
                "not an http(s) URL",
            ),
            ("no host", |b| b.mlflow("http://"), "mlflow", "no host"),
            (
                "a queue shared by runs",
                |b| {
                    b.mlflow("http://127.0.0.1:5000")
                        .update_logger_directory(false)
                },
                "mlflow",
                "update_logger_directory",
            ),
        ]);
        if !cfg!(feature = "mlflow-tls") {
            table.push((
                "https without tls",
                |b| b.mlflow("https://mlflow.example.com"),
                "mlflow",
                "mlflow-tls",
            ));
        }
    } else {
        table.push((
            "mlflow without the feature",
            |b| b.mlflow("http://127.0.0.1:5000"),
            "mlflow",
            "`mlflow` feature",
        ));
    }
    if !cfg!(feature = "wandb") {
        table.push((
            "wandb without the feature",
            |b| b.wandb_offline(true),
            "wandb",
            "`wandb` feature",
        ));
    }
    for (case, knobs, knob, words) in table {
        match knobs(L::builder()).build() {
            Err(Error::InvalidArgument { name, reason }) => {
                assert_eq!(name, knob, "{case}: {reason}");
                assert!(reason.contains(words), "{case}: {reason}");
            }
            other => panic!("{case}: {other:?}"),
        }
    }
    let ok = L::builder()
        .mlflow("http://127.0.0.1:5000/")
        .wandb_offline(true)
        .build();
    assert_eq!(
        ok.is_ok(),
        cfg!(feature = "mlflow") && cfg!(feature = "wandb"),
        "{ok:?}"
    );
}

#[test]
fn context_files_are_one_per_name_in_name_order() {
    let e = L::builder()
        .model_config(&serde_json::json!({"hidden": 8}))
        .config(&serde_json::json!({"lr": 0.1}))
        .config(&serde_json::json!({"lr": 0.2}))
        .build()
        .unwrap();
    let context = &e.run_config().context;
    let names: Vec<&str> = context.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [IO_JSON, MODEL_YAML]);
    assert_eq!(e.io_json(), Some(&b"{\n  \"lr\": 0.2\n}\n"[..]));
    assert_eq!(e.model_yaml(), Some(&b"hidden: 8\n"[..]));
    assert_eq!(L::builder().build().unwrap().run_config().context, []);
}
