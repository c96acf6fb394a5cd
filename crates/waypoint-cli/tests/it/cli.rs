//! The `waypoint` binary, run for real: each test builds checkpoints with the library in its own
//! temporary directory, runs the command and checks its exit code and what it printed. Every
//! damaged checkpoint gives exit code 1 with the file named, never a panic.

use crate::{waypoint, waypoint_with};
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, SaveOptions, TensorRef};

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Everything the command printed, for "is the file named somewhere" checks.
fn printed(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn assert_no_panic(out: &Output) {
    assert!(
        !stderr(out).contains("panicked"),
        "the binary panicked: {}",
        stderr(out)
    );
}

fn assert_exit(out: &Output, code: i32) {
    assert_no_panic(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

fn parse_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// A committed checkpoint `c` at step 1234, epoch 3: `alpha.weight` (F32 [32, 32]),
/// `beta.weight` (F32 [1024]) and `gamma.bias` (U8 [8, 16], saved as two chunks), in several
/// shard files (4 KiB at most each, 1 KiB checksum blocks), with a user and a waypoint state.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let checkpointer =
            Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(SaveOptions {
                max_shard_bytes: 4096,
                block_size: 1024,
                ..Default::default()
            });
        let a: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
        let g: Vec<u8> = (0..128u32).map(|i| i as u8).collect();
        let tensors = vec![
            TensorRef::whole("beta.weight", Dtype::F32, vec![1024], b.as_slice()),
            TensorRef::whole("alpha.weight", Dtype::F32, vec![32, 32], a.as_slice()),
            TensorRef::chunk(
                "gamma.bias",
                Dtype::U8,
                vec![8, 16],
                vec![0, 0],
                vec![4, 16],
                &g[..64],
            ),
            TensorRef::chunk(
                "gamma.bias",
                Dtype::U8,
                vec![8, 16],
                vec![4, 0],
                vec![4, 16],
                &g[64..],
            ),
        ];
        let mut meta = CheckpointMeta::at_step(1234);
        meta.epoch = 3;
        meta.waypoint
            .other
            .insert("policy".into(), json!({"monitor": "val_loss"}));
        let user = json!({
            "lr": 0.001,
            "note": "x".repeat(200),
            "schedule": {"kind": "cosine", "warmup": 100},
        });
        checkpointer
            .save(&StoragePath::new("c").unwrap(), &meta, &tensors, &user)
            .unwrap();
        Fixture { tmp }
    }

    fn ckpt(&self) -> PathBuf {
        self.tmp.path().join("c")
    }

    fn ckpt_str(&self) -> String {
        self.ckpt().to_str().unwrap().to_owned()
    }

    fn weights(&self) -> PathBuf {
        self.ckpt().join("weights")
    }

    fn record(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.weights().join("metadata.json")).unwrap())
            .unwrap()
    }

    fn write_record(&self, v: &Value) {
        std::fs::write(
            self.weights().join("metadata.json"),
            serde_json::to_vec(v).unwrap(),
        )
        .unwrap();
    }

    fn mutate_record(&self, f: impl FnOnce(&mut Value)) {
        let mut r = self.record();
        f(&mut r);
        self.write_record(&r);
    }

    /// The shard holding the first chunk of `tensor`, its file name, and the chunk's byte range.
    fn shard_of(&self, tensor: &str) -> (PathBuf, String, u64, u64) {
        let r = self.record();
        let chunk = &r["tensors"][tensor]["chunks"][0];
        let range = chunk["byte_range"].as_array().unwrap();
        let name = chunk["file"].as_str().unwrap().to_owned();
        (
            self.weights().join(&name),
            name,
            range[0].as_u64().unwrap(),
            range[1].as_u64().unwrap(),
        )
    }

    fn verify(&self) -> Output {
        waypoint(&["verify", &self.ckpt_str()])
    }

    fn verify_json(&self) -> Output {
        waypoint(&["verify", "--json", &self.ckpt_str()])
    }

    fn show(&self) -> Output {
        waypoint(&["show", &self.ckpt_str()])
    }
}

/// What `show` does with a damaged checkpoint: `show` reads only the record and the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShowSees {
    /// The record or the listing is wrong: `show` fails too (exit code 1, file named).
    Damage,
    /// Only shard contents are damaged: `show` still describes the checkpoint.
    Nothing,
}

