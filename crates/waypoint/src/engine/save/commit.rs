//! The step both save protocols end with: the record's exact bytes, checked by the reader's own
//! parse; the checkpoint's summary (`summary.json`, [`crate::format::Summary`]) made from those
//! bytes, checked by the summary reader's own parse and written inside the transaction, so that
//! it appears with the checkpoint and never without it; then the record, committed last.
//!
//! It owns no protocol: [`super::single`] and [`super::ranks`] call it once everything else is
//! written and checked. A summary that fails its check is left out (the checkpoint commits without
//! one, as a checkpoint of an earlier version, and is read through its record); writing it is
//! part of the save, and its failure aborts the transaction like any other file's.

use super::write::abort;
use crate::error::Result;
use crate::format::{CommitRecord, SUMMARY_FILE, Summary};
use crate::storage::{StoragePath, Transaction};
use std::path::Path;

/// Commits `record` at `record_rel` in `txn`, its summary written first; `described` is the
/// record's path, for messages. Aborts the transaction on error.
pub(super) fn commit(
    txn: Box<dyn Transaction>,
    record: &CommitRecord,
    record_rel: &StoragePath,
    described: &Path,
) -> Result<()> {
    // The reader's own check of the exact bytes: a record that commits always opens.
    let bytes = match record.to_committed_json(described) {
        Ok(bytes) => bytes,
        Err(e) => return Err(abort(txn, e)),
    };
    if let Err(e) = write_summary(txn.as_ref(), record, &bytes, described) {
        return Err(abort(txn, e));
    }
    txn.commit(record_rel, &bytes)
}

/// Writes the summary of `record` (committed as `bytes`) into the transaction, when it reads
/// back as written.
fn write_summary(
    txn: &dyn Transaction,
    record: &CommitRecord,
    bytes: &[u8],
    described: &Path,
) -> Result<()> {
    // `<ckpt>/weights/metadata.json` → `<ckpt>/summary.json`, for messages.
    let at = described.parent().and_then(Path::parent).map_or_else(
        || Path::new(SUMMARY_FILE).to_path_buf(),
        |ckpt| ckpt.join(SUMMARY_FILE),
    );
    let summary = match Summary::committed_bytes(record, bytes, &at) {
        Ok(summary) => summary,
        Err(why) => {
            tracing::warn!(path = %at.display(), reason = %why, "no summary written: listings read this checkpoint's record instead");
            return Ok(());
        }
    };
    let handle = txn.create(&StoragePath::new(SUMMARY_FILE)?, summary.len() as u64)?;
    handle.write_at(0, &summary)?;
    handle.finish()
}
