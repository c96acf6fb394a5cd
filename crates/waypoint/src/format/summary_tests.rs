#![allow(clippy::unwrap_used)]
use super::*;
use crate::format::{FORMAT_NAME, FileEntry, Reserved, TrainerState};
use serde_json::json;
use std::collections::BTreeMap;

fn record(step: u64, policy: Option<serde_json::Value>, run: Option<RunFacts>) -> CommitRecord {
    let mut files = BTreeMap::new();
    for (name, size) in [("__0_0.safetensors", 8192u64), ("__1_0.safetensors", 4096)] {
        let rank = if name.starts_with("__0") { 0 } else { 1 };
        files.insert(
            name.to_owned(),
            FileEntry {
                rank,
                size,
                header_len: 4096,
                header_crc32c: 7,
                carried_from: None,
            },
        );
    }
    CommitRecord {
        format: FORMAT_NAME.into(),
        format_version: 1,
        producer: "test".into(),
        step,
        epoch: 3,
        world_size: 2,
        block_size: 1 << 20,
        files,
        tensors: BTreeMap::new(),
        trainer_state: TrainerState {
            user: json!({"lr": 0.1}),
            waypoint: Reserved {
                model_checkpoint: policy,
                run,
                ..Reserved::default()
            },
        },
    }
}

fn p() -> &'static Path {
    Path::new("ck/summary.json")
}

/// What a summary copies of a record, case by case.
#[test]
fn of_a_record() {
    let facts = RunFacts {
        completed: true,
        weights_only: true,
        experiment: "demo".into(),
        version: Some("v1".into()),
    };
    let big_top_k: Vec<serde_json::Value> = (0..2000)
        .map(|i| json!({"name": format!("demo--step={i:06}"), "score": i}))
        .collect();
    // (policy state, run facts, expected model_checkpoint, omitted, completed, weights_only)
    let table = [
        (None, None, None, false, false, false),
        (None, Some(facts.clone()), None, false, true, true),
        (
            Some(
                json!({"monitor": "val_loss", "mode": "min", "top_k": [{"name": "a", "score": "nan"}],
                        "last_model_path": "a-last", "saved": {"a": 3}, "dirpath": "/x"}),
            ),
            None,
            Some(
                json!({"monitor": "val_loss", "mode": "min", "top_k": [{"name": "a", "score": "nan"}],
                        "last_model_path": "a-last"}),
            ),
            false,
            false,
            false,
        ),
        // Keys absent from the state stay absent.
        (
            Some(json!({"top_k": []})),
            None,
            Some(json!({"top_k": []})),
            false,
            false,
            false,
        ),
        // Too large to copy: left out, and said so.
        (
            Some(json!({"top_k": big_top_k})),
            None,
            None,
            true,
            false,
            false,
        ),
        // Not the policy's shape: nothing to copy.
        (Some(json!([1, 2])), None, None, false, false, false),
    ];
    for (i, (policy, run, want, omitted, completed, weights_only)) in table.into_iter().enumerate()
    {
        let record = record(40, policy, run.clone());
        let bytes = record.to_json();
        let s = Summary::of(&record, &bytes);
        let want = want.map(|v| v.as_object().unwrap().clone());
        assert_eq!(s.model_checkpoint, want, "case {i}");
        assert_eq!(s.model_checkpoint_omitted, omitted, "case {i}");
        assert_eq!((s.completed(), s.weights_only()), (completed, weights_only));
        assert_eq!(s.run, run, "case {i}");
        assert_eq!(
            (
                s.step,
                s.epoch,
                s.world_size,
                s.files,
                s.file_bytes,
                s.tensors
            ),
            (40, 3, 2, 2, 12288, 0),
            "case {i}"
        );
        assert_eq!(s.binding(), RecordBinding::of(&bytes), "case {i}");
        let written = s.to_json();
        assert!(written.len() < 1024, "case {i}: {} bytes", written.len());
        assert_eq!(Summary::from_json(&written, p()).unwrap(), s, "case {i}");
    }
}

