//! The checkpoint policy of NeMo's `ModelCheckpoint`, as pure code: when to save, what to call a
//! checkpoint, which to keep and which to delete. Nothing here touches storage or reads a clock:
//! time and metrics come in [`Event`]s, the directory's contents come as closures, and the outcome
//! is a list of [`Action`]s for the mechanism (the engine and storage) to carry out.
//!
//! - [`ModelCheckpoint`] (`config`): the validated knobs, NeMo's defaults.
//! - `naming`: filename templates rendered as Python would, `-last`, `-vN`.
//! - [`TopK`] (`topk`): Lightning's best-k bookkeeping.
//! - [`PolicyState`] (`state`): what is remembered across events and restarts.
//! - [`Policy::decide`] (`decide`): state + event + metrics → actions.
//!
//! # Rules
//!
//! **Triggers.** `every_n_train_steps = n` saves at the `TrainStepEnd` whose global step is a
//! multiple of n. `train_time_interval = d` saves at the first `TrainStepEnd` at least `d` after
//! the previous time-triggered save (the first interval starts at the first event seen; a clock
//! that goes backwards restarts it; after a resume it restarts with the run, as in Lightning).
//! `every_n_epochs = n` saves when `(epoch + 1) % n == 0`, at `ValidationEnd`, or at
//! `TrainEpochEnd` with `save_on_train_epoch_end`. With a step or time trigger, epoch and
//! validation ends never save (Lightning #20075). Nothing is saved at global step 0, nor twice at
//! one step.
//!
//! **Fresh metrics only.** A checkpoint is ranked only by a monitored value measured on its own
//! weights: [`MetricValue::step`] must equal the event's step. Names likewise use only values
//! reported at that step; any other placeholder renders `<metric>=nan`, never a stale value.
//! When a trigger fires and the monitored value is not fresh (a step trigger between
//! validations, or before the first one: NeMo #10675), the save is not ranked: with
//! `save_top_k = -1` it is still kept (score NaN, named `<monitor>=nan`); otherwise only the
//! `-last` checkpoint is saved (nothing if `save_last` is off) and [`Decision::notes`] says so,
//! e.g. `"step 30: val_loss not reported at this step; saved as -last only"`.
//!
//! **Without a monitor** (`save_top_k` ∈ {-1, 0, 1}), checkpoints are ranked by step, newest
//! best: -1 keeps every save, 1 keeps the newest, 0 none.
//!
//! **Top-k** ([`TopK`]): a fresh score enters when fewer than k are kept or it is strictly better
//! than the worst kept; ties do not enter; NaN is the worst score. The displaced checkpoint is
//! deleted after the new one is saved. If `save_top_k` was lowered between runs, the surplus is
//! deleted at the next save.
//!
//! **Last.** With `save_last`, every save also produces `<name>-last` (`<name>-vN-last` on a
//! collision, so the name still ends in `last`), and deletes the previous last. A name reserved by
//! a save still in flight ([`DecideContext::in_flight`]) is a collision too, so no two saves in
//! flight share a name (with the counter off the run waits for the save of that name instead). With
//! `SaveLast::Link`, when a top-k checkpoint is saved at the same step the last is a [`Action::Link`]
//! to it; a link never targets itself (Lightning #21110).
//!
//! **Train end.** With `save_last`, unless a save already happened at this step, a last
//! checkpoint is saved, weights only unless `save_optim_on_train_end` (NeMo's rule; note that
//! such a checkpoint cannot restore the optimizer).
//!
//! **Deletion is conservative.** Every `Save` and `Link` precedes every `Delete`. Only names this
//! policy saved (recorded in [`PolicyState::saved`]) are ever deleted; never the checkpoint being
//! resumed from ([`DecideContext::protected`], Lightning #11379 / PR #18750), never a name still
//! in the top-k or the current last. A restored state is used only for the directory it was
//! written for and is reconciled with what is committed there ([`Policy::restore`]).

mod config;
mod decide;
mod event;
mod knobs;
mod naming;
mod order;
mod restore;
mod retention;
mod state;
mod template;
#[cfg(test)]
mod testkit;
mod topk;

pub use config::{ModelCheckpoint, ModelCheckpointBuilder};
pub use decide::{CONSUMED_SAMPLES, Policy};
pub use event::{Action, DISPLACED, DecideContext, Decision, Event, PREVIOUS_LAST, Role};
pub use knobs::{MissingMonitor, Mode, PendingFull, SaveLast, Trigger};
pub use naming::{
    LAST_SUFFIX, MAX_NAME_LEN, default_filename, format_name, last_name, last_with_version,
    name_problem, with_version,
};
pub use order::MAX_TAG_LEN;
pub use retention::{KeepReason, PermanentKeep, RecentEntry};
pub use state::{MetricValue, Metrics, PolicyState};
pub use template::{MAX_PRECISION, MAX_WIDTH};
pub use topk::{TopK, TopKEntry};
