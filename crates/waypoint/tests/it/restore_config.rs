//! AutoResume's `restore_config` (NeMo's `RestoreConfig`): a fresh run starts from another run's
//! checkpoint, a safetensors file written by Python's `safetensors`, a Hugging Face sharded
//! directory, or a torch DCP / NeMo directory written by torch; the run's own checkpoint wins once it has one; strictness, the prefix map and the
//! artifacts (`context/`) as a reader sees them in the new run's checkpoints.

use crate::common::training::{TOY_BYTES, Toy};
use std::path::{Path, PathBuf};
use std::process::Command;
use test_python::python;
use waypoint::restore::{RestoreConfig, Strictness};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{AutoResume, Checkpointer, Error, ModelCheckpoint, Run};

fn policy() -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .async_save(false)
        .build()
        .unwrap()
}

fn resume(restore: Option<RestoreConfig>) -> AutoResume {
    let mut b = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true);
    if let Some(r) = restore {
        b = b.restore_config(r);
    }
    b.build().unwrap()
}

fn run(log_dir: &Path, name: &str, restore: Option<RestoreConfig>) -> Run {
    Run::builder()
        .log_dir(log_dir)
        .name(name)
        .checkpoint(policy())
        .context_files(vec![(
            "io.json".into(),
            format!("{{\"run\":\"{name}\"}}").into_bytes(),
        )])
        .resume(resume(restore))
        .build()
        .unwrap()
}

/// Trains `steps` steps of a fresh Toy in `name` and returns it and its last checkpoint's path.
fn pretrain(log_dir: &Path, name: &str, steps: u64) -> (Toy, PathBuf) {
    let mut run = run(log_dir, name, None);
    let mut toy = Toy::new();
    run.restore(&mut toy).unwrap();
    let mut last = None;
    while toy.step < steps {
        toy.train_step();
        let saved = run.step_end(toy.step, 0, &toy).unwrap();
        last = saved
            .iter()
            .find(|s| s.step == steps && !s.link)
            .cloned()
            .or(last);
    }
    run.finish(toy.step, 0, &toy).unwrap();
    (toy, last.unwrap().path)
}

fn context_of(checkpoint: &Path) -> Vec<(String, String)> {
    let dir = checkpoint.join("context");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().into_string().unwrap(), text)
        })
        .collect();
    files.sort();
    files
}

/// NeMo's fine-tuning path: the model weights of another run's checkpoint, a fresh optimizer,
/// step 0, and the source's artifacts beside this run's own context files.
#[test]
fn a_fresh_run_starts_from_another_runs_weights_and_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let (pre, ckpt) = pretrain(tmp.path(), "pre", 4);
    std::fs::write(ckpt.join("context/tokenizer.json"), b"{\"vocab\":3}").unwrap();

    let mut tuned = run(tmp.path(), "tune", Some(RestoreConfig::new(&ckpt)));
    let mut toy = Toy::new();
    assert_eq!(tuned.restore(&mut toy).unwrap(), None, "nothing is resumed");
    assert_eq!(toy.w, pre.w, "the model state comes from the source");
    assert_eq!(toy.m, vec![0; TOY_BYTES.1], "the optimizer starts fresh");
    assert_eq!(
        (toy.step, toy.rng),
        (0, Toy::new().rng),
        "the trainer state is this run's"
    );
    let report = tuned.restored_from().unwrap().clone();
    assert_eq!(report.loaded, ["model.w"]);
    assert_eq!(report.artifacts, ["tokenizer.json"], "{report:?}");
    assert!(report.is_exact(), "{report:?}");

    toy.train_step();
    toy.train_step();
    let saved = tuned.step_end(2, 0, &toy).unwrap();
    let path = saved[0].path.clone();
    assert_eq!(
        context_of(&path),
        [
            ("io.json".to_owned(), "{\"run\":\"tune\"}".to_owned()),
            ("tokenizer.json".to_owned(), "{\"vocab\":3}".to_owned()),
        ],
        "the run's own io.json wins, the source's tokenizer is copied"
    );
    let name = path.file_name().unwrap().to_str().unwrap();
    let verify = Checkpointer::new(local_storage(path.parent().unwrap()).unwrap())
        .verify(&StoragePath::new(name).unwrap(), &mut |_| {})
        .unwrap();
    assert!(verify.is_ok(), "{verify:?}");
    tuned.finish(2, 0, &toy).unwrap();
}