/// The checks every damaged checkpoint must pass: `verify` exits 1 naming every fragment
/// (typically the file) in text and in JSON, with a `FAILED` summary; `show` behaves as `show`
/// says; nothing panics. Returns the JSON report.
fn assert_damaged(fx: &Fixture, fragments: &[&str], show: ShowSees) -> Value {
    let text = fx.verify();
    assert_exit(&text, 1);
    for f in fragments {
        assert!(
            printed(&text).contains(f),
            "verify output should name {f:?}: {}",
            printed(&text)
        );
    }
    assert!(stdout(&text).contains("FAILED"), "{}", printed(&text));

    let json_out = fx.verify_json();
    assert_exit(&json_out, 1);
    let report = parse_json(&json_out);
    assert_eq!(report["ok"], json!(false));
    let problems = report["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    for f in fragments {
        assert!(
            problems
                .iter()
                .any(|p| p["message"].as_str().unwrap().contains(f)),
            "a JSON problem should name {f:?}: {report:#}"
        );
    }
    for p in problems {
        assert!(p["file"].is_string(), "every problem names its file: {p:#}");
        for key in ["kind", "message", "tensor", "byte_range"] {
            assert!(p.get(key).is_some(), "{key} missing in {p:#}");
        }
    }

    let shown = fx.show();
    match show {
        ShowSees::Damage => {
            assert_exit(&shown, 1);
            for f in fragments {
                assert!(printed(&shown).contains(f), "{}", printed(&shown));
            }
        }
        ShowSees::Nothing => assert_exit(&shown, 0),
    }
    let shown_json = waypoint(&["show", "--json", &fx.ckpt_str()]);
    assert_no_panic(&shown_json);
    report
}

#[test]
fn show_describes_the_checkpoint() {
    let fx = Fixture::new();
    let out = fx.show();
    assert_exit(&out, 0);
    let text = stdout(&out);
    for expected in [
        "1234",
        "epoch",
        "world size",
        "waypoint 0.1.0",
        "1.0 KiB", // block size
        "alpha.weight",
        "beta.weight",
        "gamma.bias",
        "F32",
        "U8",
        "[32, 32]",
        "[1024]",
        "[8, 16]",
        "4.0 KiB",
        "128 B",
        "lr",
        "0.001",
        "schedule",
        "policy",
        "total (3 tensors)",
        "8.1 KiB",
        "(8320 bytes)",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // Long user values are cut short.
    assert!(!text.contains(&"x".repeat(100)), "{text}");
    assert!(text.contains("xxx..."), "{text}");
    // Tensors are listed by name, with their chunk counts.
    let alpha = text.find("alpha.weight").unwrap();
    let beta = text.find("beta.weight").unwrap();
    let gamma_line = text.lines().find(|l| l.starts_with("gamma.bias")).unwrap();
    assert!(alpha < beta, "{text}");
    assert!(
        gamma_line.split_whitespace().collect::<Vec<_>>()
            == ["gamma.bias", "U8", "[8,", "16]", "2", "128", "B"],
        "{gamma_line:?}"
    );
}

/// Issue 18: `show` marks a checkpoint the policy keeps for good (keep_every_n_steps here),
/// in text and in JSON, and not one the rotation may delete.
#[test]
fn show_marks_permanent_keeps() {
    struct Step(u64);
    impl waypoint::Checkpointable for Step {
        fn model_tensors(&self) -> Vec<TensorRef<'_>> {
            Vec::new()
        }
        fn trainer_state(&self) -> serde_json::Value {
            json!({ "step": self.0 })
        }
        fn restore_slots(&mut self) -> Vec<waypoint::SinkSlot<'_>> {
            Vec::new()
        }
        fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let policy = waypoint::ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(1)
        .keep_every_n_steps(20)
        .filename("{step}")
        .every_n_train_steps(10)
        .build()
        .unwrap();
    let mut run = waypoint::Run::builder()
        .log_dir(tmp.path())
        .checkpoint(policy)
        .build()
        .unwrap();
    for step in 1..=30 {
        run.step_end(step, 0, &Step(step)).unwrap();
    }
    run.wait_for_saves().unwrap();
    let ckpts = tmp.path().join("default/checkpoints");
    let kept = ckpts.join("step=20");
    let out = waypoint(&["show", kept.to_str().unwrap()]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("kept for good  keep_every_n_steps (rotation never deletes it)"),
        "{text}"
    );
    let out = waypoint(&["show", "--json", kept.to_str().unwrap()]);
    assert_eq!(parse_json(&out)["kept_for_good"], "keep_every_n_steps");
    let rotated = ckpts.join("step=30");
    let out = waypoint(&["show", rotated.to_str().unwrap()]);
    assert!(!stdout(&out).contains("kept for good"), "{}", stdout(&out));
    let out = waypoint(&["show", "--json", rotated.to_str().unwrap()]);
    assert_eq!(parse_json(&out)["kept_for_good"], Value::Null);
}

