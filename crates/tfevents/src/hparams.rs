//! Hyperparameters as TensorBoard's hparams plugin wants them: plain values, and the
//! experiment / session-start / session-end messages built from them.
//!
//! Builds messages only; [`EventWriter`](crate::EventWriter) writes them.
//!
//! It must not write, frame or tag anything: wrapping the messages as tagged summary values is
//! `summaries`'s.

use crate::proto::hparams::{
    Experiment, HParamDataType, HParamInfo, MetricInfo, MetricName, SessionEndInfo,
    SessionStartInfo, SessionStatus,
};
use crate::proto::{Value, value::Kind};
use std::collections::BTreeMap;

/// The value of one hyperparameter.
#[derive(Debug, Clone, PartialEq)]
pub enum HParamValue {
    /// A boolean.
    Bool(bool),
    /// A number (TensorBoard stores every number as a double).
    Number(f64),
    /// A string.
    Text(String),
}

impl HParamValue {
    /// The hparams plugin's type for this value.
    pub fn data_type(&self) -> HParamDataType {
        match self {
            HParamValue::Bool(_) => HParamDataType::Bool,
            HParamValue::Number(_) => HParamDataType::Float64,
            HParamValue::Text(_) => HParamDataType::String,
        }
    }

    /// This value as a `google.protobuf.Value`.
    pub fn to_proto(&self) -> Value {
        let kind = match self {
            HParamValue::Bool(b) => Kind::BoolValue(*b),
            HParamValue::Number(n) => Kind::NumberValue(*n),
            HParamValue::Text(s) => Kind::StringValue(s.clone()),
        };
        Value { kind: Some(kind) }
    }
}

impl From<bool> for HParamValue {
    fn from(v: bool) -> Self {
        HParamValue::Bool(v)
    }
}

impl From<f64> for HParamValue {
    fn from(v: f64) -> Self {
        HParamValue::Number(v)
    }
}

impl From<f32> for HParamValue {
    fn from(v: f32) -> Self {
        HParamValue::Number(f64::from(v))
    }
}

impl From<i32> for HParamValue {
    fn from(v: i32) -> Self {
        HParamValue::Number(f64::from(v))
    }
}

impl From<u32> for HParamValue {
    fn from(v: u32) -> Self {
        HParamValue::Number(f64::from(v))
    }
}

impl From<&str> for HParamValue {
    fn from(v: &str) -> Self {
        HParamValue::Text(v.to_owned())
    }
}

impl From<String> for HParamValue {
    fn from(v: String) -> Self {
        HParamValue::Text(v)
    }
}

/// An experiment declaring the hyperparameters in `hparams` (their types taken from the values)
/// and the scalar tags in `metric_tags` as its metrics.
///
/// TensorBoard lists only declared metrics as columns of the hparams table, so name every
/// scalar tag that should appear there.
pub fn experiment(
    hparams: &BTreeMap<String, HParamValue>,
    metric_tags: &[&str],
    time_created_secs: f64,
) -> Experiment {
    Experiment {
        time_created_secs,
        hparam_infos: hparams
            .iter()
            .map(|(name, value)| HParamInfo {
                name: name.clone(),
                r#type: value.data_type() as i32,
                ..HParamInfo::default()
            })
            .collect(),
        metric_infos: metric_tags
            .iter()
            .map(|tag| MetricInfo {
                name: Some(MetricName {
                    group: String::new(),
                    tag: (*tag).to_owned(),
                }),
                ..MetricInfo::default()
            })
            .collect(),
        ..Experiment::default()
    }
}

/// The start of a session with these hyperparameter values.
pub fn session_start(
    hparams: &BTreeMap<String, HParamValue>,
    start_time_secs: f64,
) -> SessionStartInfo {
    SessionStartInfo {
        hparams: hparams
            .iter()
            .map(|(k, v)| (k.clone(), v.to_proto()))
            .collect(),
        start_time_secs,
        ..SessionStartInfo::default()
    }
}

/// The end of a session.
pub fn session_end(status: SessionStatus, end_time_secs: f64) -> SessionEndInfo {
    SessionEndInfo {
        status: status as i32,
        end_time_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_infers_types() {
        let hparams: BTreeMap<String, HParamValue> = [
            ("lr".to_owned(), 0.1.into()),
            ("opt".to_owned(), "adam".into()),
            ("warm".to_owned(), true.into()),
        ]
        .into();
        let e = experiment(&hparams, &["loss"], 5.0);
        let types: Vec<(String, i32)> = e
            .hparam_infos
            .iter()
            .map(|h| (h.name.clone(), h.r#type))
            .collect();
        assert_eq!(
            types,
            vec![
                ("lr".to_owned(), HParamDataType::Float64 as i32),
                ("opt".to_owned(), HParamDataType::String as i32),
                ("warm".to_owned(), HParamDataType::Bool as i32),
            ]
        );
        assert_eq!(e.metric_infos[0].name.as_ref().unwrap().tag, "loss");
        let s = session_start(&hparams, 7.0);
        assert_eq!(
            s.hparams["opt"].kind,
            Some(Kind::StringValue("adam".into()))
        );
        assert_eq!(s.start_time_secs, 7.0);
    }
}
