//! The run files global rank 0 leaves in the version directory: `cmd-args.log`, `git-info.log`,
//! `hparams.yaml`, copies of `files_to_copy`; and, before writing them, the loose files of an
//! earlier run in the same directory moved into `run_<N>/` (NeMo's behaviour), gathered in a
//! hidden `.run_<N>.moving/` first so that a crash never splits one run's files. Only files waypoint
//! knows as run files move; `checkpoints/`, logger output, the lock and anything else stay.
//!
//! It owns these files' names, contents and the move; `setup.rs` decides when they are written and
//! that only global rank 0 writes them. It must never delete a file, and it only reads the user's
//! git (`GIT_OPTIONAL_LOCKS=0`: no index lock taken).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `" ".join(argv)`, as NeMo writes it.
pub const CMD_ARGS_FILE: &str = "cmd-args.log";
/// The commit and the uncommitted diff of the work tree the run started in.
pub const GIT_INFO_FILE: &str = "git-info.log";
/// The hyper-parameters, as YAML; loggers reuse this file.
pub const HPARAMS_FILE: &str = "hparams.yaml";
/// Prefix of the per-rank text logs `log_globalrank-G_localrank-L.txt` (and `.err.txt`).
pub const LOG_FILE_PREFIX: &str = "log_globalrank-";
/// Prefix of the directories earlier runs' loose files are moved into (`run_0`, `run_1`, …).
pub const RUN_DIR_PREFIX: &str = "run_";
/// Largest `git diff` kept in `git-info.log`; a longer one is cut with a note.
const MAX_DIFF_BYTES: usize = 16 << 20;

/// The text log and error log of a rank.
pub(crate) fn log_file_names(global: u64, local: u64) -> (String, String) {
    let stem = format!("{LOG_FILE_PREFIX}{global}_localrank-{local}");
    (format!("{stem}.txt"), format!("{stem}.err.txt"))
}

/// Whether `name` is a loose file of a run: one of ours, or one of `copied`.
fn is_run_file(name: &str, copied: &[String]) -> bool {
    [CMD_ARGS_FILE, GIT_INFO_FILE, HPARAMS_FILE].contains(&name)
        || (name.starts_with(LOG_FILE_PREFIX) && name.ends_with(".txt"))
        || copied.iter().any(|c| c == name)
}

/// The next `run_<N>`: one above the highest existing, from 0.
fn next_run_dir(names: &[String]) -> String {
    let next = names
        .iter()
        .filter_map(|n| n.strip_prefix(RUN_DIR_PREFIX)?.parse::<u64>().ok())
        .max()
        .map_or(0, |n| n + 1);
    format!("{RUN_DIR_PREFIX}{next}")
}

/// The hidden directory an earlier run's files are gathered in before it becomes `run_<N>/`.
fn moving_dir(run_dir: &str) -> String {
    format!(".{run_dir}{MOVING_SUFFIX}")
}

/// Suffix of [`moving_dir`]s.
const MOVING_SUFFIX: &str = ".moving";

/// Moves the loose run files of an earlier run in `dir` into a new `run_<N>/`. Returns that
/// directory, or `None` when there was nothing to move. The files are gathered in a hidden
/// `.run_<N>.moving/` first, renamed to `run_<N>/` once all are in: a move a crash interrupted
/// is finished by the next call (the files still loose join those already gathered), so one
/// run's files never end up split over two `run_<N>/`.
pub(crate) fn move_earlier_run(dir: &Path, copied: &[String]) -> Result<Option<PathBuf>> {
    let mut names = Vec::new();
    let mut loose = Vec::new();
    let mut interrupted = None;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let file_type = entry.file_type().ok();
        if file_type.is_some_and(|t| t.is_file()) && is_run_file(&name, copied) {
            loose.push(name.clone());
        }
        let run_dir = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(MOVING_SUFFIX))
            .filter(|n| n.starts_with(RUN_DIR_PREFIX));
        if let Some(run_dir) = run_dir
            && file_type.is_some_and(|t| t.is_dir())
        {
            interrupted = Some(run_dir.to_owned());
        }
        names.push(name);
    }
    let run_dir = match interrupted {
        Some(run_dir) => run_dir,
        None if loose.is_empty() => return Ok(None),
        None => next_run_dir(&names),
    };
    let gathering = dir.join(moving_dir(&run_dir));
    if !gathering.is_dir() {
        std::fs::create_dir(&gathering)
            .map_err(|e| Error::io("create directory", &gathering, e))?;
    }
    crate::storage::abort_point("run-dir-created");
    loose.sort();
    for name in &loose {
        let from = dir.join(name);
        std::fs::rename(&from, gathering.join(name)).map_err(|e| Error::io("move", &from, e))?;
        crate::storage::abort_point("run-file-moved");
    }
    let target = dir.join(&run_dir);
    std::fs::rename(&gathering, &target).map_err(|e| Error::io("move", &gathering, e))?;
    Ok(Some(target))
}

/// Writes `bytes` to `dir/name` (replacing it).
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io("write", &path, e))?;
    Ok(path)
}

/// `cmd-args.log`'s content: the arguments joined with spaces, and a newline.
pub(crate) fn cmd_args(args: impl IntoIterator<Item = String>) -> String {
    let mut line = args.into_iter().collect::<Vec<_>>().join(" ");
    line.push('\n');
    line
}

