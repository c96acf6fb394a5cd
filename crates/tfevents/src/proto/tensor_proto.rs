//! `tensorboard.TensorProto`, its shape and its element types.

/// A tensor: element type, shape and values (one of the typed `*_val` fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// A [`DataType`] value.
    #[prost(enumeration = "DataType", tag = "1")]
    pub dtype: i32,
    /// The shape; absent or without dimensions for a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// Version of the serialization, 0.
    #[prost(int32, tag = "3")]
    pub version_number: i32,
    /// The values as raw little-endian bytes (an alternative to the typed fields).
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    /// `DT_FLOAT` values (packed).
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    /// `DT_DOUBLE` values (packed).
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    /// `DT_INT32` (and smaller integer) values (packed).
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    /// `DT_STRING` values: arbitrary bytes, UTF-8 for text.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
    /// `DT_INT64` values (packed).
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// `DT_BOOL` values (packed).
    #[prost(bool, repeated, tag = "11")]
    pub bool_val: Vec<bool>,
}

/// The shape of a tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first; none for a scalar.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<tensor_shape_proto::Dim>,
    /// True when the number of dimensions is unknown.
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

/// Nested types of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One dimension of a shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        /// Size of the dimension (-1 when unknown).
        #[prost(int64, tag = "1")]
        pub size: i64,
        /// Optional name of the dimension.
        #[prost(string, tag = "2")]
        pub name: String,
    }
}

/// Element type of a tensor (the values this crate uses; others decode as plain integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// Not set.
    DtInvalid = 0,
    /// 32-bit float.
    DtFloat = 1,
    /// 64-bit float.
    DtDouble = 2,
    /// 32-bit signed integer.
    DtInt32 = 3,
    /// Byte string.
    DtString = 7,
    /// 64-bit signed integer.
    DtInt64 = 9,
    /// Boolean.
    DtBool = 10,
}
