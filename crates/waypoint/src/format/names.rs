//! Names inside a checkpoint: shard file names, the fixed layout's directory names, and which
//! tensor names are allowed.
//!
//! Pure: it never touches storage. It trusts no name read from a directory listing: a shard file
//! name is accepted only in its one canonical spelling, so that no other file is taken for a shard.

/// Directory inside a checkpoint holding the shards and the commit record.
pub const WEIGHTS_DIR: &str = "weights";
/// Directory inside a checkpoint holding the run's configuration (io.json, model.yaml).
pub const CONTEXT_DIR: &str = "context";
/// File name of the commit record inside [`WEIGHTS_DIR`].
pub const RECORD_FILE: &str = "metadata.json";
/// The reserved safetensors header key, refused as a tensor name.
pub const SAFETENSORS_METADATA_KEY: &str = "__metadata__";
/// The `__metadata__` key PyTorch's HuggingFaceStorageReader reads for split tensors.
pub const DCP_SHARDING_INFO_KEY: &str = "DCP_SHARDING_INFO";

/// The file name of shard `index` of `rank`: `__<rank>_<index>.safetensors`.
///
/// ```
/// assert_eq!(waypoint::format::shard_file_name(3, 0), "__3_0.safetensors");
/// ```
pub fn shard_file_name(rank: u64, index: u64) -> String {
    format!("__{rank}_{index}.safetensors")
}

/// Parses a shard file name back into `(rank, index)`. Only the exact canonical spelling is
/// accepted (no sign, no leading zeros, no path separators), so a name that parses can never
/// leave the weights directory.
///
/// ```
/// use waypoint::format::parse_shard_file_name;
/// assert_eq!(parse_shard_file_name("__0_12.safetensors"), Some((0, 12)));
/// assert_eq!(parse_shard_file_name("../x"), None);
/// assert_eq!(parse_shard_file_name("__01_0.safetensors"), None);
/// ```
pub fn parse_shard_file_name(name: &str) -> Option<(u64, u64)> {
    let body = name.strip_prefix("__")?.strip_suffix(".safetensors")?;
    let (rank, index) = body.split_once('_')?;
    let parse = |s: &str| -> Option<u64> {
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if canonical { s.parse().ok() } else { None }
    };
    Some((parse(rank)?, parse(index)?))
}

/// Why a tensor name is refused, or `None` when it is fine. Any non-empty UTF-8 string is a valid
/// name (dots, slashes and unicode included) except `__metadata__` and names holding NUL.
pub fn tensor_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a tensor name must not be empty")
    } else if name == SAFETENSORS_METADATA_KEY {
        Some("`__metadata__` is reserved by safetensors")
    } else if name.contains('\0') {
        Some("a tensor name must not contain NUL")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_table() {
        let table = [
            ("__0_0.safetensors", Some((0, 0))),
            ("__7_3.safetensors", Some((7, 3))),
            ("__10_200.safetensors", Some((10, 200))),
            ("__-1_0.safetensors", None),
            ("__+1_0.safetensors", None),
            ("__1_00.safetensors", None),
            ("__1_0.safetensors.tmp", None),
            ("x/__1_0.safetensors", None),
            ("/abs/__1_0.safetensors", None),
            ("../x", None),
            ("__1.safetensors", None),
            ("__99999999999999999999999_0.safetensors", None),
            ("", None),
        ];
        for (name, want) in table {
            assert_eq!(parse_shard_file_name(name), want, "{name}");
        }
        for (r, i) in [(0, 0), (5, 17), (u64::MAX, 1)] {
            assert_eq!(parse_shard_file_name(&shard_file_name(r, i)), Some((r, i)));
        }
    }

    #[test]
    fn tensor_names_table() {
        let table = [
            ("model.layers.0.weight", true),
            ("optim/adam/m", true),
            ("représentation.權重", true),
            ("", false),
            ("__metadata__", false),
            ("a\0b", false),
            ("__metadata__x", true),
        ];
        for (name, ok) in table {
            assert_eq!(tensor_name_problem(name).is_none(), ok, "{name:?}");
        }
    }
}