/// The commit checked out in the git work tree around `cwd`, if any (for the MLflow run's
/// `mlflow.source.git.commit` tag).
pub(crate) fn git_commit(cwd: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(cwd)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sha = String::from_utf8_lossy(out.stdout.trim_ascii()).into_owned();
    (!sha.is_empty()).then_some(sha)
}

/// `git-info.log`'s content for a run started in `cwd`: `commit hash: <sha>` and the output of
/// `git diff HEAD` (staged and unstaged changes) when `cwd` is inside a git work tree; otherwise
/// one line saying why there is none. Never fails: a missing git is said in the file.
pub(crate) fn git_info(cwd: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            // Never take the index lock: a status refresh must not disturb the user's git.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
    };
    match git(&["rev-parse", "--is-inside-work-tree"]) {
        Err(e) => return format!("git is not available: {e}\n"),
        Ok(out) if !out.status.success() || out.stdout.trim_ascii() != b"true" => {
            return format!(
                "not inside a git work tree ({}): no commit recorded\n",
                cwd.display()
            );
        }
        Ok(_) => {}
    }
    let head = git(&["rev-parse", "HEAD"])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(o.stdout.trim_ascii()).into_owned());
    let mut text = match &head {
        Some(sha) => format!("commit hash: {sha}\n"),
        None => "commit hash: none (no commit yet)\n".to_owned(),
    };
    let diff = if head.is_some() {
        git(&["diff", "HEAD"])
    } else {
        git(&["diff"])
    };
    match diff {
        Ok(out) if out.status.success() => {
            let cut = out.stdout.len() > MAX_DIFF_BYTES;
            text.push_str(&String::from_utf8_lossy(
                &out.stdout[..out.stdout.len().min(MAX_DIFF_BYTES)],
            ));
            if cut {
                text.push_str(&format!(
                    "\n[git diff cut at {MAX_DIFF_BYTES} bytes of {}]\n",
                    out.stdout.len()
                ));
            }
        }
        Ok(out) => text.push_str(&format!(
            "git diff failed: {}\n",
            String::from_utf8_lossy(out.stderr.trim_ascii())
        )),
        Err(e) => text.push_str(&format!("git diff failed: {e}\n")),
    }
    text
}

/// Copies each of `files` into `dir` under its file name, unless a file of that name is
/// already there.
pub(crate) fn copy_files(dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut copied = Vec::new();
    for file in files {
        let Some(name) = file.file_name() else {
            continue; // refused by the builder
        };
        let target = dir.join(name);
        if target.exists() {
            continue;
        }
        std::fs::copy(file, &target).map_err(|e| Error::io("copy files_to_copy", file, e))?;
        copied.push(target);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_files_and_run_dirs() {
        let copied = vec!["train.yaml".to_owned()];
        let table = [
            ("cmd-args.log", true),
            ("git-info.log", true),
            ("hparams.yaml", true),
            ("log_globalrank-0_localrank-0.txt", true),
            ("log_globalrank-3_localrank-1.err.txt", true),
            ("train.yaml", true),
            (".waypoint.lock", false),
            ("events.out.tfevents.1.host", false),
            ("metrics.csv", false),
            ("notes.txt", false),
        ];
        for (name, want) in table {
            assert_eq!(is_run_file(name, &copied), want, "{name}");
        }
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(next_run_dir(&names(&["checkpoints"])), "run_0");
        assert_eq!(next_run_dir(&names(&["run_0", "run_x", "run_4"])), "run_5");
    }

    #[test]
    fn earlier_run_files_move_and_the_rest_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in [
            "cmd-args.log",
            "log_globalrank-0_localrank-0.txt",
            "notes.txt",
            ".waypoint.lock",
        ] {
            std::fs::write(d.join(f), f).unwrap();
        }
        std::fs::create_dir(d.join("checkpoints")).unwrap();
        let moved = move_earlier_run(d, &[]).unwrap().unwrap();
        assert_eq!(moved, d.join("run_0"));
        let mut inside: Vec<String> = std::fs::read_dir(&moved)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        inside.sort();
        assert_eq!(inside, ["cmd-args.log", "log_globalrank-0_localrank-0.txt"]);
        for f in ["notes.txt", ".waypoint.lock", "checkpoints"] {
            assert!(d.join(f).exists(), "{f}");
        }
        assert_eq!(
            move_earlier_run(d, &[]).unwrap(),
            None,
            "nothing left to move"
        );
    }

    #[test]
    fn a_move_a_crash_interrupted_is_finished_into_the_same_run_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        // run_0 done; the next move crashed after gathering one file in .run_1.moving.
        std::fs::create_dir_all(d.join("run_0")).unwrap();
        std::fs::create_dir_all(d.join(".run_1.moving")).unwrap();
        std::fs::write(d.join(".run_1.moving/cmd-args.log"), "a").unwrap();
        std::fs::write(d.join("hparams.yaml"), "b").unwrap();
        let moved = move_earlier_run(d, &[]).unwrap().unwrap();
        assert_eq!(moved, d.join("run_1"));
        assert!(moved.join("cmd-args.log").is_file() && moved.join("hparams.yaml").is_file());
        assert!(!d.join(".run_1.moving").exists());
        assert_eq!(move_earlier_run(d, &[]).unwrap(), None);
    }

    #[test]
    fn git_info_outside_a_work_tree_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let text = git_info(tmp.path());
        assert!(
            text.starts_with("not inside a git work tree")
                || text.starts_with("git is not available"),
            "{text}"
        );
    }
}
