//! Save / load round trips: a module holding every dtype the ndarray backend has, loaded back
//! in place bit for bit (param ids included); half-precision tensors (which ndarray cannot
//! hold) through a module record; Adam's moments and step counts and a cosine scheduler's
//! position, so that training continues exactly as if never interrupted.

use crate::common::{Mlp, contents, run, shards};
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::{Module, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::store::burn_pack::{self, Writer};
use burn::tensor::{Bool, Bytes, DType, Device, Int, Tensor, TensorData};
use waypoint::serde_json::json;
use waypoint_burn::{Error, Restorer, Snapshot};

/// A module with a parameter of each dtype ndarray holds, and a nested one.
#[derive(Module, Debug)]
struct AllDtypes {
    f64: Param<Tensor<2>>,
    f32: Param<Tensor<2>>,
    i64: Param<Tensor<1, Int>>,
    i32: Param<Tensor<1, Int>>,
    i16: Param<Tensor<1, Int>>,
    i8: Param<Tensor<1, Int>>,
    u64: Param<Tensor<1, Int>>,
    u32: Param<Tensor<1, Int>>,
    u16: Param<Tensor<1, Int>>,
    u8: Param<Tensor<1, Int>>,
    mask: Param<Tensor<1, Bool>>,
    inner: Mlp,
}

fn float(device: &Device, dtype: DType, k: f64) -> Param<Tensor<2>> {
    let values = vec![0.1 * k, -1.5 * k, f64::from(f32::MIN_POSITIVE) * k, 3.25];
    let data = TensorData::new(values, [2, 2]);
    Param::from_tensor(Tensor::<2>::from_data(data, (device, dtype)))
}

fn int(device: &Device, dtype: DType, k: i64) -> Param<Tensor<1, Int>> {
    let values = vec![k, 2 * k, 100];
    let data = TensorData::new(values, [3]);
    Param::initialized(
        ParamId::new(),
        Tensor::<1, Int>::from_data(data, (device, dtype)),
    )
}

fn all_dtypes(device: &Device, k: i64) -> AllDtypes {
    let mask = TensorData::new(vec![k % 2 == 1, false, true], [3]);
    AllDtypes {
        f64: float(device, DType::F64, k as f64),
        f32: float(device, DType::F32, k as f64),
        i64: int(device, DType::I64, -k),
        i32: int(device, DType::I32, -k),
        i16: int(device, DType::I16, -k),
        i8: int(device, DType::I8, -k),
        u64: int(device, DType::U64, k),
        u32: int(device, DType::U32, k),
        u16: int(device, DType::U16, k),
        u8: int(device, DType::U8, k),
        mask: Param::initialized(ParamId::new(), Tensor::<1, Bool>::from_data(mask, device)),
        inner: Mlp::new(device, k as u64),
    }
}

#[test]
fn every_dtype_of_a_module_comes_back_bit_for_bit_with_its_param_ids() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::common::ndarray();
    let saved = all_dtypes(&device, 3);
    let mut first = run(dir.path());
    let snapshot = Snapshot::of(&saved, json!({ "step": 1, "rng": [1, 2] })).unwrap();
    first.step_end(1, 0, &snapshot).unwrap();
    first.finish(1, 0, &snapshot).unwrap();
    let dtypes: Vec<String> = contents(&saved).into_iter().map(|t| t.1).collect();
    for want in [
        "F64", "F32", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8",
    ] {
        assert!(dtypes.iter().any(|d| d == want), "{want} not in {dtypes:?}");
    }
    assert!(dtypes.iter().any(|d| d.starts_with("Bool")), "{dtypes:?}");

    let mut again = run(dir.path());
    let mut loaded = all_dtypes(&device, 0);
    assert_ne!(contents(&loaded), contents(&saved));
    let mut restorer = Restorer::new(&again, &mut loaded).unwrap();
    let point = again.restore(&mut restorer).unwrap().unwrap();
    assert_eq!(point.step, 1);
    assert_eq!(
        restorer.trainer_state(),
        Some(&json!({ "step": 1, "rng": [1, 2] }))
    );
    drop(restorer);
    assert_eq!(
        contents(&loaded),
        contents(&saved),
        "names, dtypes, shapes, bytes, ids"
    );
}

