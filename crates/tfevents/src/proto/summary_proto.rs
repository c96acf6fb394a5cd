//! `tensorboard.Summary` (tagged values), `SummaryMetadata` and `HistogramProto`.

use super::TensorProto;

/// A set of tagged values logged at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<summary::Value>,
}

/// Nested types of [`Summary`].
pub mod summary {
    use super::SummaryMetadata;

    /// One tagged value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// The tag (the name of the time series).
        #[prost(string, tag = "1")]
        pub tag: String,
        /// Name of the graph node that produced the value (legacy).
        #[prost(string, tag = "7")]
        pub node_name: String,
        /// Which plugin owns the value and how to interpret it.
        #[prost(message, optional, tag = "9")]
        pub metadata: Option<SummaryMetadata>,
        /// The value itself.
        #[prost(oneof = "value::Value", tags = "2, 3, 4, 5, 6, 8")]
        pub value: Option<value::Value>,
    }

    /// Nested types of [`Value`].
    pub mod value {
        use super::super::{HistogramProto, TensorProto};
        use super::{Audio, Image};

        /// The payload of a [`Value`](super::Value).
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// A scalar: read by every TensorBoard reader.
            #[prost(float, tag = "2")]
            SimpleValue(f32),
            /// A serialized histogram of a very old format.
            #[prost(bytes, tag = "3")]
            ObsoleteOldStyleHistogram(Vec<u8>),
            /// An encoded image.
            #[prost(message, tag = "4")]
            Image(Image),
            /// A histogram.
            #[prost(message, tag = "5")]
            Histo(HistogramProto),
            /// An encoded audio clip.
            #[prost(message, tag = "6")]
            Audio(Audio),
            /// A tensor, interpreted by the plugin named in the metadata.
            #[prost(message, tag = "8")]
            Tensor(TensorProto),
        }
    }

    /// An encoded image (PNG, JPEG, ...).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        /// Height in pixels.
        #[prost(int32, tag = "1")]
        pub height: i32,
        /// Width in pixels.
        #[prost(int32, tag = "2")]
        pub width: i32,
        /// 1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA, ...
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        /// The encoded image bytes.
        #[prost(bytes, tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }

    /// An encoded audio clip.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Audio {
        /// Samples per second.
        #[prost(float, tag = "1")]
        pub sample_rate: f32,
        /// Number of channels.
        #[prost(int64, tag = "2")]
        pub num_channels: i64,
        /// Number of frames.
        #[prost(int64, tag = "3")]
        pub length_frames: i64,
        /// The encoded audio bytes.
        #[prost(bytes, tag = "4")]
        pub encoded_audio_string: Vec<u8>,
        /// MIME type of the encoding.
        #[prost(string, tag = "5")]
        pub content_type: String,
    }
}

/// Which plugin owns a value, and plugin-specific data about it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The owning plugin and its data.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<summary_metadata::PluginData>,
    /// Display name of the series.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// Longer description of the series.
    #[prost(string, tag = "3")]
    pub summary_description: String,
    /// A [`DataClass`] value.
    #[prost(enumeration = "DataClass", tag = "4")]
    pub data_class: i32,
}

/// Nested types of [`SummaryMetadata`].
pub mod summary_metadata {
    /// The plugin that owns a value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PluginData {
        /// Plugin name: `"scalars"`, `"text"`, `"hparams"`, ...
        #[prost(string, tag = "1")]
        pub plugin_name: String,
        /// Plugin-specific content (often a serialized protobuf).
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }
}

/// How a data-provider backend should store a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataClass {
    /// Not set: the backend infers it.
    Unknown = 0,
    /// A scalar time series.
    Scalar = 1,
    /// A tensor time series.
    Tensor = 2,
    /// A sequence of blobs (images, audio, ...).
    BlobSequence = 3,
}

/// A histogram: summary statistics and bucket counts.
///
/// Bucket `i` counts the values `v` with `bucket_limit[i-1] <= v < bucket_limit[i]` (the first
/// bucket is open on the left).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramProto {
    /// Smallest value.
    #[prost(double, tag = "1")]
    pub min: f64,
    /// Largest value.
    #[prost(double, tag = "2")]
    pub max: f64,
    /// Number of values.
    #[prost(double, tag = "3")]
    pub num: f64,
    /// Sum of the values.
    #[prost(double, tag = "4")]
    pub sum: f64,
    /// Sum of the squares of the values.
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    /// Right edge of each bucket (packed).
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    /// Count of each bucket (packed).
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}
