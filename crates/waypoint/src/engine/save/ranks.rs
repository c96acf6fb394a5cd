//! One checkpoint written by several ranks, committed once.
//!
//! The protocol (every step a collective of the [`Coordinator`], so every rank takes the same
//! path and returns the same error):
//! 1. *Announce*: each rank sends rank 0 what it holds (names, shapes, offsets) or why it cannot
//!    save (a gather). Rank 0 computes the assignment ([`super::assign`]: sharded chunks are
//!    written by their owner, replicated ones once, spread over their replicas) and scatters to
//!    each rank its own pieces, or the error every rank returns.
//! 2. *Open*: rank 0 begins the storage transaction and broadcasts its token; the others join it.
//! 3. *Write*: each rank writes and finishes its own shard files `__<rank>_<i>.safetensors`.
//! 4. *Report*: each rank sends rank 0 its part of the commit record (files, chunks, checksums)
//!    or its error (a gather). If any rank failed, rank 0 aborts the transaction and nothing
//!    becomes visible.
//! 5. *Commit*: rank 0 merges the parts, validates the whole record, writes `context/` and the
//!    commit record, commits, and broadcasts the outcome (or the first failure).
//!
//! What a rank other than 0 sends and receives grows with its own chunks, never with the world
//! size: only rank 0 sees every rank's messages (docs/BENCHMARKS.md has the figures).
//!
//! A rank that dies breaks the collectives: the others fail with [`Error::Collective`] and rank 0
//! never commits (under MPI the launcher ends the job). The temporary is removed by rank 0, or by
//! the next run's cleanup.
//!
//! This module owns the protocol's steps (one function each) and the messages between ranks. It
//! must not lay out or write bytes itself, nor share code with the single-rank protocol
//! ([`super::single`]): both use [`super::plan`] and [`mod@super::write`].

use crate::dist::Coordinator;
use crate::engine::tensors::{TensorData, TensorRef};
use crate::engine::{CheckpointMeta, record_path};
use crate::error::{Error, Result};
use crate::format::{CommitRecord, FileEntry, TensorEntry, element_count};
use crate::storage::{Storage, StoragePath, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

use super::assign::{ChunkDesc, Piece, SPREAD_MIN_BYTES, assign};
use super::check::check_written;
use super::plan::{Layout, context_files, plan, validate_as_arguments};
use super::write::{abort, write_context, write_files};
use super::{SaveOptions, SaveReport};

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

/// Rank 0's answer to the other ranks: a value, or the failure every rank returns.
#[derive(Debug, Serialize, Deserialize)]
enum Verdict<T> {
    Ok(T),
    /// `rank` failed (or the ranks disagree, `rank` being the first named), for `reason`.
    Failed {
        rank: u64,
        reason: String,
    },
    /// The ranks' announcements are inconsistent: every rank returns `InvalidArgument`.
    Invalid(String),
}

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes every rank's status; the first failure (lowest rank) comes back as (rank, reason).
fn decode_all<T: for<'de> Deserialize<'de>>(
    messages: Vec<Vec<u8>>,
) -> std::result::Result<Vec<T>, (u64, String)> {
    let mut out = Vec::with_capacity(messages.len());
    for (rank, message) in messages.into_iter().enumerate() {
        match serde_json::from_slice::<Status<T>>(&message) {
            Ok(Status::Ok(value)) => out.push(value),
            Ok(Status::Failed(reason)) => return Err((rank as u64, reason)),
            Err(e) => {
                return Err((rank as u64, format!("unreadable status message: {e}")));
            }
        }
    }
    Ok(out)
}

/// The collective context every step of the protocol shares.
struct Protocol<'a> {
    storage: &'a dyn Storage,
    dir: &'a StoragePath,
    meta: &'a CheckpointMeta,
    options: &'a SaveOptions,
    coordinator: &'a dyn Coordinator,
    rank: u64,
    world_size: u64,
    /// The commit record's path, for messages.
    described: std::path::PathBuf,
    /// Rank 0 begins a transaction that replaces what is at `dir`.
    replace: bool,
}

/// The transaction this rank began or joined, or why it could not (reported in step 4).
type Opened = Result<Box<dyn Transaction>>;

/// What this rank wrote in step 3: its part of the record, (file bytes, files, gather buffer
/// bytes) for its report, or why it failed.
type Written = std::result::Result<(Part, (u64, usize, u64)), String>;

