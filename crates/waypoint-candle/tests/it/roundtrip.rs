//! candle vars through a real waypoint checkpoint on local disk: every dtype candle and waypoint
//! share, bit for bit, into the same vars (in place); borrowed without a copy on save; clear
//! errors naming the tensor when the model and the checkpoint disagree; nothing else touched.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, LoadOptions, TensorData};
use waypoint_candle::{NamedVars, Snapshot};

fn checkpointer(dir: &std::path::Path) -> Checkpointer {
    Checkpointer::new(local_storage(dir).unwrap())
}

fn path(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}

/// A var of `dtype` and `shape` holding distinct values (`i * 0.37 - 3`, cast).
fn var(dtype: DType, shape: &[usize], salt: f64) -> Var {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|i| i as f64 * 0.37 - 3.0 + salt).collect();
    let t = Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    Var::from_tensor(&t).unwrap()
}

/// The raw bytes of a tensor, through candle's own copy (independent of the crate under test).
fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => panic!("untested dtype {other:?}"),
    }
}

const DTYPES: [DType; 7] = [
    DType::F32,
    DType::F64,
    DType::BF16,
    DType::F16,
    DType::U8,
    DType::U32,
    DType::I64,
];

fn model(salt: f64) -> NamedVars {
    let mut vars = NamedVars::new();
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        vars.insert(
            format!("layer.{i}.{dtype:?}"),
            var(dtype, &[3, 5 + i], salt),
        )
        .unwrap();
    }
    vars.insert("scalar", var(DType::F32, &[], salt)).unwrap();
    vars
}

#[test]
fn every_dtype_round_trips_bit_for_bit_into_the_same_vars() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path());
    let saved = model(0.0);
    let locked = saved.lock().unwrap();
    let refs = locked.tensor_refs();
    assert_eq!(refs.len(), DTYPES.len() + 1);
    cp.save(&path("c"), &CheckpointMeta::at_step(3), &refs, &())
        .unwrap();
    drop(refs);
    drop(locked);

    // Other values, and a clone of each var held elsewhere (as a model's layer would).
    let target = model(11.0);
    let clones: Vec<Var> = target.iter().map(|(_, v)| v.clone()).collect();
    let mut staging = target.staging().unwrap();
    let reader = cp.open(&path("c")).unwrap();
    reader
        .load_into(&mut staging.slots(), &LoadOptions::default())
        .unwrap();
    staging.apply().unwrap();
    for ((name, want), got) in saved.iter().zip(&clones) {
        assert_eq!(
            bytes_of(got.as_tensor()),
            bytes_of(want.as_tensor()),
            "{name}"
        );
    }
}

#[test]
fn saving_borrows_candle_storage_without_a_copy() {
    let vars = model(1.0);
    let locked = vars.lock().unwrap();
    for (t, (name, v)) in locked.tensor_refs().iter().zip(vars.iter()) {
        assert_eq!(t.name, name);
        let TensorData::Borrowed(bytes) = &t.data else {
            panic!("{name}: not borrowed");
        };
        assert_eq!(bytes.to_vec(), bytes_of(v.as_tensor()), "{name}");
    }
    // The bytes lent are candle's own storage: each view starts at the address of the var's
    // element buffer as candle holds it (its CpuStorage vector, plus the layout's offset).
    let refs = locked.tensor_refs();
    assert_eq!(refs.len(), vars.iter().count());
    for (t, (name, v)) in refs.iter().zip(vars.iter()) {
        let (storage, layout) = v.as_tensor().storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            panic!("{name}: not on the CPU");
        };
        let own = candle_buffer(cpu) + layout.start_offset() * v.dtype().size_in_bytes();
        assert_eq!(
            t.data.as_ptr() as usize,
            own,
            "{name}: a copy, not candle's storage"
        );
    }
}

