//! `waypoint verify`: checks everything about a checkpoint with `Checkpointer::verify` (the
//! record, the `weights/` listing, every shard header, every block checksum) and reports each
//! problem on its own line, or as JSON. A progress bar goes to stderr for large checkpoints when
//! stderr is a terminal. It reports; it never repairs.

use crate::cli::{CheckpointLocation, VerifyConfig, problem_exit};
use crate::output::{Out, count, human_bytes, write_verdict};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use waypoint::format::{CommitRecord, WEIGHTS_DIR};
use waypoint::storage::{EntryKind, SharedStorage, open_dir};
use waypoint::{Checkpointer, Error};

/// A progress bar is shown only above this much tensor data (64 MiB).
const PROGRESS_THRESHOLD: u64 = 64 << 20;

/// Runs `waypoint verify`: exit code 0 when intact, 1 when any problem is found or verification
/// cannot start (no valid commit record).
pub fn run(config: &VerifyConfig, out: &mut Out) -> anyhow::Result<ExitCode> {
    let location = &config.checkpoint;
    let storage = open_dir(&location.root)
        .with_context(|| format!("cannot use directory {}", location.root.display()))?;
    let progress = progress_bar(location, &storage);
    let result = Checkpointer::new(storage).verify(&location.dir, &mut |checked| {
        if let Some(bar) = &progress {
            bar.set_position(checked);
        }
    });
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let (problems, bytes_checked, tensors) = match &result {
        Ok(report) => {
            let names = TensorNames::new(&report.record);
            let problems: Vec<Problem> = report
                .problems
                .iter()
                .map(|e| Problem::describe(e, &names))
                .collect();
            (problems, report.bytes_checked, report.record.tensors.len())
        }
        Err(e) => (vec![Problem::describe(e, &TensorNames::default())], 0, 0),
    };
    if config.json {
        let value = json!({
            "path": location.path.display().to_string(),
            "ok": problems.is_empty(),
            "problems": problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
            "bytes_checked": bytes_checked,
        });
        writeln!(out, "{value}")?;
    } else {
        for problem in &problems {
            writeln!(out, "{}", crate::output::safe(&problem.message))?;
        }
        let ok = format!(
            "{}, {bytes_checked} bytes verified ({})",
            count(tensors, "tensor"),
            human_bytes(bytes_checked)
        );
        let why = if result.is_err() {
            " (verification could not start)"
        } else {
            ""
        };
        write_verdict(out, problems.len(), &ok, why)?;
    }
    Ok(problem_exit(problems.is_empty()))
}

/// Whether to draw a progress bar: on a terminal, for more than [`PROGRESS_THRESHOLD`] bytes.
fn wants_progress(stderr_is_terminal: bool, total_bytes: u64) -> bool {
    stderr_is_terminal && total_bytes > PROGRESS_THRESHOLD
}

