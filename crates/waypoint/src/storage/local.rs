//! Local POSIX file system primitives. (Being written.)
use super::*;
/// Local file system rooted at a directory.
#[derive(Debug)]
pub struct LocalFs;
/// A [`FsStorage`] over the local directory `root`, wrapped in a [`FaultyFs`] when the failpoint
/// environment variable is set.
pub fn local_storage(_root: impl AsRef<std::path::Path>) -> Result<SharedStorage> { todo!() }
