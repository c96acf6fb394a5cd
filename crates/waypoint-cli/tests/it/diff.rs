//! `waypoint diff`, run for real: checkpoints saved with the library in a temporary directory per
//! test (one rank, or four `ThreadGroup` ranks sharding by rows), compared by the binary; the exit
//! code (0 equal, 1 different, 2 error) and what it printed are checked.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use waypoint::dist::ThreadGroup;
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{CheckpointMeta, Checkpointer, Dtype, SaveOptions, TensorRef};

fn diff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("diff")
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8(out.stdout.clone()).unwrap(),
        String::from_utf8(out.stderr.clone()).unwrap(),
    )
}

fn assert_exit(out: &Output, code: i32) {
    let (stdout, stderr) = text(out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

fn diff_json(a: &Path, b: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec![a.to_str().unwrap(), b.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = diff(&args);
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", text(&out)));
    (out.status.code(), value)
}

/// A tensor to save: name, dtype, shape, little-endian bytes.
type Spec = (&'static str, Dtype, Vec<u64>, Vec<u8>);

fn f32s(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// The base state: `w` F32 [8, 16] (i / 4), `n` I32 [10], `b` BF16 [6], `h` F16 [6].
fn base() -> Vec<Spec> {
    let halfs = [0.5f32, 1.0, 1.5, 2.0, -3.0, 0.0];
    vec![
        (
            "w",
            Dtype::F32,
            vec![8, 16],
            f32s((0..128).map(|i| i as f32 / 4.0)),
        ),
        (
            "n",
            Dtype::I32,
            vec![10],
            (0..10i32).flat_map(i32::to_le_bytes).collect(),
        ),
        (
            "b",
            Dtype::BF16,
            vec![6],
            halfs
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (
            "h",
            Dtype::F16,
            vec![6],
            halfs
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
    ]
}

/// Saves `tensors` as checkpoint `name` in `root` (one rank, 256-byte checksum blocks).
fn save(root: &Path, name: &str, tensors: &[Spec], user: &Value) -> std::path::PathBuf {
    let checkpointer = Checkpointer::new(local_storage(root).unwrap()).with_options(SaveOptions {
        block_size: 256,
        ..Default::default()
    });
    let refs: Vec<TensorRef<'_>> = tensors
        .iter()
        .map(|(n, d, s, b)| TensorRef::whole(*n, *d, s.clone(), b.as_slice()))
        .collect();
    let meta = CheckpointMeta::at_step(100);
    checkpointer
        .save(&StoragePath::new(name).unwrap(), &meta, &refs, user)
        .unwrap();
    root.join(name)
}

/// Saves the base state from 4 ranks: `w` sharded by rows (2 rows each), the rest held by rank 0.
fn save_four_ranks(root: &Path, name: &str, user: &Value) -> std::path::PathBuf {
    let state = base();
    let dir = StoragePath::new(name).unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(4)
            .into_iter()
            .map(|group| {
                let (state, dir) = (&state, &dir);
                s.spawn(move || {
                    let rank = waypoint::dist::Coordinator::rank(&group);
                    let checkpointer = Checkpointer::new(local_storage(root).unwrap())
                        .with_options(SaveOptions {
                            block_size: 256,
                            ..Default::default()
                        })
                        .with_coordinator(Arc::new(group));
                    let (wname, wdtype, wshape, wbytes) = &state[0];
                    let row = 16 * 4;
                    let start = rank as usize * 2 * row;
                    let mut refs = vec![TensorRef::chunk(
                        *wname,
                        *wdtype,
                        wshape.clone(),
                        vec![rank * 2, 0],
                        vec![2, 16],
                        &wbytes[start..start + 2 * row],
                    )];
                    if rank == 0 {
                        for (n, d, sh, b) in &state[1..] {
                            refs.push(TensorRef::whole(*n, *d, sh.clone(), b.as_slice()));
                        }
                    }
                    checkpointer.save(dir, &CheckpointMeta::at_step(100), &refs, user)
                })
            })
            .collect();
        for j in joins {
            j.join().unwrap().unwrap();
        }
    });
    root.join(name)
}

/// `tensors` with element `index` of tensor `name` replaced by `bytes`.
fn with_element(mut tensors: Vec<Spec>, name: &str, index: usize, bytes: &[u8]) -> Vec<Spec> {
    let spec = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    let at = index * bytes.len();
    spec.3[at..at + bytes.len()].copy_from_slice(bytes);
    tensors
}

#[test]
fn identical_checkpoints_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({"step": 10}));
    let b = save(tmp.path(), "b", &base(), &json!({"step": 10}));
    let out = diff(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(text(&out).0.starts_with("identical:"), "{:?}", text(&out));
    let (code, value) = diff_json(&a, &b, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(value["equal"], true);
    assert_eq!(value["summary"]["identical"], 4);
    assert_eq!(value["tensors"], json!([]));
}

#[test]
fn one_changed_f32_value_is_named_with_its_difference_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    // Element [1, 2] (flat 18) was 4.5; now 5.0.
    let changed = with_element(base(), "w", 18, &5.0f32.to_le_bytes());
    let b = save(tmp.path(), "b", &changed, &json!({}));
    let out = diff(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_exit(&out, 1);
    let stdout = text(&out).0;
    assert!(stdout.starts_with("differ:"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains(" w ")).unwrap();
    assert!(line.contains("changed"), "{line}");
    assert!(line.contains("1 of 128 elements differ"), "{line}");
    assert!(line.contains("max abs diff 0.5"), "{line}");
    assert!(line.contains("first at [1, 2]"), "{line}");
    assert!(!stdout.contains('\x1b'), "colour on a pipe: {stdout}");
    let (code, value) = diff_json(&a, &b, &[]);
    assert_eq!(code, Some(1));
    let w = &value["tensors"][0];
    assert_eq!(
        (w["name"].as_str(), w["status"].as_str()),
        (Some("w"), Some("changed"))
    );
    assert_eq!(w["values"]["first_index"], json!([1, 2]));
    assert_eq!(w["values"]["max_abs"], 0.5);
    assert_eq!(w["values"]["differing"], 1);
}

#[test]
fn bf16_and_f16_values_are_compared_by_value() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    let changed = with_element(base(), "b", 3, &half::bf16::from_f32(2.5).to_le_bytes());
    let changed = with_element(changed, "h", 4, &half::f16::from_f32(-2.0).to_le_bytes());
    let b = save(tmp.path(), "b", &changed, &json!({}));
    let (code, value) = diff_json(&a, &b, &[]);
    assert_eq!(code, Some(1));
    let by_name = |n: &str| {
        value["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    let (bf, hf) = (by_name("b"), by_name("h"));
    assert_eq!(
        (
            bf["values"]["kind"].as_str(),
            bf["values"]["max_abs"].as_f64()
        ),
        (Some("float"), Some(0.5))
    );
    assert_eq!(bf["values"]["first_index"], json!([3]));
    assert_eq!(bf["values"]["max_rel"], 0.2);
    assert_eq!(
        (
            hf["values"]["max_abs"].as_f64(),
            hf["values"]["first_index"].clone()
        ),
        (Some(1.0), json!([4]))
    );
    // Within 1.0 of each other: equal under the tolerance.
    let (code, value) = diff_json(&a, &b, &["--tolerance", "1.0"]);
    assert_eq!(code, Some(0), "{value}");
    assert_eq!(value["summary"]["within_tolerance"], 2);
}

#[test]
fn an_integer_change_reports_the_count_and_first_index() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    let changed = with_element(base(), "n", 7, &70i32.to_le_bytes());
    let changed = with_element(changed, "n", 5, &50i32.to_le_bytes());
    let b = save(tmp.path(), "b", &changed, &json!({}));
    let (code, value) = diff_json(&a, &b, &["--tolerance", "1000"]);
    assert_eq!(code, Some(1), "integers ignore the tolerance");
    let n = &value["tensors"][0];
    assert_eq!(
        (
            n["values"]["differing"].as_u64(),
            n["values"]["first_index"].clone()
        ),
        (Some(2), json!([5]))
    );
    assert_eq!(n["values"]["max_abs"], Value::Null);
}

#[test]
fn added_removed_retyped_and_reshaped_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = base();
    first.push(("gone", Dtype::U8, vec![4], vec![1, 2, 3, 4]));
    let a = save(tmp.path(), "a", &first, &json!({}));
    let mut second = base();
    second.push(("new", Dtype::U8, vec![2], vec![1, 2]));
    second[1] = ("n", Dtype::U32, vec![10], second[1].3.clone()); // I32 → U32
    second[0].2 = vec![16, 8]; // [8, 16] → [16, 8]
    let b = save(tmp.path(), "b", &second, &json!({}));
    let out = diff(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_exit(&out, 1);
    let stdout = text(&out).0;
    for want in [
        "added    new U8 [2]",
        "removed  gone U8 [4]",
        "dtype    n I32 [10] → U32 [10]",
        "shape    w F32 [8, 16] → F32 [16, 8]",
    ] {
        assert!(stdout.contains(want), "{want:?} not in {stdout}");
    }
    let (_, value) = diff_json(&a, &b, &[]);
    let summary = &value["summary"];
    for key in ["added", "removed", "dtype_changed", "shape_changed"] {
        assert_eq!(summary[key], 1, "{key}: {value}");
    }
}

#[test]
fn trainer_state_differences_are_json_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(
        tmp.path(),
        "a",
        &base(),
        &json!({"step": 10, "opt": {"lr": 0.1}}),
    );
    let b = save(
        tmp.path(),
        "b",
        &base(),
        &json!({"step": 12, "opt": {"lr": 0.1}, "seed": 7}),
    );
    let out = diff(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_exit(&out, 1);
    let stdout = text(&out).0;
    assert!(stdout.contains("user.step: 10 → 12"), "{stdout}");
    assert!(stdout.contains("user.seed: (absent) → 7"), "{stdout}");
    assert!(!stdout.contains("user.opt"), "{stdout}");
    let (_, value) = diff_json(&a, &b, &[]);
    assert_eq!(
        value["state"],
        json!([
            {"path": "user.seed", "change": "added", "a": null, "b": 7},
            {"path": "user.step", "change": "changed", "a": 10, "b": 12},
        ])
    );
}

#[test]
fn a_tolerance_makes_a_tiny_difference_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    // Element 127 of `w`: 31.75 → 31.75001 (a difference of about 1e-5).
    let changed = with_element(base(), "w", 127, &31.750_01f32.to_le_bytes());
    let b = save(tmp.path(), "b", &changed, &json!({}));
    assert_eq!(diff_json(&a, &b, &[]).0, Some(1));
    assert_eq!(diff_json(&a, &b, &["--tolerance", "1e-4"]).0, Some(0));
    assert_eq!(
        diff_json(&a, &b, &["--tolerance", "0,1e-6"]).0,
        Some(0),
        "relative: 1e-5 <= 31.75e-6"
    );
    assert_eq!(diff_json(&a, &b, &["--tolerance", "1e-7"]).0, Some(1));
    let out = diff(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--tolerance",
        "-1",
    ]);
    assert_exit(&out, 2);
}

#[test]
fn four_ranks_and_one_rank_of_the_same_state_compare_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let user = json!({"step": 10});
    let four = save_four_ranks(tmp.path(), "four", &user);
    let one = save(tmp.path(), "one", &base(), &user);
    let (code, value) = diff_json(&four, &one, &[]);
    assert_eq!(code, Some(0), "{value}");
    assert_eq!(value["summary"]["identical"], 4);
    // A change in rank 3's rows is found across the different chunking.
    let changed = with_element(base(), "w", 7 * 16 + 15, &0.0f32.to_le_bytes());
    let other = save(tmp.path(), "other", &changed, &user);
    let (code, value) = diff_json(&four, &other, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(value["tensors"][0]["values"]["first_index"], json!([7, 15]));
}

#[test]
fn a_missing_or_invalid_checkpoint_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    let missing = tmp.path().join("nope");
    let out = diff(&[a.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out).1.contains("nope"), "{:?}", text(&out));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = diff(&[empty.to_str().unwrap(), a.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out).1.contains("empty"), "{:?}", text(&out));
    let record = a.join("weights/metadata.json");
    std::fs::write(&record, b"{not json").unwrap();
    let out = diff(&[a.to_str().unwrap(), a.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out).1.contains("metadata.json"), "{:?}", text(&out));
}

/// Flips the first data byte of tensor `name` in checkpoint `dir`'s shard file.
fn damage(dir: &Path, name: &str) -> std::path::PathBuf {
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("weights/metadata.json")).unwrap()).unwrap();
    let chunk = &record["tensors"][name]["chunks"][0];
    let file = dir.join("weights").join(chunk["file"].as_str().unwrap());
    let at = chunk["byte_range"][0].as_u64().unwrap() as usize;
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    file
}

#[test]
fn a_damaged_block_that_must_be_read_exits_2_and_equal_crcs_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(tmp.path(), "a", &base(), &json!({}));
    let changed = with_element(base(), "w", 18, &5.0f32.to_le_bytes());
    let b = save(tmp.path(), "b", &changed, &json!({}));
    // `n` has the same block checksums in both records: the fast path decides without reading,
    // so damage there is `verify`'s to find, not diff's.
    damage(&b, "n");
    assert_eq!(diff_json(&a, &b, &[]).0, Some(1));
    // `w`'s checksums differ, so it is read, and the damaged block is an error naming the file.
    let file = damage(&b, "w");
    let out = diff(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_exit(&out, 2);
    let stderr = text(&out).1;
    assert!(
        stderr.contains(file.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
}
