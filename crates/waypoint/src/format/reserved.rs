//! waypoint's reserved part of the commit record (`trainer_state.waypoint`), typed: what the run
//! needs to continue after a restart besides the user's state. The run writes it into every
//! checkpoint it saves and AutoResume reads it back; both go through this one type.
//!
//! It is pure data: it must not interpret the checkpoint policy's state (the policy owns that
//! schema, kept here as the JSON value the policy wrote) and it must not drop keys it does not
//! know (a newer writer's), which it carries in [`Reserved::other`].

use serde::{Deserialize, Serialize};

/// The reserved trainer-state slot of a commit record.
///
/// ```
/// use waypoint::format::{Reserved, RunFacts, Superseded};
/// let reserved = Reserved {
///     run: Some(RunFacts { completed: true, ..RunFacts::default() }),
///     superseded: Some(vec![Superseded { name: "step=10".into(), step: 10 }]),
///     ..Reserved::default()
/// };
/// let json = serde_json::to_value(&reserved).unwrap();
/// assert_eq!(json["run"]["completed"], true);
/// assert_eq!(json["superseded"][0]["name"], "step=10");
/// let back: Reserved = serde_json::from_value(json).unwrap();
/// assert!(back.completed());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reserved {
    /// ModelCheckpoint's state after the decision that saved this checkpoint (top-k, `-last`,
    /// trigger clocks), in the policy's own serde form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_checkpoint: Option<serde_json::Value>,
    /// The run's facts at this checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunFacts>,
    /// Written by versions before [`Reserved::superseded`]: the names of the checkpoints to
    /// delete, without their steps. A name may have been reused by a newer checkpoint since, so a
    /// resumed run deletes one only if it is older than this checkpoint (never the resumed one);
    /// this version reads it and no longer writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_deletes: Option<Vec<String>>,
    /// The checkpoints the decision that saved this one was about to delete (and earlier
    /// deletions not known to be done), each with the step its record holds: a resumed run
    /// finishes them, so a crash between a save and its deletions leaves no orphan, and deletes a
    /// name only while it still holds that checkpoint (a name freed by a deletion may be reused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Vec<Superseded>>,
    /// The metric loggers' resume states by logger name (the MLflow run id, the W&B run id): a
    /// run resumed from this checkpoint continues the same tracking runs.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub loggers: serde_json::Map<String, serde_json::Value>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A checkpoint to delete, identified by its name and the step of its commit record: the name
/// alone does not say which checkpoint it means once a newer one may have reused it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Superseded {
    /// The checkpoint's name in the checkpoints directory.
    pub name: String,
    /// The step its commit record holds.
    pub step: u64,
}

/// The run's facts recorded with each checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunFacts {
    /// The checkpoint ends a completed run (saved at `max_steps` or by `finish`): AutoResume says
    /// so instead of resuming, unless `resume_past_end`.
    pub completed: bool,
    /// The optimizer's tensors were left out.
    pub weights_only: bool,
    /// The experiment's name.
    pub experiment: String,
    /// The experiment's version directory, if any.
    pub version: Option<String>,
}

impl Reserved {
    /// Whether the run completed with this checkpoint.
    pub fn completed(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.completed)
    }

    /// Whether the checkpoint leaves the optimizer out.
    pub fn weights_only(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.weights_only)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        *self == Reserved::default()
    }

    /// The top-level keys present, in the record's order of fields.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys = Vec::new();
        if self.model_checkpoint.is_some() {
            keys.push("model_checkpoint");
        }
        if self.run.is_some() {
            keys.push("run");
        }
        if self.pending_deletes.is_some() {
            keys.push("pending_deletes");
        }
        if self.superseded.is_some() {
            keys.push("superseded");
        }
        if !self.loggers.is_empty() {
            keys.push("loggers");
        }
        keys.extend(self.other.keys().map(String::as_str));
        keys
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_earlier_versions_wrote_and_writes_it_back_the_same() {
        let cases = [
            json!({}),
            json!({"model_checkpoint": {"top_k": []}, "pending_deletes": [],
                   "run": {"completed": false, "weights_only": false, "experiment": "e", "version": null}}),
            json!({"run": {"completed": true, "weights_only": true, "experiment": "e", "version": "v1"},
                   "pending_deletes": ["a", "b-last"], "loggers": {"mlflow": {"run_id": "x"}}}),
            json!({"superseded": [{"name": "a", "step": 3}, {"name": "b-last", "step": 5}]}),
            json!({"engine": {"future": 1}}),
        ];
        for case in cases {
            let reserved: Reserved = serde_json::from_value(case.clone()).unwrap();
            assert_eq!(serde_json::to_value(&reserved).unwrap(), case);
        }
    }

    #[test]
    fn facts_read_back_by_name() {
        let table = [
            (json!({}), false, false),
            (json!({"run": {"completed": true}}), true, false),
            (json!({"run": {"weights_only": true}}), false, true),
        ];
        for (json, completed, weights_only) in table {
            let r: Reserved = serde_json::from_value(json).unwrap();
            assert_eq!((r.completed(), r.weights_only()), (completed, weights_only));
        }
    }

    #[test]
    fn a_malformed_reserved_part_is_refused() {
        for bad in [
            json!({"run": {"completed": "yes"}}),
            json!({"pending_deletes": "a"}),
            json!({"superseded": ["a"]}),
            json!({"superseded": [{"name": "a"}]}),
            json!({"loggers": []}),
        ] {
            assert!(
                serde_json::from_value::<Reserved>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_name_what_is_present() {
        let r: Reserved =
            serde_json::from_value(json!({"run": {}, "loggers": {"w": 1}, "x": 2})).unwrap();
        assert_eq!(r.keys(), ["run", "loggers", "x"]);
    }
}
