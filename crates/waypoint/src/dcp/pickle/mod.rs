//! A safe pickle reader: [`vm`] turns bytes into data nodes without calling anything, [`typed`]
//! reads those nodes (checked accessors, the allow-list of globals, bounded JSON).

mod typed;
mod vm;

pub use typed::{ALLOWED_GLOBALS, CallView, MAX_JSON_DEPTH, MAX_JSON_VISITS, is_allowed};
pub use vm::{Limits, Node, NodeId, Pickle, PickleError, parse};

#[cfg(test)]
mod tests;
