//! The checkpoint's `context/`: `io.json`, the user's whole configuration as serde wrote it (the
//! source of truth: [`load_config`] reads it back into the configuration type), and `model.yaml`,
//! a human view of the model's part (reading it back is not supported; editing it changes
//! nothing). Both are produced once, when the [`crate::ExperimentLogger`] is built, and written by
//! the run inside each checkpoint's commit (`always_save_context`) or the train-end one
//! (`save_context_on_train_end`).

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// The context directory inside a checkpoint.
pub const CONTEXT_DIR: &str = "context";
/// The configuration file in `context/`.
pub const IO_JSON: &str = "io.json";
/// The model's human view in `context/`.
pub const MODEL_YAML: &str = "model.yaml";
/// Largest `io.json` read back.
const MAX_IO_JSON: u64 = 64 << 20;

/// Reads `<checkpoint>/context/io.json` back into the configuration type it was written from.
///
/// ```
/// # fn main() -> waypoint::Result<()> {
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Config { lr: f64, layers: u32 }
/// let ckpt = tempfile::tempdir().unwrap();
/// std::fs::create_dir(ckpt.path().join("context")).unwrap();
/// std::fs::write(ckpt.path().join("context/io.json"), br#"{"lr": 0.01, "layers": 4}"#).unwrap();
/// let config: Config = waypoint::experiment::load_config(ckpt.path())?;
/// assert_eq!(config, Config { lr: 0.01, layers: 4 });
/// # Ok(()) }
/// ```
pub fn load_config<T: DeserializeOwned>(checkpoint: &Path) -> Result<T> {
    let path = checkpoint.join(CONTEXT_DIR).join(IO_JSON);
    let file = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
    let reader = std::io::Read::take(std::io::BufReader::new(file), MAX_IO_JSON);
    serde_json::from_reader(reader).map_err(|e| Error::InvalidContext {
        path,
        reason: e.to_string(),
    })
}

/// `io.json`'s bytes: pretty JSON.
pub(crate) fn io_json<T: serde::Serialize + ?Sized>(config: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::InvalidArgument {
        name: "config",
        reason: format!("cannot be written as JSON: {e}"),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// YAML text of `value` (which must serialise to a map, as a configuration struct does), for
/// `model.yaml` and `hparams.yaml`: the same writer as the CSV logger's `hparams.yaml`, whose
/// output YAML 1.1 (PyYAML, Lightning) and YAML 1.2 readers parse back to the same values.
pub(crate) fn yaml<T: serde::Serialize + ?Sized>(knob: &'static str, value: &T) -> Result<String> {
    let invalid = |reason: String| Error::InvalidArgument { name: knob, reason };
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => Ok(crate::loggers::yaml::to_yaml(&map)),
        Ok(other) => Err(invalid(format!(
            "must serialise to a map of named fields, not {}",
            match other {
                serde_json::Value::Array(_) => "a list",
                serde_json::Value::String(_) => "a string",
                _ => "a scalar",
            }
        ))),
        Err(e) => Err(invalid(format!("cannot be serialised: {e}"))),
    }
}
