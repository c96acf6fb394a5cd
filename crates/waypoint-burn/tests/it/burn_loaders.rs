//! burn's own loaders read a waypoint checkpoint: its shard file is a safetensors file whose
//! model tensors carry burn's module paths, so `SafetensorsStore` loads it into the model (the
//! optimizer's `optim.…` tensors beside them are left unused).

use crate::common::{Mlp, contents, run, shards};
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Tensor;
use waypoint::serde_json::json;
use waypoint_burn::Snapshot;

/// Without the param ids, which safetensors files do not carry.
fn weights(model: &Mlp) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    contents(model)
        .into_iter()
        .map(|(name, dtype, shape, bytes, _)| (name, dtype, shape, bytes))
        .collect()
}

#[test]
fn burns_safetensors_store_loads_the_weights_of_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::common::ndarray().autodiff();
    let mut model = Mlp::new(&device, 1);
    let mut optim = AdamConfig::new().init();
    let loss = model.forward(Tensor::<2>::ones([2, 4], &device)).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    model = optim.step(0.1, model, grads);
    let first = run(dir.path());
    let checkpoints = first.checkpoint_dir().to_path_buf();
    let snapshot = Snapshot::of(&model, json!(null))
        .unwrap()
        .with_optimizer(&optim)
        .unwrap();
    let saved = first.finish(1, 0, &snapshot).unwrap();
    let files = shards(&checkpoints, &saved[0].name);
    assert_eq!(files.len(), 1, "{files:?}");

    let mut loaded = Mlp::new(&device, 2);
    assert_ne!(weights(&loaded), weights(&model));
    let mut store = SafetensorsStore::from_file(&files[0]);
    let result = loaded.load_from(&mut store).unwrap();
    assert!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{result:?}"
    );
    assert!(
        result.unused.iter().all(|n| n.starts_with("optim.")),
        "{result:?}"
    );
    assert_eq!(weights(&loaded), weights(&model));
}
