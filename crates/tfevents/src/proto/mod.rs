//! Protocol-buffer messages of TensorBoard event files, declared by hand with `prost`'s derive
//! macros (no `protoc`, no build script).
//!
//! Field numbers follow TensorBoard's own definitions (`tensorboard/compat/proto/event.proto`,
//! `summary.proto`, `tensor.proto`, `tensor_shape.proto`, `histogram.proto`, the hparams plugin's
//! `api.proto` and `plugin_data.proto`, and `google/protobuf/struct.proto`). Only the fields this
//! crate writes or a reader of scalars, text, histograms and hparams needs are declared; fields
//! left out (graph defs, run metadata, ...) are skipped when decoding, as protobuf allows.
//!
//! This module owns the wire layout only: it builds no summaries and does no I/O.

mod event_proto;
pub mod hparams;
mod struct_proto;
mod summary_proto;
mod tensor_proto;

pub use event_proto::{Event, LogMessage, SessionLog, event, log_message, session_log};
pub use struct_proto::{ListValue, NullValue, Struct, Value, value};
pub use summary_proto::{
    DataClass, HistogramProto, Summary, SummaryMetadata, summary, summary_metadata,
};
pub use tensor_proto::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
