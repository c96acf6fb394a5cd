//! The ready-made restore path: a loop saving with `Snapshot::of` inside `step_end_with`,
//! dropped mid-run, resumed through `Restorer` into fresh vars and optimizer, continues bit for
//! bit; weights-only checkpoints leave the optimizer alone; mismatches name the tensor and leave
//! the model untouched; errors convert into waypoint's and print their message; AutoResume's
//! restore_config fine-tunes from another run's checkpoint through the same `Restorer`.

use candle_core::{Device, Tensor, Var};
use serde_json::json;
use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};
use waypoint_candle::{AdamW, AdamWParams, NamedVars, Restorer, STEP_COUNT_TENSOR, Snapshot};

/// A model `y = w·x + b` with fixed initial values, and its optimizer.
struct Model {
    w: Var,
    b: Var,
    vars: NamedVars,
    opt: AdamW,
}

impl Model {
    fn new(w_cols: usize) -> Self {
        let cpu = &Device::Cpu;
        let w = Var::from_vec(
            (0..w_cols).map(|i| (i as f32 * 0.7).cos()).collect(),
            (1, w_cols),
            cpu,
        )
        .unwrap();
        let b = Var::from_vec(vec![0.25f32], 1, cpu).unwrap();
        let mut vars = NamedVars::new();
        vars.insert("model.w", w.clone()).unwrap();
        vars.insert("model.b", b.clone()).unwrap();
        let opt = AdamW::new(
            &vars,
            AdamWParams {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap();
        Model { w, b, vars, opt }
    }

    /// One AdamW step on the batch of `step`; returns the loss's bits.
    fn train(&mut self, step: u64) -> u32 {
        let cpu = &Device::Cpu;
        let x: Vec<f32> = (0..12)
            .map(|i| ((i as u64 * 7 + step) % 5) as f32 - 2.0)
            .collect();
        let x = Tensor::from_vec(x, (4, 3), cpu).unwrap();
        let y = Tensor::from_vec(vec![1f32, -1.0, 0.5, 2.0], (4, 1), cpu).unwrap();
        let out = x
            .matmul(&self.w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(self.b.as_tensor())
            .unwrap();
        let loss = candle_nn::loss::mse(&out, &y).unwrap();
        self.opt.backward_step(&loss).unwrap();
        loss.to_scalar::<f32>().unwrap().to_bits()
    }

    fn values(&self) -> Vec<u32> {
        let mut all = Vec::new();
        for (_, var) in self.vars.iter().chain(self.opt.state_vars().iter()) {
            let t = var.as_tensor().flatten_all().unwrap();
            all.extend(t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()));
        }
        all
    }
}

fn run(dir: &std::path::Path, policy: ModelCheckpoint) -> Run {
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()
        .unwrap();
    Run::builder()
        .log_dir(dir)
        .name("restorer")
        .checkpoint(policy)
        .resume(resume)
        .max_steps(30)
        .build()
        .unwrap()
}

fn every(n: u64) -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .every_n_train_steps(n)
        .save_top_k(-1)
        .save_last(SaveLast::Yes)
        .build()
        .unwrap()
}

/// Trains `model` from `from` to `until` (exclusive of `from`), saving through `step_end_with`;
/// returns the loss bits and how many snapshots were built.
fn train(run: &mut Run, model: &mut Model, from: u64, until: u64) -> (Vec<u32>, u64) {
    let (mut losses, mut built) = (Vec::new(), 0);
    for step in from + 1..=until {
        losses.push(model.train(step));
        let Model { vars, opt, .. } = &*model;
        run.step_end_with(step, 0, || {
            built += 1;
            Snapshot::of(vars, opt, json!({ "step": step }))
        })
        .unwrap();
    }
    (losses, built)
}

#[test]
fn a_run_dropped_mid_way_and_restored_continues_bit_for_bit() {
    let mut reference = Model::new(3);
    let expected: Vec<u32> = (1..=30).map(|s| reference.train(s)).collect();

    let dir = tempfile::tempdir().unwrap();
    let mut first = Model::new(3);
    let mut r = run(dir.path(), every(5));
    let (losses, built) = train(&mut r, &mut first, 0, 17);
    assert_eq!(
        built, 3,
        "snapshots are built at the saving steps only (5, 10, 15)"
    );
    assert_eq!(losses, expected[..17]);
    drop(r); // killed at step 17: the newest checkpoint is step 15's

    let mut second = Model::new(3);
    let mut r = run(dir.path(), every(5));
    let mut restorer = Restorer::new(&second.vars, &mut second.opt).unwrap();
    let point = r.restore(&mut restorer).unwrap().unwrap();
    assert_eq!(point.step, 15);
    assert_eq!(restorer.trainer_state(), Some(&json!({ "step": 15 })));
    drop(restorer);
    assert_eq!(second.opt.step_count(), 15);
    let (losses, _) = train(&mut r, &mut second, 15, 30);
    assert_eq!(losses, expected[15..], "the resumed losses differ");
    assert_eq!(second.values(), reference.values());
    assert_eq!(second.opt.step_count(), reference.opt.step_count());
}

#[test]
fn a_weights_only_checkpoint_restores_the_model_and_leaves_the_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let mut trained = Model::new(3);
    let policy = ModelCheckpoint::builder()
        .every_n_train_steps(4)
        .save_top_k(-1)
        .save_weights_only(true)
        .build()
        .unwrap();
    let mut r = run(dir.path(), policy.clone());
    train(&mut r, &mut trained, 0, 4);
    drop(r);

