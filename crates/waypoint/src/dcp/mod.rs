//! torch distributed checkpoints (DCP, what NeMo 2.0 and Megatron save under `weights/`), read
//! and written without ever running Python's pickle.
//!
//! - [`pickle`]: a pickle machine that never calls anything (`REDUCE`, `NEWOBJ`, `BUILD` become
//!   data) with bounds on every resource, and its typed accessors.
//! - [`metadata`]: the `.metadata` file as Rust structs, from an allow-list of globals.
//! - [`zip`] and [`archive`]: the `torch.save` archives that `.distcp` items are, sliced from their
//!   file before being opened, their tensors copied out honouring stride and storage offset.
//! - [`DcpReader`]: a checkpoint directory: whole tensors, regions, objects as JSON, a verify
//!   pass.
//! - [`write_pickle`] and [`DcpWriter`]: producing what `torch.distributed.checkpoint.load`
//!   reads.
//!
//! docs/DCP.md says what is covered and refused. This module must not touch waypoint's own
//! format or engine: conversions go through the public reader and checkpointer APIs.

pub mod archive;
pub mod dtype;
pub mod metadata;
pub mod pickle;
mod reader;
pub mod write_pickle;
mod writer;
pub mod zip;

pub use metadata::{DcpChunk, DcpItem, DcpMetadata, DcpTensor};
pub use reader::{DcpProblem, DcpReader, is_dcp_dir};
pub use writer::{DcpWriter, metadata_pickle};