/// NeMo's rule: a resumable checkpoint of this run wins over restore_config.
#[test]
fn the_runs_own_checkpoint_wins_over_restore_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, ckpt) = pretrain(tmp.path(), "pre", 4);
    let config = RestoreConfig::new(&ckpt);
    let mut first = run(tmp.path(), "tune", Some(config.clone()));
    let mut toy = Toy::new();
    first.restore(&mut toy).unwrap();
    for _ in 0..2 {
        toy.train_step();
        first.step_end(toy.step, 0, &toy).unwrap();
    }
    drop(first); // killed after step 2's checkpoint

    let mut again = run(tmp.path(), "tune", Some(config));
    let mut back = Toy::new();
    let point = again.restore(&mut back).unwrap().unwrap();
    assert_eq!(point.step, 2);
    assert_eq!(back, toy, "this run's step-2 state, not the source's");
    assert!(again.restored_from().is_none());
}

/// The optimizer state too (`load_optim_state`), and Strictness: a source lacking a tensor fails
/// before anything is loaded, naming it; Report loads what matches.
#[test]
fn optimizer_state_and_strictness() {
    let tmp = tempfile::tempdir().unwrap();
    let (pre, ckpt) = pretrain(tmp.path(), "pre", 4);
    let with_optim = RestoreConfig::new(&ckpt).load_optim_state(true);
    let mut r = run(tmp.path(), "a", Some(with_optim));
    let mut toy = Toy::new();
    r.restore(&mut toy).unwrap();
    assert_eq!((&toy.w, &toy.m, toy.step), (&pre.w, &pre.m, 0));

    // A weights-only safetensors file (written by waypoint's own single-file export: a shard).
    let file = tmp.path().join("w.safetensors");
    write_safetensors(&file, &[("model.w", "U8", &[4], &[1, 2, 3, 4])]);
    let mut r = run(tmp.path(), "b", Some(RestoreConfig::new(&file)));
    let mut toy = Toy::new();
    let err = r.restore(&mut toy).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::RestoreMismatch { .. }), "{text}");
    assert!(
        text.contains("\"model.w\": the run has U8 [4096], the source U8 [4]"),
        "{text}"
    );
    assert_eq!(toy, Toy::new(), "nothing was loaded");

    let lenient = RestoreConfig::new(&file)
        .strictness(Strictness::Report)
        .load_optim_state(true);
    let mut r = run(tmp.path(), "c", Some(lenient));
    r.restore(&mut toy).unwrap();
    let report = r.restored_from().unwrap();
    assert_eq!(report.missing, ["optim.m"]);
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert_eq!(toy, Toy::new(), "nothing matched, nothing changed");
}

