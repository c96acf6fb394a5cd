//! The single-rank save protocol: plan, begin the transaction, write the shard files and
//! `context/`, commit the record last; on any error abort, so nothing is visible. It must not
//! talk to other ranks (that is [`super::ranks`]) nor lay out or write bytes itself (it uses
//! [`super::plan`] and [`mod@super::write`]).

use crate::engine::tensors::TensorRef;
use crate::engine::{CheckpointMeta, record_path};
use crate::error::Result;
use crate::storage::{Storage, StoragePath, Transaction};
use std::time::Instant;

use super::check::check_written;
use super::plan::{Layout, Plan, context_files, plan};
use super::write::{abort, write_context, write_files};
use super::{SaveOptions, SaveReport};

/// Saves `tensors` as checkpoint `dir` on this rank alone.
pub(super) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    tensors: &[TensorRef<'_>],
    user: serde_json::Value,
    options: &SaveOptions,
    replace: bool,
) -> Result<SaveReport> {
    let started = Instant::now();
    options.validate()?;
    let record_rel = record_path(&StoragePath::root())?;
    let described = storage.describe(&record_path(dir)?);
    let mut plan = plan(tensors, meta, user, options, &described, Layout::SINGLE)?;
    let context = context_files(&meta.context)?;
    let txn = super::begin(storage, dir, replace)?;
    let record = (&record_rel, described.as_path());
    match write_and_commit(txn, &mut plan, tensors, options, record, &context) {
        Ok(buffer_bytes) => {
            let report = SaveReport {
                dir: dir.clone(),
                step: meta.step,
                tensor_bytes: plan.record.total_bytes(),
                file_bytes: plan.files.iter().map(|f| f.layout.file_len).sum(),
                files: plan.files.len(),
                chunks: tensors.len(),
                buffer_bytes,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                checkpoint = %storage.describe(dir).display(),
                step = meta.step,
                bytes = report.file_bytes,
                ms = report.elapsed.as_millis() as u64,
                "checkpoint committed"
            );
            Ok(report)
        }
        Err(e) => {
            tracing::warn!(checkpoint = %storage.describe(dir).display(), error = %e, "save failed; nothing was made visible");
            Err(e)
        }
    }
}

/// Writes every file, finishes them, fills in the checksums, checks the files are there and
/// commits the record at `record.0` (described as `record.1`). Returns the gather buffer bytes
/// allocated. Aborts the transaction on any error.
fn write_and_commit(
    txn: Box<dyn Transaction>,
    plan: &mut Plan,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
    (record_rel, described): (&StoragePath, &std::path::Path),
    context: &[(StoragePath, &[u8])],
) -> Result<u64> {
    let buffers = match write_files(txn.as_ref(), plan, tensors, options) {
        Ok(buffers) => buffers,
        Err(e) => return Err(abort(txn, e)),
    };
    if let Err(e) = write_context(txn.as_ref(), context) {
        return Err(abort(txn, e));
    }
    // What is there now, not what was written: another process may have removed files.
    if let Err(e) = check_written(txn.as_ref(), &plan.record, described) {
        return Err(abort(txn, e));
    }
    // The reader's own check of the exact bytes: a record that commits always opens.
    let record = match plan.record.to_committed_json(described) {
        Ok(bytes) => bytes,
        Err(e) => return Err(abort(txn, e)),
    };
    txn.commit(record_rel, &record)?;
    Ok(buffers)
}