/// The address of the first element of candle's own buffer.
fn candle_buffer(cpu: &candle_core::CpuStorage) -> usize {
    use candle_core::CpuStorage as C;
    match cpu {
        C::U8(v) => v.as_ptr() as usize,
        C::U32(v) => v.as_ptr() as usize,
        C::I64(v) => v.as_ptr() as usize,
        C::BF16(v) => v.as_ptr() as usize,
        C::F16(v) => v.as_ptr() as usize,
        C::F32(v) => v.as_ptr() as usize,
        C::F64(v) => v.as_ptr() as usize,
        _ => panic!("a dtype this test does not know"),
    }
}

#[test]
fn a_varmap_saves_and_loads_under_its_names() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path());
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = candle_nn::linear(4, 3, vb.pp("fc")).unwrap();
    let vars = NamedVars::from_varmap(&varmap, "model.").unwrap();
    assert_eq!(
        vars.names().collect::<Vec<_>>(),
        ["model.fc.bias", "model.fc.weight"]
    );
    let locked = vars.lock().unwrap();
    let empty = NamedVars::new();
    let no_optim = empty.lock().unwrap();
    let state = serde_json::json!({"step": 7});
    let snapshot = Snapshot::new(&locked, &no_optim, state.clone());
    let mut all = waypoint::Checkpointable::model_tensors(&snapshot);
    all.extend(waypoint::Checkpointable::optimizer_tensors(&snapshot));
    cp.save(&path("c"), &CheckpointMeta::at_step(7), &all, &state)
        .unwrap();
    drop(all);
    drop(snapshot);
    drop(locked);
    let before = layer.weight().to_vec2::<f32>().unwrap();

    // Change the weights in place, then load: the layer sees the saved values again.
    let w = vars.get("model.fc.weight").unwrap();
    w.set(&w.zeros_like().unwrap()).unwrap();
    assert_ne!(layer.weight().to_vec2::<f32>().unwrap(), before);
    let mut staging = vars.staging().unwrap();
    cp.open(&path("c"))
        .unwrap()
        .load_into(&mut staging.slots(), &LoadOptions::default())
        .unwrap();
    staging.apply().unwrap();
    assert_eq!(layer.weight().to_vec2::<f32>().unwrap(), before);
}

#[test]
fn shape_dtype_and_name_mismatches_name_the_tensor_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path());
    let mut saved = NamedVars::new();
    saved.insert("w", var(DType::F32, &[2, 3], 0.0)).unwrap();
    saved.insert("b", var(DType::F32, &[3], 0.0)).unwrap();
    let locked = saved.lock().unwrap();
    cp.save(
        &path("c"),
        &CheckpointMeta::at_step(1),
        &locked.tensor_refs(),
        &(),
    )
    .unwrap();
    drop(locked);
    let reader = cp.open(&path("c")).unwrap();

    let cases: [(&str, Var, &str); 3] = [
        ("w", var(DType::F32, &[3, 2], 5.0), "[3, 2]"),
        ("b", var(DType::BF16, &[3], 5.0), "BF16"),
        ("missing", var(DType::F32, &[3], 5.0), "missing"),
    ];
    for (name, target, expect) in cases {
        let before = bytes_of(target.as_tensor());
        let mut vars = NamedVars::new();
        vars.insert(name, target.clone()).unwrap();
        let mut staging = vars.staging().unwrap();
        let err = reader
            .load_into(&mut staging.slots(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
        // The load failed before apply: the var is untouched.
        assert_eq!(bytes_of(target.as_tensor()), before, "{name}");
    }
}

#[test]
fn vars_candle_cannot_lend_are_refused_by_name() {
    let mut vars = NamedVars::new();
    vars.insert("x", var(DType::F32, &[2], 0.0)).unwrap();
    let err = vars.insert("x", var(DType::F32, &[2], 0.0)).unwrap_err();
    assert!(
        err.to_string().contains("tensor x: the name is used twice"),
        "{err}"
    );
    let f8 = Var::from_tensor(
        &Tensor::zeros(4, DType::F32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap(),
    )
    .unwrap();
    vars.insert("eight_bit", f8).unwrap();
    let err = vars.lock().unwrap_err().to_string();
    assert!(err.contains("eight_bit") && err.contains("F8E4M3"), "{err}");
    let err = vars.staging().unwrap_err().to_string();
    assert!(err.contains("eight_bit"), "{err}");
}
