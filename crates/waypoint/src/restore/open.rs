//! Which kind of restore source a path holds, and opening it. The one place that knows every
//! source kind, so that `source.rs` (the trait and the waypoint source) and each source's module
//! never import one another; it must not read tensors itself.

use super::dcp::DcpSource;
use super::safetensors::{HF_INDEX, HF_SINGLE, SafetensorsSource};
use super::source::{RestoreSource, WaypointSource};
use crate::error::{Error, Result};
use crate::format::{RECORD_FILE, WEIGHTS_DIR};
use crate::storage::is_url;
use std::path::Path;

/// Opens what `path` holds: an object-store URL or a directory with `weights/metadata.json` is a
/// waypoint checkpoint; a file is a safetensors file; a directory with
/// `model.safetensors.index.json` (or a single `model.safetensors`) is a Hugging Face model; a
/// directory with `.metadata` (or `weights/.metadata`, NeMo 2.0's layout) is a torch DCP
/// checkpoint.
pub fn open_source(path: &Path) -> Result<Box<dyn RestoreSource>> {
    if path.to_str().is_some_and(is_url) {
        return Ok(Box::new(WaypointSource::open(path)?));
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io("open restore source", path, e))?;
    if meta.is_file() {
        return Ok(Box::new(SafetensorsSource::file(path)?));
    }
    if path.join(WEIGHTS_DIR).join(RECORD_FILE).is_file() {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
        return Ok(Box::new(WaypointSource::open(&path)?));
    }
    if crate::dcp::is_dcp_dir(path).is_some() {
        return Ok(Box::new(DcpSource::open(path)?));
    }
    if path.join(HF_INDEX).is_file() {
        return Ok(Box::new(SafetensorsSource::hf_dir(path)?));
    }
    if path.join(HF_SINGLE).is_file() {
        return Ok(Box::new(SafetensorsSource::file(&path.join(HF_SINGLE))?));
    }
    Err(Error::InvalidArgument {
        name: "restore_config.path",
        reason: format!(
            "{} is neither a waypoint checkpoint (weights/{RECORD_FILE}), a .safetensors file, a Hugging Face directory ({} or {}), nor a torch DCP / NeMo checkpoint (.metadata or weights/.metadata)",
            path.display(),
            HF_INDEX,
            HF_SINGLE
        ),
    })
}
