//! [`Storage::add_dir`](super::Storage::add_dir) on a POSIX file system: a directory of files
//! added to a committed checkpoint (the `context/` written at train end into a checkpoint saved
//! before), all or nothing: written and fsynced under a temporary name inside the checkpoint,
//! renamed into place, the checkpoint fsynced.
//!
//! It must not touch `weights/` or the commit record (the checkpoint verifies at every instant),
//! replace anything, or remove what it did not create.

use super::fs::{FileSystem, remove_tree, temporary};
use super::owner::LiveGuard;
use super::{EntryKind, StoragePath};
use crate::error::{Error, Result};
use crate::format::WEIGHTS_DIR;

/// Checks the names of `add_dir`: `sub` and each file one component, not starting with `.`,
/// `sub` not `weights`.
pub(crate) fn check_names(sub: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
    let plain = |n: &str| !n.is_empty() && !n.contains('/') && !n.starts_with('.');
    if !plain(sub) || sub == WEIGHTS_DIR {
        return Err(Error::UnsafePath {
            path: sub.to_owned(),
            reason: "a directory added to a checkpoint is one component, not starting with '.', and not weights/",
        });
    }
    if let Some((name, _)) = files.iter().find(|(n, _)| !plain(n)) {
        return Err(Error::UnsafePath {
            path: name.clone(),
            reason: "a file added to a checkpoint is one component not starting with '.'",
        });
    }
    Ok(())
}

/// Adds `<dir>/<sub>` holding `files` to the checkpoint directory `dir` through `fs`.
pub(super) fn add_dir(
    fs: &dyn FileSystem,
    dir: &StoragePath,
    sub: &str,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    check_names(sub, files)?;
    match fs.stat(dir)? {
        Some(e) if e.kind == EntryKind::Dir => {}
        Some(e) if e.kind == EntryKind::Symlink => {
            return Err(Error::SymlinkRefused {
                path: fs.describe(dir),
            });
        }
        _ => {
            return Err(Error::NotFound {
                path: fs.describe(dir),
            });
        }
    }
    let target = dir.join(sub)?;
    if fs.stat(&target)?.is_some() {
        return Err(Error::AlreadyExists {
            path: fs.describe(&target),
        });
    }
    let temp = temporary(dir, sub, "")?;
    let _live = LiveGuard::new(temp.file_name().unwrap_or_default());
    fs.mkdir(&temp)?;
    let written = (|| -> Result<()> {
        for (name, bytes) in files {
            let file = fs.create_new(&temp.join(name)?, bytes.len() as u64)?;
            file.write_at(0, bytes)?;
            file.sync()?;
        }
        fs.sync_dir(&temp)?;
        fs.rename_noreplace(&temp, &target)
    })();
    if let Err(e) = written {
        // Only the temporary this call created goes; the checkpoint stays as it was.
        if let Err(undo) = remove_tree(fs, &temp).and_then(|()| fs.sync_dir(dir)) {
            tracing::warn!(temporary = %fs.describe(&temp).display(), error = %undo, "could not remove the temporary of a failed add_dir; readers ignore it, and it goes with the checkpoint");
        }
        return Err(e);
    }
    fs.sync_dir(dir).map_err(|e| Error::NotDurable {
        path: fs.describe(&target),
        source: Box::new(e),
    })
}