#[allow(clippy::too_many_arguments)]
pub(super) fn save(
    storage: &dyn Storage,
    dir: &StoragePath,
    meta: &CheckpointMeta,
    tensors: &[TensorRef<'_>],
    user: serde_json::Value,
    options: &SaveOptions,
    coordinator: &dyn Coordinator,
    replace: bool,
) -> Result<SaveReport> {
    let started = Instant::now();
    let protocol = Protocol {
        storage,
        dir,
        meta,
        options,
        coordinator,
        rank: coordinator.rank(),
        world_size: coordinator.world_size(),
        described: storage.describe(&record_path(dir)?),
        replace,
    };
    let mine = protocol.announce(tensors)?;
    let txn = protocol.open()?;
    let written = protocol.write(&txn, &mine);
    let tensor_bytes = protocol.report_and_commit(&written, txn, user)?;
    let (file_bytes, files, buffer_bytes) = written.map(|(_, w)| w).unwrap_or_default();
    let report = SaveReport {
        dir: dir.clone(),
        step: meta.step,
        tensor_bytes,
        file_bytes,
        files,
        chunks: mine.len(),
        buffer_bytes,
        carried_files: 0,
        carried_bytes: 0,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        checkpoint = %storage.describe(dir).display(),
        step = meta.step,
        rank = protocol.rank,
        world_size = protocol.world_size,
        bytes = report.file_bytes,
        ms = report.elapsed.as_millis() as u64,
        "checkpoint committed by all ranks"
    );
    Ok(report)
}

impl Protocol<'_> {
    /// The error every rank returns when `rank` failed.
    fn fail(&self, rank: u64, reason: String) -> Error {
        Error::RankFailed {
            step: self.meta.step,
            rank,
            world_size: self.world_size,
            reason,
        }
    }

    /// The error every rank returns for rank 0's `verdict`, or its value.
    fn settle<T>(&self, verdict: Verdict<T>) -> Result<T> {
        match verdict {
            Verdict::Ok(value) => Ok(value),
            Verdict::Failed { rank, reason } => Err(self.fail(rank, reason)),
            Verdict::Invalid(reason) => Err(Error::InvalidArgument {
                name: "tensors",
                reason,
            }),
        }
    }

    /// Rank 0's verdict, as a rank other than 0 receives it; an unreadable one is this rank's
    /// own failure.
    fn read_verdict<T: for<'de> Deserialize<'de>>(&self, message: &[u8]) -> Result<T> {
        match serde_json::from_slice::<Verdict<T>>(message) {
            Ok(verdict) => self.settle(verdict),
            Err(e) => Err(self.fail(self.rank, format!("unreadable message from rank 0: {e}"))),
        }
    }

    /// Step 1, *Announce*: each rank's chunks (or its validation error) gathered on rank 0,
    /// which assigns the pieces and scatters each rank's own. Returns the tensors this rank
    /// writes.
    fn announce<'t>(&self, tensors: &'t [TensorRef<'_>]) -> Result<Vec<TensorRef<'t>>> {
        let announced = self.options.validate().and_then(|()| {
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
            Err(e) => encode(&Status::<()>::Failed(e.to_string())),
        };
        let gathered = self.coordinator.gather(0, &message)?;
        let mine = if self.rank == 0 {
            let verdicts: Vec<Verdict<Vec<Piece>>> = match decode_all::<Vec<ChunkDesc>>(gathered) {
                Err((rank, reason)) => self.everyone(|| Verdict::Failed {
                    rank,
                    reason: reason.clone(),
                }),
                Ok(all) => match assign(&all, SPREAD_MIN_BYTES) {
                    Ok(pieces) => pieces.into_iter().map(Verdict::Ok).collect(),
                    Err(reason) => self.everyone(|| Verdict::Invalid(reason.clone())),
                },
            };
            let parts: Vec<Vec<u8>> = verdicts.iter().map(encode).collect();
            self.coordinator.scatter(0, &parts)?;
            let own = verdicts
                .into_iter()
                .next()
                .unwrap_or(Verdict::Ok(Vec::new()));
            self.settle(own)?
        } else {
            let told = self.coordinator.scatter(0, &[])?;
            self.read_verdict::<Vec<Piece>>(&told)?
        };
        my_tensors(tensors, &mine)
    }

    /// The same verdict for every rank.
    fn everyone<T>(&self, verdict: impl Fn() -> Verdict<T>) -> Vec<Verdict<T>> {
        (0..self.world_size).map(|_| verdict()).collect()
    }

    /// Step 2, *Open*: rank 0 begins the transaction and broadcasts its token; the others join
    /// it. The outer error ends the save on every rank (rank 0 could not begin); the inner one is
    /// this rank's own failure to join, reported in step 4.
    fn open(&self) -> Result<Opened> {
        let txn: Opened = if self.rank == 0 {
            let begun = super::begin(self.storage, self.dir, self.replace);
            let message = match &begun {
                Ok(txn) => encode(&Status::Ok(txn.token())),
                Err(e) => encode(&Status::<String>::Failed(e.to_string())),
            };
            self.coordinator.broadcast(0, &message)?;
            begun
        } else {
            let told = self.coordinator.broadcast(0, &[])?;
            match serde_json::from_slice::<Status<String>>(&told) {
                Ok(Status::Ok(token)) => self.storage.join(self.dir, &token),
                // Rank 0 returns this too.
                Ok(Status::Failed(reason)) => return Err(self.fail(0, reason)),
                // Not rank 0's token: this rank goes on to report it in step 4, so that every
                // rank fails there (and rank 0 aborts) instead of waiting for this one.
                Err(e) => Err(Error::Collective {
                    op: "broadcast",
                    rank: self.rank,
                    reason: format!("unreadable transaction token from rank 0: {e}"),
                }),
            }
        };
        if let (0, Err(e)) = (self.rank, &txn) {
            // Every rank saw the failed begin in the broadcast.
            return Err(self.fail(0, e.to_string()));
        }
        Ok(txn)
    }

    /// Step 3, *Write*: plans and writes this rank's own files with the single-rank machinery,
    /// and finishes them. Returns this rank's part of the record, or why it could not.
    fn write(&self, txn: &Opened, mine: &[TensorRef<'_>]) -> Written {
        let layout = Layout {
            rank: self.rank,
            world_size: self.world_size,
            complete: false,
        };
        let txn = txn.as_ref().map_err(|e| e.to_string())?;
        let mut plan = plan(
            mine,
            self.meta,
            serde_json::Value::Null,
            self.options,
            &self.described,
            layout,
            None,
        )
        .map_err(|e| e.to_string())?;
        let buffers = write_files(txn.as_ref(), &mut plan, mine, self.options)
            .map_err(|e| e.to_string())?
            .buffer_bytes;
        let part = Part {
            files: std::mem::take(&mut plan.record.files),
            tensors: std::mem::take(&mut plan.record.tensors),
        };
        let written = (
            part.files.values().map(|f| f.size).sum::<u64>(),
            part.files.len(),
            buffers,
        );
        Ok((part, written))
    }

    /// Steps 4 and 5, *Report* and *Commit*: each rank's part (or its error) gathered on rank
    /// 0, which aborts on any error or merges the parts and commits, then broadcasts the outcome.
    /// Every rank returns the same: the tensor bytes committed, or the first failing rank's error.
    fn report_and_commit(
        &self,
        written: &Written,
        txn: Opened,
        user: serde_json::Value,
    ) -> Result<u64> {
        let message = match written {
            Ok((part, _)) => encode(&Status::Ok(part)),
            Err(reason) => encode(&Status::<()>::Failed(reason.clone())),
        };
        let gathered = self.coordinator.gather(0, &message);
        if self.rank != 0 {
            drop(txn);
            gathered?;
            let told = self.coordinator.broadcast(0, &[])?;
            return self.read_verdict::<u64>(&told);
        }
        // Rank 0 began the transaction itself: `open` returned early otherwise.
        let txn = txn?;
        let parts = match gathered {
            Ok(messages) => decode_all::<Part>(messages),
            Err(e) => return Err(abort(txn, e)),
        };
        let outcome = match parts {
            Err((rank, reason)) => {
                let e = abort(txn, self.fail(rank, reason.clone()));
                (Verdict::Failed { rank, reason }, Err(e))
            }
            Ok(parts) => {
                match commit_record(txn, parts, self.meta, user, self.options, &self.described) {
                    Ok(bytes) => (Verdict::Ok(bytes), Ok(bytes)),
                    Err(e) => (
                        Verdict::Failed {
                            rank: 0,
                            reason: e.to_string(),
                        },
                        Err(e),
                    ),
                }
            }
        };
        let (verdict, result) = outcome;
        let told = self.coordinator.broadcast(0, &encode(&verdict));
        if let (Err(e), Ok(_)) = (told, &result) {
            // Committed and complete: a rank that died after reporting its files cannot undo it.
            tracing::warn!(checkpoint = %self.storage.describe(self.dir).display(), error = %e, "committed, but not every rank could be told");
        }
        result
    }
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
/// `context/`, checks every file is there and commits. Returns the tensor bytes. Aborts the transaction on error.
fn commit_record(
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
        None,
    );
    let mut record = match skeleton {
        Ok(p) => p.record,
        Err(e) => return Err(abort(txn, e)),
    };
    merge_parts(&mut record, parts);
    let checked = validate_as_arguments(&record, described).and_then(|()| {
        let context = context_files(&meta.context)?;
        write_context(txn.as_ref(), &context)?;
        // Every rank's files, as they are now: another process may have removed some.
        check_written(txn.as_ref(), &record, described)
    });
    if let Err(e) = checked {
        return Err(abort(txn, e));
    }
    let bytes = record.total_bytes();
    // The reader's own check of the exact bytes: a record that commits always opens.
    let json = match record.to_committed_json(described) {
        Ok(json) => json,
        Err(e) => return Err(abort(txn, e)),
    };
    txn.commit(&record_path(&StoragePath::root())?, &json)?;
    Ok(bytes)
}

/// Adds every rank's files and chunks to `record`, each tensor's chunks in offset order.
fn merge_parts(record: &mut CommitRecord, parts: Vec<Part>) {
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
}
