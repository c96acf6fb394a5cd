//! Builders of the tagged values TensorBoard's plugins read: scalars, text, histograms and the
//! hparams plugin's three summaries. Each follows what TensorBoard's own Python writers emit.
//!
//! Builds values only; [`EventWriter`](crate::EventWriter) writes them.
//!
//! It must not build the hparams messages themselves, which is `hparams`'s, nor frame or write
//! anything.

use crate::proto::hparams::{
    Experiment, HParamsPluginData, SessionEndInfo, SessionStartInfo, h_params_plugin_data::Data,
};
use crate::proto::summary::{Value, value};
use crate::proto::summary_metadata::PluginData;
use crate::proto::{
    DataType, HistogramProto, SummaryMetadata, TensorProto, TensorShapeProto, tensor_shape_proto,
};
use prost::Message;

/// Plugin name of text summaries.
pub const TEXT_PLUGIN: &str = "text";
/// Plugin name of hparams summaries.
pub const HPARAMS_PLUGIN: &str = "hparams";
/// Tag of the hparams experiment summary.
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
/// Tag of the hparams session-start summary.
pub const SESSION_START_INFO_TAG: &str = "_hparams_/session_start_info";
/// Tag of the hparams session-end summary.
pub const SESSION_END_INFO_TAG: &str = "_hparams_/session_end_info";

/// A scalar as a `simple_value`, which every TensorBoard reader understands.
pub fn scalar(tag: &str, value: f32) -> Value {
    Value {
        tag: tag.to_owned(),
        value: Some(value::Value::SimpleValue(value)),
        ..Value::default()
    }
}

/// A text summary: a scalar `DT_STRING` tensor (shape `[]`) owned by the text plugin, whose
/// content (an empty `TextPluginData`, version 0) is empty. Markdown is rendered by TensorBoard.
pub fn text(tag: &str, text: &str) -> Value {
    Value {
        tag: tag.to_owned(),
        metadata: Some(plugin_metadata(TEXT_PLUGIN, Vec::new())),
        value: Some(value::Value::Tensor(TensorProto {
            dtype: DataType::DtString as i32,
            tensor_shape: Some(TensorShapeProto::default()),
            string_val: vec![text.as_bytes().to_vec()],
            ..TensorProto::default()
        })),
        ..Value::default()
    }
}

/// A histogram in the legacy `histo` field, which the histograms and distributions dashboards
/// and `EventAccumulator.Histograms` read.
pub fn histogram(tag: &str, histo: HistogramProto) -> Value {
    Value {
        tag: tag.to_owned(),
        value: Some(value::Value::Histo(histo)),
        ..Value::default()
    }
}

/// The hparams experiment summary (tag [`EXPERIMENT_TAG`]).
pub fn hparams_experiment(experiment: Experiment) -> Value {
    hparams_value(EXPERIMENT_TAG, Data::Experiment(experiment))
}

/// The hparams session-start summary (tag [`SESSION_START_INFO_TAG`]).
pub fn hparams_session_start(info: SessionStartInfo) -> Value {
    hparams_value(SESSION_START_INFO_TAG, Data::SessionStartInfo(info))
}

/// The hparams session-end summary (tag [`SESSION_END_INFO_TAG`]).
pub fn hparams_session_end(info: SessionEndInfo) -> Value {
    hparams_value(SESSION_END_INFO_TAG, Data::SessionEndInfo(info))
}

/// An hparams summary: the plugin data (version 0) in the metadata, and the plugin's "null
/// tensor" (an empty `DT_FLOAT` vector of shape `[0]`) as the value, as TensorBoard writes it.
fn hparams_value(tag: &str, data: Data) -> Value {
    let content = HParamsPluginData {
        version: 0,
        data: Some(data),
    }
    .encode_to_vec();
    Value {
        tag: tag.to_owned(),
        metadata: Some(plugin_metadata(HPARAMS_PLUGIN, content)),
        value: Some(value::Value::Tensor(TensorProto {
            dtype: DataType::DtFloat as i32,
            tensor_shape: Some(TensorShapeProto {
                dim: vec![tensor_shape_proto::Dim::default()],
                unknown_rank: false,
            }),
            ..TensorProto::default()
        })),
        ..Value::default()
    }
}

fn plugin_metadata(plugin_name: &str, content: Vec<u8>) -> SummaryMetadata {
    SummaryMetadata {
        plugin_data: Some(PluginData {
            plugin_name: plugin_name.to_owned(),
            content,
        }),
        ..SummaryMetadata::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorBoard's hparams `NULL_TENSOR` serializes to `08 01 12 02 12 00`.
    #[test]
    fn hparams_null_tensor_matches_tensorboard() {
        let Some(value::Value::Tensor(t)) = hparams_experiment(Experiment::default()).value else {
            panic!("not a tensor");
        };
        assert_eq!(t.encode_to_vec(), vec![0x08, 0x01, 0x12, 0x02, 0x12, 0x00]);
    }

    #[test]
    fn text_is_a_scalar_string_tensor() {
        let v = text("notes", "héllo");
        let Some(value::Value::Tensor(t)) = &v.value else {
            panic!("not a tensor")
        };
        assert_eq!(t.dtype, DataType::DtString as i32);
        assert!(t.tensor_shape.as_ref().unwrap().dim.is_empty());
        assert_eq!(t.string_val, vec!["héllo".as_bytes().to_vec()]);
        assert_eq!(v.metadata.unwrap().plugin_data.unwrap().plugin_name, "text");
    }
}