/// A progress bar over the checkpoint's tensor bytes, when [`wants_progress`] says so. The shard
/// sizes in the storage's listing decide cheaply whether the checkpoint is large; only then is
/// the record read for the exact total. Any failure means no bar: verification reports it.
fn progress_bar(location: &CheckpointLocation, storage: &SharedStorage) -> Option<ProgressBar> {
    let stderr_is_terminal = std::io::stderr().is_terminal();
    if !stderr_is_terminal {
        return None;
    }
    let weights = location.dir.join(WEIGHTS_DIR).ok()?;
    let on_disk: u64 = storage
        .list(&weights)
        .ok()?
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    if !wants_progress(stderr_is_terminal, on_disk) {
        return None;
    }
    // The shards' sizes stand for the tensor bytes (they add only the headers): the record is
    // parsed once, by the verification itself.
    let bar = ProgressBar::with_draw_target(Some(on_disk), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Finds the tensor a checksum error is about: the library names it as `tensor "<name>"`
/// (Rust's debug quoting), so the exact text is looked up rather than unquoted.
#[derive(Default)]
struct TensorNames(HashMap<String, String>);

impl TensorNames {
    fn new(record: &CommitRecord) -> Self {
        TensorNames(
            record
                .tensors
                .keys()
                .map(|name| (format!("tensor {name:?}"), name.clone()))
                .collect(),
        )
    }

    fn find(&self, what: &str) -> Option<String> {
        self.0.get(what).cloned()
    }
}

/// One problem, with what can be extracted from the library's error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// A stable, snake_case name of the kind of problem.
    kind: &'static str,
    /// The library's message, which names the file.
    message: String,
    /// The file concerned.
    file: Option<PathBuf>,
    /// The tensor concerned.
    tensor: Option<String>,
    /// The damaged bytes, `[start, end)` in the file.
    byte_range: Option<[u64; 2]>,
}

impl Problem {
    fn describe(err: &Error, names: &TensorNames) -> Self {
        let mut problem = Problem {
            kind: "other",
            message: err.to_string(),
            file: None,
            tensor: None,
            byte_range: None,
        };
        let (kind, file) = match err {
            Error::Checksum {
                path,
                what,
                start,
                end,
                ..
            } => {
                problem.tensor = names.find(what);
                problem.byte_range = Some([*start, *end]);
                ("checksum", Some(path.clone()))
            }
            Error::ShardSize { path, .. } => ("shard_size", Some(path.clone())),
            Error::NotFound { path } => ("not_found", Some(path.clone())),
            Error::UnexpectedFile { path, file } => ("unexpected_file", Some(path.join(file))),
            Error::InvalidRecord { path, .. } => ("invalid_record", Some(path.clone())),
            Error::UnsupportedVersion { path, .. } => ("unsupported_version", Some(path.clone())),
            Error::InvalidShard { path, .. } => ("invalid_shard", Some(path.clone())),
            Error::SymlinkRefused { path } => ("symlink_refused", Some(path.clone())),
            Error::Io { path, .. } => ("io", Some(path.clone())),
            _ => ("other", None),
        };
        problem.kind = kind;
        problem.file = file;
        problem
    }

    fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "message": self.message,
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "tensor": self.tensor,
            "byte_range": self.byte_range,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn names(list: &[&str]) -> TensorNames {
        TensorNames(
            list.iter()
                .map(|n| (format!("tensor {n:?}"), (*n).to_owned()))
                .collect(),
        )
    }

    /// An error and the kind, file, tensor and byte range expected from it.
    type Case = (
        Error,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<[u64; 2]>,
    );

    #[test]
    fn problems_carry_file_tensor_and_range() {
        let names = names(&["a.weight", "odd \"name\"\n"]);
        let shard = Path::new("/ck/weights/__0_0.safetensors");
        let cases: Vec<Case> = vec![
            (
                Error::Checksum {
                    path: shard.into(),
                    what: "tensor \"a.weight\"".into(),
                    start: 4096,
                    end: 5120,
                    expected: 1,
                    actual: 2,
                },
                "checksum",
                Some("/ck/weights/__0_0.safetensors"),
                Some("a.weight"),
                Some([4096, 5120]),
            ),
            (
                Error::Checksum {
                    path: shard.into(),
                    what: format!("tensor {:?}", "odd \"name\"\n"),
                    start: 0,
                    end: 1,
                    expected: 1,
                    actual: 2,
                },
                "checksum",
                Some("/ck/weights/__0_0.safetensors"),
                Some("odd \"name\"\n"),
                Some([0, 1]),
            ),
            (
                Error::Checksum {
                    path: shard.into(),
                    what: "safetensors header".into(),
                    start: 0,
                    end: 4096,
                    expected: 1,
                    actual: 2,
                },
                "checksum",
                Some("/ck/weights/__0_0.safetensors"),
                None,
                Some([0, 4096]),
            ),
            (
                Error::ShardSize {
                    path: shard.into(),
                    expected: 1,
                    actual: 2,
                },
                "shard_size",
                Some("/ck/weights/__0_0.safetensors"),
                None,
                None,
            ),
            (
                Error::UnexpectedFile {
                    path: "/ck/weights".into(),
                    file: "stray".into(),
                },
                "unexpected_file",
                Some("/ck/weights/stray"),
                None,
                None,
            ),
            (
                Error::NotFound { path: shard.into() },
                "not_found",
                Some("/ck/weights/__0_0.safetensors"),
                None,
                None,
            ),
            (
                Error::WorkerPanicked { what: "x".into() },
                "other",
                None,
                None,
                None,
            ),
        ];
        for (err, kind, file, tensor, range) in cases {
            let p = Problem::describe(&err, &names);
            assert_eq!(p.kind, kind, "{err}");
            assert_eq!(p.file.as_deref(), file.map(Path::new), "{err}");
            assert_eq!(p.tensor.as_deref(), tensor, "{err}");
            assert_eq!(p.byte_range, range, "{err}");
            assert_eq!(p.message, err.to_string());
        }
    }

    #[test]
    fn progress_only_for_large_data_on_a_terminal() {
        assert!(!wants_progress(false, u64::MAX));
        assert!(!wants_progress(true, PROGRESS_THRESHOLD));
        assert!(wants_progress(true, PROGRESS_THRESHOLD + 1));
    }
}
