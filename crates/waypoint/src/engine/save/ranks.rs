//! One checkpoint written by several ranks, committed once.
//!
//! The protocol (every step a collective of the [`Coordinator`], so every rank takes the same
//! path and returns the same error):
//! 1. *Announce*: each rank all-gathers what it holds (names, shapes, offsets) or why it cannot
//!    save. Every rank then computes the same assignment ([`super::assign`]): sharded chunks are
//!    written by their owner, replicated ones once, spread over their replicas.
//! 2. *Open*: rank 0 begins the storage transaction and broadcasts its token; the others join it.
//! 3. *Write*: each rank writes and finishes its own shard files `__<rank>_<i>.safetensors`.
//! 4. *Report*: each rank all-gathers its part of the commit record (files, chunks, checksums) or
//!    its error. If any rank failed, rank 0 aborts the transaction and nothing becomes visible.
//! 5. *Commit*: rank 0 merges the parts, validates the whole record, writes `context/` and the
//!    commit record, commits, and broadcasts the outcome.
//!
//! A rank that dies breaks the collectives: the others fail with [`Error::Collective`] and rank 0
//! never commits (under MPI the launcher ends the job). The temporary is removed by rank 0, or by
//! the next run's cleanup.

use super::assign::{ChunkDesc, Piece, SPREAD_MIN_BYTES, assign};
use super::{
    Layout, SaveOptions, SaveReport, abort, context_files, plan, validate_as_arguments,
    write_context, write_files,
};
use crate::engine::tensors::{TensorData, TensorRef};
use crate::engine::{CheckpointMeta, record_path};
use crate::dist::Coordinator;
use crate::error::{Error, Result};
use crate::format::{FileEntry, TensorEntry, element_count};
use crate::storage::{Storage, StoragePath, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// A rank's answer in a status exchange.
#[derive(Debug, Serialize, Deserialize)]
enum Status<T> {
    Ok(T),
    Failed(String),
}

/// A rank's part of the commit record.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Part {
    files: BTreeMap<String, FileEntry>,
    tensors: BTreeMap<String, TensorEntry>,
}

fn encode<T: Serialize>(status: &Status<T>) -> Vec<u8> {
    serde_json::to_vec(status).unwrap_or_default()
}

/// Decodes every rank's status; the first failure (lowest rank) becomes the error.
fn decode_all<T: for<'de> Deserialize<'de>>(
    messages: Vec<Vec<u8>>,
    fail: &dyn Fn(u64, String) -> Error,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(messages.len());
    for (rank, message) in messages.into_iter().enumerate() {
        match serde_json::from_slice::<Status<T>>(&message) {
            Ok(Status::Ok(value)) => out.push(value),
            Ok(Status::Failed(reason)) => return Err(fail(rank as u64, reason)),
            Err(e) => return Err(fail(rank as u64, format!("unreadable status message: {e}"))),
        }
    }
    Ok(out)
}

