//! [`set_aside`]: what a logger cannot read back from its own files (a line torn by a full disk,
//! bytes that are not UTF-8, a header that is not its own) goes to `<file>.corrupt` beside it,
//! with a warning, so that the logger, and the run, keep going: a logger never keeps a run from
//! starting. It must not decide what is unreadable; the loggers do.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file beside `path` that receives its unreadable parts.
pub(crate) fn corrupt_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".corrupt");
    path.with_file_name(name)
}

/// Appends `bytes` (unreadable parts of `path`, `why` in words) to [`corrupt_path`], with a
/// warning. When even that fails (the disk is full), they are lost, and the warning says so.
pub(crate) fn set_aside(path: &Path, bytes: &[u8], why: &str) {
    let aside = corrupt_path(path);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&aside)
        .and_then(|mut f| f.write_all(bytes));
    match written {
        Ok(()) => tracing::warn!(
            file = %path.display(),
            set_aside = %aside.display(),
            bytes = bytes.len(),
            "{why}: set aside, the logger goes on without them"
        ),
        Err(e) => tracing::warn!(
            file = %path.display(),
            error = %e,
            bytes = bytes.len(),
            "{why}: could not set them aside in {}; dropped, the logger goes on without them",
            aside.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_accumulate_beside_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("metrics.csv");
        set_aside(&file, b"a\n", "test");
        set_aside(&file, b"b\n", "test");
        assert_eq!(corrupt_path(&file), tmp.path().join("metrics.csv.corrupt"));
        assert_eq!(std::fs::read(corrupt_path(&file)).unwrap(), b"a\nb\n");
    }
}
