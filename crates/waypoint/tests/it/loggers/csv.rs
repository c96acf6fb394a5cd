//! `CsvLogger`: Lightning's layout, one row per step, header growth by atomic rewrite, rows
//! continued across a resume without duplicated steps, `hparams.yaml` and `checkpoints.csv`.

use super::checkpoint;
use super::support::tmp;
use serde_json::json;
use waypoint::loggers::{CHECKPOINTS_FILE, HPARAMS_FILE, METRICS_FILE};
use waypoint::{CsvLogger, LoggerOptions, Loggers, MetricLogger, RunStatus};

fn read(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn one_row_per_step_with_a_header_that_grows() {
    let dir = tmp();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    csv.log_metrics(1, 0.0, &[("train_loss", 0.5)]).unwrap();
    csv.flush().unwrap();
    assert_eq!(read(dir.path(), METRICS_FILE), "step,train_loss\n1,0.5\n");
    // Same step after a flush: the row is completed in place; a new metric grows the header.
    csv.log_metrics(1, 0.0, &[("val_loss", 0.25)]).unwrap();
    csv.log_metrics(2, 0.0, &[("train_loss", 0.125), ("lr", 1e-4)])
        .unwrap();
    csv.flush().unwrap();
    assert_eq!(
        read(dir.path(), METRICS_FILE),
        "step,lr,train_loss,val_loss\n1,,0.5,0.25\n2,0.0001,0.125,\n"
    );
    csv.log_metrics(2, 0.0, &[("val_loss", 0.1)]).unwrap();
    csv.log_metrics(3, 0.0, &[("a,b", 0.1 + 0.2)]).unwrap();
    csv.finalize(RunStatus::Success).unwrap();
    assert_eq!(
        read(dir.path(), METRICS_FILE),
        "step,\"a,b\",lr,train_loss,val_loss\n\
         1,,,0.5,0.25\n\
         2,,0.0001,0.125,0.1\n\
         3,0.30000000000000004,,,\n"
    );
    // No temporary file is left behind by the rewrites.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [METRICS_FILE]);
}

#[test]
fn a_resumed_run_replaces_the_rows_from_its_resume_step_on() {
    let dir = tmp();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    for step in 1..=10u64 {
        csv.log_metrics(step, 0.0, &[("loss", step as f64)])
            .unwrap();
        if step % 5 == 0 {
            csv.checkpoint_saved(&checkpoint(step)).unwrap();
        }
    }
    csv.flush().unwrap();
    drop(csv); // killed: no finalize
    // The killed writer was in the middle of a row.
    let metrics = dir.path().join(METRICS_FILE);
    let mut text = read(dir.path(), METRICS_FILE);
    text.push_str("11,0.");
    std::fs::write(&metrics, text).unwrap();

    let mut csv = CsvLogger::new(dir.path(), Some(6)).unwrap();
    for step in 6..=12u64 {
        csv.log_metrics(step, 0.0, &[("loss", 100.0 + step as f64)])
            .unwrap();
    }
    csv.finalize(RunStatus::Success).unwrap();
    let want: String = std::iter::once("step,loss\n".to_owned())
        .chain((1..=5).map(|s| format!("{s},{s}\n")))
        .chain((6..=12).map(|s| format!("{s},{}\n", 100 + s)))
        .collect();
    assert_eq!(read(dir.path(), METRICS_FILE), want);
    // The checkpoint at step 10 belonged to the killed run's future; the one at 5 stays.
    assert_eq!(
        read(dir.path(), CHECKPOINTS_FILE),
        "step,path,bytes,blocked_ms,write_ms\n5,/ckpt/step=5,3145728,1.5,20.25\n"
    );
}

#[test]
fn resumed_through_the_fan_out_after_opening() {
    let dir = tmp();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    for step in 1..=10u64 {
        csv.log_metrics(step, 0.0, &[("loss", step as f64), ("acc", 0.5)])
            .unwrap();
    }
    csv.finalize(RunStatus::Success).unwrap();

    let csv = CsvLogger::new(dir.path(), None).unwrap();
    let mut log = Loggers::spawn(vec![Box::new(csv)], LoggerOptions::default()).unwrap();
    log.resumed(8);
    for step in 8..=9 {
        log.log_metrics(step, &[("loss", -(step as f64))]);
    }
    log.finalize(RunStatus::Success).unwrap();
    let text = read(dir.path(), METRICS_FILE);
    let tail: Vec<&str> = text.lines().skip(6).collect();
    assert_eq!(tail, ["6,0.5,6", "7,0.5,7", "8,,-8", "9,,-9"]);
}

#[test]
fn hparams_yaml_beside_metrics_csv() {
    let dir = tmp();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    let params = json!({
        "lr": 1e-5, "batch_size": 32, "optimizer": {"name": "adamw", "betas": [0.9, 0.95]},
        "on": "yes", "warmup": true
    });
    csv.log_hyperparams(params.as_object().unwrap()).unwrap();
    assert_eq!(
        read(dir.path(), HPARAMS_FILE),
        "batch_size: 32\n\
         lr: 1.0e-5\n\
         \"on\": \"yes\"\n\
         optimizer:\n  betas:\n    - 0.9\n    - 0.95\n  name: \"adamw\"\n\
         warmup: true\n"
    );
}

/// An unreadable `metrics.csv` never keeps a run from starting: a file whose header is not ours
/// is moved aside, lines that are not UTF-8 or hold no step go to `metrics.csv.corrupt`, and
/// logging goes on after the readable rows; through an experiment's setup too.
#[test]
fn an_unreadable_file_is_set_aside_and_logging_goes_on() {
    let dir = tmp();
    std::fs::write(dir.path().join(METRICS_FILE), "epoch,loss\n1,2\n").unwrap();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    csv.log_metrics(1, 0.0, &[("loss", 0.5)]).unwrap();
    csv.finalize(RunStatus::Success).unwrap();
    assert_eq!(read(dir.path(), METRICS_FILE), "step,loss\n1,0.5\n");
    assert_eq!(read(dir.path(), "metrics.csv.corrupt"), "epoch,loss\n1,2\n");

    let dir = tmp();
    let torn = b"step,loss\n1,0.5\n2,\xff\xfe\nx,3\n3,0.25\n";
    std::fs::write(dir.path().join(METRICS_FILE), torn).unwrap();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    csv.log_metrics(4, 0.0, &[("loss", 0.125)]).unwrap();
    csv.finalize(RunStatus::Success).unwrap();
    assert_eq!(
        read(dir.path(), METRICS_FILE),
        "step,loss\n1,0.5\n3,0.25\n4,0.125\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("metrics.csv.corrupt")).unwrap(),
        b"2,\xff\xfe\nx,3\n"
    );

    // An experiment whose CSV (and checkpoints.csv) an earlier run left unreadable starts.
    let root = tmp();
    let csv_dir = root.path().join("bad/v1/csv");
    std::fs::create_dir_all(&csv_dir).unwrap();
    std::fs::write(csv_dir.join(METRICS_FILE), b"\xff\xfe,x\n1,2\n").unwrap();
    std::fs::write(csv_dir.join("checkpoints.csv"), "path\nnot a step\n").unwrap();
    let logger = waypoint::ExperimentLogger::builder()
        .log_dir(root.path())
        .name("bad")
        .version("v1")
        .tensorboard(false)
        .build()
        .unwrap();
    crate::common::training::tiny_experiment(logger, 3, true, "loss", |s| s as f64);
    assert_eq!(read(&csv_dir, METRICS_FILE), "step,loss\n1,1\n2,2\n3,3\n");
}

/// A disk that fills up while the CSV logger writes (a real 64 KiB tmpfs): the writes fail and
/// are reported, and a run started on the same directory once there is room again starts and
/// continues after the rows that are whole.
#[test]
fn a_full_disk_while_logging_never_keeps_the_next_run_from_starting() {
    let dir = tmp();
    let _mount = super::support::small_tmpfs(dir.path(), 64 << 10);
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();
    let mut csv = CsvLogger::new(dir.path(), None).unwrap();
    let mut failed = None;
    for step in 1..100_000u64 {
        let name = format!("métrique_{}", step % 7);
        let logged = csv
            .log_metrics(step, 0.0, &[(name.as_str(), step as f64 / 3.0)])
            .and_then(|()| csv.flush());
        if let Err(e) = logged {
            failed = Some((step, e));
            break;
        }
    }
    let (step, err) = failed.expect("the disk never filled up");
    assert!(
        err.to_string().to_lowercase().contains("no space left"),
        "{err}"
    );
    drop(csv);
    std::fs::remove_file(&filler).unwrap();
    let mut again = CsvLogger::new(dir.path(), Some(step)).unwrap();
    again
        .log_metrics(step, 0.0, &[("métrique_0", -1.0)])
        .unwrap();
    again.finalize(RunStatus::Success).unwrap();
    let text = read(dir.path(), METRICS_FILE);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert!(rows.len() >= 2, "{text}");
    let steps: Vec<u64> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps.last(), Some(&step), "{text}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}