/// The bytes a writer commits: compact JSON, the checksum last, readable by any JSON parser.
#[test]
fn the_file_is_json_with_its_checksum_last() {
    let record = record(7, Some(json!({"monitor": "loss", "top_k": []})), None);
    let bytes = Summary::committed_bytes(&record, &record.to_json(), p()).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["format"], "waypoint-summary");
    assert_eq!(value["step"], 7);
    let at = text.rfind(",\"crc32c\":").unwrap();
    let crc = crc32c::crc32c(&bytes[..at]);
    assert_eq!(value["crc32c"], crc);
    assert!(text.ends_with(&format!(",\"crc32c\":{crc}}}")), "{text}");
}

/// Every way a summary file can be wrong is refused with a reason, never believed.
#[test]
fn refusals() {
    let record = record(12, None, None);
    let good = Summary::of(&record, &record.to_json()).to_json();
    let text = String::from_utf8(good.clone()).unwrap();
    let with_crc = |body: &str| {
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body},\"crc32c\":{crc}}}")
    };
    let body = &text[..text.rfind(",\"crc32c\":").unwrap()];
    let table: Vec<(String, &str)> = vec![
        // A digit changed: the checksum no longer matches.
        (text.replace("\"step\":12", "\"step\":92"), "CRC-32C"),
        // The checksum itself damaged.
        (text.replace(",\"crc32c\":", ",\"crc32c\":9"), "CRC-32C"),
        // Truncated (a torn copy), or pretty-printed by an editor.
        (text[..text.len() - 3].to_owned(), "crc32c"),
        (
            serde_json::to_string_pretty(
                &serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            )
            .unwrap(),
            "crc32c",
        ),
        (String::new(), "crc32c"),
        (",\"crc32c\":1}".to_owned(), "CRC-32C"),
        // Checksummed, but not a summary of this format or version.
        (
            with_crc(&body.replace("waypoint-summary", "other")),
            "format",
        ),
        (
            with_crc(&body.replace("\"format_version\":1", "\"format_version\":2")),
            "format_version",
        ),
        (
            with_crc(&body.replace("\"format_version\":1", "\"format_version\":0")),
            "format_version",
        ),
        (
            with_crc(&body.replace("\"step\":12", "\"step\":-1")),
            "not a summary",
        ),
        (with_crc(&body.replace("\"step\":12,", "")), "not a summary"),
        (with_crc("{\"a\":1"), "not a summary"),
        (
            with_crc(&body.replace(
                &format!("\"record_len\":{}", record.to_json().len()),
                "\"record_len\":99999999999999",
            )),
            "record_len",
        ),
        // Larger than any summary.
        (format!("{}{}", " ".repeat(70_000), text), "limit"),
    ];
    for (i, (bytes, why)) in table.into_iter().enumerate() {
        let err = Summary::from_json(bytes.as_bytes(), p()).unwrap_err();
        let Error::InvalidSummary { path, reason } = &err else {
            panic!("case {i}: {err:?}");
        };
        assert_eq!(path, p(), "case {i}");
        assert!(reason.contains(why), "case {i}: {reason}");
        assert!(err.to_string().contains("commit record is read instead"));
    }
    // What a reader tolerates: trailing whitespace (a newline), keys it does not know.
    let mut newline = good.clone();
    newline.extend_from_slice(b"\n");
    assert!(Summary::from_json(&newline, p()).is_ok());
    let extra = with_crc(&body.replace("\"step\":12", "\"step\":12,\"future\":[1]"));
    assert_eq!(Summary::from_json(extra.as_bytes(), p()).unwrap().step, 12);
}

/// The binding tells one record from another, even one of the same length.
#[test]
fn the_binding_tells_records_apart() {
    let a = record(10, None, None).to_json();
    let b = record(20, None, None).to_json();
    assert_eq!(a.len(), b.len());
    assert_ne!(RecordBinding::of(&a), RecordBinding::of(&b));
    assert_eq!(RecordBinding::of(&a), RecordBinding::of(&a.clone()));
}
