//! `google.protobuf.Value`, `ListValue` and `Struct`: the dynamically typed values that hold
//! hyperparameter values in the hparams plugin's messages.

use std::collections::BTreeMap;

/// A dynamically typed value: null, number, string, bool, struct or list.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The value.
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<value::Kind>,
}

/// Nested types of [`Value`].
pub mod value {
    /// The kind and content of a [`Value`](super::Value).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Null (a [`NullValue`](super::NullValue) value).
        #[prost(enumeration = "super::NullValue", tag = "1")]
        NullValue(i32),
        /// A double.
        #[prost(double, tag = "2")]
        NumberValue(f64),
        /// A string.
        #[prost(string, tag = "3")]
        StringValue(String),
        /// A boolean.
        #[prost(bool, tag = "4")]
        BoolValue(bool),
        /// A map of named values.
        #[prost(message, tag = "5")]
        StructValue(super::Struct),
        /// A list of values.
        #[prost(message, tag = "6")]
        ListValue(super::ListValue),
    }
}

/// The single value of the null type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NullValue {
    /// Null.
    NullValue = 0,
}

/// A list of values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

/// A map of named values (sorted by name, so that encoding is deterministic).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    /// The named values.
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, Value>,
}
