//! What the test modules share: a run over a temporary directory, a small model.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};
use waypoint::{AutoResume, ModelCheckpoint, Run, SaveLast};

/// A run under `dir` that saves at every step (optimizer included) and resumes from the newest
/// checkpoint.
pub fn run(dir: &Path) -> Run {
    let policy = ModelCheckpoint::builder()
        .every_n_train_steps(1)
        .save_last(SaveLast::Yes)
        .save_optim_on_train_end(true)
        .build()
        .unwrap();
    Run::builder()
        .log_dir(dir)
        .name("t")
        .checkpoint(policy)
        .resume(resume())
        .build()
        .unwrap()
}

/// AutoResume from the newest checkpoint, or from scratch when there is none.
pub fn resume() -> AutoResume {
    AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()
        .unwrap()
}

/// The shard files of checkpoint `name` in the checkpoints directory `checkpoints`.
pub fn shards(checkpoints: &Path, name: &str) -> Vec<PathBuf> {
    let weights = checkpoints.join(name).join("weights");
    let mut files: Vec<PathBuf> = std::fs::read_dir(weights)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// The ndarray backend (deprecated in burn 0.22 in favour of `flex`, but single-threaded without
/// `rayon`, so bit-identical everywhere; see docs/BURN.md), with or without autodiff.
#[allow(deprecated)]
pub fn ndarray() -> Device {
    Device::ndarray()
}

/// A two-layer perceptron, `4 → 8 (tanh) → 1`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    /// Initialised from the backend's RNG seeded with `seed`.
    pub fn new(device: &Device, seed: u64) -> Self {
        device.seed(seed);
        Mlp {
            fc1: LinearConfig::new(4, 8).init(device),
            fc2: LinearConfig::new(8, 1).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.fc1.forward(x).tanh())
    }
}

/// One tensor as [`contents`] lists it: name, dtype, shape, bytes, param id.
pub type Content = (String, String, Vec<usize>, Vec<u8>, Option<u64>);

/// Every tensor of `module` (sorted by name).
pub fn contents<M: Module>(module: &M) -> Vec<Content> {
    let mut all: Vec<_> = module
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let (name, dtype, shape, id, bytes) = t.into_parts().unwrap();
            (
                name,
                format!("{dtype:?}"),
                shape.to_vec(),
                bytes.to_vec(),
                id,
            )
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Runs `cmd` to its end and returns its stdout; a failure shows its status, stdout and stderr.
pub fn stdout_of_success(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The hex digest of an example's last line, `final_state_sha256=<hex>`.
pub fn final_digest(stdout: &str) -> String {
    let last = stdout.lines().last().unwrap_or_default();
    let hash = last
        .strip_prefix("final_state_sha256=")
        .unwrap_or_else(|| panic!("last line: {last:?}"));
    assert_eq!(hash.len(), 64);
    hash.to_owned()
}

/// The checkpoints in the experiment directory `exp`'s `checkpoints/`, sorted (temporaries left
/// out).
pub fn kept(exp: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(exp.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}
