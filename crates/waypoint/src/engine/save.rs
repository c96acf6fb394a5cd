//! Saving: (being written)
use super::*;
use super::tensors::TensorRef;
use crate::storage::Storage;
/// Save options.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {}
/// What a save did.
#[derive(Debug, Clone)]
pub struct SaveReport {}
pub(crate) fn save(_s: &dyn Storage, _d: &StoragePath, _m: &CheckpointMeta, _t: &[TensorRef<'_>], _u: serde_json::Value, _o: &SaveOptions) -> Result<SaveReport> { todo!() }
