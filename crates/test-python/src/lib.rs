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

/// The repository's root, found when the test runs, not when it was compiled: `cargo test` sets
/// `CARGO_MANIFEST_DIR` to the tested crate (`crates/<name>`) at run time. A compile-time path
/// would be wrong whenever a shared `CARGO_TARGET_DIR` (scripts/test.sh keeps one outside the
/// clone) reuses a test binary built in another checkout: cargo's fingerprints of workspace
/// crates do not include the checkout's location, so the binary would run that checkout's
/// scripts, or none. Outside `cargo test`, the compile-time directory of this crate.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR").filter(|p| !p.is_empty()) {
        Some(crate_dir) => PathBuf::from(crate_dir).join("../.."),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// The repository's `tests/python` directory (the scripts the interop tests run), under
/// [`repo_root`].
pub fn scripts_dir() -> PathBuf {
    repo_root().join("tests/python")
}
