//! The harness's modes, one module each (see `MODES` in main.rs).
//!
//! It only declares the modules: it must not hold a mode's work, nor the mode table, which is
//! `main.rs`'s.

pub mod beside_program;
pub mod checkpoint;
pub mod collectives;
pub mod duplicates;
pub mod hello;
pub mod killed_rank;
pub mod large;
pub mod repeat;
pub mod shard;
