//! The enumerated knobs of the checkpoint configuration: [`Mode`], [`SaveLast`], [`Trigger`],
//! `PendingFull` (what a full queue of asynchronous saves does) and [`MissingMonitor`] (what a
//! monitor never reported after a validation does), with NeMo's spellings for parsing. Plain values; validation of their combinations lives in `config`.
//!
//! It must hold no rule beyond comparing two scores (`Mode::is_better`): the triggers are
//! evaluated in `decide`, the ranking is `topk`'s, and a full queue is handled by the run and the
//! engine's save queue.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What an asynchronous save does when `max_pending_saves` saves are already in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PendingFull {
    /// Block the training thread until the oldest save finished (default).
    #[default]
    Wait,
    /// Skip this save, with a warning; the next trigger tries again.
    Skip,
}

impl FromStr for PendingFull {
    type Err = Error;

    /// Parses `"wait"` or `"skip"`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wait" => Ok(PendingFull::Wait),
            "skip" => Ok(PendingFull::Skip),
            other => Err(Error::InvalidArgument {
                name: "when_pending_full",
                reason: format!("can be wait or skip, got {other:?}"),
            }),
        }
    }
}

/// What the run does when validations ran but the monitored metric was never reported (a typo in
/// `monitor`, or a metric logged under another name): nothing can ever be ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingMonitor {
    /// Warn once, loudly (default): the run goes on, its saves unranked.
    #[default]
    Warn,
    /// Fail the `validation_end` call with [`Error::MonitorMissing`] (Lightning raises).
    Error,
}

impl FromStr for MissingMonitor {
    type Err = Error;

    /// Parses `"warn"` or `"error"`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "warn" => Ok(MissingMonitor::Warn),
            "error" => Ok(MissingMonitor::Error),
            other => Err(Error::InvalidArgument {
                name: "on_missing_monitor",
                reason: format!("can be warn or error, got {other:?}"),
            }),
        }
    }
}

/// Whether a lower or a higher monitored value is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Lower is better (a loss).
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

impl Mode {
    /// Whether `a` is strictly better than `b`. NaN is worse than every number and not better than
    /// another NaN, so a NaN score never wins a comparison.
    pub fn is_better(self, a: f64, b: f64) -> bool {
        match (a.is_nan(), b.is_nan()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => match self {
                Mode::Min => a < b,
                Mode::Max => a > b,
            },
        }
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// Parses `"min"` or `"max"`; anything else is refused with Lightning's message.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "min" => Ok(Mode::Min),
            "max" => Ok(Mode::Max),
            other => Err(Error::InvalidArgument {
                name: "mode",
                reason: format!("`mode` can be min, max but got {other}"),
            }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Min => "min",
            Mode::Max => "max",
        })
    }
}

/// Whether (and how) a `-last` checkpoint is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveLast {
    /// No last checkpoint (NeMo's `save_last=False`).
    No,
    /// A last checkpoint at every save (NeMo's default `save_last=True`).
    #[default]
    Yes,
    /// Like `Yes`, but when a top-k checkpoint is saved at the same step the last is a link to it
    /// instead of a second copy (NeMo's `save_last="link"`).
    Link,
}

impl FromStr for SaveLast {
    type Err = Error;

    /// Parses `"true"`, `"false"` or `"link"` (NeMo's spellings).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "true" | "True" => Ok(SaveLast::Yes),
            "false" | "False" => Ok(SaveLast::No),
            "link" => Ok(SaveLast::Link),
            other => Err(Error::InvalidArgument {
                name: "save_last",
                reason: format!("`save_last` can be true, false, link but got {other}"),
            }),
        }
    }
}

/// When checkpoints are taken: exactly one of NeMo's three mutually exclusive triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every n optimizer steps, at the end of the step whose global step is a multiple of n.
    EveryNTrainSteps(u64),
    /// Every n epochs, at validation end (or train-epoch end with `save_on_train_epoch_end`).
    EveryNEpochs(u64),
    /// At the first step end after this much time since the previous time-triggered save.
    TrainTimeInterval(Duration),
}
