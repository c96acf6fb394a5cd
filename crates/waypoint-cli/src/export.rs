//! `waypoint export <ckpt> --hf <dir>`: a checkpoint's model weights as a consolidated Hugging
//! Face layout: `model.safetensors`, or above `--max-shard-size` the shards
//! `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`. Each tensor is
//! assembled whole (from any sharding) and written one at a time; `--strip-prefix model.` keeps
//! only the tensors under that prefix and removes it from their names.

use crate::cli::parse_size;
use crate::output::{Out, count, human_bytes};
use crate::source::{Source, SourceTensor};
use clap::Args;
use serde_json::json;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use waypoint::format::{ShardItem, layout_shard};

/// Arguments of `waypoint export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint: a waypoint checkpoint directory or a torch DCP / NeMo directory.
    pub checkpoint: PathBuf,
    /// The directory to write the Hugging Face files into (created; must not hold them yet).
    #[arg(long, value_name = "DIR")]
    pub hf: PathBuf,
    /// Keep only the tensors whose names start with this prefix, without it (e.g. `model.`).
    #[arg(long, value_name = "PREFIX")]
    pub strip_prefix: Option<String>,
    /// Split into several files above this size (B, KiB, MiB, GiB, KB, MB, GB).
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = parse_size)]
    pub max_shard_size: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `waypoint export`.
pub fn run(args: &ExportArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let source = Source::open(&args.checkpoint)?;
    let mut tensors: Vec<(String, SourceTensor)> = source
        .tensors()
        .into_iter()
        .filter_map(|t| match &args.strip_prefix {
            Some(p) => {
                let name = t.name.strip_prefix(p.as_str())?.to_owned();
                Some((name, t))
            }
            None => Some((t.name.clone(), t)),
        })
        .collect();
    if tensors.is_empty() {
        anyhow::bail!("no tensor to export (check --strip-prefix)");
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let shards = split(&tensors, args.max_shard_size)?;
    std::fs::create_dir_all(&args.hf)?;
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        total += write_shard(&source, &tensors, shard, &args.hf.join(&file))?;
        for &t in shard {
            weight_map.insert(tensors[t].0.clone(), json!(file));
        }
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(
            args.hf.join("model.safetensors.index.json"),
            serde_json::to_vec_pretty(&index)?,
        )?;
    }
    if args.json {
        let value = json!({"path": args.hf.display().to_string(), "files": n,
            "tensors": tensors.len(), "bytes": total});
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "wrote {} ({}, {} in {})",
            args.hf.display(),
            count(tensors.len(), "tensor"),
            human_bytes(total),
            count(n, "file")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes_of(t: &SourceTensor) -> anyhow::Result<u64> {
    waypoint::format::element_count(&t.shape)
        .and_then(|n| t.dtype.byte_len(n))
        .ok_or_else(|| anyhow::anyhow!("tensor {:?}: its size overflows", t.name))
}

/// Groups tensors (in name order) into shards of at most `max` bytes (a larger tensor alone).
fn split(tensors: &[(String, SourceTensor)], max: u64) -> anyhow::Result<Vec<Vec<usize>>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let b = bytes_of(t)?;
        if size > 0 && size.saturating_add(b) > max {
            shards.push(Vec::new());
            size = 0;
        }
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
        size = size.saturating_add(b);
    }
    Ok(shards)
}

/// Writes one safetensors file holding `shard`'s tensors, each read whole from `source` in turn.
fn write_shard(
    source: &Source,
    tensors: &[(String, SourceTensor)],
    shard: &[usize],
    path: &Path,
) -> anyhow::Result<u64> {
    let items = shard
        .iter()
        .map(|&i| {
            let (name, t) = &tensors[i];
            Ok(ShardItem {
                name: name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offsets: vec![0; t.shape.len()],
                byte_len: bytes_of(t)?,
                split: false,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let layout = layout_shard(&items)
        .ok_or_else(|| anyhow::anyhow!("{}: the header would be too large", path.display()))?;
    let file =
        File::create_new(path).map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&layout.header)?;
    let mut data_bytes = 0u64;
    for &(item, _) in &layout.placements {
        let (_, t) = &tensors[shard[item]];
        let zeros = vec![0; t.shape.len()];
        let data = source.region(&t.name, &zeros, &t.shape)?;
        data_bytes += data.len() as u64;
        w.write_all(&data)?;
    }
    let file = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    file.sync_all()?;
    Ok(data_bytes)
}
