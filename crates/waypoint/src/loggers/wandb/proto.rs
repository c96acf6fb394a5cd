//! The few `wandb_internal.Record` messages an offline run needs, derived by hand from W&B's
//! `wandb/proto/wandb_internal.proto` (field numbers as there; fields we never set are left
//! out, which protobuf readers accept).

/// `wandb_internal.Record`: one entry of the transaction log.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    /// The record's number, from 1.
    #[prost(int64, tag = "1")]
    pub num: i64,
    /// What it is.
    #[prost(oneof = "RecordType", tags = "2, 3, 5, 17, 18, 21")]
    pub record_type: Option<RecordType>,
}

/// `Record.record_type`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum RecordType {
    /// A row of metrics.
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    /// Updates to the run's summary (latest values).
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    /// Updates to the run's config.
    #[prost(message, tag = "5")]
    Config(ConfigRecord),
    /// The run itself.
    #[prost(message, tag = "17")]
    Run(RunRecord),
    /// The run's end.
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
    /// The log's first record: who wrote it.
    #[prost(message, tag = "21")]
    Header(HeaderRecord),
}

/// `HeaderRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HeaderRecord {
    #[prost(message, optional, tag = "1")]
    pub version_info: Option<VersionInfo>,
}

/// `VersionInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct VersionInfo {
    #[prost(string, tag = "1")]
    pub producer: String,
    #[prost(string, tag = "2")]
    pub min_consumer: String,
}

/// `RunRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RunRecord {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub entity: String,
    #[prost(string, tag = "3")]
    pub project: String,
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    #[prost(string, tag = "8")]
    pub display_name: String,
    #[prost(string, tag = "13")]
    pub host: String,
    #[prost(int64, tag = "14")]
    pub starting_step: i64,
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    #[prost(bool, tag = "18")]
    pub resumed: bool,
    /// Where this run continues its own history (a rewind) or another run's (a fork).
    #[prost(message, optional, tag = "23")]
    pub branch_point: Option<BranchPoint>,
}

/// `BranchPoint`: a run and the value of a metric (only `_step` is supported) in its history.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct BranchPoint {
    #[prost(string, tag = "1")]
    pub run: String,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(string, tag = "3")]
    pub metric: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `RunExitRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RunExitRecord {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(int32, tag = "2")]
    pub runtime: i32,
    /// Keep the run in the running state (it goes on after a restart).
    #[prost(bool, tag = "3")]
    pub not_complete: bool,
}

/// `HistoryRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HistoryRecord {
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<Item>,
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

/// `HistoryStep`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HistoryStep {
    #[prost(int64, tag = "1")]
    pub num: i64,
}

/// `HistoryItem`, `SummaryItem` and `ConfigItem` share their fields: `key` = 1, `nested_key` = 2,
/// `value_json` = 16.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Item {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `SummaryRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SummaryRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}

/// `ConfigRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ConfigRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}
