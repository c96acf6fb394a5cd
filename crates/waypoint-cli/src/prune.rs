//! `waypoint prune`: which committed checkpoints the retention rules keep and which they would
//! delete ([`decide`], pure, over the records' facts), then, with `--yes`, the deletions through
//! `waypoint::engine::delete_checkpoint` (atomic: a directory vanishes from its name at once).
//! It refuses to run while a live run holds the directory's lock, never deletes the checkpoint
//! AutoResume would pick, and never touches what is not a committed checkpoint.

use crate::cli::{EXIT_PROBLEM, PruneConfig, Rules, UsageError};
use crate::inventory::{self, Inventory, Item, better_first};
use crate::ls::{json_number, mode_name, print_header, print_other};
use crate::output::{Out, Style, count, human_age, human_bytes, safe, table};
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::ExitCode;
use waypoint::Mode;
use waypoint::engine::delete_checkpoint;

/// What the rules say about one committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The checkpoint.
    pub name: String,
    /// Whether it goes.
    pub delete: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// How the top-k rule ranks: by the monitored value in the policy's mode, or (without a
/// monitor) by step, newest best, as the policy itself does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    /// The monitored metric; `None`: by step.
    pub monitor: Option<String>,
    /// The mode of the monitored value.
    pub mode: Mode,
}

/// Applies `rules` to `items`. A checkpoint is kept when any keep rule keeps it, or when it is
/// not old enough for `--older-than` (or its age is unknown); `protected` (AutoResume's pick) is
/// always kept, with a reason saying so when the rules would have deleted it.
pub fn decide(
    items: &[Item],
    ranking: &Ranking,
    rules: &Rules,
    protected: Option<&str>,
) -> Vec<Verdict> {
    let top = top_k(items, ranking, rules.keep_top_k);
    items
        .iter()
        .map(|item| {
            let mut reasons = Vec::new();
            if let Some(reason) = top.iter().find(|(n, _)| *n == item.name).map(|(_, r)| r) {
                reasons.push(reason.clone());
            }
            if rules.keep_last && item.last {
                reasons.push("--keep-last: a -last checkpoint".to_owned());
            }
            if let Some(n) = rules.keep_every_n_steps.filter(|n| item.step % n == 0) {
                reasons.push(format!("--keep-every-n-steps {n}: step {} is a multiple of {n}", item.step));
            }
            if let Some(limit) = rules.older_than_s {
                match item.age_s {
                    None => reasons.push("--older-than: its age is unknown".to_owned()),
                    Some(age) if age <= limit => reasons.push(format!(
                        "--older-than {}: it is {} old",
                        human_age(limit),
                        human_age(age)
                    )),
                    Some(_) => {}
                }
            }
            let is_protected = protected == Some(item.name.as_str());
            if is_protected && reasons.is_empty() {
                reasons.push(
                    "AutoResume would resume from it: never deleted (the rules would have deleted it)"
                        .to_owned(),
                );
            } else if is_protected {
                reasons.push("AutoResume would resume from it".to_owned());
            }
            let delete = reasons.is_empty();
            if delete {
                reasons.push("no rule keeps it".to_owned());
            }
            Verdict {
                name: item.name.clone(),
                delete,
                reasons,
            }
        })
        .collect()
}

/// The names `--keep-top-k n` keeps, with the reason: the n best by value (or by step), ties
/// going to the newer step. Checkpoints without a value are not ranked.
fn top_k<'a>(items: &'a [Item], ranking: &Ranking, n: Option<usize>) -> Vec<(&'a str, String)> {
    let Some(n) = n else {
        return Vec::new();
    };
    let (mode, by) = match &ranking.monitor {
        Some(monitor) => (
            ranking.mode,
            format!("{monitor} ({})", mode_name(ranking.mode)),
        ),
        None => (Mode::Max, "step (newest best)".to_owned()),
    };
    let mut scored: Vec<(&Item, f64)> = items
        .iter()
        .filter_map(|item| match &ranking.monitor {
            Some(_) => item.value.map(|v| (item, v)),
            None => Some((item, item.step as f64)),
        })
        .collect();
    scored.sort_by(|a, b| better_first(mode, a.1, b.1).then(b.0.step.cmp(&a.0.step)));
    scored
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, (item, _))| {
            (
                item.name.as_str(),
                format!("--keep-top-k {n}: rank {} by {by}", i + 1),
            )
        })
        .collect()
}

