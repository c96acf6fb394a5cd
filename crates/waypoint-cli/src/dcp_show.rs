//! `waypoint show` and `waypoint verify` on a torch distributed checkpoint (a directory holding
//! `.metadata`, or a NeMo 2.0 checkpoint holding `weights/.metadata`): what it holds, from the
//! metadata alone (show), or every item read back and checked (verify). The metadata is parsed
//! by waypoint's safe pickle reader; nothing in the checkpoint is ever executed.

use crate::cli::problem_exit;
use crate::output::{Out, Style, count, human_bytes, safe, shape, write_verdict};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;
use waypoint::dcp::{DcpReader, is_dcp_dir};

/// Whether `path` is a DCP checkpoint (and not a waypoint one, which has `weights/metadata.json`).
pub fn is_dcp(path: &Path) -> bool {
    is_dcp_dir(path).is_some() && !path.join("weights/metadata.json").exists()
}

fn open(path: &Path) -> anyhow::Result<DcpReader> {
    DcpReader::open(path)
        .with_context(|| format!("{} is not a readable torch DCP checkpoint", path.display()))
}

/// The bytes of every tensor (sum of their chunks'), saturating.
fn tensor_bytes(reader: &DcpReader) -> u64 {
    reader
        .metadata()
        .tensors
        .values()
        .map(|t| {
            t.numel()
                .and_then(|n| t.dtype.byte_len(n))
                .unwrap_or(u64::MAX)
        })
        .fold(0u64, u64::saturating_add)
}

/// `waypoint show <dcp dir>`.
pub fn show(path: &Path, as_json: bool, out: &mut Out) -> anyhow::Result<ExitCode> {
    let reader = open(path)?;
    let meta = reader.metadata();
    let files: std::collections::BTreeSet<&str> =
        meta.items.iter().map(|i| i.file.as_str()).collect();
    if as_json {
        let tensors: serde_json::Map<String, Value> = meta
            .tensors
            .iter()
            .map(|(name, t)| {
                let chunks: Vec<Value> = t
                    .chunks
                    .iter()
                    .map(|c| {
                        let item = meta.item(name, Some(&c.offsets));
                        json!({
                            "offsets": c.offsets, "sizes": c.sizes,
                            "file": item.map(|i| i.file.as_str()),
                            "byte_range": item.map(|i| [i.offset, i.offset + i.length]),
                        })
                    })
                    .collect();
                let value = json!({"dtype": t.dtype.name(), "shape": t.shape, "chunks": chunks});
                (name.clone(), value)
            })
            .collect();
        let value = json!({
            "path": path.display().to_string(),
            "format": "torch-dcp",
            "class": meta.class,
            "version": meta.version,
            "files": files,
            "tensor_bytes": tensor_bytes(&reader),
            "tensors": tensors,
            "objects": meta.objects,
        });
        writeln!(out, "{value}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} {} (torch DCP, {}{})",
        out.paint(Style::Bold, "checkpoint"),
        safe(&path.display().to_string()),
        meta.class.rsplit('.').next().unwrap_or_default(),
        meta.version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "{}, {}, {} in {}",
        count(meta.tensors.len(), "tensor"),
        count(meta.objects.len(), "object"),
        human_bytes(tensor_bytes(&reader)),
        count(files.len(), "file")
    )?;
    for (name, t) in &meta.tensors {
        let chunks = if t.chunks.len() == 1 {
            String::new()
        } else {
            format!("  ({} chunks)", t.chunks.len())
        };
        writeln!(
            out,
            "  {}  {} {}{chunks}",
            safe(name),
            t.dtype.name(),
            shape(&t.shape)
        )?;
    }
    for name in &meta.objects {
        writeln!(out, "  {}  object", safe(name))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `waypoint verify <dcp dir>`: every item read, its zip entries' CRC-32s and its tensor checked
/// against the metadata; exit code 1 when anything is wrong.
pub fn verify(path: &Path, as_json: bool, out: &mut Out) -> anyhow::Result<ExitCode> {
    let (problems, tensors) = match DcpReader::open(path) {
        Ok(reader) => {
            let problems: Vec<(String, String)> = reader
                .verify()
                .into_iter()
                .map(|p| (p.fqn, p.message))
                .collect();
            (problems, reader.metadata().tensors.len())
        }
        Err(e) => (vec![(String::new(), e.to_string())], 0),
    };
    if as_json {
        let list: Vec<Value> = problems
            .iter()
            .map(|(fqn, message)| json!({"tensor": fqn, "message": message}))
            .collect();
        let value = json!({
            "path": path.display().to_string(),
            "format": "torch-dcp",
            "ok": problems.is_empty(),
            "problems": list,
        });
        writeln!(out, "{value}")?;
    } else {
        for (_, message) in &problems {
            writeln!(out, "{}", safe(message))?;
        }
        let ok = format!(
            "{} read back and checked (torch DCP)",
            count(tensors, "tensor")
        );
        write_verdict(out, problems.len(), &ok, "")?;
    }
    Ok(problem_exit(problems.is_empty()))
}
