//! # waypoint-candle: checkpoint candle training loops with waypoint
//!
//! - [`NamedVars`]: a model's candle vars by name (from a candle-nn `VarMap` or one by one).
//!   [`NamedVars::lock`] lends their CPU memory to a save without a copy;
//!   [`NamedVars::staging`] and [`VarStaging::apply`] load a checkpoint back into the same vars,
//!   in place, checked by name, dtype and shape.
//! - [`AdamW`]: candle-nn's AdamW arithmetic with its moments and step count exposed, so that a
//!   resumed run continues bit for bit.
//! - [`Snapshot`]: model, optimizer, extra tensors and trainer state (step, RNG position, data
//!   position, as JSON) as waypoint's `Checkpointable`, for one save call.
//! - [`dtype`]: candle's `DType` ↔ waypoint's `Dtype`.
//!
//! candle's CPU backend cannot be seeded and its random initialisers draw from a thread RNG:
//! for a run that resumes bit for bit, initialise vars from your own seeded generator (whose
//! position goes into the trainer state) and fix the thread count (`RAYON_NUM_THREADS`) before
//! candle first runs. `waypoint-train` shows the whole loop, resumption included
//! (`crates/waypoint-train/src/candle_model.rs` implements `Checkpointable` for loading:
//! `restore_slots` hands out the slots of [`NamedVars::staging`], `restore_trainer_state` calls
//! [`VarStaging::apply`] and [`AdamW::set_step_count`]).
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};
//! use waypoint_candle::{AdamW, AdamWParams, NamedVars, Snapshot};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
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
//!
//! let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu)?;
//! let mut step = 0u64;
//! while step < 20 {
//!     step += 1;
//!     let loss = layer.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?;
//!     let state = serde_json::json!({ "step": step, "adamw_t": opt.step_count() });
//!     let (m, o) = (model.lock()?, opt.state_vars().lock()?);
//!     run.step_end(step, 0, &Snapshot::new(&m, &o, state))?; // lent, not copied
//! }
//! let (m, o) = (model.lock()?, opt.state_vars().lock()?);
//! let state = serde_json::json!({ "step": step, "adamw_t": opt.step_count() });
//! let saved = run.finish(step, 0, &Snapshot::new(&m, &o, state))?;
//! assert!(saved.iter().any(|s| s.name.ends_with("-last")));
//! # Ok(()) }
//! ```

mod adamw;
pub mod dtype;
mod error;
mod snapshot;
mod vars;

pub use adamw::{AdamW, AdamWParams};
pub use error::{Error, Result};
pub use snapshot::Snapshot;
pub use vars::{LockedVars, NamedVars, VarStaging};