#[test]
fn show_json_has_the_right_values() {
    let fx = Fixture::new();
    let out = waypoint(&["show", "--json", &fx.ckpt_str()]);
    assert_exit(&out, 0);
    let v = parse_json(&out);
    assert_eq!(v["step"], 1234);
    assert_eq!(v["epoch"], 3);
    assert_eq!(v["world_size"], 1);
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["producer"], "waypoint 0.1.0");
    assert_eq!(v["block_size"], 1024);
    assert_eq!(v["total_bytes"], 4096 + 4096 + 128);
    assert_eq!(
        v["path"],
        fx.ckpt().canonicalize().unwrap().to_str().unwrap()
    );
    let record = fx.record();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), record["files"].as_object().unwrap().len());
    for f in files {
        let name = f["name"].as_str().unwrap();
        assert_eq!(f["size"], record["files"][name]["size"]);
        assert_eq!(f["rank"], 0);
        let on_disk = std::fs::metadata(fx.weights().join(name)).unwrap().len();
        assert_eq!(f["size"], on_disk);
    }
    assert_eq!(
        v["tensors"],
        json!([
            {"name": "alpha.weight", "dtype": "F32", "shape": [32, 32], "chunks": 1, "bytes": 4096, "ranks": [0]},
            {"name": "beta.weight", "dtype": "F32", "shape": [1024], "chunks": 1, "bytes": 4096, "ranks": [0]},
            {"name": "gamma.bias", "dtype": "U8", "shape": [8, 16], "chunks": 2, "bytes": 128, "ranks": [0]},
        ])
    );
    assert_eq!(v["trainer_state"]["user"]["lr"], 0.001);
    assert_eq!(v["trainer_state"]["user"]["note"], "x".repeat(200));
    assert_eq!(
        v["trainer_state"]["waypoint"],
        json!({"policy": {"monitor": "val_loss"}})
    );
}

#[test]
fn verify_a_good_checkpoint() {
    let fx = Fixture::new();
    let out = fx.verify();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("OK: 3 tensors, 8320 bytes verified"),
        "{text}"
    );
    let out = fx.verify_json();
    assert_exit(&out, 0);
    let v = parse_json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], json!([]));
    assert_eq!(v["bytes_checked"], 8320);
}

#[test]
fn a_relative_path_and_a_trailing_slash_work() {
    let fx = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["verify", "c/"])
        .current_dir(fx.tmp.path())
        .output()
        .unwrap();
    assert_exit(&out, 0);
}

#[test]
fn truncated_shard() {
    let fx = Fixture::new();
    let (file, name, _, _) = fx.shard_of("alpha.weight");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let report = assert_damaged(&fx, &[&name], ShowSees::Damage);
    assert_eq!(report["problems"][0]["kind"], "shard_size");
}

#[test]
fn flipped_data_bit_names_the_tensor_and_the_bytes() {
    let fx = Fixture::new();
    let (file, name, start, _) = fx.shard_of("beta.weight");
    let mut raw = std::fs::read(&file).unwrap();
    let flipped = start + 2000;
    raw[flipped as usize] ^= 0x04;
    std::fs::write(&file, &raw).unwrap();
    let report = assert_damaged(&fx, &[&name, "beta.weight"], ShowSees::Nothing);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    let p = &problems[0];
    assert_eq!(p["kind"], "checksum");
    assert_eq!(p["tensor"], "beta.weight");
    assert_eq!(p["file"], file.canonicalize().unwrap().to_str().unwrap());
    // 1 KiB blocks: the flipped byte lies in the second block of the chunk.
    assert_eq!(p["byte_range"], json!([start + 1024, start + 2048]));
    let text = stdout(&fx.verify());
    let range = format!("{}..{}", start + 1024, start + 2048);
    assert!(text.contains(&range), "{text}");
    assert!(text.contains("FAILED: 1 problem"), "{text}");
}

