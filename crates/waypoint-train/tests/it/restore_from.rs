//! `--restore-from`: a fresh run fine-tunes from another run's weights (AutoResume's
//! restore_config), taken from that run's checkpoint and from a safetensors file Python wrote
//! from it. What a reader sees: the validation loss at the fine-tune's step 0 is the source
//! run's final one, both sources give the same final digest, and a second run of the same
//! command resumes its own checkpoint instead.

use crate::common::{SHORT, trainer};
use std::path::Path;
use std::process::Command;

fn run_ok(log_dir: &Path, args: &[&str]) -> String {
    let out = trainer(log_dir, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn val_loss_at(stdout: &str, step: u64) -> String {
    let prefix = format!("step {step} val_loss ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{stdout}"))
        .to_owned()
}

fn digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("final_state_sha256="))
        .unwrap()
        .to_owned()
}

#[test]
fn fine_tunes_from_a_checkpoint_and_from_a_python_safetensors_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pre = run_ok(tmp.path(), &[SHORT, &["--name", "pre"]].concat());
    let ckpts = tmp.path().join("pre/checkpoints");
    let last = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("step=120-last"))
        .unwrap();

    // Python's safetensors: the model tensors of the checkpoint's shards, into one file.
    let file = tmp.path().join("pretrained.safetensors");
    let script = r#"
import glob, os, sys
from safetensors.numpy import load_file, save_file
model = {}
for shard in sorted(glob.glob(os.path.join(sys.argv[1], "weights", "*.safetensors"))):
    for name, array in load_file(shard).items():
        if name.startswith("model."):
            model[name] = array
assert model, "no model tensors"
save_file(model, sys.argv[2])
"#;
    let status = Command::new(test_python::python())
        .args(["-c", script])
        .arg(&last)
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());

    let fresh = run_ok(tmp.path(), &[SHORT, &["--name", "fresh"]].concat());
    let mut digests = Vec::new();
    for (name, source) in [("from-ckpt", &last), ("from-file", &file)] {
        let source = source.to_str().unwrap();
        let args = [SHORT, &["--name", name, "--restore-from", source]].concat();
        let tuned = run_ok(tmp.path(), &args);
        assert!(
            tuned.contains("starting fresh from the weights of"),
            "{name}: {tuned}"
        );
        assert_eq!(
            val_loss_at(&tuned, 0),
            val_loss_at(&pre, 120),
            "{name}: step 0 of the fine-tune evaluates the source's final weights"
        );
        assert_ne!(val_loss_at(&tuned, 0), val_loss_at(&fresh, 0), "{name}");
        digests.push(digest(&tuned));

        // The same command again: its own completed checkpoint wins over --restore-from.
        let again = run_ok(tmp.path(), &args);
        assert!(
            again.contains("run already completed at step 120"),
            "{again}"
        );
        assert_eq!(digest(&again), digests[digests.len() - 1]);
    }
    assert_eq!(digests[0], digests[1], "same weights, same fine-tune");
    assert_ne!(digests[0], digest(&fresh));
}

#[test]
fn a_source_of_another_shape_is_refused_naming_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(tmp.path(), &[SHORT, &["--name", "pre"]].concat());
    let source = tmp.path().join("pre/checkpoints");
    let last = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("step=120-last"))
        .unwrap();
    let mut args = SHORT.to_vec();
    let hidden = args.iter().position(|a| *a == "16").unwrap();
    args[hidden] = "8";
    let last = last.to_str().unwrap();
    args.extend(["--name", "other", "--restore-from", last]);
    let out = trainer(tmp.path(), &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mismatched"), "{stderr}");
    assert!(
        stderr.contains("the run has F32 [8, 8], the source F32 [16, 8]"),
        "{stderr}"
    );
}
