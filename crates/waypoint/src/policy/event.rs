//! The vocabulary of a decision: the [`Event`]s the policy is told about and the [`Action`]s it
//! answers with, bundled in a [`Decision`]. Plain data; the rules live in `decide`.
//!
//! It must not decide or perform anything: `decide` fills a `Decision`, and the run carries its
//! actions out.

use super::state::PolicyState;

/// `Delete` reason for a checkpoint pushed out of the top-k.
pub const DISPLACED: &str = "displaced from top-k";
/// `Delete` reason for the last checkpoint replaced by a newer one.
pub const PREVIOUS_LAST: &str = "previous last";

/// A point in training the policy is told about. `step` is the global step: optimizer steps
/// completed (the first `TrainStepEnd` has step 1). `now_s` is the caller's clock in seconds
/// (any origin, monotonic preferred); only differences are used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// An optimizer step finished.
    TrainStepEnd {
        /// Global step.
        step: u64,
        /// Current epoch (0-based).
        epoch: u64,
        /// Caller's clock, seconds.
        now_s: f64,
    },
    /// A validation run finished (its metrics are reported at `step`).
    ValidationEnd {
        /// Global step.
        step: u64,
        /// Current epoch (0-based).
        epoch: u64,
        /// Caller's clock, seconds.
        now_s: f64,
    },
    /// A training epoch finished.
    TrainEpochEnd {
        /// Global step.
        step: u64,
        /// The epoch that finished (0-based).
        epoch: u64,
        /// Caller's clock, seconds.
        now_s: f64,
    },
    /// Training finished (max steps reached, stopped or preempted).
    TrainEnd {
        /// Global step.
        step: u64,
        /// Current epoch (0-based).
        epoch: u64,
        /// Caller's clock, seconds.
        now_s: f64,
    },
    /// A manual save asked for by the loop ([`Policy::decide_manual`](super::Policy::decide_manual)).
    Manual {
        /// Global step.
        step: u64,
        /// Current epoch (0-based).
        epoch: u64,
        /// Caller's clock, seconds.
        now_s: f64,
    },
}

impl Event {
    /// `(step, epoch, now_s)` of any event.
    pub fn parts(&self) -> (u64, u64, f64) {
        match *self {
            Event::TrainStepEnd { step, epoch, now_s }
            | Event::ValidationEnd { step, epoch, now_s }
            | Event::TrainEpochEnd { step, epoch, now_s }
            | Event::TrainEnd { step, epoch, now_s }
            | Event::Manual { step, epoch, now_s } => (step, epoch, now_s),
        }
    }
}

/// Why a checkpoint is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A checkpoint under its own name, kept by a retention rule: its rank in the top-k (or,
    /// with `save_top_k = -1`, always), the latest `max_to_keep`, a permanent keep, or a manual
    /// save.
    TopK,
    /// The `-last` checkpoint.
    Last,
}

/// One thing for the mechanism to do. In a [`Decision`] every `Save` and `Link` comes before any
/// `Delete`: nothing is deleted before its replacement is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Save a checkpoint named `name` in the checkpoint directory.
    Save {
        /// The checkpoint's name (one path component).
        name: String,
        /// Why it is saved.
        role: Role,
        /// Save the weights only (no optimizer state).
        weights_only: bool,
        /// The fresh monitored value it was ranked by, if any.
        score: Option<f64>,
    },
    /// Delete the checkpoint `name`, which this policy saved.
    Delete {
        /// The checkpoint's name.
        name: String,
        /// [`DISPLACED`] or [`PREVIOUS_LAST`].
        reason: &'static str,
    },
    /// Make `link` a relative link to `target`, saved in this same decision (`link != target`).
    Link {
        /// The last checkpoint's name.
        link: String,
        /// The top-k checkpoint it points to.
        target: String,
    },
}

/// What the directory looks like, for one decision.
#[derive(Clone, Copy)]
pub struct DecideContext<'a> {
    /// Whether a name is taken in the checkpoint directory (committed or not), for the version
    /// counter.
    pub existing: &'a dyn Fn(&str) -> bool,
    /// Whether a name is reserved by a save still in flight (an asynchronous save not finalized
    /// yet): taken too, so that no two saves in flight are ever given one name.
    pub in_flight: &'a dyn Fn(&str) -> bool,
    /// The checkpoint being resumed from: never deleted, even when displaced (Lightning PR #18750).
    pub protected: Option<&'a str>,
}

/// The outcome of [`Policy::decide`](super::Policy::decide).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do, saves and links first, then deletes.
    pub actions: Vec<Action>,
    /// The state once every `Save` has committed. Embed it in the checkpoints saved here; make it
    /// the live state only after they committed, and at once when there are no actions (it also
    /// carries the time trigger's clock).
    pub next: PolicyState,
    /// Lines for the log explaining choices (a save not ranked, a deletion withheld).
    pub notes: Vec<String>,
}
