//! Helpers of the logger tests: temporary directories, event files, the Python interpreter.

use std::path::{Path, PathBuf};

use std::process::Command;
use tempfile::TempDir;
pub use test_python::python;
use tfevents::proto::event::What;
use tfevents::proto::session_log::SessionStatus as LogStatus;

/// The event files of `dir`, in name order (TensorBoard's reading order).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    files.sort();
    files
}

/// The `SessionLog` `START` steps of an event file, in order.
pub fn start_steps(path: &Path) -> Vec<i64> {
    tfevents::read_events(path)
        .unwrap()
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::SessionLog(log)) if log.status == LogStatus::Start as i32 => Some(e.step),
            _ => None,
        })
        .collect()
}

pub fn tmp() -> TempDir {
    TempDir::new().unwrap()
}

pub fn run_python(script: &str, args: &[&Path]) -> String {
    let script = test_python::scripts_dir().join(script);
    let output = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        output.status
    );
    stdout
}

/// A tmpfs of `bytes` mounted on `dir` (a real full disk), unmounted on drop.
///
/// # Panics
/// When not root or the mount fails: the test needs it (run the suite as root, as
/// `scripts/test.sh` does in CI); it never passes without one.
pub fn small_tmpfs(dir: &Path, bytes: u64) -> Unmount {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test fills a real disk: it mounts a {bytes}-byte tmpfs, which needs root (run the \
         test suite as root, e.g. in the CI container)"
    );
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mount -t tmpfs on {}: {status}",
        dir.display()
    );
    Unmount(dir.to_path_buf())
}

/// Unmounts its directory on drop.
pub struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
