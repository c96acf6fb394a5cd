//! The single-rank save protocol: find what is unchanged since the previous save (incremental),
//! plan, begin the transaction, write (or carry over) the shard files and `context/`, commit the
//! record last and remember it for the next save; on any error abort, so nothing is visible. It must not
//! talk to other ranks (that is [`super::ranks`]) nor lay out or write bytes itself (it uses
//! [`super::plan`] and [`mod@super::write`]).

use crate::engine::tensors::TensorRef;
use crate::engine::{CheckpointMeta, record_path};
use crate::error::Result;
use crate::storage::{Storage, StoragePath, Transaction};
use std::time::Instant;

use super::check::check_written;
use super::incremental::{Known, confirm_source, detect};
use super::plan::{Layout, Plan, context_files, plan};
use super::write::{Written, abort, write_context, write_files};
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
    let known = unchanged(storage, dir, tensors, options, replace)?;
    let mut plan = plan(
        tensors,
        meta,
        user,
        options,
        &described,
        Layout::SINGLE,
        known.as_ref(),
    )?;
    drop(known);
    for file in &mut plan.files {
        if file
            .carry
            .as_ref()
            .is_some_and(|c| !confirm_source(storage, c))
        {
            file.carry = None;
        }
    }
    let context = context_files(&meta.context)?;
    let txn = super::begin(storage, dir, replace)?;
    let record = (&record_rel, described.as_path());
    match write_and_commit(txn, &mut plan, tensors, options, record, &context) {
        Ok(written) => {
            let report = SaveReport {
                dir: dir.clone(),
                step: meta.step,
                tensor_bytes: plan.record.total_bytes(),
                file_bytes: plan.files.iter().map(|f| f.layout.file_len).sum(),
                files: plan.files.len(),
                chunks: tensors.len(),
                buffer_bytes: written.buffer_bytes,
                carried_files: written.carried_files,
                carried_bytes: written.carried_bytes,
                elapsed: started.elapsed(),
            };
            if options.incremental {
                let root = storage.describe(&StoragePath::root());
                options.history.remember(root, dir, plan.record);
            }
            tracing::info!(
                checkpoint = %storage.describe(dir).display(),
                step = meta.step,
                bytes = report.file_bytes,
                carried_bytes = report.carried_bytes,
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

/// What is unchanged since the previous save of the run, when the save is incremental and that
/// save is a sibling of `dir` (or `dir` itself, being replaced).
fn unchanged(
    storage: &dyn Storage,
    dir: &StoragePath,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
    replace: bool,
) -> Result<Option<Known>> {
    if !options.incremental {
        return Ok(None);
    }
    let root = storage.describe(&StoragePath::root());
    match options.history.base_for(&root, dir) {
        Some(base) if replace || base.dir != *dir => {
            let threads = options.thread_count(usize::MAX);
            detect(tensors, base, options, threads).map(Some)
        }
        _ => Ok(None),
    }
}

/// Writes every file, finishes them, fills in the checksums, checks the files are there and
/// commits the record at `record.0` (described as `record.1`). Returns what the writing did.
/// Aborts the transaction on any error.
fn write_and_commit(
    txn: Box<dyn Transaction>,
    plan: &mut Plan,
    tensors: &[TensorRef<'_>],
    options: &SaveOptions,
    (record_rel, described): (&StoragePath, &std::path::Path),
    context: &[(StoragePath, &[u8])],
) -> Result<Written> {
    let written = match write_files(txn.as_ref(), plan, tensors, options) {
        Ok(written) => written,
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
    Ok(written)
}
