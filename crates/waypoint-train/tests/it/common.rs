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