pub(super) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    tensors: &[TensorRef<'_>],
    user: serde_json::Value,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
) -> Result<SaveReport> {
    let started = Instant::now();
    let rank = coordinator.rank();
    let world_size = coordinator.world_size();
    let fail = |rank: u64, reason: String| Error::RankFailed {
        step: meta.step,
        rank,
        world_size,
        reason,
    };
    let described = storage.describe(&record_path(dir)?);

    // 1. Announce.
    let announced = options.validate().and_then(|()| {
        tensors
            .iter()
            .map(|t| {
                t.validate()?;
                Ok(ChunkDesc {
                    name: t.name.to_string(),
                    dtype: t.dtype,
                    global_shape: t.global_shape.clone(),
                    offsets: t.offsets.clone(),
                    shape: t.shape.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()
    });
    let message = match &announced {
        Ok(descs) => encode(&Status::Ok(descs)),
        Err(e) => encode::<()>(&Status::Failed(e.to_string())),
    };
    let all: Vec<Vec<ChunkDesc>> = decode_all(coordinator.all_gather(&message)?, &fail)?;
    let pieces = assign(&all, SPREAD_MIN_BYTES).map_err(|reason| Error::InvalidArgument {
        name: "tensors",
        reason,
    })?;
    let mine = my_tensors(tensors, &pieces[rank as usize])?;

    // 2. Open.
    let txn: Result<Box<dyn Transaction>> = if rank == 0 {
        let begun = storage.begin(dir);
        let message = match &begun {
            Ok(txn) => encode(&Status::Ok(txn.token())),
            Err(e) => encode::<String>(&Status::Failed(e.to_string())),
        };
        coordinator.broadcast(0, &message)?;
        begun
    } else {
        let token: String = decode_all(vec![coordinator.broadcast(0, &[])?], &fail)?
            .pop()
            .unwrap_or_default();
        storage.join(dir, &token)
    };
    if let (0, Err(e)) = (rank, &txn) {
        // Every rank saw the failed begin in the broadcast.
        return Err(fail(0, e.to_string()));
    }

    // 3. Write this rank's files.
    let layout = Layout {
        rank,
        world_size,
        complete: false,
    };
    let mut written = None;
    let outcome = txn.as_ref().map_err(|e| e.to_string()).and_then(|txn| {
        let mut plan = plan(
            &mine,
            meta,
            serde_json::Value::Null,
            options,
            &described,
            layout,
        )
        .map_err(|e| e.to_string())?;
        let buffers =
            write_files(txn.as_ref(), &mut plan, &mine, options).map_err(|e| e.to_string())?;
        let part = Part {
            files: std::mem::take(&mut plan.record.files),
            tensors: std::mem::take(&mut plan.record.tensors),
        };
        written = Some((
            part.files.values().map(|f| f.size).sum::<u64>(),
            part.files.len(),
            buffers,
        ));
        Ok(part)
    });

    // 4. Report.
    let message = match &outcome {
        Ok(part) => encode(&Status::Ok(part)),
        Err(reason) => encode::<()>(&Status::Failed(reason.clone())),
    };
    let gathered = coordinator.all_gather(&message);
    let parts = gathered.and_then(|messages| decode_all::<Part>(messages, &fail));
    let parts = match (parts, txn) {
        (Ok(parts), Ok(txn)) => (parts, txn),
        (Err(e), Ok(txn)) => {
            if rank == 0 {
                return Err(abort(txn, e));
            }
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
        (Ok(_), Err(e)) => return Err(fail(rank, e.to_string())),
    };

    // 5. Commit (rank 0), and everyone learns the outcome.
    let (parts, txn) = parts;
    let (file_bytes, files, buffer_bytes) = written.unwrap_or_default();
    let tensor_bytes: u64;
    if rank == 0 {
        let committed = commit(txn, parts, meta, user, options, &described);
        let message = match &committed {
            Ok(bytes) => encode(&Status::Ok(*bytes)),
            Err(e) => encode::<u64>(&Status::Failed(e.to_string())),
        };
        let told = coordinator.broadcast(0, &message);
        tensor_bytes = committed?;
        if let Err(e) = told {
            // Committed and complete: a rank that died after reporting its files cannot undo it.
            tracing::warn!(checkpoint = %storage.describe(dir).display(), error = %e, "committed, but not every rank could be told");
        }
    } else {
        drop(txn);
        tensor_bytes = decode_all::<u64>(vec![coordinator.broadcast(0, &[])?], &fail)?
            .pop()
            .unwrap_or_default();
    }
    let report = SaveReport {
        dir: dir.clone(),
        step: meta.step,
        tensor_bytes,
        file_bytes,
        files,
        chunks: mine.len(),
        buffer_bytes,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        checkpoint = %storage.describe(dir).display(),
        step = meta.step,
        rank,
        world_size,
        bytes = report.file_bytes,
        ms = report.elapsed.as_millis() as u64,
        "checkpoint committed by all ranks"
    );
    Ok(report)
}

/// The tensors this rank writes: its pieces, whole or as row ranges of a replicated chunk.
fn my_tensors<'t>(tensors: &'t [TensorRef<'_>], pieces: &[Piece]) -> Result<Vec<TensorRef<'t>>> {
    pieces
        .iter()
        .map(|piece| {
            let t = tensors
                .get(piece.index)
                .ok_or_else(|| Error::InvalidArgument {
                    name: "tensors",
                    reason: format!(
                        "assignment names chunk {} of {}",
                        piece.index,
                        tensors.len()
                    ),
                })?;
            let Some((start, end)) = piece.rows else {
                return Ok(TensorRef {
                    name: std::borrow::Cow::Borrowed(t.name.as_ref()),
                    dtype: t.dtype,
                    global_shape: t.global_shape.clone(),
                    offsets: t.offsets.clone(),
                    shape: t.shape.clone(),
                    data: t.data.borrowed(),
                });
            };
            let row_bytes = element_count(t.shape.get(1..).unwrap_or(&[]))
                .and_then(|n| t.dtype.byte_len(n))
                .ok_or_else(|| Error::tensor(t.name.as_ref(), "rows are not whole bytes"))?;
            let data = t
                .data
                .get((start * row_bytes) as usize..(end * row_bytes) as usize)
                .ok_or_else(|| Error::tensor(t.name.as_ref(), "rows outside its data"))?;
            let mut offsets = t.offsets.clone();
            let mut shape = t.shape.clone();
            offsets[0] += start;
            shape[0] = end - start;
            Ok(TensorRef {
                name: std::borrow::Cow::Borrowed(t.name.as_ref()),
                dtype: t.dtype,
                global_shape: t.global_shape.clone(),
                offsets,
                shape,
                data: TensorData::Borrowed(data),
            })
        })
        .collect()
}

/// Rank 0: merges every rank's part into the commit record, validates it whole, writes
/// `context/` and commits. Returns the tensor bytes. Aborts the transaction on error.
fn commit(
    txn: Box<dyn Transaction>,
    parts: Vec<Part>,
    meta: &CheckpointMeta,
    user: serde_json::Value,
    options: &SaveOptions,
    described: &std::path::Path,
) -> Result<u64> {
    // The skeleton (everything but files and tensors) comes from an empty plan.
    let skeleton = plan(
        &[],
        meta,
        user,
        options,
        described,
        Layout {
            rank: 0,
            world_size: parts.len() as u64,
            complete: false,
        },
    );
    let mut record = match skeleton {
        Ok(p) => p.record,
        Err(e) => return Err(abort(txn, e)),
    };
    for part in parts {
        record.files.extend(part.files);
        for (name, tensor) in part.tensors {
            let entry = record.tensors.entry(name).or_insert_with(|| TensorEntry {
                dtype: tensor.dtype,
                shape: tensor.shape.clone(),
                chunks: Vec::new(),
            });
            entry.chunks.extend(tensor.chunks);
        }
    }
    for entry in record.tensors.values_mut() {
        entry.chunks.sort_by(|a, b| a.offsets.cmp(&b.offsets));
    }
    let checked = validate_as_arguments(&record, described).and_then(|()| {
        let context = context_files(&meta.context)?;
        write_context(txn.as_ref(), &context)
    });
    if let Err(e) = checked {
        return Err(abort(txn, e));
    }
    let bytes = record.total_bytes();
    txn.commit(&record_path(&StoragePath::root())?, &record.to_json())?;
    Ok(bytes)
}
