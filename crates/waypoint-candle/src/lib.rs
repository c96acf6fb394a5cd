//! # waypoint-candle: checkpoint candle training loops with waypoint
//!
//! - [`NamedVars`]: a model's candle vars by name (from a candle-nn `VarMap` or one by one).
//!   [`NamedVars::lock`] lends their CPU memory to a save without a copy;
//!   [`NamedVars::staging`] and [`VarStaging::apply`] load a checkpoint back into the same vars,
//!   in place, checked by name, dtype and shape.
//! - [`AdamW`]: candle-nn's AdamW arithmetic with its moments and step count exposed, so that a
//!   resumed run continues bit for bit.
//! - [`Snapshot`]: model, optimizer (moments and step count), extra tensors and trainer state
//!   (step, RNG position, data position, as JSON) as waypoint's `Checkpointable`, for one save
//!   call; [`Snapshot::of`] inside [`waypoint::Run::step_end_with`] builds it only when a save is
//!   due.
//! - [`Restorer`]: the same model and optimizer as the target of [`waypoint::Run::restore`],
//!   loaded in place; the checkpoint's trainer state comes back in [`Restorer::trainer_state`].
//! - [`dtype`]: candle's `DType` ↔ waypoint's `Dtype`.
//! - [`Error`] converts into `waypoint::Error` (`?` works in either direction).
//!
//! candle's CPU backend cannot be seeded and its random initialisers draw from a thread RNG:
//! for a run that resumes bit for bit, initialise vars from your own seeded generator (whose
//! position goes into the trainer state) and fix the thread count (`RAYON_NUM_THREADS`) before
//! candle first runs. `waypoint-train` shows a whole trainer (data position, extra buffers).
//!
//! A resumable loop, whole (run it twice: the second run finds the completed run and stops):
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use waypoint::serde_json::json;
//! use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};
//! use waypoint_candle::{AdamW, AdamWParams, NamedVars, Restorer, Snapshot};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # for _ in 0..2 {
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let layer = candle_nn::linear(4, 1, vb.pp("fc"))?; // (seed your own init for determinism)
//! let model = NamedVars::from_varmap(&varmap, "model.")?;
//! let mut opt = AdamW::new(&model, AdamWParams::default())?;
//!
//! let policy = ModelCheckpoint::builder().every_n_train_steps(10).save_last(SaveLast::Yes).build()?;
//! let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build()?;
//! let mut run = Run::builder().log_dir(dir.path()).name("demo")
//!     .checkpoint(policy).resume(resume).max_steps(20).build()?;
//! let point = run.restore(&mut Restorer::new(&model, &mut opt)?)?; // weights, moments, step count
//! if point.as_ref().is_some_and(|p| p.completed) {
//!     # continue;
//!     return Ok(()); // this run already finished: nothing to do
//! }
//! let mut step = point.map_or(0, |p| p.step);
//!
//! let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu)?;
//! while step < 20 {
//!     step += 1;
//!     let loss = layer.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?;
//!     run.log_metrics(step, &[("train_loss", f64::from(loss.to_scalar::<f32>()?))]);
//!     // Built (locks, JSON) only at the steps that save; the vars are lent, not copied.
//!     run.step_end_with(step, 0, || Snapshot::of(&model, &opt, json!({ "step": step })))?;
//! }
//! let saved = run.finish(step, 0, &Snapshot::of(&model, &opt, json!({ "step": step }))?)?;
//! assert!(saved.iter().any(|s| s.name.ends_with("-last")));
//! # }
//! # Ok(()) }
//! ```

mod adamw;
pub mod dtype;
mod error;
mod restorer;
mod snapshot;
mod vars;

pub use adamw::{AdamW, AdamWParams};
pub use error::{Error, Result};
pub use restorer::Restorer;
pub use snapshot::{STEP_COUNT_TENSOR, Snapshot};
pub use vars::{LockedVars, NamedVars, VarStaging};

/// The README's examples (waypoint's and this crate's) run as doctests here.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
