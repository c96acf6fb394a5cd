//! waypoint-candle's AdamW against candle-nn's own: the same updates bit for bit, and a restore
//! of its moments and step count continues exactly where an uninterrupted optimizer goes.

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{Linear, Optimizer, ParamsAdamW};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, LoadOptions};
use waypoint_candle::{AdamW, AdamWParams, NamedVars};

/// A regression problem: inputs, targets, and initial weights, all fixed.
fn problem() -> (Tensor, Tensor, Vec<f32>, Vec<f32>) {
    let cpu = &Device::Cpu;
    let xs: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0)
        .collect();
    let ys: Vec<f32> = (0..32).map(|i| ((i * 13 % 7) as f32 / 3.0) - 1.0).collect();
    let w: Vec<f32> = (0..8).map(|i| (i as f32 * 0.3).sin()).collect();
    let b: Vec<f32> = vec![0.1, -0.2, 0.05, 0.0];
    (
        Tensor::from_vec(xs, (32, 2), cpu).unwrap(),
        Tensor::from_vec(ys, (32, 1), cpu).unwrap(),
        w,
        b,
    )
}

/// A two-layer net whose parameters are fresh vars with the problem's initial values.
struct Net {
    w1: Var,
    b1: Var,
    w2: Var,
}

impl Net {
    fn new(w: &[f32], b: &[f32]) -> Self {
        let cpu = &Device::Cpu;
        Net {
            w1: Var::from_vec(w.to_vec(), (4, 2), cpu).unwrap(),
            b1: Var::from_vec(b.to_vec(), 4, cpu).unwrap(),
            w2: Var::from_vec(w[..4].to_vec(), (1, 4), cpu).unwrap(),
        }
    }

    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let l1 = Linear::new(
            self.w1.as_tensor().clone(),
            Some(self.b1.as_tensor().clone()),
        );
        let l2 = Linear::new(self.w2.as_tensor().clone(), None);
        let out = l2.forward(&l1.forward(x).unwrap().tanh().unwrap()).unwrap();
        candle_nn::loss::mse(&out, y).unwrap()
    }

    fn named(&self) -> NamedVars {
        let mut vars = NamedVars::new();
        vars.insert("l1.weight", self.w1.clone()).unwrap();
        vars.insert("l1.bias", self.b1.clone()).unwrap();
        vars.insert("l2.weight", self.w2.clone()).unwrap();
        vars
    }

    fn bits(&self) -> Vec<u32> {
        [&self.w1, &self.b1, &self.w2]
            .iter()
            .flat_map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .map(f32::to_bits)
            .collect()
    }
}

const PARAMS: AdamWParams = AdamWParams {
    lr: 0.05,
    beta1: 0.9,
    beta2: 0.99,
    eps: 1e-7,
    weight_decay: 0.1,
};

fn candle_params() -> ParamsAdamW {
    ParamsAdamW {
        lr: PARAMS.lr,
        beta1: PARAMS.beta1,
        beta2: PARAMS.beta2,
        eps: PARAMS.eps,
        weight_decay: PARAMS.weight_decay,
    }
}

#[test]
fn updates_equal_candle_nn_adamw_bit_for_bit() {
    let (x, y, w, b) = problem();
    let ours = Net::new(&w, &b);
    let theirs = Net::new(&w, &b);
    let mut opt = AdamW::new(&ours.named(), PARAMS).unwrap();
    let mut reference = candle_nn::AdamW::new(
        vec![theirs.w1.clone(), theirs.b1.clone(), theirs.w2.clone()],
        candle_params(),
    )
    .unwrap();
    let first = ours.loss(&x, &y).to_scalar::<f32>().unwrap();
    for step in 0..50 {
        opt.backward_step(&ours.loss(&x, &y)).unwrap();
        reference.backward_step(&theirs.loss(&x, &y)).unwrap();
        assert_eq!(ours.bits(), theirs.bits(), "after step {}", step + 1);
    }
    let last = ours.loss(&x, &y).to_scalar::<f32>().unwrap();
    assert!(last < 0.75 * first, "{first} → {last}: it did not train");
    assert_eq!(opt.step_count(), 50);
}

#[test]
fn restored_moments_and_step_count_continue_exactly() {
    let (x, y, w, b) = problem();
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let path = StoragePath::new("c").unwrap();

    let a = Net::new(&w, &b);
    let mut opt_a = AdamW::new(&a.named(), PARAMS).unwrap();
    for _ in 0..20 {
        opt_a.backward_step(&a.loss(&x, &y)).unwrap();
    }
    {
        let model = a.named();
        let (m, o) = (model.lock().unwrap(), opt_a.state_vars().lock().unwrap());
        let mut refs = m.tensor_refs();
        refs.extend(o.tensor_refs());
        assert_eq!(refs.len(), 3 + 6);
        cp.save(
            &path,
            &CheckpointMeta::at_step(20),
            &refs,
            &opt_a.step_count(),
        )
        .unwrap();
    }

    // A fresh process's view: other initial values, zero moments; load, then continue both.
    let c = Net::new(&b.repeat(2), &w[..4]);
    let mut opt_c = AdamW::new(&c.named(), PARAMS).unwrap();
    let reader = cp.open(&path).unwrap();
    let mut model_staging = c.named().staging().unwrap();
    let mut optim_staging = opt_c.state_vars().staging().unwrap();
    let mut slots = model_staging.slots();
    slots.extend(optim_staging.slots());
    reader
        .load_into(&mut slots, &LoadOptions::default())
        .unwrap();
    drop(slots);
    model_staging.apply().unwrap();
    optim_staging.apply().unwrap();
    let t: usize = reader.user_state().unwrap();
    assert_eq!(t, 20);
    opt_c.set_step_count(t);
    assert_eq!(c.bits(), a.bits());
    for _ in 0..20 {
        opt_a.backward_step(&a.loss(&x, &y)).unwrap();
        opt_c.backward_step(&c.loss(&x, &y)).unwrap();
    }
    assert_eq!(c.bits(), a.bits(), "the restored optimizer diverged");

    // Without the moments (fresh zeros), the same weights would go elsewhere.
    let d = Net::new(&w, &b);
    let mut opt_d = AdamW::new(&d.named(), PARAMS).unwrap();
    for _ in 0..20 {
        opt_d.backward_step(&d.loss(&x, &y)).unwrap();
    }
    let e = Net::new(&w, &b);
    for (dst, src) in [(&e.w1, &d.w1), (&e.b1, &d.b1), (&e.w2, &d.w2)] {
        dst.set(&src.as_tensor().copy().unwrap()).unwrap();
    }
    let mut opt_e = AdamW::new(&e.named(), PARAMS).unwrap();
    opt_d.backward_step(&d.loss(&x, &y)).unwrap();
    opt_e.backward_step(&e.loss(&x, &y)).unwrap();
    assert_ne!(d.bits(), e.bits());
}