#[test]
fn flipped_header_bit_that_still_parses() {
    let fx = Fixture::new();
    let (file, name, _, _) = fx.shard_of("alpha.weight");
    let mut raw = std::fs::read(&file).unwrap();
    // A digit of the shape becomes another digit: the header is still valid JSON.
    let header = String::from_utf8_lossy(&raw[8..4096]).into_owned();
    let at = 8 + header.find("[32,32]").unwrap() + 1;
    raw[at] = b'1';
    std::fs::write(&file, &raw).unwrap();
    let report = assert_damaged(&fx, &[&name, "safetensors header"], ShowSees::Nothing);
    assert_eq!(report["problems"][0]["kind"], "checksum");
    assert_eq!(report["problems"][0]["byte_range"], json!([0, 4096]));
}

#[test]
fn huge_header_length_prefix() {
    let fx = Fixture::new();
    let (file, name, _, _) = fx.shard_of("alpha.weight");
    let mut raw = std::fs::read(&file).unwrap();
    raw[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    std::fs::write(&file, &raw).unwrap();
    // With a matching header checksum, the safetensors parser itself sees the length.
    let header_len = fx.record()["files"][&name]["header_len"].as_u64().unwrap() as usize;
    let crc = crc32c::crc32c(&raw[..header_len]);
    fx.mutate_record(|r| r["files"][&name]["header_crc32c"] = json!(crc));
    let report = assert_damaged(&fx, &[&name], ShowSees::Nothing);
    assert_eq!(report["problems"][0]["kind"], "invalid_shard", "{report:#}");
}

#[test]
fn missing_shard() {
    let fx = Fixture::new();
    let (file, name, _, _) = fx.shard_of("beta.weight");
    std::fs::remove_file(&file).unwrap();
    let report = assert_damaged(&fx, &[&name, "does not exist"], ShowSees::Damage);
    assert_eq!(report["problems"][0]["kind"], "not_found");
}

#[test]
fn unexpected_extra_file() {
    let fx = Fixture::new();
    std::fs::write(fx.weights().join("__0_9.safetensors"), b"junk").unwrap();
    let report = assert_damaged(&fx, &["__0_9.safetensors"], ShowSees::Damage);
    let p = &report["problems"][0];
    assert_eq!(p["kind"], "unexpected_file");
    assert!(
        p["file"]
            .as_str()
            .unwrap()
            .ends_with("c/weights/__0_9.safetensors"),
        "{p:#}"
    );
}

#[test]
fn record_not_json() {
    let fx = Fixture::new();
    std::fs::write(
        fx.weights().join("metadata.json"),
        b"{\"format\": \"waypoint-chec",
    )
    .unwrap();
    let report = assert_damaged(&fx, &["metadata.json", "not valid JSON"], ShowSees::Damage);
    assert_eq!(report["problems"][0]["kind"], "invalid_record");
    assert_eq!(report["bytes_checked"], 0);
    assert!(stdout(&fx.verify()).contains("verification could not start"));
}

#[test]
fn unknown_format_version() {
    let fx = Fixture::new();
    fx.mutate_record(|r| r["format_version"] = json!(7));
    let report = assert_damaged(
        &fx,
        &["metadata.json", "format_version 7"],
        ShowSees::Damage,
    );
    assert_eq!(report["problems"][0]["kind"], "unsupported_version");
}

#[test]
fn chunk_offsets_out_of_range() {
    let fx = Fixture::new();
    fx.mutate_record(|r| r["tensors"]["alpha.weight"]["chunks"][0]["offsets"] = json!([1, 0]));
    assert_damaged(
        &fx,
        &["metadata.json", "alpha.weight", "exceeds dimension 0"],
        ShowSees::Damage,
    );
}

#[test]
fn overlapping_byte_ranges() {
    let fx = Fixture::new();
    fx.mutate_record(|r| {
        let range = r["tensors"]["alpha.weight"]["chunks"][0]["byte_range"].clone();
        let (s, e) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
        r["tensors"]["alpha.weight"]["chunks"][0]["byte_range"] = json!([s + 4, e + 4]);
    });
    assert_damaged(&fx, &["metadata.json", "alpha.weight"], ShowSees::Damage);
}

#[test]
fn overlapping_chunks() {
    let fx = Fixture::new();
    fx.mutate_record(|r| r["tensors"]["gamma.bias"]["chunks"][1]["offsets"] = json!([3, 0]));
    assert_damaged(&fx, &["metadata.json", "gamma.bias"], ShowSees::Damage);
}

#[test]
fn sizes_whose_product_overflows() {
    let fx = Fixture::new();
    fx.mutate_record(|r| {
        r["tensors"]["alpha.weight"]["shape"] = json!([1u64 << 40, 1u64 << 40]);
        r["tensors"]["alpha.weight"]["chunks"][0]["sizes"] = json!([1u64 << 40, 1u64 << 40]);
    });
    assert_damaged(
        &fx,
        &["metadata.json", "alpha.weight", "overflows"],
        ShowSees::Damage,
    );
}

#[test]
fn file_names_that_escape_the_checkpoint() {
    for evil in ["../x", "/etc/passwd"] {
        let fx = Fixture::new();
        let (_, victim, _, _) = fx.shard_of("alpha.weight");
        fx.mutate_record(|r| {
            let files = r["files"].as_object_mut().unwrap();
            let entry = files.remove(&victim).unwrap();
            files.insert(evil.to_owned(), entry);
            for chunk in r["tensors"]["alpha.weight"]["chunks"]
                .as_array_mut()
                .unwrap()
            {
                if chunk["file"] == victim.as_str() {
                    chunk["file"] = json!(evil);
                }
            }
        });
        assert_damaged(&fx, &["metadata.json", evil], ShowSees::Damage);
    }
}

#[test]
fn dtype_disagreeing_with_the_byte_range() {
    let fx = Fixture::new();
    fx.mutate_record(|r| r["tensors"]["beta.weight"]["dtype"] = json!("F64"));
    assert_damaged(
        &fx,
        &["metadata.json", "beta.weight", "F64"],
        ShowSees::Damage,
    );
}

#[test]
fn symlinked_shard() {
    let fx = Fixture::new();
    let (file, name, _, _) = fx.shard_of("beta.weight");
    let outside = fx.tmp.path().join("outside.safetensors");
    std::fs::rename(&file, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &file).unwrap();
    let report = assert_damaged(&fx, &[&name, "symbolic link"], ShowSees::Damage);
    assert_eq!(report["problems"][0]["kind"], "symlink_refused");
}

#[test]
fn several_problems_are_all_listed() {
    let fx = Fixture::new();
    let (alpha, alpha_name, start, _) = fx.shard_of("alpha.weight");
    let (beta, beta_name, _, _) = fx.shard_of("beta.weight");
    let mut raw = std::fs::read(&alpha).unwrap();
    raw[start as usize + 10] ^= 1;
    raw[start as usize + 3000] ^= 1;
    std::fs::write(&alpha, &raw).unwrap();
    std::fs::remove_file(&beta).unwrap();
    // `show` stops at the first problem (the missing file); `verify` lists them all.
    let report = assert_damaged(&fx, &[&beta_name], ShowSees::Damage);
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        3,
        "{report:#}"
    );
    let text = stdout(&fx.verify());
    assert_eq!(text.matches(alpha_name.as_str()).count(), 2, "{text}");
    assert_eq!(
        text.lines().count(),
        4,
        "three problems and a summary: {text}"
    );
    assert!(text.contains("FAILED: 3 problems"), "{text}");
}

