//! Printing a [`DiffReport`]: a summary line and one line per difference as text, or one JSON
//! object (the schema is in docs/CLI.md). Names and values from the checkpoints are made safe
//! for a terminal. It decides how the result looks, never what it is.

use super::state::StateChange;
use super::tensors::ValueDiff;
use super::values::Kind;
use super::{DiffReport, TensorChange, TensorDiff};
use crate::cli::DiffConfig;
use crate::output::{Out, StdoutError, Style, count, safe, shape, truncate};
use serde_json::{Value, json};
use waypoint::format::TensorEntry;

/// Values of the trainer state are cut to this many characters in the text output.
const VALUE_CHARS: usize = 60;

/// The counts of the summary, by status.
fn tally(report: &DiffReport, status: &str) -> usize {
    report
        .tensors
        .iter()
        .filter(|t| t.change.status() == status)
        .count()
}

/// Prints the summary line, then one line per differing tensor and per state difference.
pub fn print_text(
    report: &DiffReport,
    config: &DiffConfig,
    out: &mut Out,
) -> Result<(), StdoutError> {
    let (a, b) = (config.a.path.display(), config.b.path.display());
    let total = report.tensors.len();
    if report.equal() {
        let close = tally(report, "within_tolerance");
        let within = if close > 0 {
            format!(" ({close} within the tolerance)")
        } else {
            String::new()
        };
        writeln!(
            out,
            "{} {a} and {b}: {} equal{within}",
            out.paint(Style::Green, "identical:"),
            count(total, "tensor")
        )?;
        return Ok(());
    }
    let differing = report.tensors.iter().filter(|t| t.change.differs()).count();
    let mut parts = Vec::new();
    for (status, label) in [
        ("changed", "changed"),
        ("added", "added"),
        ("removed", "removed"),
        ("dtype_changed", "dtype changed"),
        ("shape_changed", "shape changed"),
    ] {
        let n = tally(report, status);
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    };
    writeln!(
        out,
        "{} {a} and {b}: {differing} of {} differ{detail}; {}",
        out.paint(Style::Red, "differ:"),
        count(total, "tensor"),
        count(report.state.len(), "state difference")
    )?;
    for tensor in report.tensors.iter().filter(|t| t.change.differs()) {
        writeln!(out, "{}", tensor_line(tensor, out))?;
    }
    for change in &report.state {
        writeln!(
            out,
            "  {}  {}: {} → {}",
            out.paint(Style::Bold, "state  "),
            safe(&change.path),
            shown(change.a.as_ref()),
            shown(change.b.as_ref())
        )?;
    }
    Ok(())
}

/// `F32 [32, 32]`.
fn typed(entry: Option<&TensorEntry>) -> String {
    entry.map_or_else(String::new, |e| format!("{} {}", e.dtype, shape(&e.shape)))
}

/// One differing tensor's line.
fn tensor_line(tensor: &TensorDiff, out: &Out) -> String {
    let name = safe(&tensor.name);
    let (a, b) = (tensor.a.as_ref(), tensor.b.as_ref());
    let (label, style, rest) = match &tensor.change {
        TensorChange::Added => ("added  ", Style::Green, typed(b)),
        TensorChange::Removed => ("removed", Style::Red, typed(a)),
        TensorChange::DtypeChanged | TensorChange::ShapeChanged => {
            let label = if matches!(tensor.change, TensorChange::DtypeChanged) {
                "dtype  "
            } else {
                "shape  "
            };
            (label, Style::Red, format!("{} → {}", typed(a), typed(b)))
        }
        TensorChange::Changed(values) | TensorChange::WithinTolerance(values) => (
            "changed",
            Style::Red,
            format!("{}: {}", typed(a), values_text(values)),
        ),
        TensorChange::Identical { .. } => ("same   ", Style::Dim, typed(a)),
    };
    format!("  {}  {name} {rest}", out.paint(style, label))
}

/// `1 of 1024 elements differ, max abs diff 0.5, max rel diff 0.25, first at [3, 7]`.
fn values_text(values: &ValueDiff) -> String {
    let unit = if matches!(values.kind, Kind::Bytes) {
        "byte"
    } else {
        "element"
    };
    let mut text = format!(
        "{} of {} differ",
        values.differing,
        count(usize::try_from(values.units).unwrap_or(usize::MAX), unit)
    );
    if matches!(values.kind, Kind::Float(_)) {
        text.push_str(&format!(
            ", max abs diff {}, max rel diff {}",
            number(values.max_abs),
            number(values.max_rel)
        ));
    }
    if let Some(index) = &values.first_index {
        text.push_str(&format!(", first at {}", shape(index)));
    }
    text
}

/// A difference for people: shortest form, `inf` when infinite.
fn number(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else if v == 0.0 || (1e-4..1e6).contains(&v) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// A state value for the text output (`(absent)` when missing), cut and made safe.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".into(),
        Some(v) => safe(&truncate(&v.to_string(), VALUE_CHARS)).into_owned(),
    }
}

/// Prints the report as one JSON object.
pub fn print_json(
    report: &DiffReport,
    config: &DiffConfig,
    out: &mut Out,
) -> Result<(), StdoutError> {
    let mut summary = serde_json::Map::new();
    for status in [
        "identical",
        "within_tolerance",
        "changed",
        "added",
        "removed",
        "dtype_changed",
        "shape_changed",
    ] {
        summary.insert(status.into(), json!(tally(report, status)));
    }
    summary.insert("state_differences".into(), json!(report.state.len()));
    let value = json!({
        "a": config.a.path.display().to_string(),
        "b": config.b.path.display().to_string(),
        "equal": report.equal(),
        "tolerance": {"atol": config.tolerance.atol, "rtol": config.tolerance.rtol},
        "summary": summary,
        "tensors": report
            .tensors
            .iter()
            .filter(|t| !matches!(t.change, TensorChange::Identical { .. }))
            .map(tensor_json)
            .collect::<Vec<_>>(),
        "state": report.state.iter().map(state_json).collect::<Vec<_>>(),
    });
    writeln!(out, "{value}")
}

fn entry_json(entry: Option<&TensorEntry>) -> Value {
    entry.map_or(
        Value::Null,
        |e| json!({"dtype": e.dtype.name(), "shape": e.shape}),
    )
}

/// A finite number, or null.
fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn tensor_json(tensor: &TensorDiff) -> Value {
    let values = match &tensor.change {
        TensorChange::Changed(v) | TensorChange::WithinTolerance(v) => {
            let float = matches!(v.kind, Kind::Float(_));
            json!({
                "kind": v.kind.name(),
                "elements": v.units,
                "differing": v.differing,
                "bit_differing": v.bit_differing,
                "first_index": v.first_index,
                "max_abs": if float { finite(v.max_abs) } else { Value::Null },
                "max_rel": if float { finite(v.max_rel) } else { Value::Null },
            })
        }
        _ => Value::Null,
    };
    json!({
        "name": tensor.name,
        "status": tensor.change.status(),
        "a": entry_json(tensor.a.as_ref()),
        "b": entry_json(tensor.b.as_ref()),
        "values": values,
    })
}

fn state_json(change: &StateChange) -> Value {
    json!({
        "path": change.path,
        "change": change.change(),
        "a": change.a,
        "b": change.b,
    })
}