/// A plain safetensors file, written by hand from the format's definition (8-byte length, JSON
/// header, data).
fn write_safetensors(path: &Path, tensors: &[(&str, &str, &[u64], &[u8])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// Python-made sources: one file from `safetensors.numpy.save_file` and a Hugging Face sharded
/// directory (two shards and `model.safetensors.index.json`, as `transformers` writes), both
/// with a `base.` prefix mapped onto the run's names.
#[test]
fn python_safetensors_file_and_hugging_face_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import json, os, sys
import numpy as np
from safetensors.numpy import save_file
out = sys.argv[1]
w = (np.arange(4096) * 7 % 251).astype(np.uint8)
m = (np.arange(1024) * 3 % 13).astype(np.uint8)
save_file({"base.model.w": w, "base.optim.m": m}, os.path.join(out, "single.safetensors"))
hf = os.path.join(out, "hf")
os.makedirs(os.path.join(hf, "context"))
save_file({"base.model.w": w}, os.path.join(hf, "model-00001-of-00002.safetensors"))
save_file({"base.optim.m": m}, os.path.join(hf, "model-00002-of-00002.safetensors"))
index = {"metadata": {"total_size": 5120}, "weight_map": {
    "base.model.w": "model-00001-of-00002.safetensors",
    "base.optim.m": "model-00002-of-00002.safetensors"}}
with open(os.path.join(hf, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(hf, "context", "tokenizer.json"), "w") as f:
    f.write("{}")
"#;
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let w: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let m: Vec<u8> = (0..1024u32).map(|i| (i * 3 % 13) as u8).collect();
    for (case, path, artifacts) in [
        ("file", tmp.path().join("single.safetensors"), vec![]),
        ("hf", tmp.path().join("hf"), vec!["tokenizer.json"]),
    ] {
        let config = RestoreConfig::new(&path)
            .prefix_map("base.", "")
            .load_optim_state(true);
        let mut r = run(tmp.path(), case, Some(config));
        let mut toy = Toy::new();
        assert_eq!(r.restore(&mut toy).unwrap(), None);
        assert_eq!((&toy.w, &toy.m, toy.step), (&w, &m, 0), "{case}");
        let report = r.restored_from().unwrap();
        assert!(report.is_exact(), "{case}: {report:?}");
        assert_eq!(report.artifacts, artifacts, "{case}");

        // Without the prefix map, strict: every tensor is missing, and the message says so.
        let mut r = run(
            tmp.path(),
            &format!("{case}-strict"),
            Some(RestoreConfig::new(&path)),
        );
        let text = r.restore(&mut Toy::new()).unwrap_err().to_string();
        assert!(text.contains("1 missing (\"model.w\")"), "{case}: {text}");
        assert!(text.contains("prefix_map"), "{case}: {text}");
    }
}

/// What a source cannot be is refused with the path and what it may be.
#[test]
fn an_unrecognised_source_says_what_it_may_be() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = run(tmp.path(), "x", Some(RestoreConfig::new(tmp.path())));
    let text = r.restore(&mut Toy::new()).unwrap_err().to_string();
    assert!(text.contains("neither a waypoint checkpoint"), "{text}");
    assert!(text.contains(&tmp.path().display().to_string()), "{text}");
}

/// A source on an object store: another run's checkpoint under an `s3://` URL.
#[cfg(feature = "s3")]
#[test]
fn restores_from_an_s3_checkpoint() {
    use crate::common::s3;
    let bucket = s3::shared().bucket; // fails, saying how to start it, without the server
    let url = format!("s3://{bucket}/{}", s3::unique_prefix("pre"));
    let tmp = tempfile::tempdir().unwrap();
    let mut pre = Run::builder()
        .log_dir(tmp.path())
        .name("pre")
        .checkpoint(
            ModelCheckpoint::builder()
                .dirpath(&url)
                .no_monitor()
                .save_top_k(1)
                .every_n_train_steps(2)
                .async_save(false)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut toy = Toy::new();
    toy.train_step();
    toy.train_step();
    let saved = pre.step_end(2, 0, &toy).unwrap();
    pre.finish(2, 0, &toy).unwrap();
    let source = saved[0].path.clone();
    assert!(source.to_str().unwrap().starts_with("s3://"), "{source:?}");

    let mut r = run(tmp.path(), "tune", Some(RestoreConfig::new(&source)));
    let mut back = Toy::new();
    r.restore(&mut back).unwrap();
    assert_eq!(back.w, toy.w);
    assert_eq!(r.restored_from().unwrap().loaded, ["model.w"]);
}

/// An experiment whose restore_config names nothing readable fails at setup, before its
/// directory is made (a setup that fails leaves nothing).
#[test]
fn an_unreadable_source_fails_the_setup_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let missing = tmp.path().join("no-such-model.safetensors");
    let err = waypoint::ExperimentLogger::builder()
        .log_dir(&logs)
        .name("tune")
        .version("v1")
        .build()
        .unwrap()
        .setup(&resume(Some(RestoreConfig::new(&missing))))
        .unwrap_err();
    assert!(
        err.to_string().contains("no-such-model.safetensors"),
        "{err}"
    );
    assert!(!logs.exists(), "setup created {}", logs.display());
}

/// A rank's shard (a region of a tensor) restored from a plain safetensors file and from a DCP
/// directory torch saved: only its rows.
#[test]
fn regions_come_from_a_safetensors_file_and_a_torch_dcp_directory() {
    use waypoint::{Checkpointable, Dtype, RegionSlot, SinkSlot, TensorRef};
    /// Rows 1..3 of a 4×3 U8 tensor `w`.
    struct Shard {
        rows: Vec<u8>,
    }
    impl Checkpointable for Shard {
        fn model_tensors(&self) -> Vec<TensorRef<'_>> {
            Vec::new()
        }
        fn trainer_state(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
            Vec::new()
        }
        fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
            vec![RegionSlot {
                name: "w",
                dtype: Dtype::U8,
                global_shape: &[4, 3],
                offsets: &[1, 0],
                shape: &[2, 3],
                data: &mut self.rows,
            }]
        }
        fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("w.safetensors");
    let w: Vec<u8> = (0..12).collect();
    write_safetensors(&file, &[("base.w", "U8", &[4, 3], &w)]);
    let config = RestoreConfig::new(&file).prefix_map("base.", "");
    let mut r = run(tmp.path(), "shard", Some(config));
    let mut shard = Shard { rows: vec![0; 6] };
    r.restore(&mut shard).unwrap();
    assert_eq!(shard.rows, [3, 4, 5, 6, 7, 8]);
    assert_eq!(r.restored_from().unwrap().loaded, ["w"]);
    let dcp = tmp.path().join("dcp");
    let script = "import sys, torch, torch.distributed.checkpoint as dcp\n\
        dcp.save({'base.w': torch.arange(12, dtype=torch.uint8).reshape(4, 3)}, \
        checkpoint_id=sys.argv[1])";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&dcp)
        .env("PYTHONWARNINGS", "ignore")
        .status()
        .unwrap();
    assert!(status.success());
    let config = RestoreConfig::new(&dcp).prefix_map("base.", "");
    let mut r = run(tmp.path(), "dcp-shard", Some(config));
    let mut shard = Shard { rows: vec![0; 6] };
    r.restore(&mut shard).unwrap();
    assert_eq!(shard.rows, [3, 4, 5, 6, 7, 8]);
    assert_eq!(r.restored_from().unwrap().loaded, ["w"]);
}