    let mut fresh = Model::new(3);
    fresh.train(1); // moments and a step count of its own, which must survive
    let moments_before: Vec<u32> = fresh.values()[4..].to_vec();
    let mut r = run(dir.path(), policy);
    r.restore(&mut Restorer::new(&fresh.vars, &mut fresh.opt).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        fresh.values()[..4],
        trained.values()[..4],
        "the model's vars"
    );
    assert_eq!(
        fresh.values()[4..],
        moments_before,
        "the optimizer was touched"
    );
    assert_eq!(fresh.opt.step_count(), 1);
}

#[test]
fn a_mismatched_var_is_named_and_the_model_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut trained = Model::new(3);
    let mut r = run(dir.path(), every(2));
    train(&mut r, &mut trained, 0, 2);
    drop(r);

    let mut other = Model::new(5); // w is [1, 5], not [1, 3]
    let before = other.values();
    let mut r = run(dir.path(), every(2));
    let err = r
        .restore(&mut Restorer::new(&other.vars, &mut other.opt).unwrap())
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("model.w"), "{message}");
    assert!(message.contains('3') && message.contains('5'), "{message}");
    assert_eq!(other.values(), before);
    assert_eq!(other.opt.step_count(), 0);
}

#[test]
fn the_step_count_is_saved_as_a_scalar_tensor_beside_the_moments() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new(3);
    let mut r = run(dir.path(), every(3));
    train(&mut r, &mut m, 0, 3);
    drop(r);
    let ckpt = std::fs::read_dir(dir.path().join("restorer/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("step=3"))
        .unwrap();
    let reader =
        waypoint::Checkpointer::new(waypoint::storage::open_dir(ckpt.parent().unwrap()).unwrap())
            .open(
                &waypoint::storage::StoragePath::new(ckpt.file_name().unwrap().to_str().unwrap())
                    .unwrap(),
            )
            .unwrap();
    let meta = &reader.record().tensors[STEP_COUNT_TENSOR];
    assert_eq!(meta.dtype, waypoint::Dtype::I64);
    assert!(meta.shape.is_empty());
    let bytes = reader
        .view(STEP_COUNT_TENSOR, &waypoint::LoadOptions::default())
        .unwrap();
    assert_eq!(i64::from_le_bytes(bytes.as_ref().try_into().unwrap()), 3);
}

#[test]
fn errors_convert_into_waypoints_and_print_their_message_in_debug() {
    let err = waypoint_candle::Error::DuplicateName {
        tensor: "model.w".into(),
    };
    assert_eq!(format!("{err:?}"), "tensor model.w: the name is used twice");
    let converted: waypoint::Error = err.into();
    assert!(matches!(converted, waypoint::Error::Caller { .. }));
    assert_eq!(
        converted.to_string(),
        "waypoint-candle: tensor model.w: the name is used twice"
    );
    let inner = waypoint::Error::NotFound { path: "/x".into() };
    let through: waypoint::Error = waypoint_candle::Error::Waypoint(inner).into();
    assert!(
        matches!(through, waypoint::Error::NotFound { .. }),
        "{through:?}"
    );
}

/// AutoResume's restore_config through a `Restorer`: a fresh run takes another run's model vars
/// (its own AdamW state stays), or with `load_optim_state` the moments and step count too.
#[test]
fn restore_config_fine_tunes_from_another_runs_checkpoint() {
    use waypoint::restore::RestoreConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut pre = Model::new(3);
    let mut r = run(dir.path(), every(2));
    train(&mut r, &mut pre, 0, 4);
    r.wait_for_saves().unwrap();
    drop(r);
    let source = std::fs::read_dir(dir.path().join("restorer/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("step=4-last"))
        .unwrap();
    for optim in [false, true] {
        let mut fresh = Model::new(3);
        fresh.train(1); // moments and a step count of its own
        let own = fresh.values();
        let resume = AutoResume::builder()
            .resume_if_exists(true)
            .resume_ignore_no_checkpoint(true)
            .restore_config(RestoreConfig::new(&source).load_optim_state(optim))
            .build()
            .unwrap();
        let mut tune = Run::builder()
            .log_dir(dir.path())
            .name(format!("tune-{optim}"))
            .checkpoint(every(2))
            .resume(resume)
            .build()
            .unwrap();
        let point = tune
            .restore(&mut Restorer::new(&fresh.vars, &mut fresh.opt).unwrap())
            .unwrap();
        assert_eq!(point, None, "a fresh run: step 0");
        assert_eq!(fresh.values()[..4], pre.values()[..4], "the model's vars");
        match optim {
            false => {
                assert_eq!(fresh.values()[4..], own[4..], "the optimizer was touched");
                assert_eq!(fresh.opt.step_count(), 1);
            }
            true => {
                assert_eq!(fresh.values(), pre.values());
                assert_eq!(fresh.opt.step_count(), 4);
            }
        }
        let report = tune.restored_from().unwrap();
        assert_eq!(report.loaded.len(), if optim { 7 } else { 2 }, "{report:?}");
    }
}
