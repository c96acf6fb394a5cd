//! What the trainer's test modules share: the binary, its fast configuration, and the command
//! that runs it.

use std::path::Path;
use std::process::Command;

/// The trainer under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_waypoint-train");

/// A short run: validations at 0, 40, 80, 120, saves every 20 steps.
pub const SHORT: &[&str] = &[
    "--max-steps",
    "120",
    "--ckpt-every",
    "20",
    "--val-every",
    "40",
    "--hidden",
    "16",
];

/// The trainer with `args`, its runs under `log_dir`, no inherited failpoint or log filter.
pub fn trainer(log_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--log-dir").arg(log_dir).args(args);
    cmd.env_remove("WAYPOINT_FAILPOINT").env_remove("RUST_LOG");
    cmd
}

/// What an interrupted run may leave in `checkpoints`, checked with the library's own reader:
/// every visible name is a committed checkpoint (or a `-last` link to one) that `verify` passes,
/// and every hidden entry is one of the library's temporaries (the next setup removes them).
/// Returns the visible names. `context` goes into the messages.
pub fn assert_disk_sound(checkpoints: &Path, context: &str) -> Vec<String> {
    use waypoint::storage::{StoragePath, TEMP_MARKER, local_storage};
    if !checkpoints.exists() {
        return Vec::new();
    }
    let storage = local_storage(checkpoints).unwrap();
    let root = StoragePath::root();
    let discovery = waypoint::resume::discover(storage.as_ref(), &root)
        .unwrap_or_else(|e| panic!("{context}: discover: {e}"));
    assert!(
        discovery.skipped.is_empty(),
        "{context}: visible directories that are not committed checkpoints: {:?}",
        discovery.skipped
    );
    let mut visible = Vec::new();
    for entry in std::fs::read_dir(checkpoints).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') {
            assert!(
                name.contains(TEMP_MARKER),
                "{context}: a hidden entry that is not the library's: {name}"
            );
            continue;
        }
        let report = waypoint::Checkpointer::new(storage.clone())
            .verify(&root.join(&name).unwrap(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{context}: verify {name}: {e}"));
        assert!(
            report.is_ok(),
            "{context}: {name} does not verify: {:?}",
            report.problems
        );
        visible.push(name);
    }
    visible.sort();
    visible
}