/// Runs `waypoint prune`.
pub fn run(config: &PruneConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    // Deletions are decided on the commit records themselves, never on summaries.
    let inventory = inventory::read(&config.dir, waypoint::resume::Reading::Records)?;
    if let Some(holder) = &inventory.locked_by {
        return Err(UsageError(format!(
            "a live run holds the lock of {} ({holder}): nothing deleted; prune when it has ended",
            inventory
                .run
                .as_ref()
                .map_or(inventory.path.as_str(), |r| r.path.as_str())
        ))
        .into());
    }
    let ranking = Ranking {
        monitor: inventory.monitor.clone(),
        mode: inventory.mode,
    };
    let protected = inventory.resume.protected.as_deref();
    let verdicts = decide(&inventory.checkpoints, &ranking, &config.rules, protected);
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    if config.delete {
        for verdict in verdicts.iter().filter(|v| v.delete) {
            match delete_checkpoint(inventory.storage.as_ref(), &verdict.name) {
                Ok(()) => deleted.push(verdict.name.clone()),
                Err(e) => failed.push((verdict.name.clone(), e.to_string())),
            }
        }
    }
    let report = Report {
        inventory: &inventory,
        verdicts: &verdicts,
        dry_run: !config.delete,
        deleted: &deleted,
        failed: &failed,
    };
    if config.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        report.print_text(out)?;
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    let mut stderr = std::io::stderr();
    for (name, error) in &failed {
        let _ = writeln!(
            stderr,
            "waypoint: error: could not delete {}: {error}",
            safe(name)
        );
    }
    Ok(ExitCode::from(EXIT_PROBLEM))
}

/// The outcome, for printing.
struct Report<'a> {
    inventory: &'a Inventory,
    verdicts: &'a [Verdict],
    dry_run: bool,
    deleted: &'a [String],
    failed: &'a [(String, String)],
}

