//! The commands on torch distributed checkpoints, judged by the real torch: `show` and `verify`
//! on a DCP directory torch saved (two ranks, DTensor shards), `convert` to waypoint and back to
//! DCP with torch's `dcp.load` reading the result bit for bit, and `export --hf` read by the
//! `safetensors` package. torch comes from the test venv (`WAYPOINT_PYTHON`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

fn waypoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = waypoint(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "waypoint {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs `tests/python/dcp_torch.py <args>`; returns its output, panicking unless it exits 0.
fn torch(args: &[&str]) -> String {
    let script = test_python::scripts_dir().join("dcp_torch.py");
    let out = Command::new(test_python::python())
        .arg(script)
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dcp_torch.py {args:?}:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// torch saves (`save` or `save2`) into `tmp/torch`; returns it and the manifest path.
fn saved(tmp: &TempDir, mode: &str) -> (PathBuf, PathBuf) {
    let dir = tmp.path().join("torch");
    let manifest = tmp.path().join("manifest.json");
    torch(&[mode, s(&dir), s(&manifest)]);
    (dir, manifest)
}

#[test]
fn torch_dcp_shows_verifies_and_round_trips_through_waypoint_into_dcp_load() {
    let tmp = TempDir::new().unwrap();
    let (dir, manifest) = saved(&tmp, "save2");
    let shown: Value = serde_json::from_str(&ok(&["show", s(&dir), "--json"])).unwrap();
    assert_eq!(shown["format"], "torch-dcp");
    assert_eq!(shown["tensors"]["w_col"]["dtype"], "BF16");
    assert_eq!(
        shown["tensors"]["w_row"]["chunks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(shown["objects"], serde_json::json!(["step"]));
    assert!(ok(&["verify", s(&dir)]).contains("OK: 4 tensors"));

    let ours = tmp.path().join("ours");
    ok(&["convert", s(&dir), s(&ours), "--to", "waypoint"]);
    ok(&["verify", s(&ours)]);
    let record: Value = serde_json::from_str(&ok(&["show", s(&ours), "--json"])).unwrap();
    assert_eq!(record["step"], 42, "{record}");
    let back = tmp.path().join("back");
    ok(&["convert", s(&ours), s(&back), "--to", "dcp"]);
    let out = torch(&["load", s(&back), s(&manifest)]);
    assert!(out.trim_end().ends_with("OK"), "{out}");

    // A truncated .distcp: verify exits 1 and names the file.
    let file = dir.join("__1_0.distcp");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = waypoint(&["verify", s(&dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("__1_0.distcp"));
}

#[test]
fn export_hf_is_read_by_safetensors_whole_and_sharded() {
    let tmp = TempDir::new().unwrap();
    let (dir, manifest) = saved(&tmp, "save");
    // torch's tensors carry a "model." prefix; the export strips it.
    let hf = tmp.path().join("hf");
    ok(&[
        "export",
        s(&dir),
        "--hf",
        s(&hf),
        "--strip-prefix",
        "model.",
    ]);
    assert!(hf.join("model.safetensors").is_file());
    let out = torch(&["hf", s(&hf), s(&manifest), "model."]);
    assert!(out.contains("1 files; OK"), "{out}");
    // Sharded above 64 KiB, in name order: "big" (300 KB) gets a file of its own.
    let sharded = tmp.path().join("sharded");
    ok(&[
        "export",
        s(&dir),
        "--hf",
        s(&sharded),
        "--strip-prefix",
        "model.",
        "--max-shard-size",
        "64KiB",
    ]);
    let index: Value = serde_json::from_slice(
        &std::fs::read(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["weight_map"]["big"], "model-00002-of-00003.safetensors",
        "{index}"
    );
    let out = torch(&["hf", s(&sharded), s(&manifest), "model."]);
    assert!(out.contains("3 files; OK"), "{out}");
}
