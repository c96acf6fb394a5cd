//! The model and its optimizer: a two-layer perceptron `D_IN → hidden (tanh) → D_OUT` trained on
//! mean squared error with Adam. All arithmetic is `f32` in one thread, in a fixed order (samples,
//! then outputs, then inputs, always ascending), so the same inputs give bit-identical results in
//! every process.
//!
//! Parameters live in one flat vector laid out as [`Layout`] says; Adam's moments `m` and `v` use
//! the same layout, so the update is one loop.
//!
//! It must not know of checkpoints or of the data set's order: the state and its saving are
//! `state.rs`'s, the minibatches `data.rs`'s, and the random initial values come from a stream the
//! caller hands in.

use crate::rng::Xoshiro256;

/// Input features per sample.
pub const D_IN: usize = 8;
/// Outputs per sample.
pub const D_OUT: usize = 2;

/// Adam's hyper-parameters (fixed; the learning rate is constant).
pub const LEARNING_RATE: f32 = 1e-2;
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;

/// One named parameter tensor inside the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its name without prefix, e.g. `layer1.weight`.
    pub name: &'static str,
    /// Its shape (row-major).
    pub shape: Vec<u64>,
    /// Where it starts in the flat vector.
    pub offset: usize,
    /// How many elements it has.
    pub len: usize,
}

/// Where each tensor of an MLP with `hidden` units sits in the flat parameter vector:
/// `layer1.weight [hidden, D_IN]`, `layer1.bias [hidden]`, `layer2.weight [D_OUT, hidden]`,
/// `layer2.bias [D_OUT]`, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Hidden units.
    pub hidden: usize,
    /// The four tensors.
    pub segments: Vec<Segment>,
}

impl Layout {
    /// The layout for `hidden` units.
    pub fn new(hidden: usize) -> Self {
        let specs: [(&'static str, Vec<usize>); 4] = [
            ("layer1.weight", vec![hidden, D_IN]),
            ("layer1.bias", vec![hidden]),
            ("layer2.weight", vec![D_OUT, hidden]),
            ("layer2.bias", vec![D_OUT]),
        ];
        let mut offset = 0;
        let segments = specs
            .into_iter()
            .map(|(name, dims)| {
                let len = dims.iter().product();
                let segment = Segment {
                    name,
                    shape: dims.iter().map(|&d| d as u64).collect(),
                    offset,
                    len,
                };
                offset += len;
                segment
            })
            .collect();
        Layout { hidden, segments }
    }

    /// Parameters in total.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn w1(&self) -> usize {
        0
    }
    fn b1(&self) -> usize {
        self.hidden * D_IN
    }
    fn w2(&self) -> usize {
        self.b1() + self.hidden
    }
    fn b2(&self) -> usize {
        self.w2() + D_OUT * self.hidden
    }
}

/// Initial parameters: uniform in `±1/sqrt(fan_in)` for weights (PyTorch's `nn.Linear`
/// default), zero biases, drawn from `rng` in layout order.
pub fn init_params(layout: &Layout, rng: &mut Xoshiro256) -> Vec<f32> {
    let mut params = vec![0.0; layout.len()];
    let bound1 = 1.0 / (D_IN as f32).sqrt();
    for p in &mut params[layout.w1()..layout.b1()] {
        *p = bound1 * rng.symmetric_f32();
    }
    let bound2 = 1.0 / (layout.hidden as f32).sqrt();
    for p in &mut params[layout.w2()..layout.b2()] {
        *p = bound2 * rng.symmetric_f32();
    }
    params
}

/// The outputs of the MLP `params` for each row of `inputs` (`D_IN` values per row), written
/// into `outputs` (`D_OUT` per row); `hidden` receives the tanh activations (`hidden` per row).
pub fn forward(
    layout: &Layout,
    params: &[f32],
    inputs: &[f32],
    hidden: &mut [f32],
    outputs: &mut [f32],
) {
    let h = layout.hidden;
    let (w1, b1, w2, b2) = (
        &params[layout.w1()..layout.b1()],
        &params[layout.b1()..layout.w2()],
        &params[layout.w2()..layout.b2()],
        &params[layout.b2()..],
    );
    for ((x, hid), out) in inputs
        .chunks_exact(D_IN)
        .zip(hidden.chunks_exact_mut(h))
        .zip(outputs.chunks_exact_mut(D_OUT))
    {
        for j in 0..h {
            let mut acc = b1[j];
            for k in 0..D_IN {
                acc += w1[j * D_IN + k] * x[k];
            }
            hid[j] = acc.tanh();
        }
        for o in 0..D_OUT {
            let mut acc = b2[o];
            for j in 0..h {
                acc += w2[o * h + j] * hid[j];
            }
            out[o] = acc;
        }
    }
}

/// Mean squared error between `outputs` and `targets`, summed in order.
pub fn mse(outputs: &[f32], targets: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (y, t) in outputs.iter().zip(targets) {
        let d = y - t;
        sum += d * d;
    }
    sum / outputs.len() as f32
}

/// Scratch buffers of one minibatch, reused across steps.
#[derive(Debug, Default)]
pub struct Scratch {
    hidden: Vec<f32>,
    outputs: Vec<f32>,
    grad: Vec<f32>,
}

impl Scratch {
    /// The gradient of the latest [`loss_and_grad`], one value per parameter.
    pub fn grad_mut(&mut self) -> &mut [f32] {
        &mut self.grad
    }
}

