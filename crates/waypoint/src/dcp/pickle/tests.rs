//! Table tests of the pickle machine: every supported opcode, every refused one, and hostile
//! inputs (a call of `os.system`, a memo bomb, deep nests, huge length fields, truncation, byte
//! flips) refused with an error, in bounded time and memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::dcp::metadata;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn json_of(bytes: &[u8]) -> Result<Value, String> {
    let p = parse(bytes, &Limits::default()).map_err(|e| e.to_string())?;
    p.to_json()
}

fn refused_with(bytes: &[u8], needle: &str) {
    let err = match parse(bytes, &Limits::default()) {
        Ok(p) => p.to_json().unwrap_err(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

#[test]
fn every_supported_opcode_reads_as_data() {
    let cases: &[(&[u8], Value)] = &[
        (b"\x80\x02N.", json!(null)),
        (b"\x80\x02\x88.", json!(true)),
        (b"\x80\x02\x89.", json!(false)),
        (b"\x80\x02K\x07.", json!(7)),
        (b"\x80\x02M\x34\x12.", json!(0x1234)),
        (b"\x80\x02J\xff\xff\xff\xff.", json!(-1)),
        (b"\x80\x02\x8a\x01\xff.", json!(-1)),
        (b"\x80\x02\x8a\x00.", json!(0)),
        (
            b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.",
            json!(-1),
        ),
        (
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            json!({"$int": "000000000000000001"}),
        ),
        (b"\x80\x02\x8b\x02\x00\x00\x00\x01\x01.", json!(257)),
        (b"\x80\x02G?\xf8\x00\x00\x00\x00\x00\x00.", json!(1.5)),
        (
            b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x02hi.",
            json!("hi"),
        ),
        (b"\x80\x02X\x02\x00\x00\x00hi.", json!("hi")),
        (
            b"\x80\x04\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi.",
            json!("hi"),
        ),
        (b"\x80\x03C\x02\x01\x02.", json!({"$bytes": "0102"})),
        (b"\x80\x03B\x01\x00\x00\x00\xff.", json!({"$bytes": "ff"})),
        (
            b"\x80\x04\x8e\x01\x00\x00\x00\x00\x00\x00\x00\x00.",
            json!({"$bytes": "00"}),
        ),
        (b"\x80\x02U\x02\xe9a.", json!("\u{e9}a")),
        (b"\x80\x02T\x01\x00\x00\x00a.", json!("a")),
        (b"\x80\x02).", json!([])),
        (b"\x80\x02(K\x01K\x02t.", json!([1, 2])),
        (b"\x80\x02K\x01\x85.", json!([1])),
        (b"\x80\x02K\x01K\x02\x86.", json!([1, 2])),
        (b"\x80\x02K\x01K\x02K\x03\x87.", json!([1, 2, 3])),
        (b"\x80\x02]K\x01a.", json!([1])),
        (b"\x80\x02](K\x01K\x02e.", json!([1, 2])),
        (b"\x80\x02(K\x01l.", json!([1])),
        (b"\x80\x02}X\x01\x00\x00\x00aK\x01s.", json!({"a": 1})),
        (
            b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02u.",
            json!({"a": 1, "b": 2}),
        ),
        (b"\x80\x02(X\x01\x00\x00\x00aK\x01d.", json!({"a": 1})),
        (b"\x80\x02}K\x01K\x02s.", json!({"$dict": [[1, 2]]})),
        (b"\x80\x04\x8f(K\x01\x90.", json!([1])),
        (b"\x80\x04(K\x01\x91.", json!([1])),
        (b"\x80\x02K\x01K\x020.", json!(1)),
        (b"\x80\x02K\x01(K\x02K\x031.", json!(1)),
        (b"\x80\x02K\x012\x86.", json!([1, 1])),
        (b"\x80\x02K\x05q\x00h\x00\x86.", json!([5, 5])),
        (
            b"\x80\x02K\x05r\x09\x00\x00\x00j\x09\x00\x00\x00\x86.",
            json!([5, 5]),
        ),
        (b"\x80\x04K\x05\x94h\x00\x86.", json!([5, 5])),
        (b"\x80\x02cmod\nname\n.", json!({"$global": "mod.name"})),
        (
            b"\x80\x04\x8c\x03mod\x8c\x04name\x93.",
            json!({"$global": "mod.name"}),
        ),
        (b"\x80\x02ctorch\nSize\n(K\x02K\x03t\x85R.", json!([2, 3])),
        (
            b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00aK\x01u.",
            json!({"a": 1}),
        ),
        (
            b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R.",
            json!({"$bytes": "ff"}),
        ),
        (
            b"\x80\x02cm\nC\n)\x81}X\x01\x00\x00\x00xK\x01sb.",
            json!({"$object": "m.C", "args": [], "state": {"x": 1}}),
        ),
        (
            b"\x80\x02(X\x07\x00\x00\x00storageK\x00tQ.",
            json!({"$persistent_id": ["storage", 0]}),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(&json_of(bytes).unwrap(), expected, "{bytes:?}");
    }
}

#[test]
fn refused_opcodes_name_themselves() {
    let cases: &[(&[u8], &str)] = &[
        (b"\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lsi.", "INST"),
        (b"\x80\x02(cos\nsystem\no.", "OBJ"),
        (b"\x80\x02\x82\x01.", "EXT1"),
        (b"\x80\x02P1\n.", "PERSID"),
        (b"\x80\x04cm\nC\n)}\x92.", "NEWOBJ_EX"),
        (
            b"\x80\x05\x96\x00\x00\x00\x00\x00\x00\x00\x00.",
            "BYTEARRAY8",
        ),
        (b"\x80\x05\x97.", "NEXT_BUFFER"),
        (b"\x80\x05N\x98.", "READONLY_BUFFER"),
        (b"\x80\x02I1\n.", "protocol 0"),
        (b"\x80\x01N.", "protocol 1"),
        (b"\x80\x06N.", "protocol 6"),
        (b"\x80\x02N.x", "after STOP"),
        (b"\x80\x02N", "without STOP"),
        (b"\x80\x02.", "underflow"),
        (b"\x80\x02NN.", "left on the stack"),
        (b"\x80\x02]K\x01K\x02s.", "not a dict"),
        (b"\x80\x02}K\x01a.", "not a list"),
        (b"\x80\x02K\x01}b.", "not an object"),
        (b"\x80\x02h\x03.", "never stored"),
        (b"\x80\x02t.", "no MARK"),
        (b"\x80\x02(q\x00.", "underflow"),
        (b"\x80\x02X\xff\xff\xff\xff.", "runs past the end"),
        (
            b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            "runs past the end",
        ),
        (b"\x80\x02\x8b\xff\xff\xff\x7f.", "runs past the end"),
        (b"\x80\x04\x95\xff\xff\xff\xff\x00\x00\x00\x00N.", "FRAME"),
        (b"\x80\x02X\x01\x00\x00\x00\xff.", "UTF-8"),
        (b"\x80\x02\xff.", "unknown"),
    ];
    for (bytes, needle) in cases {
        refused_with(bytes, needle);
    }
}

#[test]
fn a_call_of_os_system_is_refused_by_name_and_never_run() {
    // `os.system("touch pwned")` as REDUCE: the machine records it; the typed layer refuses it.
    let bomb = b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwned\x85R.";
    let p = parse(bomb, &Limits::default()).unwrap();
    assert_eq!(p.first_refused_global().as_deref(), Some("os.system"));
    let err = metadata::from_pickle(&p).unwrap_err();
    assert!(
        err.contains("os.system") && err.contains("nothing was executed"),
        "{err}"
    );
    // As a .metadata root through builtins.eval, too.
    let eval = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.";
    let err = metadata::from_pickle(&parse(eval, &Limits::default()).unwrap()).unwrap_err();
    assert!(err.contains("builtins.eval"), "{err}");
    assert!(!std::path::Path::new("pwned").exists());
}

/// `EMPTY_LIST; PUT 0; (GET i; GET i; TUPLE2; PUT i+1) × n`: 2^n leaves if memo values were copies.
fn memo_bomb(n: u32) -> Vec<u8> {
    let mut b = b"\x80\x02]r\x00\x00\x00\x000".to_vec();
    for i in 0..n {
        b.push(b'j');
        b.extend_from_slice(&i.to_le_bytes());
        b.push(b'j');
        b.extend_from_slice(&i.to_le_bytes());
        b.push(0x86);
        b.push(b'r');
        b.extend_from_slice(&(i + 1).to_le_bytes());
        b.push(b'0');
    }
    b.push(b'j');
    b.extend_from_slice(&n.to_le_bytes());
    b.push(b'.');
    b
}

#[test]
fn a_billion_laughs_memo_costs_one_node_per_opcode_and_its_expansion_is_refused() {
    let started = Instant::now();
    let bytes = memo_bomb(64);
    let p = parse(&bytes, &Limits::default()).unwrap();
    assert!(p.nodes.len() <= 64 + 1, "{} nodes", p.nodes.len());
    let err = p.to_json().unwrap_err();
    assert!(err.contains("values reached"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn deep_nests_are_refused_without_recursion() {
    // 100 000 MARKs.
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', 100_000));
    refused_with(&marks, "nested MARKs");
    // 100 000 lists, each appended into the one below: no MARK at all.
    let mut lists = b"\x80\x02".to_vec();
    lists.extend(std::iter::repeat_n(b']', 100_000));
    lists.extend(std::iter::repeat_n(b'a', 99_999));
    lists.push(b'.');
    let p = parse(&lists, &Limits::default()).unwrap();
    assert!(p.to_json().unwrap_err().contains("nested more than"));
    // A list that contains itself.
    let cycle = b"\x80\x02]q\x00h\x00a.";
    assert!(json_of(cycle).unwrap_err().contains("nested more than"));
}

#[test]
fn limits_bound_nodes_stack_and_memo() {
    let limits = Limits {
        max_nodes: 10,
        ..Limits::default()
    };
    let many: Vec<u8> = [&b"\x80\x02]("[..], &[b'N'; 20][..], b"e."].concat();
    assert!(
        parse(&many, &limits)
            .unwrap_err()
            .reason
            .contains("more than 10 values")
    );
    let limits = Limits {
        max_memo: 2,
        ..Limits::default()
    };
    assert!(
        parse(&memo_bomb(3), &limits)
            .unwrap_err()
            .reason
            .contains("memo")
    );
    let limits = Limits {
        max_input: 3,
        ..Limits::default()
    };
    assert!(parse(b"\x80\x02N.", &limits).is_err());
}

fn sample_metadata() -> Vec<u8> {
    use crate::dcp::{DcpChunk, DcpItem, DcpMetadata, DcpTensor};
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "w".to_owned(),
        DcpTensor {
            dtype: crate::Dtype::BF16,
            shape: vec![4, 6],
            chunks: vec![
                DcpChunk {
                    offsets: vec![0, 0],
                    sizes: vec![2, 6],
                },
                DcpChunk {
                    offsets: vec![2, 0],
                    sizes: vec![2, 6],
                },
            ],
        },
    );
    let item = |fqn: &str, o: Option<Vec<u64>>, at| DcpItem {
        fqn: fqn.into(),
        chunk_offsets: o,
        file: "__0_0.distcp".into(),
        offset: at,
        length: 100,
    };
    let meta = DcpMetadata {
        tensors,
        objects: vec!["step".into()],
        items: vec![
            item("w", Some(vec![0, 0]), 0),
            item("w", Some(vec![2, 0]), 100),
            item("step", None, 200),
        ],
        version: Some("1.0.0".into()),
        class: "torch.distributed.checkpoint.metadata.Metadata".into(),
    };
    let bytes = crate::dcp::metadata_pickle(&meta).unwrap();
    let back = metadata::from_pickle(&parse(&bytes, &Limits::default()).unwrap()).unwrap();
    assert_eq!(back, meta);
    bytes
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = sample_metadata();
    for cut in 0..bytes.len() {
        assert!(
            parse(&bytes[..cut], &Limits::default()).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn metadata_checks_refuse_escaping_paths_gaps_and_overlaps() {
    let bytes = sample_metadata();
    let swap = |from: &[u8], to: &[u8]| {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = bytes.clone();
        out.splice(at..at + from.len(), to.iter().copied());
        metadata::from_pickle(&parse(&out, &Limits::default()).unwrap()).unwrap_err()
    };
    // "__0_0.distcp" (12 bytes) → "../../x.bin" padded to the same length.
    let err = swap(b"__0_0.distcp", b"../x.distcp_");
    assert!(err.contains("not a plain file name"), "{err}");
    // The second chunk's offset 2 → 1: chunks overlap.
    let from = b"ctorch\nSize\n(K\x02K\x00t\x85RsX\x05\x00\x00\x00sizes";
    let to = b"ctorch\nSize\n(K\x01K\x00t\x85RsX\x05\x00\x00\x00sizes";
    let err = swap(from, to);
    assert!(err.contains("overlap") || err.contains("outside"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_and_flips_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512),
                                          flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let _ = parse(&data, &Limits::default()).map(|p| p.to_json());
        let mut meta = sample_metadata();
        for (at, x) in flips {
            let n = meta.len();
            meta[at % n] ^= x;
        }
        if let Ok(p) = parse(&meta, &Limits::default()) {
            let _ = metadata::from_pickle(&p);
            let _ = p.to_json();
        }
    }

    #[test]
    fn metadata_round_trips(rows in 1u64..40, cols in 1u64..9, split in 1u64..4) {
        use crate::dcp::{DcpChunk, DcpItem, DcpMetadata, DcpTensor};
        let step = rows.div_ceil(split);
        let mut chunks = Vec::new();
        let mut items = Vec::new();
        let mut at = 0;
        while at < rows {
            let n = step.min(rows - at);
            chunks.push(DcpChunk { offsets: vec![at, 0], sizes: vec![n, cols] });
            items.push(DcpItem { fqn: "t".into(), chunk_offsets: Some(vec![at, 0]),
                file: format!("__{at}_0.distcp"), offset: at * 1000, length: 1000 });
            at += n;
        }
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert("t".to_owned(), DcpTensor { dtype: crate::Dtype::F32, shape: vec![rows, cols], chunks });
        let meta = DcpMetadata { tensors, objects: vec![], items, version: Some("1.0.0".into()),
            class: "torch.distributed.checkpoint.metadata.Metadata".into() };
        let bytes = crate::dcp::metadata_pickle(&meta).unwrap();
        let back = metadata::from_pickle(&parse(&bytes, &Limits::default()).unwrap()).unwrap();
        prop_assert_eq!(back, meta);
    }
}
