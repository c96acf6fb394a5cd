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

/// `Checkpointer::save_batches` (what `convert --to waypoint` streams through): batches lent one
/// at a time, chunks of one tensor in different batches, one commit; read back whole and by
/// region by the engine's reader.
#[test]
fn batches_lent_one_at_a_time_commit_one_checkpoint() {
    use waypoint::storage::{StoragePath, local_storage};
    use waypoint::{CheckpointMeta, Checkpointer, Dtype};
    let tmp = TempDir::new().unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let dir = StoragePath::new("step-3").unwrap();
    let row = |r: u8| {
        let mut t = TensorRef::whole("w", Dtype::U8, vec![1, 3], vec![r; 3]);
        (t.global_shape, t.offsets) = (vec![3, 3], vec![u64::from(r), 0]);
        t
    };
    let mut batches = vec![
        vec![
            row(0),
            TensorRef::whole("b", Dtype::F32, vec![2], vec![7u8; 8]),
        ],
        vec![],
        vec![row(1)],
        vec![row(2)],
    ]
    .into_iter();
    let mut asked = 0;
    let mut next = || {
        asked += 1;
        Ok(batches.next())
    };
    let report = checkpointer
        .save_batches(
            &dir,
            &CheckpointMeta::at_step(3),
            &mut next,
            &serde_json::json!({"k": 1}),
        )
        .unwrap();
    assert_eq!((asked, report.files, report.chunks), (5, 3, 4));
    let reader = checkpointer.open(&dir).unwrap();
    let opts = waypoint::LoadOptions::default();
    assert_eq!(
        reader.load_tensor("w", &opts).unwrap().data,
        [0, 0, 0, 1, 1, 1, 2, 2, 2]
    );
    assert_eq!(reader.load_tensor("b", &opts).unwrap().data, [7; 8]);
    let mut out = [0u8; 4];
    reader
        .read_region("w", &[1, 1], &[2, 2], &mut out, &opts)
        .unwrap();
    assert_eq!(out, [1, 1, 2, 2]);
    assert_eq!(reader.record().step, 3);
    assert_eq!(
        reader.user_state::<Value>().unwrap(),
        serde_json::json!({"k": 1})
    );
    assert!(
        checkpointer
            .verify(&dir, &mut |_| {})
            .unwrap()
            .problems
            .is_empty()
    );
}

/// A lender that fails, chunks that leave a gap, or batches that disagree on a tensor's shape:
/// the save fails and nothing is left in the parent directory (no checkpoint, no temporary).
#[test]
fn a_failing_lender_or_bad_batches_leave_nothing_visible() {
    use waypoint::storage::{StoragePath, local_storage};
    use waypoint::{CheckpointMeta, Checkpointer, Dtype, Error};
    let tmp = TempDir::new().unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let dir = StoragePath::new("step-1").unwrap();
    let chunk = |rows: u64, at: u64, of: u64| {
        let mut t = TensorRef::whole("w", Dtype::U8, vec![rows, 2], vec![1; 2 * rows as usize]);
        (t.global_shape, t.offsets) = (vec![of, 2], vec![at, 0]);
        t
    };
    let cases: Vec<(&str, Vec<Option<Vec<TensorRef<'static>>>>)> = vec![
        ("lender error", vec![Some(vec![chunk(1, 0, 2)]), None]),
        (
            "gap",
            vec![Some(vec![chunk(1, 0, 3)]), Some(vec![chunk(1, 2, 3)])],
        ),
        (
            "shapes disagree",
            vec![Some(vec![chunk(1, 0, 2)]), Some(vec![chunk(1, 1, 3)])],
        ),
    ];
    for (case, batches) in cases {
        let mut batches = batches.into_iter();
        let mut next = || match batches.next() {
            Some(Some(batch)) => Ok(Some(batch)),
            Some(None) => Err(Error::InvalidArgument {
                name: "source",
                reason: "unreadable".into(),
            }),
            None => Ok(None),
        };
        let err = checkpointer
            .save_batches(&dir, &CheckpointMeta::at_step(1), &mut next, &())
            .unwrap_err()
            .to_string();
        let expected = ["unreadable", "tensor", "disagree"];
        assert!(expected.iter().any(|e| err.contains(e)), "{case}: {err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{case}: {left:?} left after {err}");
    }
}

/// The engine's `CheckpointReader` opens a torch DCP directory (and a NeMo checkpoint holding
/// `weights/.metadata`) like one of ours: whole tensors, subsets, caller buffers and regions
/// across the ranks' chunks give the bytes torch wrote; the record is described from
/// `.metadata`.
#[test]
fn the_engine_reader_loads_a_torch_dcp_checkpoint_like_its_own() {
    use waypoint::storage::{StoragePath, local_storage};
    use waypoint::{Checkpointer, LoadOptions, RegionSlot};
    let (tmp, dir, entries) = saved_by_torch("save2");
    let nemo = tmp.path().join("nemo");
    std::fs::create_dir(&nemo).unwrap();
    std::fs::rename(&dir, nemo.join("weights")).unwrap();
    let checkpointer = Checkpointer::new(local_storage(tmp.path()).unwrap());
    let reader = checkpointer
        .open(&StoragePath::new("nemo").unwrap())
        .unwrap();
    let record = reader.record();
    assert_eq!(
        (record.format.as_str(), record.step, record.world_size),
        ("torch.distributed.checkpoint", 42, 2)
    );
    assert_eq!(record.tensors["w_row"].chunks.len(), 2);
    assert_eq!(reader.user_state::<Value>().unwrap()["step"], 42);
    let names: Vec<&str> = reader.tensor_names().collect();
    assert_eq!(names, ["bias", "w_col", "w_rep", "w_row"]);
    for verify_checksums in [true, false] {
        let opts = LoadOptions {
            verify_checksums,
            ..Default::default()
        };
        let all = reader.load_all(&opts).unwrap();
        for (name, t) in &all {
            assert_eq!(
                hex(&t.data),
                entries[name]["hex"].as_str().unwrap(),
                "{name}"
            );
        }
        let subset = reader.load_subset(&["w_col"], &opts).unwrap();
        assert_eq!(subset.len(), 1);
        assert_eq!(subset["w_col"].data, all["w_col"].data);
        assert_eq!(
            reader.view("w_rep", &opts).unwrap().as_ref(),
            &all["w_rep"].data[..]
        );
        // A box across both ranks' rows of w_row (Shard(0) of (8, 6)) and of w_col's columns
        // (Shard(1) of (4, 10), bf16).
        let row_major = |t: &[u8],
                         cols: usize,
                         elem: usize,
                         rows: std::ops::Range<usize>,
                         c: std::ops::Range<usize>| {
            rows.flat_map(|r| t[(r * cols + c.start) * elem..(r * cols + c.end) * elem].to_vec())
                .collect::<Vec<u8>>()
        };
        let mut out = vec![0u8; 3 * 4 * 4];
        reader
            .read_region("w_row", &[3, 1], &[3, 4], &mut out, &opts)
            .unwrap();
        assert_eq!(out, row_major(&all["w_row"].data, 6, 4, 3..6, 1..5));
        let mut cols = vec![0u8; 2 * 6 * 2];
        let mut slots = [RegionSlot {
            name: "w_col",
            dtype: waypoint::Dtype::BF16,
            global_shape: &[4, 10],
            offsets: &[1, 2],
            shape: &[2, 6],
            data: &mut cols,
        }];
        reader.load_regions(&mut slots, &opts).unwrap();
        assert_eq!(cols, row_major(&all["w_col"].data, 10, 2, 1..3, 2..8));
    }
    let err = reader
        .load_tensor("nope", &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