#[test]
fn a_nonexistent_path_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-checkpoint");
    for command in ["show", "verify"] {
        let out = waypoint(&[command, missing.to_str().unwrap()]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("no-such-checkpoint"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn bad_usage_exits_2() {
    let fx = Fixture::new();
    for args in [
        vec!["show", "--no-such-flag", &fx.ckpt_str()],
        vec!["verify"],
        vec!["frobnicate"],
        vec![],
        vec!["bench", "--size", "12 parsecs"],
        vec!["bench", "--size", "1KiB"],
        vec!["bench", "--size", "1MiB", "--tensors", "0"],
        vec!["bench", "--size", "1MiB", "--tensors", "262145"],
        vec!["bench", "--tensors", "-3"],
    ] {
        let out = waypoint(&args);
        assert_exit(&out, 2);
        assert!(!stderr(&out).is_empty(), "{args:?} printed no error");
    }
    // A --dir that cannot be created (a file is in the way; a missing one is created).
    let file = fx.tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let below = file.join("waypoint-bench");
    let out = waypoint(&["bench", "--dir", below.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains(below.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_directory_without_a_record_is_not_a_checkpoint() {
    let fx = Fixture::new();
    // The parent directory holds a checkpoint: the error says so.
    let parent = fx.tmp.path().to_str().unwrap().to_owned();
    for command in ["show", "verify"] {
        let out = waypoint(&[command, &parent]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("not a committed checkpoint"), "{err}");
        assert!(err.contains("weights/metadata.json"), "{err}");
        assert!(err.contains("hint"), "{err}");
        assert!(err.contains(&fx.ckpt_str()), "{err}");
    }
    // A checkpoint whose record is gone: no hint, just the file it lacks.
    std::fs::remove_file(fx.weights().join("metadata.json")).unwrap();
    let out = fx.verify();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("not a committed checkpoint"));
    assert!(!stderr(&out).contains("hint"));
}

#[test]
fn the_hint_names_at_most_five_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let data = [0u8; 4];
    for step in 0..7 {
        let tensors = vec![TensorRef::whole("w", Dtype::U8, vec![4], &data[..])];
        checkpointer
            .save(
                &StoragePath::new(&format!("step-{step}")).unwrap(),
                &CheckpointMeta::at_step(step),
                &tensors,
                &(),
            )
            .unwrap();
    }
    std::fs::create_dir(tmp.path().join("not-a-checkpoint")).unwrap();
    let out = waypoint(&["show", tmp.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("step-0, step-1, step-2, step-3, step-4 (and 2 more)"),
        "{err}"
    );
    assert!(!err.contains("not-a-checkpoint"), "{err}");
}

#[test]
fn no_escape_codes_without_a_terminal_or_with_no_color() {
    let fx = Fixture::new();
    std::fs::write(fx.weights().join("stray"), b"x").unwrap();
    for env in [&[][..], &[("NO_COLOR", "1")][..]] {
        for command in ["show", "verify"] {
            for json in [false, true] {
                let mut args = vec![command];
                if json {
                    args.push("--json");
                }
                let ck = fx.ckpt_str();
                args.push(&ck);
                let out = waypoint_with(&args, env);
                assert_no_panic(&out);
                assert!(
                    !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
                    "{args:?} {env:?}: {}",
                    printed(&out)
                );
            }
        }
    }
}

#[test]
fn control_characters_from_the_checkpoint_are_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let data = [0u8; 4];
    let tensors = vec![TensorRef::whole(
        "evil\x1b[2Jname\nnext",
        Dtype::U8,
        vec![4],
        &data[..],
    )];
    checkpointer
        .save(
            &StoragePath::new("c").unwrap(),
            &CheckpointMeta::at_step(1),
            &tensors,
            &json!({"k\x1b": "v\u{9b}"}),
        )
        .unwrap();
    let out = waypoint(&["show", tmp.path().join("c").to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(!out.stdout.contains(&0x1b), "{}", stdout(&out));
    assert!(!stdout(&out).contains('\u{9b}'), "{}", stdout(&out));
    assert!(stdout(&out).contains("evil\\u{1b}[2Jname\\nnext"));
    let out = waypoint(&["show", "--json", tmp.path().join("c").to_str().unwrap()]);
    assert_eq!(
        parse_json(&out)["tensors"][0]["name"],
        "evil\x1b[2Jname\nnext"
    );
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let data = vec![0u8; 16];
    let names: Vec<String> = (0..2000)
        .map(|i| format!("model.layers.{i:04}.self_attention.query_projection.weight"))
        .collect();
    let tensors: Vec<TensorRef<'_>> = names
        .iter()
        .map(|n| TensorRef::whole(n.as_str(), Dtype::F32, vec![4], data.as_slice()))
        .collect();
    checkpointer
        .save(
            &StoragePath::new("c").unwrap(),
            &CheckpointMeta::at_step(1),
            &tensors,
            &(),
        )
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["show", tmp.path().join("c").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        // `| head -1`: read one line, then close the pipe with most of the output unread
        // (about 180 KB, more than a pipe buffers).
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("checkpoint"), "{line:?}");
    }
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = waypoint(&["--help"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for expected in ["Exit codes", "0 ", "1 ", "2 ", "show", "verify", "bench"] {
        assert!(text.contains(expected), "{expected:?} missing: {text}");
    }
    for command in ["show", "verify", "bench"] {
        let out = waypoint(&[command, "--help"]);
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("Exit codes"), "{command}");
    }
}

#[test]
fn logs_go_to_stderr() {
    let fx = Fixture::new();
    let out = waypoint_with(
        &["show", "--json", &fx.ckpt_str()],
        &[("RUST_LOG", "debug")],
    );
    assert_exit(&out, 0);
    parse_json(&out); // stdout stays pure JSON
    assert!(
        stderr(&out).contains("resolved checkpoint"),
        "{}",
        stderr(&out)
    );
}

/// Regression guard: the checkpoint's own directory may be reached through a link; only links
/// *inside* it are refused.
#[test]
fn a_linked_checkpoint_directory_is_followed() {
    let fx = Fixture::new();
    let link = fx.tmp.path().join("latest");
    std::os::unix::fs::symlink(fx.ckpt(), &link).unwrap();
    let out = waypoint(&["verify", link.to_str().unwrap()]);
    assert_exit(&out, 0);
}

/// The fixture's helper paths are what the binary prints (canonical, absolute).
#[test]
fn printed_paths_are_canonical() {
    let fx = Fixture::new();
    let out = fx.show();
    let canonical = fx.ckpt().canonicalize().unwrap();
    assert!(
        stdout(&out).contains(canonical.to_str().unwrap()),
        "{}",
        stdout(&out)
    );
    assert!(Path::new(&canonical).is_absolute());
}

#[test]
fn show_says_which_rank_wrote_what() {
    use std::sync::Arc;
    use waypoint::dist::{Coordinator, ThreadGroup};
    let tmp = tempfile::tempdir().unwrap();
    let storage = local_storage(tmp.path()).unwrap();
    let dir = StoragePath::new("ckpt").unwrap();
    std::thread::scope(|s| {
        for group in ThreadGroup::new(3) {
            let (storage, dir) = (storage.clone(), dir.clone());
            s.spawn(move || {
                let rank = group.rank();
                // "w": rows sharded over the 3 ranks; "b": replicated (written once);
                // "only2": held by rank 2 alone.
                let rows = vec![rank as u8; 2 * 4];
                let bias = vec![7u8; 4];
                let only = vec![2u8; 3];
                let mut w = TensorRef::whole("w", Dtype::U8, vec![2, 4], &rows);
                w.global_shape = vec![6, 4];
                w.offsets = vec![2 * rank, 0];
                let mut tensors = vec![w, TensorRef::whole("b", Dtype::U8, vec![4], &bias)];
                if rank == 2 {
                    tensors.push(TensorRef::whole("only2", Dtype::U8, vec![3], &only));
                }
                Checkpointer::new(storage)
                    .with_coordinator(Arc::new(group))
                    .save(&dir, &CheckpointMeta::at_step(5), &tensors, &())
                    .unwrap();
            });
        }
    });
    let ckpt = tmp.path().join("ckpt");
    let out = waypoint(&["show", ckpt.to_str().unwrap()]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for rank in 0..3 {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("rank {rank} "))
                    && l.contains("1 file")),
            "rank {rank} missing:\n{text}"
        );
    }
    let row = |name: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert!(text.contains("RANKS"), "{text}");
    assert_eq!(row("w").last().unwrap(), "0-2");
    assert_eq!(row("only2").last().unwrap(), "2");
    assert_eq!(
        row("b").len(),
        7,
        "b is written by one rank: {:?}",
        row("b")
    );

    let out = waypoint(&["show", "--json", ckpt.to_str().unwrap()]);
    assert_exit(&out, 0);
    let v = parse_json(&out);
    assert_eq!(v["world_size"], 3);
    let ranks: Vec<u64> = v["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, vec![0, 1, 2]);
    let w = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "w")
        .unwrap();
    assert_eq!(w["ranks"], json!([0, 1, 2]));
}