/// Computes the loss on one minibatch and its gradient with respect to `params`, into
/// `scratch.grad`. Returns the loss (before the update).
pub fn loss_and_grad(
    layout: &Layout,
    params: &[f32],
    inputs: &[f32],
    targets: &[f32],
    scratch: &mut Scratch,
) -> f32 {
    let h = layout.hidden;
    let batch = targets.len() / D_OUT;
    scratch.hidden.resize(batch * h, 0.0);
    scratch.outputs.resize(batch * D_OUT, 0.0);
    scratch.grad.clear();
    scratch.grad.resize(layout.len(), 0.0);
    forward(
        layout,
        params,
        inputs,
        &mut scratch.hidden,
        &mut scratch.outputs,
    );
    let loss = mse(&scratch.outputs, targets);
    let scale = 2.0 / (batch * D_OUT) as f32;
    let w2 = &params[layout.w2()..layout.b2()];
    let (g_w1b1, g_w2b2) = scratch.grad.split_at_mut(layout.w2());
    let (g_w1, g_b1) = g_w1b1.split_at_mut(layout.b1());
    let (g_w2, g_b2) = g_w2b2.split_at_mut(D_OUT * h);
    let mut d_hidden = vec![0.0f32; h];
    for b in 0..batch {
        let x = &inputs[b * D_IN..(b + 1) * D_IN];
        let hid = &scratch.hidden[b * h..(b + 1) * h];
        d_hidden.fill(0.0);
        for o in 0..D_OUT {
            let d_out = scale * (scratch.outputs[b * D_OUT + o] - targets[b * D_OUT + o]);
            g_b2[o] += d_out;
            for j in 0..h {
                g_w2[o * h + j] += d_out * hid[j];
                d_hidden[j] += w2[o * h + j] * d_out;
            }
        }
        for j in 0..h {
            let d_pre = d_hidden[j] * (1.0 - hid[j] * hid[j]);
            g_b1[j] += d_pre;
            for k in 0..D_IN {
                g_w1[j * D_IN + k] += d_pre * x[k];
            }
        }
    }
    loss
}

/// Adam's state: the moments and the number of updates applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    /// First moments, laid out like the parameters.
    pub m: Vec<f32>,
    /// Second moments, laid out like the parameters.
    pub v: Vec<f32>,
    /// Updates applied so far (Adam's `t`).
    pub step: u64,
}

impl Adam {
    /// Zero moments for `len` parameters.
    pub fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
            step: 0,
        }
    }

    /// One optimizer step on one minibatch: gradient, moments, bias-corrected update of `params`.
    /// Returns the minibatch loss before the update.
    pub fn step(
        &mut self,
        layout: &Layout,
        params: &mut [f32],
        inputs: &[f32],
        targets: &[f32],
        scratch: &mut Scratch,
    ) -> f32 {
        let loss = loss_and_grad(layout, params, inputs, targets, scratch);
        let all = std::iter::once(0..params.len()).collect::<Vec<_>>();
        self.apply(params, &scratch.grad, &all);
        loss
    }

    /// One update with the gradient `grad` of every parameter, applied to the parameters (and
    /// moments) in `ranges` only: all of them in one process, a rank's own rows under
    /// `--data-parallel` (ZeRO-1: the other ranks update, and own the moments of, the rest).
    pub fn apply(&mut self, params: &mut [f32], grad: &[f32], ranges: &[std::ops::Range<usize>]) {
        self.step += 1;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let correction1 = 1.0 - BETA1.powi(t);
        let correction2 = 1.0 - BETA2.powi(t);
        for r in ranges {
            for (((p, g), m), v) in params[r.clone()]
                .iter_mut()
                .zip(&grad[r.clone()])
                .zip(&mut self.m[r.clone()])
                .zip(&mut self.v[r.clone()])
            {
                *m = BETA1 * *m + (1.0 - BETA1) * g;
                *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                let m_hat = *m / correction1;
                let v_hat = *v / correction2;
                *p -= LEARNING_RATE * m_hat / (v_hat.sqrt() + EPSILON);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_tiles_the_vector() {
        let layout = Layout::new(3);
        let mut next = 0;
        for s in &layout.segments {
            assert_eq!(s.offset, next);
            assert_eq!(s.len as u64, s.shape.iter().product::<u64>());
            next += s.len;
        }
        assert_eq!(next, layout.len());
        assert_eq!(layout.len(), 3 * D_IN + 3 + D_OUT * 3 + D_OUT);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let layout = Layout::new(4);
        let mut rng = Xoshiro256::new(3, 4);
        let mut params = init_params(&layout, &mut rng);
        for p in &mut params {
            *p += 0.1 * rng.symmetric_f32();
        }
        let inputs: Vec<f32> = (0..3 * D_IN).map(|_| rng.symmetric_f32()).collect();
        let targets: Vec<f32> = (0..3 * D_OUT).map(|_| rng.symmetric_f32()).collect();
        let mut scratch = Scratch::default();
        loss_and_grad(&layout, &params, &inputs, &targets, &mut scratch);
        let grad = scratch.grad.clone();
        let loss_at = |p: &[f32]| {
            let mut s = Scratch::default();
            f64::from(loss_and_grad(&layout, p, &inputs, &targets, &mut s))
        };
        for i in 0..layout.len() {
            let eps = 1e-2f32;
            let mut plus = params.clone();
            plus[i] += eps;
            let mut minus = params.clone();
            minus[i] -= eps;
            let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(eps));
            let analytic = f64::from(grad[i]);
            assert!(
                (numeric - analytic).abs() < 2e-3 + 0.02 * analytic.abs(),
                "param {i}: numeric {numeric}, analytic {analytic}"
            );
        }
    }
}
