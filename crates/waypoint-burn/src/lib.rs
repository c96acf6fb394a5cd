//! # waypoint-burn: checkpoint burn training with waypoint
//!
//! - [`Snapshot`]: a burn [`Module`](burn::module::Module)'s parameters and buffers, by burn's
//!   own module paths (`fc1.weight`, the names of burn-store's `SafetensorsStore` and
//!   `BurnpackStore`, so that a checkpoint's shard files load into the model with burn's own
//!   loaders), the optimizer's state (Adam's moments and step counts, under `optim.<path>.…`),
//!   an LR scheduler's position and the loop's trainer state, as waypoint's `Checkpointable`
//!   for one save; built inside [`waypoint::Run::step_end_with`], only when a save is due.
//! - [`Restorer`]: the same module, optimizer and scheduler as the target of
//!   [`waypoint::Run::restore`], loaded in place (param ids included: burn keys the optimizer's
//!   state by them); the loop's trainer state comes back in [`Restorer::trainer_state`].
//! - [`dtype`]: burn's `DType` ↔ waypoint's `Dtype` (every burn dtype but quantized ones and
//!   four-byte booleans).
//! - [`learner`] (feature `learner`): burn-train's `Learner` checkpointing, resuming and logging
//!   through a `Run` ([`LearnerRun`]): an epoch's three records as one checkpoint.
//! - [`Error`] converts into `waypoint::Error` (`?` works in either direction).
//!
//! One copy per save: burn hands a tensor's bytes over only as a buffer read back from its
//! backend (`into_data`), which the save then borrows; loading copies the checkpoint's bytes
//! into the module's tensors (`from_data`). See docs/BURN.md for what burn guarantees about
//! determinism (the ndarray backend without `rayon` is single-threaded: bit-identical runs) and
//! for burn-train's `Learner`.
//!
//! A resumable loop, whole (run it twice: the second run finds the completed run and stops):
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{AdamConfig, GradientsParams};
//! use burn::tensor::{Device, Tensor};
//! use waypoint::serde_json::json;
//! use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};
//! use waypoint_burn::{Restorer, Snapshot};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # for _ in 0..2 {
//! let device = Device::ndarray().autodiff();
//! device.seed(0);
//! let mut model: Linear = LinearConfig::new(4, 1).init(&device);
//! let mut optim = AdamConfig::new().init();
//!
//! let policy = ModelCheckpoint::builder().every_n_train_steps(10).save_last(SaveLast::Yes).build()?;
//! let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build()?;
//! let mut run = Run::builder().log_dir(dir.path()).name("demo")
//!     .checkpoint(policy).resume(resume).max_steps(20).build()?;
//! let mut restorer = Restorer::new(&run, &mut model)?.with_optimizer(&mut optim)?;
//! let point = run.restore(&mut restorer)?; // weights, param ids, Adam's moments and counts
//! if point.as_ref().is_some_and(|p| p.completed) {
//!     # continue;
//!     return Ok(()); // this run already finished: nothing to do
//! }
//! let mut step = point.map_or(0, |p| p.step);
//!
//! let x = Tensor::<2>::ones([8, 4], &device);
//! while step < 20 {
//!     step += 1;
//!     let loss = model.forward(x.clone()).powf_scalar(2.0).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = optim.step(1e-2, model, grads);
//!     run.log_metrics(step, &[("train_loss", loss.into_scalar::<f64>())]);
//!     // Built (read out of burn) only at the steps that save.
//!     run.step_end_with(step, 0, || Snapshot::of(&model, json!({ "step": step }))?.with_optimizer(&optim))?;
//! }
//! let saved = run.finish(step, 0, &Snapshot::of(&model, json!({ "step": step }))?.with_optimizer(&optim)?)?;
//! assert!(saved.iter().any(|s| s.name.ends_with("-last")));
//! # }
//! # Ok(()) }
//! ```

pub mod dtype;
mod error;
#[cfg(feature = "learner")]
pub mod learner;
mod restorer;
mod snapshot;
mod tensors;

pub use error::{Error, Result};
#[cfg(feature = "learner")]
pub use learner::LearnerRun;
pub use restorer::Restorer;
pub use snapshot::{BURN_STATE_KEY, OPTIM_PREFIX, Snapshot, USER_STATE_KEY};
