//! Training states and run fixtures shared by the tests of the Run, the experiment directory and
//! the metric trackers: a toy trainer with an optimizer ([`Toy`]), a tiny model ([`Tiny`]), the
//! resume they use, and a short loop that logs one metric per step.

use waypoint::{
    AutoResume, Checkpointable, Dtype, ExperimentLogger, ExperimentLoggerBuilder, ModelCheckpoint,
    Run, SinkSlot, TensorRef,
};

/// Bytes of [`Toy`]'s weights and of its momentum buffer.
pub const TOY_BYTES: (usize, usize) = (4096, 1024);

/// A toy trainer: weights (`model.w`) and a momentum buffer (`optim.m`) that evolve
/// deterministically from an RNG, whose state is in the trainer state.
#[derive(Debug, Clone, PartialEq)]
pub struct Toy {
    pub w: Vec<u8>,
    pub m: Vec<u8>,
    pub step: u64,
    pub rng: u64,
}

impl Toy {
    pub fn new() -> Self {
        Toy {
            w: vec![0; TOY_BYTES.0],
            m: vec![0; TOY_BYTES.1],
            step: 0,
            rng: 0x1234_5678,
        }
    }

    pub fn train_step(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let r = self.rng;
        for (i, b) in self.w.iter_mut().enumerate() {
            *b = b.wrapping_add((r >> (i % 56)) as u8);
        }
        for (i, b) in self.m.iter_mut().enumerate() {
            *b = b.wrapping_mul(3).wrapping_add((r >> (i % 48)) as u8);
        }
        self.step += 1;
    }

    /// A validation loss that falls with noise, so the top-k changes over time.
    pub fn val_loss(&self) -> f64 {
        1.0 / self.step as f64 + (self.rng % 1000) as f64 / 4000.0
    }
}

impl Checkpointable for Toy {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![TensorRef::whole(
            "model.w",
            Dtype::U8,
            vec![TOY_BYTES.0 as u64],
            self.w.as_slice(),
        )]
    }
    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![TensorRef::whole(
            "optim.m",
            Dtype::U8,
            vec![TOY_BYTES.1 as u64],
            self.m.as_slice(),
        )]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({"step": self.step, "rng": self.rng})
    }
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        vec![
            SinkSlot {
                name: "model.w",
                dtype: Dtype::U8,
                shape: &[TOY_BYTES.0 as u64],
                data: &mut self.w,
            },
            SinkSlot {
                name: "optim.m",
                dtype: Dtype::U8,
                shape: &[TOY_BYTES.1 as u64],
                data: &mut self.m,
            },
        ]
    }
    fn restore_trainer_state(&mut self, s: serde_json::Value) -> waypoint::Result<()> {
        self.step = s["step"].as_u64().unwrap();
        self.rng = s["rng"].as_u64().unwrap();
        Ok(())
    }
}

/// A tiny model whose 64 weight bytes (`w`) are its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiny {
    pub w: Vec<u8>,
    pub step: u64,
}

impl Tiny {
    pub fn new() -> Tiny {
        Tiny {
            w: vec![0; 64],
            step: 0,
        }
    }
    pub fn train_step(&mut self) {
        self.step += 1;
        self.w.iter_mut().for_each(|b| *b = self.step as u8);
    }
}

impl Checkpointable for Tiny {
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

/// Resumes from the newest checkpoint if there is one, else starts fresh.
pub fn resume() -> AutoResume {
    AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()
        .unwrap()
}

/// Saves every 5 steps, keeps the newest one (and its -last).
pub fn every_5_keep_1() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(1)
        .every_n_train_steps(5)
        .build()
        .unwrap()
}

/// Restores `tiny` (when `run` resumes), then trains it to step `until`, logging `metric` with
/// the value `value(step)` at every step.
pub fn train_tiny(
    run: &mut Run,
    tiny: &mut Tiny,
    until: u64,
    metric: &str,
    value: impl Fn(u64) -> f64,
) {
    run.restore(tiny).unwrap();
    while tiny.step < until {
        tiny.train_step();
        run.log_metrics(tiny.step, &[(metric, value(tiny.step))]);
        run.step_end(tiny.step, 0, &*tiny).unwrap();
    }
}

/// Sets `logger` up (resuming), trains a [`Tiny`] to step `until` through its run as
/// [`train_tiny`] does, then finishes the experiment, or leaves it "killed" (its saves waited
/// for, never finished) unless `finish`.
pub fn tiny_experiment(
    logger: ExperimentLogger,
    until: u64,
    finish: bool,
    metric: &str,
    value: impl Fn(u64) -> f64,
) {
    let mut experiment = logger.setup(&resume()).unwrap();
    let mut tiny = Tiny::new();
    train_tiny(experiment.run_mut(), &mut tiny, until, metric, value);
    if finish {
        experiment.finish(tiny.step, 0, &tiny).unwrap();
    } else {
        experiment.run_mut().wait_for_saves().unwrap();
    }
}

/// An experiment `<dir>/<name>/v1` for one tracker: no TensorBoard or CSV, [`every_5_keep_1`].
pub fn tracker_experiment(dir: &std::path::Path, name: &str) -> ExperimentLoggerBuilder {
    ExperimentLogger::builder()
        .log_dir(dir)
        .name(name)
        .version("v1")
        .tensorboard(false)
        .csv(false)
        .checkpoint(every_5_keep_1())
}
