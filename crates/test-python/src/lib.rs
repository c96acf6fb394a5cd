//! Test support shared by the workspace's interop tests: where the Python interpreter of the
//! pinned test virtual environment is. `scripts/test.sh` creates the environment and sets
//! `WAYPOINT_PYTHON`; a test run without it finds the single `venv-*` in the cache, and otherwise
//! fails saying what to run: interop tests never skip silently.

use std::path::PathBuf;

/// The interpreter: `WAYPOINT_PYTHON`, or the single `venv-*/bin/python` in
/// `${WAYPOINT_CACHE:-$HOME/.cache/waypoint}`.
///
/// # Panics
/// When neither is there: the message says to run `scripts/test.sh`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WAYPOINT_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("WAYPOINT_CACHE").filter(|p| !p.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/waypoint"),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("venv-"))
        .map(|e| e.path().join("bin/python"))
        .filter(|p| p.exists())
        .collect();
    match (found.pop(), found.is_empty()) {
        (Some(one), true) => one,
        (any, _) => panic!(
            "WAYPOINT_PYTHON is not set and {} holds {} venv-*/bin/python interpreters (need exactly \
             one): run scripts/test.sh, which installs the pinned Python test requirements and sets \
             WAYPOINT_PYTHON",
            cache.display(),
            found.len() + usize::from(any.is_some())
        ),
    }
}

/// The repository's `tests/python` directory (the scripts the interop tests run).
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}