/// A NeMo 2.0 checkpoint written by torch (`dcp.save` into `weights/`, a `context/` beside it):
/// the model weights are a view with a storage offset, the names carry a `base.` prefix, and the
/// source has a tensor the run lacks. Strict restores what the prefix map names and reports the
/// extra tensor; StrictAll refuses it before loading; without the map every tensor is missing.
#[test]
fn a_torch_dcp_nemo_checkpoint_is_a_restore_source() {
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import os, sys
import torch
import torch.distributed.checkpoint as dcp
out = sys.argv[1]
w = (torch.arange(4096 + 100) - 100) * 7 % 251
m = torch.arange(1024) * 3 % 13
sd = {"base.model.w": w.to(torch.uint8)[100:], "base.optim.m": m.to(torch.uint8),
      "base.model.extra": torch.ones(3, 2)}
dcp.save(sd, checkpoint_id=os.path.join(out, "nemo", "weights"))
os.makedirs(os.path.join(out, "nemo", "context"))
with open(os.path.join(out, "nemo", "context", "model.yaml"), "w") as f:
    f.write("hidden: 8\n")
"#;
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(tmp.path())
        .env("PYTHONWARNINGS", "ignore")
        .status()
        .unwrap();
    assert!(status.success());
    let nemo = tmp.path().join("nemo");
    let w: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let m: Vec<u8> = (0..1024u32).map(|i| (i * 3 % 13) as u8).collect();

    let config = RestoreConfig::new(&nemo)
        .prefix_map("base.", "")
        .load_optim_state(true);
    let mut r = run(tmp.path(), "strict", Some(config.clone()));
    let mut toy = Toy::new();
    assert_eq!(r.restore(&mut toy).unwrap(), None);
    assert_eq!((&toy.w, &toy.m, toy.step), (&w, &m, 0));
    let report = r.restored_from().unwrap();
    assert_eq!(report.unexpected, ["model.extra"], "{report:?}");
    assert_eq!(report.artifacts, ["model.yaml"]);

    // The `weights/` directory itself is a DCP directory too (no context then).
    let weights = RestoreConfig::new(nemo.join("weights"))
        .prefix_map("base.", "")
        .load_optim_state(true);
    let mut r = run(tmp.path(), "weights", Some(weights));
    let mut toy = Toy::new();
    r.restore(&mut toy).unwrap();
    assert_eq!((&toy.w, &toy.m), (&w, &m));
    assert!(r.restored_from().unwrap().artifacts.is_empty());

    let all = config.strictness(Strictness::StrictAll);
    let mut r = run(tmp.path(), "all", Some(all));
    let mut toy = Toy::new();
    let text = r.restore(&mut toy).unwrap_err().to_string();
    assert!(text.contains("model.extra"), "{text}");
    assert_eq!(toy, Toy::new(), "nothing was loaded");

    let mut r = run(tmp.path(), "unmapped", Some(RestoreConfig::new(&nemo)));
    let text = r.restore(&mut Toy::new()).unwrap_err().to_string();
    assert!(text.contains("1 missing (\"model.w\")"), "{text}");
}
