//! `waypoint ls`: prints an [`Inventory`] (a run's checkpoints, what is not committed, the lock,
//! AutoResume's pick) as a table or as one JSON object. It reads checkpoint summaries (or commit
//! records, where a checkpoint has none) through `inventory`, and changes nothing.

use crate::cli::LsConfig;
use crate::inventory::{self, Facts, Inventory, Item};
use crate::output::{Out, Style, count, human_age, human_bytes, safe, table};
use serde_json::{Value, json};
use std::process::ExitCode;
use waypoint::resume::Reading;

/// Runs `waypoint ls`: exit code 0 whenever the directory could be read.
pub fn run(config: &LsConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    let inventory = inventory::read(&config.dir, Reading::Summaries)?;
    if config.json {
        writeln!(out, "{}", to_json(&inventory))?;
    } else {
        print_text(&inventory, out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A number JSON can hold, or its name as a string (`"nan"`, `"inf"`, `"-inf"`).
pub fn json_number(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else if value.is_nan() {
        json!("nan")
    } else if value > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// The marks of a checkpoint, in a fixed order.
pub fn marks(item: &Item, inventory: &Inventory) -> Vec<&'static str> {
    let mut marks = Vec::new();
    if inventory.resume.name.as_deref() == Some(item.name.as_str()) {
        marks.push("resume");
    }
    if item.last {
        marks.push("last");
    }
    if item.completed {
        marks.push("completed");
    }
    if item.weights_only {
        marks.push("weights-only");
    }
    marks.extend(item.facts.mark());
    marks
}

fn item_json(item: &Item, inventory: &Inventory) -> Value {
    json!({
        "name": item.name,
        "step": item.step,
        "epoch": item.epoch,
        "value": item.value.map(json_number),
        "top_k_rank": item.rank,
        "marks": marks(item, inventory),
        "last": item.last,
        "weights_only": item.weights_only,
        "completed": item.completed,
        "bytes": item.bytes,
        "age_s": item.age_s,
        "summary": match &item.facts {
            Facts::Summary => json!("read"),
            Facts::Record => json!("none"),
            Facts::SummaryRefused(why) => json!({"refused": why}),
        },
    })
}

/// The JSON description (docs/CLI.md lists its keys; they are stable).
pub(crate) fn to_json(inventory: &Inventory) -> Value {
    let checkpoints: Vec<Value> = inventory
        .checkpoints
        .iter()
        .map(|item| item_json(item, inventory))
        .collect();
    let other: Vec<Value> = inventory
        .other
        .iter()
        .map(|(name, reason)| json!({"name": name, "reason": reason}))
        .collect();
    json!({
        "path": inventory.path,
        "run": inventory.run.as_ref().map(|run| json!({
            "path": run.path,
            "version": run.version,
        })),
        "locked_by": inventory.locked_by,
        "monitor": inventory.monitor,
        "mode": mode_name(inventory.mode),
        "checkpoints": checkpoints,
        "total_bytes": inventory.checkpoints.iter().map(|c| c.bytes).sum::<u64>(),
        "not_committed": other,
        "resume": {"name": inventory.resume.name, "reason": inventory.resume.reason},
    })
}

/// `min` or `max`.
pub fn mode_name(mode: waypoint::Mode) -> &'static str {
    match mode {
        waypoint::Mode::Min => "min",
        waypoint::Mode::Max => "max",
    }
}

/// The header lines: where, the run, its lock, AutoResume's pick.
pub fn print_header(inventory: &Inventory, out: &mut Out) -> anyhow::Result<()> {
    let label = |out: &Out, text: &'static str| out.paint(Style::Bold, format!("{text:<12}"));
    writeln!(
        out,
        "{}{}",
        label(out, "checkpoints"),
        safe(&inventory.path)
    )?;
    if let Some(run) = &inventory.run {
        writeln!(out, "{}{}", label(out, "version"), safe(&run.version))?;
        let lock = match &inventory.locked_by {
            Some(holder) => out
                .paint(Style::Red, format!("held by a live run: {}", safe(holder)))
                .to_string(),
            None if inventory.path.contains("://") => "unknown (object store)".to_owned(),
            None => "free (no live run)".to_owned(),
        };
        writeln!(out, "{}{lock}", label(out, "lock"))?;
    }
    let pick = match &inventory.resume.name {
        Some(name) => format!("{}: {}", safe(name), inventory.resume.reason),
        None => format!("nothing: {}", inventory.resume.reason),
    };
    writeln!(out, "{}{pick}", label(out, "resume"))?;
    Ok(())
}

fn print_text(inventory: &Inventory, out: &mut Out) -> anyhow::Result<()> {
    print_header(inventory, out)?;
    writeln!(out)?;
    let monitor = inventory.monitor.as_deref();
    let mut rows = vec![header_row(monitor)];
    for item in &inventory.checkpoints {
        let mut row = vec![
            safe(&item.name).into_owned(),
            item.step.to_string(),
            item.epoch.to_string(),
        ];
        if monitor.is_some() {
            row.push(item.value.map(|v| v.to_string()).unwrap_or_default());
        }
        row.extend([
            item.rank.map(|r| r.to_string()).unwrap_or_default(),
            human_bytes(item.bytes),
            item.age_s.map(human_age).unwrap_or_default(),
            marks(item, inventory).join(","),
        ]);
        rows.push(row);
    }
    let right = if monitor.is_some() {
        &[false, true, true, true, true, true, true][..]
    } else {
        &[false, true, true, true, true, true][..]
    };
    let lines = table(&rows, right);
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            writeln!(out, "{}", out.paint(Style::Bold, line))?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    let total: u64 = inventory.checkpoints.iter().map(|c| c.bytes).sum();
    writeln!(
        out,
        "{}, {}",
        count(inventory.checkpoints.len(), "checkpoint"),
        human_bytes(total)
    )?;
    print_other(inventory, out)
}

fn header_row(monitor: Option<&str>) -> Vec<String> {
    let mut row = vec!["NAME".into(), "STEP".into(), "EPOCH".into()];
    if let Some(monitor) = monitor {
        row.push(safe(monitor).to_uppercase());
    }
    row.extend(["TOP-K".into(), "SIZE".into(), "AGE".into(), "MARKS".into()]);
    row
}

/// What is not a committed checkpoint, one line each with the reason.
pub fn print_other(inventory: &Inventory, out: &mut Out) -> anyhow::Result<()> {
    if inventory.other.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        out.paint(Style::Bold, "not committed checkpoints:")
    )?;
    let rows: Vec<Vec<String>> = inventory
        .other
        .iter()
        .map(|(name, reason)| vec![format!("  {}", safe(name)), safe(reason).into_owned()])
        .collect();
    for line in table(&rows, &[]) {
        writeln!(out, "{}", out.paint(Style::Dim, line))?;
    }
    Ok(())
}
