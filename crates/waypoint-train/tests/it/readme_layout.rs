//! The README's "What appears on disk" block against what a default run of the trainer writes:
//! every file the run leaves is named there, and every file named there is written (checkpoint
//! names by their shape, since the values differ).

use crate::common::trainer;
use std::path::{Path, PathBuf};

/// The README's layout block (between "What appears on disk:" and the end of the block).
fn readme_block() -> String {
    let readme = std::fs::read_to_string(test_python::repo_root().join("README.md")).unwrap();
    let from = readme
        .find("What appears on disk:")
        .expect("the README's layout paragraph");
    let start = from + readme[from..].find("```text\n").unwrap() + 8;
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// How the README names `file` (relative to the run's directory).
fn readme_name(file: &Path) -> String {
    let parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [dir, _checkpoint, rest @ ..] if dir == "checkpoints" => rest.join("/"),
        [dir, name] if dir == "tensorboard" && name.starts_with("events.out.tfevents.") => {
            "tensorboard/events.out.tfevents.…".to_owned()
        }
        _ => parts.join("/"),
    }
}

/// Whether `name` has the shape of the trainer's checkpoint names.
fn checkpoint_shaped(name: &str) -> bool {
    let rest = name.strip_prefix("default--val_loss=").unwrap_or("");
    let rest = rest.strip_suffix("-last").unwrap_or(rest);
    let fields: Vec<&str> = rest.split('-').collect();
    fields.len() == 3
        && fields[0].len() == 6
        && fields[0].parse::<f64>().is_ok()
        && fields[1]
            .strip_prefix("epoch=")
            .is_some_and(|e| e.parse::<u64>().is_ok())
        && fields[2]
            .strip_prefix("step=")
            .is_some_and(|s| s.parse::<u64>().is_ok())
}

#[test]
fn the_readmes_layout_is_what_a_default_run_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = trainer(tmp.path(), &["--max-steps", "500", "--hidden", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("default");
    let block = readme_block();
    let tokens: Vec<&str> = block.split_whitespace().collect();

    let written: Vec<String> = files(&run).iter().map(|f| readme_name(f)).collect();
    for name in &written {
        assert!(
            tokens.contains(&name.as_str()),
            "the run wrote {name}, the README does not say"
        );
    }
    for checkpoint in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let name = checkpoint
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            checkpoint_shaped(&name),
            "checkpoint {name} is not named as the README shows"
        );
    }
    // The other way: every file the block names (the tokens with a dot; checkpoint names and
    // elisions aside) is written.
    for file in tokens
        .iter()
        .filter(|t| t.contains('.') && !t.contains('=') && !t.ends_with('…'))
    {
        assert!(
            written.iter().any(|w| w == file),
            "the README names {file}; the run did not write it (wrote {written:?})"
        );
    }
    // checkpoints.csv names each checkpoint relative to the run's directory.
    let saved = std::fs::read_to_string(run.join("csv/checkpoints.csv")).unwrap();
    let paths: Vec<&str> = saved
        .lines()
        .skip(1)
        .map(|r| r.split(',').nth(1).unwrap())
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("checkpoints/")),
        "{saved}"
    );
    for kept in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let kept = format!(
            "checkpoints/{}",
            kept.unwrap().file_name().to_string_lossy()
        );
        assert!(
            paths.contains(&kept.as_str()),
            "{kept} is not in checkpoints.csv: {saved}"
        );
    }
    for token in tokens.iter().filter(|t| t.starts_with("default--")) {
        assert!(
            checkpoint_shaped(token),
            "the README's {token} is not the trainer's naming"
        );
    }
}
