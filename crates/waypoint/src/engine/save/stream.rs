//! A single-rank save whose tensors the caller lends in batches, so that a checkpoint larger than
//! memory can be written (a conversion from another format, a model produced piece by piece):
//! one transaction is begun; each batch is planned and written into it as shard files of its
//! own ([`super::plan`], [`mod@super::write`], unchanged) and dropped before the next is asked
//! for; the batches' parts of the record are merged; the whole record is validated as any save's
//! (chunks tiling their tensors), the listing checked, and the record committed last, after the
//! reader's own parse of its exact bytes. On any error the transaction is aborted: nothing is
//! visible.
//!
//! Memory: the largest batch the caller lends, plus the record. Not incremental (nothing is
//! carried over from a previous save) and single-rank only. It must not lay out or write bytes
//! itself, nor talk to other ranks.

use crate::engine::tensors::TensorRef;
use crate::engine::{CheckpointMeta, record_path};
use crate::error::{Error, Result};
use crate::format::{CommitRecord, shard_file_name};
use crate::storage::{Storage, StoragePath, Transaction};
use std::collections::BTreeMap;
use std::time::Instant;

use super::check::check_written;
use super::plan::{Layout, context_files, plan, validate_as_arguments};
use super::write::{abort, write_context, write_files};
use super::{SaveOptions, SaveReport};

/// The caller's lender: the next batch of tensors (chunks of one tensor may come in different
/// batches), or `None` when every tensor has been lent.
pub type NextBatch<'f> = dyn FnMut() -> Result<Option<Vec<TensorRef<'static>>>> + 'f;

/// What the batches wrote, for the report.
#[derive(Default)]
struct Totals {
    chunks: usize,
    buffer_bytes: u64,
}

/// Saves checkpoint `dir` (which must not exist) from the batches `next` lends.
pub(crate) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    next: &mut NextBatch<'_>,
    user: serde_json::Value,
    options: &SaveOptions,
) -> Result<SaveReport> {
    let started = Instant::now();
    let options = SaveOptions {
        incremental: false,
        ..options.clone()
    };
    options.validate()?;
    let record_rel = record_path(&StoragePath::root())?;
    let described = storage.describe(&record_path(dir)?);
    // The skeleton: the record of a save without tensors (step, state, options).
    let mut record = plan(&[], meta, user, &options, &described, Layout::SINGLE, None)?.record;
    let context = context_files(&meta.context)?;
    let txn = super::begin(storage, dir, false)?;
    let totals = match write_batches(txn.as_ref(), next, &options, &described, &mut record) {
        Ok(totals) => totals,
        Err(e) => return Err(abort(txn, e)),
    };
    if let Err(e) = commit(txn, &record, &context, (&record_rel, &described)) {
        tracing::warn!(checkpoint = %storage.describe(dir).display(), error = %e, "save failed; nothing was made visible");
        return Err(e);
    }
    let report = SaveReport {
        dir: dir.clone(),
        step: meta.step,
        tensor_bytes: record.total_bytes(),
        file_bytes: record.files.values().map(|f| f.size).sum(),
        files: record.files.len(),
        chunks: totals.chunks,
        buffer_bytes: totals.buffer_bytes,
        carried_files: 0,
        carried_bytes: 0,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        checkpoint = %storage.describe(dir).display(),
        step = meta.step,
        bytes = report.file_bytes,
        ms = report.elapsed.as_millis() as u64,
        "checkpoint committed (streamed in batches)"
    );
    Ok(report)
}

/// Plans and writes every batch into `txn`, merging each one's files and chunks into `record`.
fn write_batches(
    txn: &dyn Transaction,
    next: &mut NextBatch<'_>,
    options: &SaveOptions,
    described: &std::path::Path,
    record: &mut CommitRecord,
) -> Result<Totals> {
    let mut totals = Totals::default();
    let part_of = Layout {
        complete: false,
        ..Layout::SINGLE
    };
    while let Some(batch) = next()? {
        if batch.is_empty() {
            continue;
        }
        let mut part = plan(
            &batch,
            &CheckpointMeta::default(),
            serde_json::Value::Null,
            options,
            described,
            part_of,
            None,
        )?;
        renumber(&mut part, record.files.len() as u64);
        let written = write_files(txn, &mut part, &batch, options)?;
        totals.chunks += batch.len();
        totals.buffer_bytes = totals.buffer_bytes.max(written.buffer_bytes);
        drop(batch);
        merge(record, part.record)?;
    }
    // Every invariant a reader checks, now that all chunks are known (they tile their tensors).
    validate_as_arguments(record, described)?;
    Ok(totals)
}

/// Gives a batch's files the next free numbers (each batch's plan numbers its files from 0).
fn renumber(part: &mut super::plan::Plan, first: u64) {
    let names: BTreeMap<String, String> = part
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), shard_file_name(0, first + i as u64)))
        .collect();
    for file in &mut part.files {
        file.name = names[&file.name].clone();
    }
    part.record.files = std::mem::take(&mut part.record.files)
        .into_iter()
        .map(|(name, entry)| (names.get(&name).cloned().unwrap_or(name), entry))
        .collect();
    for entry in part.record.tensors.values_mut() {
        for chunk in &mut entry.chunks {
            if let Some(new) = names.get(&chunk.file) {
                chunk.file = new.clone();
            }
        }
    }
}

/// Adds a batch's files and chunks to `record`; a tensor lent in several batches must keep its
/// dtype and global shape.
fn merge(record: &mut CommitRecord, part: CommitRecord) -> Result<()> {
    record.files.extend(part.files);
    for (name, entry) in part.tensors {
        match record.tensors.get_mut(&name) {
            None => {
                record.tensors.insert(name, entry);
            }
            Some(have) if have.dtype == entry.dtype && have.shape == entry.shape => {
                have.chunks.extend(entry.chunks);
            }
            Some(have) => {
                return Err(Error::tensor(
                    name,
                    format!(
                        "chunks lent in different batches disagree: {} {:?} and {} {:?}",
                        have.dtype, have.shape, entry.dtype, entry.shape
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Writes `context/`, checks the listing and commits the record (its exact bytes parsed back
/// by the reader first); aborts on any error.
fn commit(
    txn: Box<dyn Transaction>,
    record: &CommitRecord,
    context: &[(StoragePath, &[u8])],
    (record_rel, described): (&StoragePath, &std::path::Path),
) -> Result<()> {
    if let Err(e) = write_context(txn.as_ref(), context) {
        return Err(abort(txn, e));
    }
    if let Err(e) = check_written(txn.as_ref(), record, described) {
        return Err(abort(txn, e));
    }
    let bytes = match record.to_committed_json(described) {
        Ok(bytes) => bytes,
        Err(e) => return Err(abort(txn, e)),
    };
    txn.commit(record_rel, &bytes)
}
