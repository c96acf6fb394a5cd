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
//! - `retention`: the latest `max_to_keep`, permanent keeps ([`KeepReason`]).
//! - `order`: the trainer's call order (a save waiting for its validation), `should_save`.
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
//! **Retention beyond the top-k** (Orbax's preservation policies; issue 18). A checkpoint stays
//! while any rule keeps it: the top-k, the `-last`, the latest `max_to_keep` saves (whatever their
//! rank; with it every trigger saves under its own name, also unranked), and the permanent keeps,
//! which rotation never deletes: a save at a multiple of `keep_every_n_steps`, and with
//! `keep_time_interval` the first save and each one at least the interval after the previous
//! time keep (by the event's clock, which the run takes from wall time, so it carries across
//! restarts; a clock that went backwards keeps the save and restarts the interval). A lowered
//! `max_to_keep` deletes the surplus at the next save, as a lowered `save_top_k` does. The state
//! ([`PolicyState::recent`], [`PolicyState::permanent`]) travels in every checkpoint's record and
//! is reconciled on resume like the top-k.
//!
//! **Manual saves** ([`Policy::decide_manual`], `Run::save_now`; Lightning's
//! `trainer.save_checkpoint`): named by the template plus `-<tag>` (and `-vN`), kept for good,
//! entering the top-k only when the monitored value is fresh and good enough (never ranked by
//! step); they touch neither the `-last` nor the triggers' bookkeeping, so a trigger at the same
//! step still saves.
//!
//! **The trainer's call order.** Lightning calls the training-batch end before that step's
//! validation, so with `every_n_train_steps` and a validated monitor at the same steps the value
//! is not fresh at `TrainStepEnd`. The first such save is made at once, unranked (the order is
//! not known yet); a `ValidationEnd` at that step with the value saves it again, ranked, and the
//! policy learns the order ([`PolicyState::validation_follows`]). From then on such a save waits
//! for the step's `ValidationEnd` (Lightning ≥ 2.5.5, PR #21106), bounded: if the next event is
//! a later `TrainStepEnd`, it is saved there, unranked, and the policy stops waiting; a
//! `TrainEnd` at its step saves it; a validation without the value saves it unranked. With the
//! validation's metrics reported before the step end nothing waits. Nothing waits without a
//! monitor or with `save_top_k = 0`.
//!
//! **`{consumed_samples}`.** With the default filename, a metric `consumed_samples` reported at
//! the save's step appends `-consumed_samples=<value>` (NeMo's Megatron name, the value rendered as
//! Python renders the float NeMo logs: `1280.0`); placeholders take Python's width and `0` flag.
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
