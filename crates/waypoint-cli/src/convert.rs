//! `waypoint convert <src> <dst> --to dcp|waypoint`: a waypoint checkpoint written as a torch
//! distributed checkpoint that `torch.distributed.checkpoint.load` reads (one `.distcp` file per
//! shard file of the source, chunk by chunk: memory stays at one chunk), or a DCP / NeMo
//! checkpoint written as a waypoint checkpoint (objects and `common.pt` become the trainer state),
//! streamed to the save in batches (memory stays near two batches, whatever the checkpoint's size).

use crate::output::{Out, count, human_bytes};
use crate::source::{Piece, Source, SourceTensor};
use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use waypoint::dcp::DcpWriter;
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, TensorRef};

/// Arguments of `waypoint convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The source: a waypoint checkpoint directory, or a torch DCP directory (or a NeMo
    /// checkpoint holding `weights/.metadata`).
    pub src: PathBuf,
    /// The directory to create (it must not exist).
    pub dst: PathBuf,
    /// The format to write.
    #[arg(long, value_enum)]
    pub to: Target,
    /// `--to waypoint`: the bytes lent to the save at a time (MiB). Memory stays near twice
    /// this (one batch written while the next is read) plus the largest stored chunk, however
    /// large the checkpoint.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_mib: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `waypoint convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A torch distributed checkpoint directory (`.metadata` + `__<rank>_0.distcp`).
    Dcp,
    /// A waypoint checkpoint directory.
    Waypoint,
}

/// Runs `waypoint convert`.
pub fn run(args: &ConvertArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    if args.dst.exists() {
        anyhow::bail!(
            "{} already exists; convert writes a new directory",
            args.dst.display()
        );
    }
    let source = Source::open(&args.src)?;
    let (tensors, bytes) = match args.to {
        Target::Dcp => to_dcp(&source, &args.dst)?,
        Target::Waypoint => to_waypoint(&source, &args.dst, args.batch_mib << 20)?,
    };
    if args.json {
        let value =
            json!({"path": args.dst.display().to_string(), "tensors": tensors, "bytes": bytes});
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "wrote {} ({}, {})",
            args.dst.display(),
            count(tensors, "tensor"),
            human_bytes(bytes)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `source` as a DCP directory, a few chunks in memory at a time (one read while one is
/// written): each piece goes to the
/// `__<rank>_0.distcp` of the rank that saved it (one `.distcp` per source rank, as torch
/// writes).
fn to_dcp(source: &Source, dst: &Path) -> anyhow::Result<(usize, u64)> {
    let mut writer = DcpWriter::create(dst)?;
    let tensors = source.tensors();
    let ranks = file_ranks(source);
    let mut bytes = 0u64;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // The next chunk is read (and its checksums verified) while this one is written.
        let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<(u64, Chunk)>>(1);
        let (tensors, ranks) = (&tensors, &ranks);
        scope.spawn(move || {
            for t in tensors {
                for piece in &t.pieces {
                    let rank = ranks.get(piece.file).copied().unwrap_or(0);
                    let chunk = read_piece(source, t, piece).map(|chunk| (rank, chunk));
                    let failed = chunk.is_err();
                    if tx.send(chunk).is_err() || failed {
                        return;
                    }
                }
            }
        });
        for received in rx {
            let (rank, chunk) = received?;
            bytes += chunk.data.len() as u64;
            writer.add_chunk(rank, &chunk)?;
        }
        Ok(())
    })?;
    // The trainer state: nested objects become dotted names, as DCP's own flattening does.
    let mut objects = Vec::new();
    let state = source.state()?;
    flatten("", &state, &mut objects);
    for (name, value) in objects {
        writer.add_object(&name, value)?;
    }
    writer.finish()?;
    Ok((tensors.len(), bytes))
}

/// The rank that wrote each file of `source` (files in name order, as [`crate::source::Piece`]
/// numbers them): a waypoint record's file rank, a `.distcp`'s `__<rank>_` prefix.
fn file_ranks(source: &Source) -> Vec<u64> {
    match source {
        Source::Waypoint(r) => r.record().files.values().map(|f| f.rank).collect(),
        Source::Dcp(r) => {
            let mut files: Vec<&str> = r.metadata().items.iter().map(|i| i.file.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    f.strip_prefix("__")
                        .and_then(|f| f.split_once('_'))
                        .and_then(|(r, _)| r.parse().ok())
                        .unwrap_or(i as u64)
                })
                .collect()
        }
    }
}

