//! The on-disk format v1, as pure code: element types, the commit record (`weights/metadata.json`)
//! and its validation, waypoint's typed reserved part of it, the safetensors header of each shard, and the names inside a checkpoint.
//! Nothing here does I/O; docs/FORMAT.md is the normative description.

mod dtype;
mod header;
mod names;
mod record;
mod reserved;
mod user_state;
mod validate;

pub use dtype::{Dtype, UnknownDtype, element_count};
pub use header::{
    DATA_ALIGNMENT, HeaderTensor, ParsedHeader, ShardItem, ShardLayout, header_len_from_prefix,
    layout_shard, parse_header,
};
pub use names::{
    CONTEXT_DIR, DCP_SHARDING_INFO_KEY, RECORD_FILE, SAFETENSORS_METADATA_KEY, WEIGHTS_DIR,
    parse_shard_file_name, shard_file_name, tensor_name_problem,
};
pub use record::{
    CarriedFrom, ChunkEntry, CommitRecord, DEFAULT_BLOCK_SIZE, FORMAT_NAME, FORMAT_VERSION,
    FileEntry, MAX_DIMS, MAX_HEADER_LEN, MAX_RECORD_LEN, TensorEntry, TrainerState,
};
pub use reserved::{Reserved, RunFacts, Superseded};
pub use user_state::{user_state_from_value, user_state_to_value};
pub use validate::MAX_CORNERS;
