//! Reading an object: ranged GETs, large reads split into pieces fetched at once.
//!
//! It must not read past the length the object had when it was opened, nor trust the store's
//! answers: pieces that do not add up to what was asked are an error. Checking the bytes
//! (checksums) is the engine's, retries are object_store's.

use super::Inner;
use crate::error::Result;
use crate::storage::{ReadHandle, StoragePath};
use object_store::ObjectStoreExt;
use std::sync::Arc;

/// An object opened for reading: ranged GETs.
pub(super) struct ObjectRead {
    pub(super) inner: Arc<Inner>,
    pub(super) path: StoragePath,
    pub(super) len: u64,
}

impl ReadHandle for ObjectRead {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.len);
        let Some(end) = end else {
            return Err(crate::storage::memory::read_past_end(
                &self.inner.describe(&self.path),
                offset,
                buf.len(),
                self.len,
            ));
        };
        if buf.is_empty() {
            return Ok(());
        }
        // Large reads go as several ranged GETs at once: one connection rarely fills the pipe.
        let ranges: Vec<std::ops::Range<u64>> = (offset..end)
            .step_by(READ_PIECE as usize)
            .map(|start| start..(start + READ_PIECE).min(end))
            .collect();
        let pieces = self
            .inner
            .request("get", &self.path, |store, key| async move {
                let gets = ranges.into_iter().map(|range| {
                    let (store, key) = (store.clone(), key.clone());
                    async move { store.get_range(&key, range).await }
                });
                futures_util::future::try_join_all(gets).await
            })?;
        let mut at = 0;
        for piece in pieces {
            let Some(dest) = buf.get_mut(at..at + piece.len()) else {
                return Err(crate::storage::memory::read_past_end(
                    &self.inner.describe(&self.path),
                    offset,
                    buf.len(),
                    (at + piece.len()) as u64,
                ));
            };
            dest.copy_from_slice(&piece);
            at += piece.len();
        }
        if at != buf.len() {
            return Err(crate::storage::memory::read_past_end(
                &self.inner.describe(&self.path),
                offset,
                buf.len(),
                at as u64,
            ));
        }
        Ok(())
    }
}

/// Reads larger than this are split into ranged GETs of this size, issued at once.
const READ_PIECE: u64 = 1 << 20;
