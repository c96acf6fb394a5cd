//! `waypoint diff`: compares two committed checkpoints. Tensors are matched by name and compared
//! as global tensors (so checkpoints saved by different numbers of ranks compare by content):
//! added, removed, dtype or shape changed, values changed, or equal (bit-identical or within the
//! tolerance). The step, the epoch and the trainer state (`user` and the reserved `waypoint`
//! part) are compared as JSON paths. It reads one tensor piece at a time and never writes.
//!
//! `tensors.rs` compares one tensor's values, `values.rs` compares elements, `state.rs` the JSON,
//! `report.rs` prints the result.

mod report;
mod state;
mod tensors;
mod values;

use crate::cli::{CheckpointLocation, DiffConfig, problem_exit};
use crate::output::Out;
use anyhow::Context;
use state::{StateChange, diff_values};
use std::collections::BTreeSet;
use std::process::ExitCode;
use tensors::{Side, ValueDiff, compare_tensor};
use waypoint::format::TensorEntry;
use waypoint::storage::open_dir;
use waypoint::{CheckpointReader, Checkpointer};

/// How one tensor compares.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorChange {
    /// Bit-identical (`read: false`: known from the block checksums alone).
    Identical {
        /// Whether bytes were read to decide.
        read: bool,
    },
    /// Bits differ but every element is within the tolerance.
    WithinTolerance(ValueDiff),
    /// Some elements differ beyond the tolerance.
    Changed(ValueDiff),
    /// Only in the second checkpoint.
    Added,
    /// Only in the first checkpoint.
    Removed,
    /// Another dtype.
    DtypeChanged,
    /// Same dtype, another shape.
    ShapeChanged,
}

impl TensorChange {
    /// The stable name of the status in the JSON output.
    pub fn status(&self) -> &'static str {
        match self {
            TensorChange::Identical { .. } => "identical",
            TensorChange::WithinTolerance(_) => "within_tolerance",
            TensorChange::Changed(_) => "changed",
            TensorChange::Added => "added",
            TensorChange::Removed => "removed",
            TensorChange::DtypeChanged => "dtype_changed",
            TensorChange::ShapeChanged => "shape_changed",
        }
    }

    /// Whether this makes the checkpoints differ.
    pub fn differs(&self) -> bool {
        !matches!(
            self,
            TensorChange::Identical { .. } | TensorChange::WithinTolerance(_)
        )
    }
}

/// One tensor's comparison.
#[derive(Debug, Clone)]
pub struct TensorDiff {
    /// The tensor's name.
    pub name: String,
    /// Its entry in the first checkpoint.
    pub a: Option<TensorEntry>,
    /// Its entry in the second checkpoint.
    pub b: Option<TensorEntry>,
    /// How it compares.
    pub change: TensorChange,
}

/// The whole comparison.
#[derive(Debug)]
pub struct DiffReport {
    /// Every tensor of either checkpoint, by name.
    pub tensors: Vec<TensorDiff>,
    /// Step, epoch and trainer-state differences.
    pub state: Vec<StateChange>,
}

impl DiffReport {
    /// Whether the checkpoints are equal (within the tolerance).
    pub fn equal(&self) -> bool {
        self.state.is_empty() && !self.tensors.iter().any(|t| t.change.differs())
    }
}

/// Runs `waypoint diff`: exit code 0 when equal, 1 when the checkpoints differ; errors are the
/// caller's to turn into exit code 2.
pub fn run(config: &DiffConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    let a = open(&config.a)?;
    let b = open(&config.b)?;
    let report = DiffReport {
        tensors: diff_tensors(&a, &b, config)?,
        state: diff_state(&a, &b),
    };
    if config.json {
        report::print_json(&report, config, out)?;
    } else {
        report::print_text(&report, config, out)?;
    }
    Ok(problem_exit(report.equal()))
}

/// Opens a checkpoint (its record and listing validated), naming it when that fails.
fn open(location: &CheckpointLocation) -> anyhow::Result<CheckpointReader> {
    let storage = open_dir(&location.root)
        .with_context(|| format!("cannot use directory {}", location.root.display()))?;
    Checkpointer::new(storage)
        .open(&location.dir)
        .with_context(|| format!("{} is not a valid checkpoint", location.path.display()))
}

/// Compares every tensor of either checkpoint, in name order.
fn diff_tensors(
    a: &CheckpointReader,
    b: &CheckpointReader,
    config: &DiffConfig,
) -> anyhow::Result<Vec<TensorDiff>> {
    let (ta, tb) = (&a.record().tensors, &b.record().tensors);
    let names: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (ea, eb) = (ta.get(name), tb.get(name));
        let change = match (ea, eb) {
            (None, _) => TensorChange::Added,
            (_, None) => TensorChange::Removed,
            (Some(x), Some(y)) if x.dtype != y.dtype => TensorChange::DtypeChanged,
            (Some(x), Some(y)) if x.shape != y.shape => TensorChange::ShapeChanged,
            (Some(x), Some(y)) => {
                let sa = Side {
                    reader: a,
                    entry: x,
                };
                let sb = Side {
                    reader: b,
                    entry: y,
                };
                let values = compare_tensor(name, &sa, &sb, config.tolerance)?;
                if values.differing > 0 {
                    TensorChange::Changed(values)
                } else if values.bit_differing > 0 {
                    TensorChange::WithinTolerance(values)
                } else {
                    TensorChange::Identical {
                        read: values.bytes_read > 0,
                    }
                }
            }
        };
        out.push(TensorDiff {
            name: name.clone(),
            a: ea.cloned(),
            b: eb.cloned(),
            change,
        });
    }
    Ok(out)
}

/// The step, the epoch, then `user.…` and `waypoint.…` differences.
fn diff_state(a: &CheckpointReader, b: &CheckpointReader) -> Vec<StateChange> {
    let (ra, rb) = (a.record(), b.record());
    let mut out = Vec::new();
    diff_values("step", &ra.step.into(), &rb.step.into(), &mut out);
    diff_values("epoch", &ra.epoch.into(), &rb.epoch.into(), &mut out);
    let (ua, ub) = (&ra.trainer_state.user, &rb.trainer_state.user);
    diff_values("user", ua, ub, &mut out);
    // The reserved part is plain data; it always serialises (a failure would compare as null).
    let wa = serde_json::to_value(&ra.trainer_state.waypoint).unwrap_or_default();
    let wb = serde_json::to_value(&rb.trainer_state.waypoint).unwrap_or_default();
    diff_values("waypoint", &wa, &wb, &mut out);
    out
}
