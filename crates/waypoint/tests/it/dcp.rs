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
use waypoint::TensorRef;
use waypoint::dcp::{DcpReader, DcpWriter, dtype};

fn script() -> PathBuf {
    test_python::scripts_dir().join("dcp_torch.py")
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
    assert!(
        out.status.success(),
        "dcp_torch.py {args:?} failed:\n{text}"
    );
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
        assert_eq!(
            hex(&t.data),
            e["hex"].as_str().unwrap(),
            "tensor {fqn} bytes"
        );
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
                .add_chunk(
                    rank as u64,
                    &TensorRef::chunk(
                        fqn.as_str(),
                        t.dtype,
                        t.shape.clone(),
                        c.offsets.clone(),
                        c.sizes.clone(),
                        &data.data,
                    ),
                )
                .unwrap();
        }
    }
    for fqn in &reader.metadata().objects {
        writer
            .add_object(fqn, &reader.load_object(fqn).unwrap())
            .unwrap();
    }
    writer.finish().unwrap();
    let manifest = tmp.path().join("manifest.json");
    let out = torch(&["load", copy.to_str().unwrap(), manifest.to_str().unwrap()]);
    assert!(out.trim_end().ends_with("OK"), "{out}");
    assert_matches(&copy, &entries);
}

/// A small checkpoint written by `DcpWriter` (no torch needed): `w` (4, 3) f32 in two chunks
/// on two ranks, `b` (3,) i64, object `step`.
fn written(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("w");
    let mut writer = DcpWriter::create(&dir).unwrap();
    let w: Vec<u8> = (0..12u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let f32 = waypoint::Dtype::F32;
    writer
        .add_chunk(
            0,
            &TensorRef::chunk("w", f32, vec![4, 3], vec![0, 0], vec![2, 3], &w[..24]),
        )
        .unwrap();
    writer
        .add_chunk(
            1,
            &TensorRef::chunk("w", f32, vec![4, 3], vec![2, 0], vec![2, 3], &w[24..]),
        )
        .unwrap();
    let b: Vec<u8> = [7i64, -1, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    writer
        .add_chunk(0, &TensorRef::whole("b", waypoint::Dtype::I64, vec![3], &b))
        .unwrap();
    writer.add_object("step", &serde_json::json!(10)).unwrap();
    writer.finish().unwrap();
    dir
}

/// The error of loading every tensor and object of `dir` (opening included).
fn load_error(dir: &Path) -> String {
    let reader = match DcpReader::open(dir) {
        Ok(r) => r,
        Err(e) => return e.to_string(),
    };
    let problems = reader.verify();
    assert!(
        !problems.is_empty(),
        "no problem found in {}",
        dir.display()
    );
    problems[0].message.clone()
}

#[test]
fn damaged_files_are_errors_naming_file_and_tensor() {
    let tmp = TempDir::new().unwrap();
    let dir = written(&tmp);
    let reader = DcpReader::open(&dir).unwrap();
    assert_eq!(reader.verify(), vec![]);
    assert_eq!(reader.load_object("step").unwrap(), serde_json::json!(10));
    let item = reader.metadata().item("w", Some(&[2, 0])).unwrap().clone();

    // One flipped byte of w's second chunk's data: the CRC-32 check names file and tensor.
    let file = dir.join(&item.file);
    let original = std::fs::read(&file).unwrap();
    let mut bytes = original.clone();
    let start = item.offset as usize;
    let slice = &original[start..start + item.length as usize];
    let index = waypoint::dcp::zip::read_index(slice).unwrap();
    bytes[start + index.find("data/0").unwrap().start + 5] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("__1_0.distcp") && err.contains("\"w\""),
        "{err}"
    );

    // Truncated: the item runs past the end of its file.
    std::fs::write(&file, &original[..original.len() - 10]).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("__1_0.distcp") && err.contains("truncated"),
        "{err}"
    );

    // Not a zip where the metadata says an item starts (a safetensors-format DCP, for one).
    let mut shifted = vec![0u8; 8];
    shifted.extend_from_slice(&original);
    std::fs::write(&file, &shifted).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("not a torch.save archive"), "{err}");
    std::fs::write(&file, &original).unwrap();
    assert_eq!(DcpReader::open(&dir).unwrap().verify(), vec![]);

    // A .metadata that is not a pickle at all, or a hostile one.
    std::fs::write(
        dir.join(".metadata"),
        b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.",
    )
    .unwrap();
    let err = DcpReader::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains(".metadata") && err.contains("posix.system"),
        "{err}"
    );
}

#[test]
fn a_directory_without_metadata_is_not_a_dcp_checkpoint() {
    let tmp = TempDir::new().unwrap();
    let err = DcpReader::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a torch distributed checkpoint"), "{err}");
}
