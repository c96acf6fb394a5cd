//! `waypoint show`: describes a committed checkpoint from its commit record (step, files,
//! trainer state, tensors, whether the policy keeps it for good), as text or as one JSON object. It opens the checkpoint with
//! `Checkpointer::open`, which validates the record and the `weights/` listing; it reads no
//! tensor data and no shard header (that is `verify`'s job).

use crate::cli::ShowConfig;
use crate::output::{Out, Style, count, human_bytes, safe, shape, truncate};
use anyhow::Context;
use serde_json::{Value, json};
use std::process::ExitCode;
use waypoint::Checkpointer;
use waypoint::format::{CommitRecord, TensorEntry};
use waypoint::policy::PermanentKeep;
use waypoint::storage::open_dir;

/// Values of the user's trainer state are cut to this many characters in the text summary.
const VALUE_CHARS: usize = 60;
/// The text summary lists at most this many top-level keys of the user's trainer state.
const MAX_USER_KEYS: usize = 20;

/// Runs `waypoint show`. An invalid checkpoint is an error naming the file (exit code 1).
pub fn run(config: &ShowConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    let location = &config.checkpoint;
    let storage = open_dir(&location.root)
        .with_context(|| format!("cannot use directory {}", location.root.display()))?;
    let reader = Checkpointer::new(storage)
        .open(&location.dir)
        .with_context(|| format!("{} is not a valid checkpoint", location.path.display()))?;
    let record = reader.record();
    let name = location.dir.as_str().rsplit('/').next().unwrap_or_default();
    let kept = kept_for_good(record, name);
    if config.json {
        let mut value = to_json(record)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("path".into(), json!(location.path.display().to_string()));
            object.insert("kept_for_good".into(), json!(kept));
        }
        writeln!(out, "{value}")?;
    } else {
        print_text(record, &location.path.display().to_string(), out)?;
        if let Some(rule) = kept {
            let label = out.paint(Style::Bold, format!("{:<15}", "kept for good"));
            writeln!(out, "{label}{rule} (rotation never deletes it)")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule that keeps checkpoint `name` for good (`keep_every_n_steps`, `keep_time_interval`,
/// `save_now`), from the policy state in its own record, which names every permanent keep
/// (docs/FORMAT.md); `None` for a checkpoint the rotation may delete, or a record without it.
fn kept_for_good(record: &CommitRecord, name: &str) -> Option<&'static str> {
    let state = record.trainer_state.waypoint.model_checkpoint.as_ref()?;
    let keep = state.get("permanent")?.get(name)?.clone();
    let keep: PermanentKeep = serde_json::from_value(keep).ok()?;
    Some(keep.reason.as_str())
}

/// The bytes of tensor `name`: the sum of its chunks' byte ranges, checked.
fn tensor_bytes(name: &str, tensor: &TensorEntry) -> anyhow::Result<u64> {
    tensor.chunks.iter().try_fold(0u64, |sum, c| {
        sum.checked_add(c.byte_len()).with_context(|| {
            format!("the chunks of tensor {name:?} add up to more than 2^64 bytes")
        })
    })
}

/// The bytes of every tensor, checked.
fn total_bytes(record: &CommitRecord) -> anyhow::Result<u64> {
    record.tensors.iter().try_fold(0u64, |sum, (name, t)| {
        sum.checked_add(tensor_bytes(name, t)?)
            .with_context(|| format!("the tensors up to {name:?} add up to more than 2^64 bytes"))
    })
}

/// The bytes of every shard file, checked.
fn file_bytes(record: &CommitRecord) -> anyhow::Result<u64> {
    record.files.iter().try_fold(0u64, |sum, (name, f)| {
        sum.checked_add(f.size)
            .with_context(|| format!("the files up to {name:?} add up to more than 2^64 bytes"))
    })
}

/// The ranks that wrote a tensor's chunks, in order, without repeats.
fn tensor_ranks(record: &CommitRecord, tensor: &TensorEntry) -> Vec<u64> {
    let ranks: std::collections::BTreeSet<u64> = tensor
        .chunks
        .iter()
        .filter_map(|c| record.files.get(&c.file).map(|f| f.rank))
        .collect();
    ranks.into_iter().collect()
}

/// Per rank: (rank, files, file bytes, chunks).
fn per_rank(record: &CommitRecord) -> anyhow::Result<Vec<(u64, usize, u64, usize)>> {
    let mut ranks: std::collections::BTreeMap<u64, (usize, u64, usize)> = Default::default();
    for (name, file) in &record.files {
        let entry = ranks.entry(file.rank).or_default();
        entry.0 += 1;
        entry.1 = entry.1.checked_add(file.size).with_context(|| {
            format!(
                "the files of rank {} up to {name:?} add up to more than 2^64 bytes",
                file.rank
            )
        })?;
    }
    for chunk in record.tensors.values().flat_map(|t| &t.chunks) {
        if let Some(file) = record.files.get(&chunk.file) {
            ranks.entry(file.rank).or_default().2 += 1;
        }
    }
    Ok(ranks
        .into_iter()
        .map(|(rank, (files, bytes, chunks))| (rank, files, bytes, chunks))
        .collect())
}

/// `0-3`, `0,2,5`: a compact list of ranks.
fn rank_list(ranks: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if j >= i + 2 {
            format!("{}-{}", ranks[i], ranks[j])
        } else if j == i + 1 {
            format!("{},{}", ranks[i], ranks[j])
        } else {
            ranks[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The JSON description (docs/CLI.md lists its keys; they are stable).
fn to_json(record: &CommitRecord) -> anyhow::Result<Value> {
    let files: Vec<Value> = record
        .files
        .iter()
        .map(|(name, file)| {
            let mut entry = json!({"name": name, "rank": file.rank, "size": file.size});
            if let Some(from) = &file.carried_from {
                entry["carried_from"] = json!({"checkpoint": from.checkpoint, "file": from.file});
            }
            entry
        })
        .collect();
    let tensors = record
        .tensors
        .iter()
        .map(|(name, t)| {
            Ok(json!({
                "name": name,
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "chunks": t.chunks.len(),
                "bytes": tensor_bytes(name, t)?,
                "ranks": tensor_ranks(record, t),
            }))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    let ranks: Vec<Value> = per_rank(record)?
        .into_iter()
        .map(|(rank, files, bytes, chunks)| {
            json!({"rank": rank, "files": files, "bytes": bytes, "chunks": chunks})
        })
        .collect();
    Ok(json!({
        "step": record.step,
        "epoch": record.epoch,
        "world_size": record.world_size,
        "format_version": record.format_version,
        "producer": record.producer,
        "block_size": record.block_size,
        "files": files,
        "ranks": ranks,
        "tensors": tensors,
        "total_bytes": total_bytes(record)?,
        "trainer_state": {
            "user": record.trainer_state.user,
            "waypoint": record.trainer_state.waypoint,
        },
    }))
}

fn print_text(record: &CommitRecord, path: &str, out: &mut Out) -> anyhow::Result<()> {
    let file_bytes = file_bytes(record)?;
    let label = |out: &Out, text: &'static str| out.paint(Style::Bold, format!("{text:<15}"));
    writeln!(out, "{}{}", label(out, "checkpoint"), safe(path))?;
    writeln!(out, "{}{}", label(out, "step"), record.step)?;
    writeln!(out, "{}{}", label(out, "epoch"), record.epoch)?;
    writeln!(out, "{}{}", label(out, "world size"), record.world_size)?;
    writeln!(
        out,
        "{}{}",
        label(out, "format version"),
        record.format_version
    )?;
    writeln!(out, "{}{}", label(out, "producer"), safe(&record.producer))?;
    writeln!(
        out,
        "{}{}",
        label(out, "block size"),
        human_bytes(record.block_size)
    )?;
    writeln!(
        out,
        "{}{}, {} ({} bytes)",
        label(out, "files"),
        record.files.len(),
        human_bytes(file_bytes),
        file_bytes
    )?;
    let carried: Vec<_> = record
        .files
        .values()
        .filter(|f| f.carried_from.is_some())
        .collect();
    if !carried.is_empty() {
        let bytes: u64 = carried.iter().map(|f| f.size).sum();
        let mut from: Vec<&str> = carried
            .iter()
            .filter_map(|f| f.carried_from.as_ref().map(|c| c.checkpoint.as_str()))
            .collect();
        from.dedup();
        writeln!(
            out,
            "  carried over {}, {} (linked or copied from {}, not written again)",
            count(carried.len(), "file"),
            human_bytes(bytes),
            safe(&from.join(", "))
        )?;
    }
    if record.world_size > 1 {
        // Which rank wrote what.
        for (rank, files, bytes, chunks) in per_rank(record)? {
            writeln!(
                out,
                "  rank {rank:<8} {}, {}, {}",
                count(files, "file"),
                human_bytes(bytes),
                count(chunks, "chunk")
            )?;
        }
    }
    print_trainer_state(record, out)?;
    print_tensors(record, out)
}

fn print_trainer_state(record: &CommitRecord, out: &mut Out) -> anyhow::Result<()> {
    let state = &record.trainer_state;
    write!(out, "{}", out.paint(Style::Bold, "user state     "))?;
    match &state.user {
        Value::Null => writeln!(out, "(none)")?,
        Value::Object(map) if map.is_empty() => writeln!(out, "{{}}")?,
        Value::Object(map) => {
            writeln!(out, "{}", count(map.len(), "key"))?;
            let width = map
                .keys()
                .take(MAX_USER_KEYS)
                .map(|k| safe(k).chars().count())
                .max()
                .unwrap_or(0);
            for (key, value) in map.iter().take(MAX_USER_KEYS) {
                let key = safe(key);
                let pad = width.saturating_sub(key.chars().count());
                writeln!(out, "  {key}{:pad$}  {}", "", short(value))?;
            }
            if map.len() > MAX_USER_KEYS {
                let more = map.len() - MAX_USER_KEYS;
                writeln!(out, "  ... {} more (see --json)", count(more, "key"))?;
            }
        }
        other => writeln!(out, "{}", short(other))?,
    }
    write!(out, "{}", out.paint(Style::Bold, "waypoint state "))?;
    if state.waypoint.is_empty() {
        writeln!(out, "(none)")?;
    } else {
        let keys: Vec<String> = state
            .waypoint
            .keys()
            .into_iter()
            .map(|k| safe(k).into_owned())
            .collect();
        writeln!(out, "keys: {}", keys.join(", "))?;
    }
    Ok(())
}

/// One JSON value on one line, at most [`VALUE_CHARS`] characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    truncate(&safe(&text), VALUE_CHARS).into_owned()
}

fn print_tensors(record: &CommitRecord, out: &mut Out) -> anyhow::Result<()> {
    struct Row {
        name: String,
        dtype: String,
        shape: String,
        chunks: String,
        bytes: String,
        ranks: String,
    }
    let many = record.world_size > 1;
    // BTreeMap order: sorted by name.
    let rows = record
        .tensors
        .iter()
        .map(|(name, t)| {
            Ok(Row {
                name: safe(name).into_owned(),
                dtype: t.dtype.to_string(),
                shape: shape(&t.shape),
                chunks: t.chunks.len().to_string(),
                bytes: human_bytes(tensor_bytes(name, t)?),
                ranks: if many {
                    rank_list(&tensor_ranks(record, t))
                } else {
                    String::new()
                },
            })
        })
        .collect::<anyhow::Result<Vec<Row>>>()?;
    let total = total_bytes(record)?;
    let header = Row {
        name: "NAME".into(),
        dtype: "DTYPE".into(),
        shape: "SHAPE".into(),
        chunks: "CHUNKS".into(),
        bytes: "BYTES".into(),
        ranks: if many { "RANKS".into() } else { String::new() },
    };
    let footer = Row {
        name: format!("total ({})", count(rows.len(), "tensor")),
        dtype: String::new(),
        shape: String::new(),
        chunks: String::new(),
        bytes: human_bytes(total),
        ranks: String::new(),
    };
    let width = |f: fn(&Row) -> &str| {
        rows.iter()
            .chain([&header, &footer])
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
    };
    let w_name = width(|r| &r.name);
    let w_dtype = width(|r| &r.dtype);
    let w_shape = width(|r| &r.shape);
    let w_chunks = width(|r| &r.chunks);
    let w_bytes = width(|r| &r.bytes);
    let line = |r: &Row| {
        // Names may hold multi-byte characters: pad by characters, not bytes.
        let pad = w_name.saturating_sub(r.name.chars().count());
        let text = format!(
            "{}{:pad$}  {:<w_dtype$}  {:<w_shape$}  {:>w_chunks$}  {:>w_bytes$}  {}",
            r.name, "", r.dtype, r.shape, r.chunks, r.bytes, r.ranks
        );
        text.trim_end().to_owned()
    };
    writeln!(out)?;
    writeln!(out, "{}", out.paint(Style::Bold, line(&header)))?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(
        out,
        "{} {}",
        out.paint(Style::Bold, line(&footer)),
        out.paint(Style::Dim, format!("({total} bytes)"))
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypoint::format::{ChunkEntry, FileEntry, TrainerState};

    /// A record no reader would accept (it is not validated here): sizes that add up past 2^64.
    fn overflowing() -> CommitRecord {
        let file = |size| FileEntry {
            rank: 0,
            size,
            header_len: 4096,
            header_crc32c: 0,
            carried_from: None,
        };
        let chunk = |file: &str, start: u64| ChunkEntry {
            offsets: vec![0],
            sizes: vec![1 << 63],
            file: file.into(),
            byte_range: [start, start + (1 << 63)],
            block_crc32c: Vec::new(),
        };
        let big = |file: &str| TensorEntry {
            dtype: waypoint::Dtype::U8,
            shape: vec![1 << 63],
            chunks: vec![chunk(file, 4096)],
        };
        CommitRecord {
            format: "waypoint-checkpoint".into(),
            format_version: 1,
            producer: "test".into(),
            step: 1,
            epoch: 0,
            world_size: 2,
            block_size: 1 << 30,
            files: [
                ("__0_0.safetensors".to_owned(), file(u64::MAX - 1)),
                ("__0_1.safetensors".to_owned(), file(u64::MAX - 1)),
            ]
            .into(),
            tensors: [
                ("a".to_owned(), big("__0_0.safetensors")),
                ("b".to_owned(), big("__0_1.safetensors")),
            ]
            .into(),
            trainer_state: TrainerState::default(),
        }
    }

    #[test]
    fn sizes_that_overflow_are_an_error_naming_the_file_or_tensor() {
        let record = overflowing();
        let err = to_json(&record).unwrap_err().to_string();
        assert!(err.contains("__0_1.safetensors"), "{err}");
        assert!(err.contains("2^64"), "{err}");
        let mut out = Out::stdout();
        let err = print_text(&record, "ck", &mut out).unwrap_err().to_string();
        assert!(
            err.contains("__0_1.safetensors") && err.contains("2^64"),
            "{err}"
        );
        let err = total_bytes(&record).unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn rank_lists_are_compact() {
        let table: &[(&[u64], &str)] = &[
            (&[], ""),
            (&[0], "0"),
            (&[0, 1], "0,1"),
            (&[0, 1, 2, 3], "0-3"),
            (&[0, 2, 3, 4, 7], "0,2-4,7"),
            (&[1, 2, 5, 6], "1,2,5,6"),
        ];
        for (ranks, want) in table {
            assert_eq!(rank_list(ranks), *want, "{ranks:?}");
        }
    }
}
