//! Loading: (being written)
use super::*;
use super::tensors::Tensor;
use crate::format::CommitRecord;
/// Load options.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {}
/// An opened checkpoint.
#[derive(Debug)]
pub struct CheckpointReader { record: CommitRecord }
impl CheckpointReader {
    pub(crate) fn open(_s: SharedStorage, _d: StoragePath) -> Result<Self> { todo!() }
    /// The record.
    pub fn record(&self) -> &CommitRecord { &self.record }
    /// One tensor.
    pub fn load_tensor(&self, _n: &str, _o: &LoadOptions) -> Result<Tensor> { todo!() }
    /// User state.
    pub fn user_state<T: serde::de::DeserializeOwned>(&self) -> Result<T> { todo!() }
}
