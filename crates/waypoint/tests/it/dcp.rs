//! torch distributed checkpoints (DCP) against the real torch: checkpoints torch saves (one
//! process with every dtype, strided views and objects; two ranks on gloo with DTensor shards) are
//! read by `waypoint::dcp::DcpReader` and compared bit for bit with what torch held; checkpoints
//! `DcpWriter` writes are loaded by `torch.distributed.checkpoint.load`; and damaged or hostile
//! directories are refused with an error naming the file and the tensor.
//!
//! torch comes from the test venv (`WAYPOINT_PYTHON`, see `test_python`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;
use waypoint::dcp::{DcpReader, DcpWriter, dtype};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/dcp_torch.py")
}

/// Runs `dcp_torch.py <args>`; panics with its output unless it exits 0.
fn torch(args: &[&str]) -> String {
    let out = Command::new(test_python::python())
        .arg(script())
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("start python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dcp_torch.py {args:?} failed:\n{text}");
    text
}

/// A checkpoint torch saved with `mode` (`save` or `save2`), and its manifest.
fn saved_by_torch(mode: &str) -> (TempDir, PathBuf, serde_json::Map<String, Value>) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("ckpt");
    let manifest = tmp.path().join("manifest.json");
    torch(&[mode, dir.to_str().unwrap(), manifest.to_str().unwrap()]);
    let entries: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    (tmp, dir, entries.as_object().unwrap().clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every tensor and object of `entries` reads back from `dir` exactly.
fn assert_matches(dir: &Path, entries: &serde_json::Map<String, Value>) {
    let reader = DcpReader::open(dir).unwrap();
    let meta = reader.metadata();
    assert_eq!(
        meta.tensors.len() + meta.objects.len(),
        entries.len(),
        "names: {:?} {:?}",
        meta.tensors.keys().collect::<Vec<_>>(),
        meta.objects
    );
    for (fqn, e) in entries {
        if let Some(expected) = e.get("object") {
            assert_eq!(&reader.load_object(fqn).unwrap(), expected, "object {fqn}");
            continue;
        }
        let t = reader.load_tensor(fqn).unwrap();
        let dtype = dtype::from_torch_name(e["dtype"].as_str().unwrap()).unwrap();
        let shape: Vec<u64> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!((t.dtype, &t.shape), (dtype, &shape), "tensor {fqn}");
        assert_eq!(hex(&t.data), e["hex"].as_str().unwrap(), "tensor {fqn} bytes");
    }
    assert_eq!(reader.verify(), vec![], "verify");
}

#[test]
fn every_dtype_view_and_object_torch_saves_reads_bit_for_bit() {
    let (_tmp, dir, entries) = saved_by_torch("save");
    assert_matches(&dir, &entries);
    let reader = DcpReader::open(&dir).unwrap();
    // A region of a tensor saved whole: rows 3..5, columns 2..7 of (16, 8) f32.
    let full = reader.load_tensor("model.f32").unwrap();
    let region = reader.load_region("model.f32", &[3, 2], &[2, 5]).unwrap();
    let mut expected = Vec::new();
    for row in 3..5 {
        expected.extend_from_slice(&full.data[(row * 8 + 2) * 4..(row * 8 + 7) * 4]);
    }
    assert_eq!(region.data, expected);
}

#[test]
fn two_rank_dtensor_shards_assemble_bit_for_bit() {
    let (_tmp, dir, entries) = saved_by_torch("save2");
    assert!(dir.join("__0_0.distcp").is_file() && dir.join("__1_0.distcp").is_file());
    assert_matches(&dir, &entries);
    let reader = DcpReader::open(&dir).unwrap();
    assert_eq!(reader.metadata().tensors["w_row"].chunks.len(), 2);
    // A region that straddles both ranks' rows of w_row (Shard(0) of (8, 6)).
    let full = reader.load_tensor("w_row").unwrap();
    let region = reader.load_region("w_row", &[3, 1], &[3, 4]).unwrap();
    let mut expected = Vec::new();
    for row in 3..6 {
        expected.extend_from_slice(&full.data[(row * 6 + 1) * 4..(row * 6 + 5) * 4]);
    }
    assert_eq!(region.data, expected);
}

#[test]
fn a_nemo_layout_is_found_under_weights() {
    let (tmp, dir, entries) = saved_by_torch("save");
    let nemo = tmp.path().join("nemo");
    std::fs::create_dir(&nemo).unwrap();
    std::fs::rename(&dir, nemo.join("weights")).unwrap();
    assert_matches(&nemo, &entries);
}

#[test]
fn checkpoints_waypoint_writes_load_in_torch() {
    // torch saves, waypoint reads and writes a copy (one chunk per rank for w_row), torch loads
    // the copy and compares with what it saved.
    let (tmp, dir, entries) = saved_by_torch("save2");
    let reader = DcpReader::open(&dir).unwrap();
    let copy = tmp.path().join("copy");
    let mut writer = DcpWriter::create(&copy).unwrap();
    for (fqn, t) in &reader.metadata().tensors {
        for (rank, c) in t.chunks.iter().enumerate() {
            let data = reader.load_region(fqn, &c.offsets, &c.sizes).unwrap();
            writer
                .add_chunk(rank as u64, fqn, t.dtype, &t.shape, &c.offsets, &c.sizes, &data.data)
                .unwrap();
        }
    }
    for fqn in &reader.metadata().objects {
        writer.add_object(fqn, &reader.load_object(fqn).unwrap()).unwrap();
    }
    writer.finish().unwrap();
    let manifest = tmp.path().join("manifest.json");
    let out = torch(&["load", copy.to_str().unwrap(), manifest.to_str().unwrap()]);
    assert!(out.trim_end().ends_with("OK"), "{out}");
    assert_matches(&copy, &entries);
}

