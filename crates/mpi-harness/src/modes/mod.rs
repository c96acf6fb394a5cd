//! The harness's modes, one module each (see `MODES` in main.rs).

pub mod beside_program;
pub mod checkpoint;
pub mod collectives;
pub mod duplicates;
pub mod hello;
pub mod killed_rank;
pub mod large;
pub mod repeat;
pub mod shard;
