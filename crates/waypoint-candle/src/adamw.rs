//! AdamW whose state can be checkpointed. candle-nn's `AdamW` keeps its moments and its step
//! count private, so a run resumed with it would restart the moments from zero; this one does the
//! same arithmetic, operation for operation (so its updates are bit-identical to candle-nn's),
//! and exposes its moments as [`NamedVars`] and its step count as a number.
//!
//! It owns the optimizer's arithmetic and its state (the moments, named `optim.m.<var>` and
//! `optim.v.<var>`, and the step count). It must not save, load or lock anything itself: the caller
//! checkpoints the moments through `NamedVars` and a `Snapshot`, and restores the step count with
//! `set_step_count`.

use crate::error::{Error, Result};
use crate::vars::NamedVars;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// AdamW's hyper-parameters, as candle-nn's `ParamsAdamW` (same defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
}

/// AdamW (Loshchilov & Hutter) over named vars, with saveable state: the first and second
/// moments ([`AdamW::state_vars`], named `optim.m.<var>` and `optim.v.<var>`) and the number of
/// steps taken ([`AdamW::step_count`]).
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use waypoint_candle::{AdamW, AdamWParams, NamedVars};
/// let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
/// let mut vars = NamedVars::new();
/// vars.insert("w", w.clone()).unwrap();
/// let mut opt = AdamW::new(&vars, AdamWParams { lr: 0.1, ..Default::default() }).unwrap();
/// let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
/// opt.backward_step(&loss).unwrap();
/// assert_eq!(opt.step_count(), 1);
/// assert_eq!(opt.state_vars().names().collect::<Vec<_>>(), ["optim.m.w", "optim.v.w"]);
/// ```
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    state: NamedVars,
    step_t: usize,
    params: AdamWParams,
}

impl AdamW {
    /// An optimizer for the floating-point vars of `vars` (the others are left alone, as
    /// candle-nn does), with zero moments.
    pub fn new(vars: &NamedVars, params: AdamWParams) -> Result<Self> {
        let mut slots = Vec::new();
        let mut state = NamedVars::new();
        for (name, var) in vars.iter().filter(|(_, v)| v.dtype().is_float()) {
            let zeros = || {
                Var::zeros(var.shape(), var.dtype(), var.device())
                    .map_err(|e| Error::candle(name, e))
            };
            let (m, v) = (zeros()?, zeros()?);
            state.insert(format!("optim.m.{name}"), m.clone())?;
            state.insert(format!("optim.v.{name}"), v.clone())?;
            slots.push(Slot {
                name: name.to_owned(),
                var: var.clone(),
                m,
                v,
            });
        }
        Ok(AdamW {
            slots,
            state,
            step_t: 0,
            params,
        })
    }

    /// The hyper-parameters.
    pub fn params(&self) -> AdamWParams {
        self.params
    }

    /// Changes the learning rate (a schedule).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// The moments, to save with the model and to load back in place.
    pub fn state_vars(&self) -> &NamedVars {
        &self.state
    }

    /// Steps taken (AdamW's `t`; the bias corrections depend on it): save it with the moments.
    pub fn step_count(&self) -> usize {
        self.step_t
    }

    /// Sets the step count, after the moments of the same checkpoint were loaded.
    pub fn set_step_count(&mut self, step_t: usize) {
        self.step_t = step_t;
    }

    /// One update from `grads`, as candle-nn's `AdamW::step` computes it.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = self.params;
        let lr_lambda = p.lr * p.weight_decay;
        let t = i32::try_from(self.step_t).unwrap_or(i32::MAX);
        let scale_m = 1f64 / (1f64 - p.beta1.powi(t));
        let scale_v = 1f64 / (1f64 - p.beta2.powi(t));
        for slot in &self.slots {
            let Some(g) = grads.get(&slot.var) else {
                continue;
            };
            let update = || -> candle_core::Result<(Tensor, Tensor, Tensor)> {
                let next_m = ((slot.m.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
                let next_v = ((slot.v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
                let m_hat = (&next_m * scale_m)?;
                let v_hat = (&next_v * scale_v)?;
                let next_theta = (slot.var.as_tensor() * (1f64 - lr_lambda))?;
                let adjusted_grad = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
                let next_theta = (next_theta - (adjusted_grad * p.lr)?)?;
                Ok((next_m, next_v, next_theta))
            };
            let set = || -> candle_core::Result<()> {
                let (next_m, next_v, next_theta) = update()?;
                slot.m.set(&next_m)?;
                slot.v.set(&next_v)?;
                slot.var.set(&next_theta)
            };
            set().map_err(|e| Error::candle(&slot.name, e))?;
        }
        Ok(())
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward().map_err(|e| Error::candle("loss", e))?;
        self.step(&grads)
    }
}
