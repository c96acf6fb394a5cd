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
//! candle first runs. `waypoint-train` shows the whole loop.

mod adamw;
pub mod dtype;
mod error;
mod snapshot;
mod vars;

pub use adamw::{AdamW, AdamWParams};
pub use error::{Error, Result};
pub use snapshot::Snapshot;
pub use vars::{LockedVars, NamedVars, VarStaging};