#[test]
fn a_checkpoint_of_another_model_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::common::ndarray();
    let mut first = run(dir.path());
    first
        .step_end(
            1,
            0,
            &Snapshot::of(&Mlp::new(&device, 1), json!(null)).unwrap(),
        )
        .unwrap();
    first.wait_for_saves().unwrap();
    drop(first);
    let mut again = run(dir.path());
    let mut other = all_dtypes(&device, 0);
    let mut restorer = Restorer::new(&again, &mut other).unwrap();
    let err = again.restore(&mut restorer).unwrap_err().to_string();
    assert!(err.contains("f64") || err.contains("i64"), "{err}");
}

/// A module record (what burn-train's checkpointers are given) with `dtype` tensors.
fn record_of(dtype: DType, bytes: Vec<u8>, shape: [usize; 1]) -> ModuleRecord {
    let tensor = burn_pack::Tensor::new(
        "h.weight".into(),
        dtype,
        shape,
        Some(7),
        Bytes::from_bytes_vec(bytes),
    );
    let bytes = Writer::new(vec![tensor]).into_bytes().unwrap();
    ModuleRecord::from_bytes(bytes).unwrap()
}

#[test]
fn half_precision_tensors_are_saved_as_f16_and_bf16_with_their_bytes() {
    for (dtype, name) in [(DType::F16, "F16"), (DType::BF16, "BF16")] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b]; // 1, -2, 65504 in f16
        let snapshot = Snapshot::of_record(record_of(dtype, bytes.clone(), [3]), json!(0)).unwrap();
        let first = run(dir.path());
        let checkpoints = first.checkpoint_dir().to_path_buf();
        let saved = first.finish(1, 0, &snapshot).unwrap();
        let file = std::fs::read(&shards(&checkpoints, &saved[0].name)[0]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&file).unwrap();
        let t = st.tensor("h.weight").unwrap();
        assert_eq!(format!("{:?}", t.dtype()), name);
        assert_eq!(t.shape(), [3]);
        assert_eq!(t.data(), bytes.as_slice());
    }
}

#[test]
fn quantized_or_four_byte_boolean_tensors_are_refused_by_name() {
    let record = record_of(DType::Bool(burn::tensor::BoolStore::U32), vec![0; 12], [3]);
    match Snapshot::of_record(record, json!(0)) {
        Err(Error::UnsupportedDtype { tensor, .. }) => assert_eq!(tensor, "h.weight"),
        other => panic!("{other:?}"),
    }
}

/// `steps` Adam steps of `model` on a fixed batch, the learning rate from `scheduler`.
fn train(
    mut model: Mlp,
    optim: &mut ModuleOptimizer,
    scheduler: &mut ModuleLrScheduler,
    device: &Device,
    steps: usize,
) -> Mlp {
    let x = Tensor::<2>::from_data(
        TensorData::new((0..32).map(|i| i as f32 / 7.0).collect(), [8, 4]),
        device,
    );
    for _ in 0..steps {
        let loss = (model.forward(x.clone()) - 1.0).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(scheduler.step(), model, grads);
    }
    model
}

fn scheduler() -> ModuleLrScheduler {
    CosineAnnealingLrSchedulerConfig::new(0.05, 10)
        .init()
        .unwrap()
}

#[test]
fn adam_moments_step_counts_and_the_scheduler_continue_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::common::ndarray().autodiff();
    let (mut optim, mut sched) = (AdamConfig::new().init(), scheduler());
    let model = train(Mlp::new(&device, 5), &mut optim, &mut sched, &device, 3);
    let mut first = run(dir.path());
    let snapshot = Snapshot::of(&model, json!({ "step": 3 }))
        .unwrap()
        .with_optimizer(&optim)
        .unwrap()
        .with_scheduler(&sched)
        .unwrap();
    let names: Vec<String> = waypoint::Checkpointable::optimizer_tensors(&snapshot)
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == "optim.fc1.weight.momentum.moment_1"),
        "{names:?}"
    );
    first.step_end(3, 0, &snapshot).unwrap();
    first.wait_for_saves().unwrap();
    drop((first, snapshot));
    let reference = contents(&train(model, &mut optim, &mut sched, &device, 4));

    // Another process: other initial weights, a fresh optimizer and scheduler.
    let mut again = run(dir.path());
    let mut model = Mlp::new(&device, 99);
    let (mut optim, mut sched) = (AdamConfig::new().init(), scheduler());
    let mut restorer = Restorer::new(&again, &mut model)
        .unwrap()
        .with_optimizer(&mut optim)
        .unwrap()
        .with_scheduler(&mut sched);
    assert_eq!(
        again.restore(&mut restorer).unwrap().map(|p| p.step),
        Some(3)
    );
    drop(restorer);
    let resumed = contents(&train(model, &mut optim, &mut sched, &device, 4));
    assert_eq!(resumed, reference);
}
