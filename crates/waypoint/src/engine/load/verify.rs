//! Checksum verification of a whole checkpoint: every header and every block of every shard read
//! and checked, each problem collected (not returned at the first) into a [`VerifyReport`]; and
//! the check of one block, which the reads use too. It must not stop at the first problem nor
//! repair anything; the listing's problems are found when opening ([`super::open`]).

use crate::error::{Error, Result};
use crate::format::{ChunkEntry, CommitRecord};
use std::collections::BTreeSet;

use super::CheckpointReader;

/// The outcome of [`crate::engine::Checkpointer::verify`].
#[derive(Debug)]
pub struct VerifyReport {
    /// The checkpoint's commit record (valid, or verification could not start).
    pub record: CommitRecord,
    /// Every problem found, each naming its file (and tensor and byte range where it has them).
    pub problems: Vec<Error>,
    /// Bytes of tensor data read and checked.
    pub bytes_checked: u64,
}

impl VerifyReport {
    /// Whether the checkpoint is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl CheckpointReader {
    /// Reads every shard and verifies every header and block; returns every problem found (an
    /// empty list for an intact checkpoint). Problems of the listing found at open are not
    /// repeated here; see [`crate::engine::Checkpointer::verify`] for the complete check.
    pub fn verify(&self) -> Vec<Error> {
        self.verify_with_progress(&mut |_| {}).0
    }

    /// [`Self::verify`], calling `progress` with the number of data bytes checked so far.
    pub(crate) fn verify_with_progress(&self, progress: &mut dyn FnMut(u64)) -> (Vec<Error>, u64) {
        let mut problems = Vec::new();
        let mut usable = BTreeSet::new();
        for file in self.record.files.keys() {
            if !self.present.contains(file) {
                continue;
            }
            match self.handle(file) {
                Ok(_) => {
                    usable.insert(file.as_str());
                }
                Err(e) => problems.push(e),
            }
        }
        let mut scratch = Vec::new();
        let mut checked = 0u64;
        for (name, entry) in &self.record.tensors {
            for chunk in entry
                .chunks
                .iter()
                .filter(|c| usable.contains(&c.file.as_str()))
            {
                let Ok(handle) = self.handle(&chunk.file) else {
                    continue;
                };
                let bs = self.record.block_size;
                for b in 0..chunk.block_crc32c.len() as u64 {
                    let start = b * bs;
                    let len = bs.min(chunk.byte_len() - start);
                    scratch.resize(len as usize, 0);
                    let result = handle
                        .read_at(chunk.byte_range[0] + start, &mut scratch)
                        .and_then(|()| self.check_block(name, chunk, b as usize, &scratch));
                    if let Err(e) = result {
                        problems.push(e);
                    }
                    checked += len;
                    progress(checked);
                }
            }
        }
        (problems, checked)
    }

    pub(super) fn check_block(
        &self,
        tensor: &str,
        chunk: &ChunkEntry,
        block: usize,
        bytes: &[u8],
    ) -> Result<()> {
        let expected = chunk.block_crc32c[block];
        let actual = crc32c::crc32c(bytes);
        if actual == expected {
            return Ok(());
        }
        let start = chunk.byte_range[0] + block as u64 * self.record.block_size;
        Err(Error::Checksum {
            path: self.file_path(&chunk.file),
            what: format!("tensor {tensor:?}"),
            start,
            end: start + bytes.len() as u64,
            expected,
            actual,
        })
    }
}
