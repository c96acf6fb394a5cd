//! The Run forwards to its metric loggers: metrics, checkpoint events, where a resume starts, and
//! the final status. A run killed after a checkpoint and resumed leaves one CSV row per step and
//! TensorBoard scalars whose steps never double back.

use std::path::Path;
use waypoint::{
    AutoResume, Checkpointable, CsvLogger, Dtype, LoggerOptions, Loggers, MetricLogger,
    ModelCheckpoint, Run, SinkSlot, TensorBoardLogger, TensorRef,
};

struct Toy {
    w: Vec<u8>,
    step: u64,
}

impl Checkpointable for Toy {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![TensorRef::whole(
            "w",
            Dtype::U8,
            vec![64],
            self.w.as_slice(),
        )]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![SinkSlot {
            name: "w",
            dtype: Dtype::U8,
            shape: &[64],
            data: &mut self.w,
        }]
    }
    fn restore_trainer_state(&mut self, s: serde_json::Value) -> waypoint::Result<()> {
        self.step = s["step"].as_u64().unwrap();
        Ok(())
    }
}

fn run(dir: &Path, until: u64, finish: bool) {
    let logs = dir.join("logs");
    let loggers: Vec<Box<dyn MetricLogger>> = vec![
        Box::new(CsvLogger::new(&logs, None).unwrap()),
        Box::new(TensorBoardLogger::new(&logs, None).unwrap()),
    ];
    let loggers = Loggers::spawn(loggers, LoggerOptions::default()).unwrap();
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(1)
        .every_n_train_steps(5)
        .build()
        .unwrap();
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .log_dir(dir)
        .checkpoint(policy)
        .resume(resume)
        .loggers(loggers)
        .build()
        .unwrap();
    let mut toy = Toy {
        w: vec![0; 64],
        step: 0,
    };
    run.restore(&mut toy).unwrap();
    while toy.step < until {
        toy.step += 1;
        toy.w[0] = toy.step as u8;
        // The second run logs different values, so the test can tell whose row it sees.
        let value = toy.step as f64 + if finish { 0.5 } else { 0.0 };
        run.log_metrics(toy.step, &[("train_loss", value)]);
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    if finish {
        run.finish(toy.step, 0, &toy).unwrap();
    } else {
        run.wait_for_saves().unwrap();
        drop(run); // "killed" after step `until`: its steps after the checkpoint at 10 are lost
    }
}

#[test]
fn a_resumed_run_logs_each_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), 13, false); // checkpoint at 10, then 11..13 logged but not checkpointed
    run(tmp.path(), 20, true); // resumes at 10, logs 11..20 again
    let csv = std::fs::read_to_string(tmp.path().join("logs/metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let steps: Vec<u64> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>(), "{csv}");
    assert!(
        rows[10].ends_with("11.5"),
        "step 11 comes from the resumed run: {csv}"
    );
    assert!(rows[9].ends_with(",10"), "step 10 from the first: {csv}");
    // TensorBoard: the scalars read back (as TensorBoard's legacy loader purges on START) never
    // double back, and the checkpoint events are there.
    let mut files: Vec<_> = std::fs::read_dir(tmp.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events.out.tfevents")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let mut points: Vec<(u64, f64)> = Vec::new();
    let mut checkpoint_events = 0;
    for file in &files {
        for point in tfevents::read_scalars(file).unwrap() {
            let step = point.step as u64;
            if point.tag == "train_loss" {
                points.retain(|&(s, _)| s < step); // what a START-aware reader keeps
                points.push((step, point.value as f64));
            } else if point.tag.starts_with("checkpoint/") {
                checkpoint_events += 1;
            }
        }
    }
    let steps: Vec<u64> = points.iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());
    assert_eq!(points[10].1, 11.5);
    assert!(checkpoint_events >= 3, "{checkpoint_events}");
}
