//! In-memory file system that models a power cut. (Being written.)
/// In-memory file system.
#[derive(Debug, Default)]
pub struct MemoryFs;
impl MemoryFs {
    /// An empty file system.
    pub fn new() -> Self { MemoryFs }
}