impl Report<'_> {
    fn item(&self, name: &str) -> Option<&Item> {
        self.inventory.checkpoints.iter().find(|c| c.name == name)
    }

    fn delete_bytes(&self) -> u64 {
        self.verdicts
            .iter()
            .filter(|v| v.delete)
            .filter_map(|v| self.item(&v.name))
            .map(|c| c.bytes)
            .sum()
    }

    fn verdict_json(&self, verdict: &Verdict) -> Value {
        let item = self.item(&verdict.name);
        json!({
            "name": verdict.name,
            "step": item.map(|c| c.step),
            "value": item.and_then(|c| c.value).map(json_number),
            "bytes": item.map(|c| c.bytes),
            "age_s": item.and_then(|c| c.age_s),
            "reasons": verdict.reasons,
        })
    }

    fn to_json(&self) -> Value {
        let pick = |delete: bool| -> Vec<Value> {
            self.verdicts
                .iter()
                .filter(|v| v.delete == delete)
                .map(|v| self.verdict_json(v))
                .collect()
        };
        let failed: Vec<Value> = self
            .failed
            .iter()
            .map(|(name, error)| json!({"name": name, "error": error}))
            .collect();
        let other: Vec<Value> = self
            .inventory
            .other
            .iter()
            .map(|(name, reason)| json!({"name": name, "reason": reason}))
            .collect();
        json!({
            "path": self.inventory.path,
            "run": self.inventory.run.as_ref().map(|r| json!({"path": r.path, "version": r.version})),
            "dry_run": self.dry_run,
            "delete": pick(true),
            "keep": pick(false),
            "delete_bytes": self.delete_bytes(),
            "deleted": self.deleted,
            "failed": failed,
            "not_committed": other,
            "resume": {"name": self.inventory.resume.name, "reason": self.inventory.resume.reason},
        })
    }

    fn print_text(&self, out: &mut Out) -> anyhow::Result<()> {
        print_header(self.inventory, out)?;
        writeln!(out)?;
        let action = if self.dry_run {
            "would delete"
        } else {
            "delete"
        };
        let mut rows = vec![vec![
            "ACTION".to_owned(),
            "NAME".into(),
            "STEP".into(),
            "SIZE".into(),
            "REASON".into(),
        ]];
        for verdict in self.verdicts {
            let item = self.item(&verdict.name);
            rows.push(vec![
                if verdict.delete { action } else { "keep" }.to_owned(),
                safe(&verdict.name).into_owned(),
                item.map(|c| c.step.to_string()).unwrap_or_default(),
                item.map(|c| human_bytes(c.bytes)).unwrap_or_default(),
                verdict.reasons.join("; "),
            ]);
        }
        for (i, line) in table(&rows, &[false, false, true, true]).iter().enumerate() {
            let style = match (i, rows.get(i).is_some_and(|r| r[0] == "keep")) {
                (0, _) => Style::Bold,
                (_, true) => Style::Dim,
                (_, false) => Style::Red,
            };
            writeln!(out, "{}", out.paint(style, line))?;
        }
        self.print_summary(out)?;
        print_other(self.inventory, out)
    }

    fn print_summary(&self, out: &mut Out) -> anyhow::Result<()> {
        let going = self.verdicts.iter().filter(|v| v.delete).count();
        let bytes = human_bytes(self.delete_bytes());
        if going == 0 {
            writeln!(out, "nothing to delete")?;
        } else if self.dry_run {
            writeln!(
                out,
                "would delete {} ({bytes}); run again with --yes to delete",
                count(going, "checkpoint")
            )?;
        } else {
            writeln!(
                out,
                "deleted {} ({bytes}){}",
                count(self.deleted.len(), "checkpoint"),
                if self.failed.is_empty() {
                    String::new()
                } else {
                    format!("; {} failed", self.failed.len())
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, step: u64, value: Option<f64>, last: bool, age_s: Option<u64>) -> Item {
        Item {
            name: name.into(),
            step,
            epoch: 0,
            value,
            rank: None,
            last,
            weights_only: false,
            completed: false,
            bytes: 1,
            age_s,
            facts: crate::inventory::Facts::Record,
        }
    }

    fn deleted(
        items: &[Item],
        ranking: &Ranking,
        rules: &Rules,
        pick: Option<&str>,
    ) -> Vec<String> {
        decide(items, ranking, rules, pick)
            .into_iter()
            .filter(|v| v.delete)
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn keep_rules_table() {
        let day = 86_400;
        let items = [
            item("d-last", 400, Some(0.4), true, Some(10)),
            item("c", 300, Some(0.2), false, Some(2 * day)),
            item("b", 200, Some(f64::NAN), false, Some(9 * day)),
            item("a", 100, Some(0.3), false, None),
        ];
        let by_loss = Ranking {
            monitor: Some("loss".into()),
            mode: Mode::Min,
        };
        let by_acc = Ranking {
            monitor: Some("acc".into()),
            mode: Mode::Max,
        };
        let by_step = Ranking {
            monitor: None,
            mode: Mode::Min,
        };
        let rules = |k: Option<usize>, last: bool, n: Option<u64>, older: Option<u64>| Rules {
            keep_top_k: k,
            keep_last: last,
            keep_every_n_steps: n,
            older_than_s: older,
        };
        let table: Vec<(&Ranking, Rules, Option<&str>, Vec<&str>)> = vec![
            // Top-2 by loss (min): c, a; NaN is the worst.
            (
                &by_loss,
                rules(Some(2), false, None, None),
                None,
                vec!["d-last", "b"],
            ),
            // Max mode: d-last (0.4), a (0.3); NaN still worst.
            (
                &by_acc,
                rules(Some(2), false, None, None),
                None,
                vec!["c", "b"],
            ),
            // Without a monitor: by step, newest best.
            (
                &by_step,
                rules(Some(1), false, None, None),
                None,
                vec!["c", "b", "a"],
            ),
            // Any keep rule keeps: top-1 (c) or -last (d-last) or a multiple of 200 (d-last, b).
            (
                &by_loss,
                rules(Some(1), true, Some(200), None),
                None,
                vec!["a"],
            ),
            // The pick is never deleted.
            (
                &by_loss,
                rules(Some(1), false, None, None),
                Some("a"),
                vec!["d-last", "b"],
            ),
            // Only older than 7 days is eligible; an unknown age is kept.
            (
                &by_loss,
                rules(None, false, None, Some(7 * day)),
                None,
                vec!["b"],
            ),
            (
                &by_loss,
                rules(Some(0), false, None, Some(day)),
                None,
                vec!["c", "b"],
            ),
        ];
        for (i, (ranking, rules, pick, want)) in table.into_iter().enumerate() {
            assert_eq!(deleted(&items, ranking, &rules, pick), want, "case {i}");
        }
    }

    #[test]
    fn the_pick_says_when_a_rule_would_have_deleted_it() {
        let items = [item("x", 10, None, false, None)];
        let ranking = Ranking {
            monitor: None,
            mode: Mode::Max,
        };
        let rules = Rules {
            keep_every_n_steps: Some(3),
            ..Rules::default()
        };
        let verdicts = decide(&items, &ranking, &rules, Some("x"));
        assert!(!verdicts[0].delete);
        assert!(
            verdicts[0].reasons[0].contains("would have deleted"),
            "{:?}",
            verdicts[0]
        );
    }
}
