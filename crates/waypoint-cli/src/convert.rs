//! `waypoint convert <src> <dst> --to dcp|waypoint`: a waypoint checkpoint written as a torch
//! distributed checkpoint that `torch.distributed.checkpoint.load` reads (one `.distcp` file per
//! shard file of the source, chunk by chunk: memory stays at one chunk), or a DCP / NeMo
//! checkpoint written as a waypoint checkpoint (objects and `common.pt` become the trainer state).

use crate::output::{Out, count, human_bytes};
use crate::source::Source;
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
        Target::Waypoint => to_waypoint(&source, &args.dst)?,
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

/// Writes `source` as a DCP directory, one chunk in memory at a time.
fn to_dcp(source: &Source, dst: &Path) -> anyhow::Result<(usize, u64)> {
    let mut writer = DcpWriter::create(dst)?;
    let tensors = source.tensors();
    let mut bytes = 0u64;
    for t in &tensors {
        for piece in &t.pieces {
            let data = source.region(&t.name, &piece.offsets, &piece.sizes)?;
            bytes += data.len() as u64;
            let chunk = TensorRef::chunk(
                t.name.as_str(),
                t.dtype,
                t.shape.clone(),
                piece.offsets.clone(),
                piece.sizes.clone(),
                data,
            );
            writer.add_chunk(piece.file as u64, &chunk)?;
        }
    }
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

/// Writes `source` as a waypoint checkpoint. Every tensor is held in memory for the one save.
fn to_waypoint(source: &Source, dst: &Path) -> anyhow::Result<(usize, u64)> {
    let tensors = source.tensors();
    let mut refs = Vec::with_capacity(tensors.len());
    let mut bytes = 0u64;
    for t in &tensors {
        let zeros = vec![0; t.shape.len()];
        let data = source.region(&t.name, &zeros, &t.shape)?;
        bytes += data.len() as u64;
        refs.push(TensorRef::whole(
            t.name.clone(),
            t.dtype,
            t.shape.clone(),
            data,
        ));
    }
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
    Checkpointer::new(storage).save(&dir, &CheckpointMeta::at_step(step), &refs, &state)?;
    Ok((tensors.len(), bytes))
}