/// DCP's `flatten_state_dict` on JSON: non-empty objects become dotted names.
fn flatten<'v>(prefix: &str, value: &'v Value, out: &mut Vec<(String, &'v Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Null if prefix.is_empty() => {}
        _ => out.push((prefix.to_owned(), value)),
    }
}

/// Writes `source` as a waypoint checkpoint, streaming: a reader thread reads the source's
/// stored pieces (a DCP checkpoint's chunks) and lends them to the save in batches of about
/// `batch_bytes`; the save writes each batch as shard files of its own while the next one is
/// read. Memory: two batches (each at most `batch_bytes` plus one piece) and the record.
fn to_waypoint(source: &Source, dst: &Path, batch_bytes: u64) -> anyhow::Result<(usize, u64)> {
    let tensors = source.tensors();
    let state = source.state()?;
    let step = ["global_step", "step"]
        .iter()
        .find_map(|k| state.get(*k).and_then(Value::as_u64))
        .or_else(|| state.get("common.pt")?.get("global_step")?.as_u64())
        .unwrap_or(0);
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name().and_then(|n| n.to_str()))
    else {
        anyhow::bail!("{} has no parent directory or is not UTF-8", dst.display());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let storage = local_storage(parent)
        .with_context(|| format!("cannot use directory {}", parent.display()))?;
    let dir = StoragePath::new(name)?;
    let checkpointer = Checkpointer::new(storage);
    let report = std::thread::scope(|scope| {
        // A rendezvous channel: the reader holds at most one batch ready while one is written.
        let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Batch>>(0);
        let tensors = &tensors;
        scope.spawn(move || read_batches(source, tensors, batch_bytes, &tx));
        let mut next = || match rx.recv() {
            Ok(Ok(batch)) => Ok(Some(batch)),
            Ok(Err(e)) => Err(waypoint::Error::Caller {
                context: "reading the source checkpoint".into(),
                source: e.into(),
            }),
            Err(_) => Ok(None),
        };
        checkpointer.save_batches(&dir, &CheckpointMeta::at_step(step), &mut next, &state)
    })?;
    Ok((tensors.len(), report.tensor_bytes))
}

/// A piece read from the source.
type Chunk = TensorRef<'static>;

/// The stored piece `piece` of tensor `t`, read from `source` (its checksums verified) as a
/// chunk of the tensor.
fn read_piece(source: &Source, t: &SourceTensor, piece: &Piece) -> anyhow::Result<Chunk> {
    let data = source.region(&t.name, &piece.offsets, &piece.sizes)?;
    Ok(TensorRef::chunk(
        t.name.clone(),
        t.dtype,
        t.shape.clone(),
        piece.offsets.clone(),
        piece.sizes.clone(),
        data,
    ))
}

/// A batch of pieces lent to the save.
type Batch = Vec<Chunk>;

/// Reads every stored piece of `tensors` from `source`, in order, and sends them in batches of
/// at least `batch_bytes` (the last one smaller); stops at the first error (sent) or when the
/// save stops receiving.
fn read_batches(
    source: &Source,
    tensors: &[SourceTensor],
    batch_bytes: u64,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<Batch>>,
) {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    for t in tensors {
        for piece in &t.pieces {
            let chunk = match read_piece(source, t, piece) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            bytes += chunk.data.as_slice().len() as u64;
            batch.push(chunk);
            if bytes >= batch_bytes {
                // Blocks until the save takes it: one batch is read ahead, never more.
                if tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
                bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch));
    }
}
