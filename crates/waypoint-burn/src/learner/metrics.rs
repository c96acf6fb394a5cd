//! [`WaypointMetricLogger`]: burn-train's `MetricLogger` forwarding the Learner's numeric metrics
//! to the run's loggers (TensorBoard, CSV, MLflow, W&B) and keeping them for burn's readers.
//!
//! It owns the metric names and the step count: `train_<metric>` at every training iteration,
//! `valid_<metric>` (the epoch's value, computed as burn's event store computes it) when the
//! validation ends. It must not save anything.

use super::{LearnerRun, State, lock};
use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the logger has received: metric names by id, numeric entries by (metric, split, epoch).
#[derive(Default)]
pub(crate) struct Values {
    names: HashMap<MetricId, String>,
    entries: HashMap<(String, String, usize), Vec<NumericEntry>>,
}

/// A metric's name for waypoint: `<split>_<burn's name in lower case, spaces as _>`
/// (`Loss` in validation → `valid_loss`).
pub fn waypoint_name(split: &Split, metric: &str) -> String {
    let metric: String = metric
        .trim()
        .chars()
        .map(|c| {
            if c.is_whitespace() {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let split = match split {
        Split::Test(Some(tag)) => format!("test_{tag}"),
        other => other.to_string(),
    };
    format!("{split}_{metric}")
}

/// An epoch's value from its entries, as burn's event store aggregates them: the `Final` entry
/// when there is one, the mean weighted by each entry's count otherwise.
pub fn epoch_value(entries: &[NumericEntry]) -> Option<f64> {
    if let Some(NumericEntry::Final(v)) = entries.last() {
        return Some(*v);
    }
    let (sum, count) = entries
        .iter()
        .fold((0.0, 0usize), |(sum, count), entry| match entry {
            NumericEntry::Value(v) => (sum + v, count + 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count: n,
            } => (sum + aggregated_value * *n as f64, count + n),
            NumericEntry::Final(_) => (sum, count),
        });
    (count > 0).then(|| sum / count as f64)
}

/// burn-train's `MetricLogger` for a [`LearnerRun`] (from [`LearnerRun::metric_logger`]).
/// Registered with `SupervisedTraining::with_metric_logger`, it replaces burn's file logger, and
/// answers `read_numeric` from what it received, so burn's metric strategies and early stopping
/// keep working.
pub struct WaypointMetricLogger {
    shared: Arc<Mutex<State>>,
}

impl std::fmt::Debug for WaypointMetricLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaypointMetricLogger")
    }
}

impl WaypointMetricLogger {
    pub(super) fn new(shared: Arc<Mutex<State>>) -> Self {
        WaypointMetricLogger { shared }
    }
}

impl MetricLogger for WaypointMetricLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let mut state = lock(&self.shared);
        let state = &mut *state;
        let mut values = Vec::new();
        let mut iteration = false;
        for numeric in &update.entries_numeric {
            let (Some(name), Some(entry)) = (
                state.metrics.names.get(&numeric.entry.metric_id),
                &numeric.numeric_entry,
            ) else {
                continue;
            };
            let key = (name.clone(), split.to_string(), epoch);
            state
                .metrics
                .entries
                .entry(key)
                .or_default()
                .push(entry.clone());
            if !matches!(entry, NumericEntry::Final(_)) {
                iteration = true;
                values.push((waypoint_name(split, name), entry.current()));
            }
        }
        if *split != Split::Train || !iteration {
            return;
        }
        state.step += 1;
        if let Some(run) = state.run.as_mut().map(super::Owner::run_mut) {
            let metrics: Vec<(&str, f64)> = values.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            run.log_metrics(state.step, &metrics);
        }
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        let state = lock(&self.shared);
        let key = (name.to_owned(), split.to_string(), epoch);
        Ok(state.metrics.entries.get(&key).cloned().unwrap_or_default())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        lock(&self.shared)
            .metrics
            .names
            .insert(definition.metric_id, definition.name.to_string());
    }

    /// The end of a validation (or test) split: its metrics' epoch values are logged at the
    /// current step, where waypoint's `ModelCheckpoint` ranks by the monitored one.
    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        if summary.split == Split::Train {
            return;
        }
        let mut state = lock(&self.shared);
        let state = &mut *state;
        let split = summary.split.to_string();
        let mut values: Vec<(String, f64)> = state
            .metrics
            .entries
            .iter()
            .filter(|((_, s, e), _)| *s == split && *e == summary.epoch_number)
            .filter_map(|((name, _, _), entries)| {
                Some((waypoint_name(&summary.split, name), epoch_value(entries)?))
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(run) = state.run.as_mut().map(super::Owner::run_mut) {
            let metrics: Vec<(&str, f64)> = values.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            run.log_metrics(state.step, &metrics);
        }
    }
}

impl LearnerRun {
    /// The metrics' epoch values received so far for `split` (`valid_loss` → value), by burn
    /// epoch: what waypoint's loggers were given.
    pub fn epoch_values(&self, split: &Split) -> Vec<(usize, String, f64)> {
        let state = lock(&self.shared);
        let split_name = split.to_string();
        let mut all: Vec<(usize, String, f64)> = state
            .metrics
            .entries
            .iter()
            .filter(|((_, s, _), _)| *s == split_name)
            .filter_map(|((name, _, epoch), entries)| {
                Some((*epoch, waypoint_name(split, name), epoch_value(entries)?))
            })
            .collect();
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_epoch_values_follow_burns_store() {
        assert_eq!(waypoint_name(&Split::Valid, "Loss"), "valid_loss");
        assert_eq!(
            waypoint_name(&Split::Train, "Learning Rate"),
            "train_learning_rate"
        );
        let cases: [(&[NumericEntry], Option<f64>); 4] = [
            (&[], None),
            (
                &[NumericEntry::Value(1.0), NumericEntry::Value(2.0)],
                Some(1.5),
            ),
            (
                &[
                    NumericEntry::Aggregated {
                        aggregated_value: 1.0,
                        count: 1,
                    },
                    NumericEntry::Aggregated {
                        aggregated_value: 4.0,
                        count: 3,
                    },
                ],
                Some(13.0 / 4.0),
            ),
            (
                &[NumericEntry::Value(1.0), NumericEntry::Final(0.25)],
                Some(0.25),
            ),
        ];
        for (entries, want) in cases {
            assert_eq!(epoch_value(entries), want, "{entries:?}");
        }
    }
}
