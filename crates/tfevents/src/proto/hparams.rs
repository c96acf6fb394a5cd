//! Messages of TensorBoard's hparams plugin (package `tensorboard.hparams`): the experiment
//! (which hyperparameters and metrics exist), and each session's start (its hyperparameter
//! values) and end (its status).
//!
//! They travel serialized in `SummaryMetadata.plugin_data.content` of values tagged
//! `_hparams_/experiment`, `_hparams_/session_start_info` and `_hparams_/session_end_info`.

use super::{ListValue, Value};
use std::collections::BTreeMap;

/// The content of an hparams summary: a version and one of three messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamsPluginData {
    /// Format version; TensorBoard accepts only 0.
    #[prost(int32, tag = "1")]
    pub version: i32,
    /// The message.
    #[prost(oneof = "h_params_plugin_data::Data", tags = "2, 3, 4")]
    pub data: Option<h_params_plugin_data::Data>,
}

/// Nested types of [`HParamsPluginData`].
pub mod h_params_plugin_data {
    /// The message carried by [`HParamsPluginData`](super::HParamsPluginData).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        /// Which hyperparameters and metrics the experiment has.
        #[prost(message, tag = "2")]
        Experiment(super::Experiment),
        /// A session (run) started with these hyperparameter values.
        #[prost(message, tag = "3")]
        SessionStartInfo(super::SessionStartInfo),
        /// A session ended with this status.
        #[prost(message, tag = "4")]
        SessionEndInfo(super::SessionEndInfo),
    }
}

/// An experiment: its hyperparameters and metrics.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Experiment {
    /// Description (may be Markdown).
    #[prost(string, tag = "1")]
    pub description: String,
    /// Who ran it.
    #[prost(string, tag = "2")]
    pub user: String,
    /// Creation time, seconds since the Unix epoch.
    #[prost(double, tag = "3")]
    pub time_created_secs: f64,
    /// The hyperparameters.
    #[prost(message, repeated, tag = "4")]
    pub hparam_infos: Vec<HParamInfo>,
    /// The metrics.
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
    /// Name of the experiment.
    #[prost(string, tag = "6")]
    pub name: String,
}

/// One hyperparameter of an experiment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamInfo {
    /// Name (the key in [`SessionStartInfo::hparams`]).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Display name.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// Description.
    #[prost(string, tag = "3")]
    pub description: String,
    /// An [`HParamDataType`] value.
    #[prost(enumeration = "HParamDataType", tag = "4")]
    pub r#type: i32,
    /// True when the values differ between sessions (computed by TensorBoard).
    #[prost(bool, tag = "7")]
    pub differs: bool,
    /// The values it may take (optional).
    #[prost(oneof = "h_param_info::Domain", tags = "5, 6")]
    pub domain: Option<h_param_info::Domain>,
}

/// Nested types of [`HParamInfo`].
pub mod h_param_info {
    /// The values a hyperparameter may take.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Domain {
        /// A finite set of values of the hyperparameter's type.
        #[prost(message, tag = "5")]
        DomainDiscrete(super::ListValue),
        /// A closed interval of numbers.
        #[prost(message, tag = "6")]
        DomainInterval(super::Interval),
    }
}

/// Type of a hyperparameter (`DataType` in `api.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HParamDataType {
    /// Not set.
    Unset = 0,
    /// String.
    String = 1,
    /// Boolean.
    Bool = 2,
    /// 64-bit float.
    Float64 = 3,
}

/// A closed interval of numbers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Interval {
    /// Lower bound.
    #[prost(double, tag = "1")]
    pub min_value: f64,
    /// Upper bound.
    #[prost(double, tag = "2")]
    pub max_value: f64,
}

/// One metric of an experiment: a scalar series named by group (sub-run) and tag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricInfo {
    /// Which series.
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
    /// Display name.
    #[prost(string, tag = "3")]
    pub display_name: String,
    /// Description.
    #[prost(string, tag = "4")]
    pub description: String,
    /// A [`DatasetType`] value.
    #[prost(enumeration = "DatasetType", tag = "5")]
    pub dataset_type: i32,
}

/// Name of a metric: the run-relative group (empty for the session's own directory) and tag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricName {
    /// Sub-directory of the session holding the series; empty for the session itself.
    #[prost(string, tag = "1")]
    pub group: String,
    /// Tag of the scalar series.
    #[prost(string, tag = "2")]
    pub tag: String,
}

/// Which data set a metric is computed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DatasetType {
    /// Unknown.
    DatasetUnknown = 0,
    /// Training data.
    DatasetTraining = 1,
    /// Validation data.
    DatasetValidation = 2,
}

/// A session (one run of the experiment) started with these hyperparameter values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionStartInfo {
    /// Hyperparameter values by name.
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: BTreeMap<String, Value>,
    /// Where the model is stored.
    #[prost(string, tag = "2")]
    pub model_uri: String,
    /// URL of a monitoring page.
    #[prost(string, tag = "3")]
    pub monitor_url: String,
    /// Sessions with the same group name are aggregated; empty means the session's own.
    #[prost(string, tag = "4")]
    pub group_name: String,
    /// Start time, seconds since the Unix epoch.
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

/// A session ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEndInfo {
    /// A [`SessionStatus`] value.
    #[prost(enumeration = "SessionStatus", tag = "1")]
    pub status: i32,
    /// End time, seconds since the Unix epoch.
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// How a session ended (`Status` in `api.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SessionStatus {
    /// Unknown.
    Unknown = 0,
    /// Finished successfully.
    Success = 1,
    /// Failed.
    Failure = 2,
    /// Still running.
    Running = 3,
}
