//! Property tests of the two parsers that read untrusted bytes: the commit record
//! (`CommitRecord::from_json`) and a shard's safetensors header (`parse_header`,
//! `header_len_from_prefix`). Whatever the input, they return an error or a value that satisfies
//! docs/FORMAT.md's invariants, and never panic. The fuzz targets in fuzz/ check the same things
//! with coverage guidance (docs/FUZZING.md).

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use waypoint::Dtype;
use waypoint::format::{
    CommitRecord, DATA_ALIGNMENT, DCP_SHARDING_INFO_KEY, ParsedHeader, ShardItem, element_count,
    header_len_from_prefix, layout_shard, parse_header, parse_shard_file_name,
};

const RECORD_PATH: &str = "metadata.json";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants of accepted values, recomputed independently of the library (u128 arithmetic).
// ---------------------------------------------------------------------------------------------

/// Everything docs/FORMAT.md §3 promises about an accepted record, plus the round trip.
fn check_record(record: &CommitRecord) {
    let path = Path::new(RECORD_PATH);
    record.validate(path).expect("an accepted record validates");
    let _ = record.total_bytes();
    assert!(record.world_size >= 1);
    assert!((1..=1 << 30).contains(&record.block_size));
    let mut per_file: BTreeMap<&str, u128> = BTreeMap::new();
    for (name, tensor) in &record.tensors {
        assert!(!name.is_empty() && name != "__metadata__" && !name.contains('\0'));
        assert!(tensor.shape.len() <= waypoint::format::MAX_DIMS);
        let total: u128 = tensor.shape.iter().map(|&d| u128::from(d)).product();
        assert!(total <= u128::from(u64::MAX));
        let mut covered: u128 = 0;
        let mut files = BTreeSet::new();
        for chunk in &tensor.chunks {
            assert_eq!(chunk.offsets.len(), tensor.shape.len());
            assert_eq!(chunk.sizes.len(), tensor.shape.len());
            for d in 0..tensor.shape.len() {
                assert!(
                    u128::from(chunk.offsets[d]) + u128::from(chunk.sizes[d])
                        <= u128::from(tensor.shape[d])
                );
            }
            let elements: u128 = chunk.sizes.iter().map(|&s| u128::from(s)).product();
            covered += elements;
            let bits = elements * u128::from(tensor.dtype.bits());
            assert_eq!(bits % 8, 0, "chunk of {name:?} is whole bytes");
            let [start, end] = chunk.byte_range;
            assert!(start <= end);
            assert_eq!(u128::from(end - start), bits / 8);
            let file = record.files.get(&chunk.file).expect("chunk file is listed");
            assert!(
                file.header_len <= start && end <= file.size,
                "byte range inside the file"
            );
            assert!(files.insert(chunk.file.as_str()), "one chunk per file");
            *per_file.entry(chunk.file.as_str()).or_default() += u128::from(end - start);
            assert_eq!(
                chunk.block_crc32c.len() as u64,
                (end - start).div_ceil(record.block_size)
            );
        }
        assert_eq!(covered, total, "the chunks of {name:?} tile it");
    }
    for (name, file) in &record.files {
        let (rank, _) = parse_shard_file_name(name).expect("file names are shard names");
        assert!(!name.contains('/') && !name.contains('\\') && !name.contains(".."));
        assert_eq!(rank, file.rank);
        assert!(rank < record.world_size);
        assert!(file.header_len <= file.size);
        assert_eq!(
            per_file.get(name.as_str()).copied().unwrap_or(0),
            u128::from(file.size - file.header_len),
            "chunks of {name:?} tile its data section"
        );
    }
    let again = CommitRecord::from_json(&record.to_json(), path).expect("to_json output parses");
    assert_eq!(&again, record, "to_json → from_json round trip");
}

/// Everything docs/FORMAT.md §2 promises about an accepted header of a `file_len`-byte file.
fn check_header(parsed: &ParsedHeader, bytes: &[u8], file_len: u64) {
    assert!(parsed.header_len >= 8);
    assert!(parsed.header_len <= file_len);
    assert!(parsed.header_len <= bytes.len() as u64);
    let prefix: [u8; 8] = bytes[..8].try_into().unwrap();
    assert_eq!(
        header_len_from_prefix(prefix, file_len),
        Ok(parsed.header_len)
    );
    assert!(!parsed.tensors.contains_key("__metadata__"));
    let data_len = file_len - parsed.header_len;
    let mut spans = Vec::new();
    for tensor in parsed.tensors.values() {
        let [b, e] = tensor.data_offsets;
        assert!(b <= e && e <= data_len);
        let elements: u128 = tensor.shape.iter().map(|&d| u128::from(d)).product();
        let bits = elements * u128::from(tensor.dtype.bits());
        assert_eq!(bits % 8, 0);
        assert_eq!(u128::from(e - b), bits / 8);
        spans.push((b, e));
    }
    spans.sort_unstable();
    let mut cursor = 0;
    for (b, e) in spans {
        assert_eq!(
            b, cursor,
            "tensors tile the data section: no hole, no overlap"
        );
        cursor = e;
    }
    assert_eq!(cursor, data_len, "tensors cover the whole data section");
}

fn parse_record(bytes: &[u8]) -> Option<CommitRecord> {
    let record = CommitRecord::from_json(bytes, Path::new(RECORD_PATH)).ok()?;
    check_record(&record);
    Some(record)
}

fn parse_and_check_header(bytes: &[u8], file_len: u64) -> Option<ParsedHeader> {
    let parsed = parse_header(bytes, file_len).ok()?;
    check_header(&parsed, bytes, file_len);
    Some(parsed)
}

// ---------------------------------------------------------------------------------------------
// (a) Arbitrary bytes.
// ---------------------------------------------------------------------------------------------

/// Bytes that look a bit like JSON, so the parser gets past the first character more often.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    "[{}\\[\\]\":, 0-9a-z_.eE+-]{0,300}".prop_map(String::into_bytes)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn record_parser_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), jsonish()]
    ) {
        parse_record(&bytes);
    }

    #[test]
    fn header_parser_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), jsonish()],
        file_len in prop_oneof![any::<u64>(), 0u64..1024, Just(u64::MAX)],
    ) {
        parse_and_check_header(&bytes, file_len);
        parse_and_check_header(&bytes, bytes.len() as u64);
        if let Some(prefix) = bytes.first_chunk::<8>() {
            let _ = header_len_from_prefix(*prefix, file_len);
        }
    }

    /// A plausible length prefix in front of arbitrary (JSON-ish) text.
    #[test]
    fn header_parser_never_panics_behind_a_valid_prefix(
        text in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), jsonish()],
        extra in 0u64..64,
    ) {
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&text);
        let len = bytes.len() as u64;
        for file_len in [len, len + extra, len.saturating_sub(1)] {
            parse_and_check_header(&bytes, file_len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Structural mutations of valid records.
// ---------------------------------------------------------------------------------------------

/// The unit tests' sample: two whole tensors in one file.
fn base_single() -> Value {
    json!({
        "format": "waypoint-checkpoint", "format_version": 1, "producer": "test", "step": 7,
        "epoch": 1, "world_size": 1, "block_size": 8,
        "files": {"__0_0.safetensors": {"rank": 0, "size": 4096 + 24, "header_len": 4096, "header_crc32c": 1}},
        "tensors": {
            "a": {"dtype": "F32", "shape": [2, 2], "chunks": [
                {"offsets": [0, 0], "sizes": [2, 2], "file": "__0_0.safetensors", "byte_range": [4096, 4112], "block_crc32c": [1, 2]}]},
            "b": {"dtype": "U8", "shape": [8], "chunks": [
                {"offsets": [0], "sizes": [8], "file": "__0_0.safetensors", "byte_range": [4112, 4120], "block_crc32c": [3]}]}
        },
        "trainer_state": {"user": {"lr": 0.1}, "waypoint": {}}
    })
}

/// Two ranks, a tensor split across them, a sub-byte tensor, a 0-d and an empty tensor.
fn base_split() -> Value {
    json!({
        "format": "waypoint-checkpoint", "format_version": 1, "producer": "waypoint 0.1.0",
        "step": 1200, "epoch": 3, "world_size": 2, "block_size": 16,
        "files": {
            "__0_0.safetensors": {"rank": 0, "size": 4163, "header_len": 4096, "header_crc32c": 7},
            "__1_0.safetensors": {"rank": 1, "size": 4168, "header_len": 4096, "header_crc32c": 8}
        },
        "tensors": {
            "w": {"dtype": "F32", "shape": [4, 8], "chunks": [
                {"offsets": [0, 0], "sizes": [2, 8], "file": "__0_0.safetensors", "byte_range": [4096, 4160], "block_crc32c": [1, 2, 3, 4]},
                {"offsets": [2, 0], "sizes": [2, 8], "file": "__1_0.safetensors", "byte_range": [4096, 4160], "block_crc32c": [5, 6, 7, 8]}]},
            "sub.f4": {"dtype": "F4", "shape": [6], "chunks": [
                {"offsets": [0], "sizes": [6], "file": "__0_0.safetensors", "byte_range": [4160, 4163], "block_crc32c": [9]}]},
            "scalar": {"dtype": "F64", "shape": [], "chunks": [
                {"offsets": [], "sizes": [], "file": "__1_0.safetensors", "byte_range": [4160, 4168], "block_crc32c": [10]}]},
            "empty/x": {"dtype": "F16", "shape": [0, 3], "chunks": [
                {"offsets": [0, 0], "sizes": [0, 3], "file": "__1_0.safetensors", "byte_range": [4168, 4168], "block_crc32c": []}]}
        },
        "trainer_state": {
            "user": {"lr": 0.25, "big": u64::MAX, "nested": [1, -2, "x", null]},
            "waypoint": {"policy": {"keep": 3}}
        }
    })
}

#[test]
fn base_records_are_valid() {
    for base in [base_single(), base_split()] {
        let record = parse_record(&serde_json::to_vec(&base).unwrap()).expect("base is valid");
        assert!(record.total_bytes() > 0);
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn get_mut<'v>(v: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Idx(i) => v.get_mut(*i),
    })
}

/// Paths of every node of `v` for which `pred` holds (the root included).
fn paths(v: &Value, pred: &dyn Fn(&[Seg], &Value) -> bool) -> Vec<Vec<Seg>> {
    fn walk(
        v: &Value,
        path: &mut Vec<Seg>,
        pred: &dyn Fn(&[Seg], &Value) -> bool,
        out: &mut Vec<Vec<Seg>>,
    ) {
        if pred(path, v) {
            out.push(path.clone());
        }
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(Seg::Key(k.clone()));
                    walk(child, path, pred, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Seg::Idx(i));
                    walk(child, path, pred, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), pred, &mut out);
    out
}

fn last_key(path: &[Seg]) -> Option<&str> {
    match path.last() {
        Some(Seg::Key(k)) => Some(k),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a number (anywhere) with this.
    Number(Index, u64),
    /// Replace a number with a value of another kind.
    WrongType(Index, Value),
    /// Remove a key of an object.
    DeleteKey(Index),
    /// Append a copy of a chunk to its tensor's list.
    DuplicateChunk(Index),
    /// Set a tensor's dtype.
    Dtype(Index, String),
    /// Rename a file: in `files`, in the chunks pointing at it, or both.
    RenameFile(Index, String, u8),
    /// Copy a number over another one (so that related fields agree more often than by chance).
    CopyNumber(Index, Index),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just((1u64 << 53) + 1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 63),
        Just(4096),
        Just(1 << 30),
        0u64..10_000,
        any::<u64>(),
    ]
}

fn weird_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../x".to_owned()),
        Just("/abs".to_owned()),
        Just("/abs/__0_0.safetensors".to_owned()),
        Just("__0_0.safetensors/..".to_owned()),
        Just("".to_owned()),
        Just("__0_1.safetensors".to_owned()),
        Just("__1_0.safetensors".to_owned()),
        Just("__2_0.safetensors".to_owned()),
        Just("__00_0.safetensors".to_owned()),
        Just("__0_0.safetensors\0".to_owned()),
        Just("..\\__0_0.safetensors".to_owned()),
        Just("__18446744073709551616_0.safetensors".to_owned()),
        "\\PC{0,12}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let dtype = prop_oneof![
        prop::sample::select(Dtype::ALL.to_vec()).prop_map(|d| d.name().to_owned()),
        Just("F99".to_owned()),
        Just("f32".to_owned()),
        Just(String::new()),
    ];
    let wrong = prop_oneof![
        Just(json!(-1)),
        Just(json!(0.5)),
        Just(json!(1e300)),
        Just(json!("7")),
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
        Just(json!(true)),
    ];
    prop_oneof![
        4 => (any::<Index>(), interesting_u64()).prop_map(|(i, n)| Mutation::Number(i, n)),
        1 => (any::<Index>(), wrong).prop_map(|(i, v)| Mutation::WrongType(i, v)),
        2 => any::<Index>().prop_map(Mutation::DeleteKey),
        2 => any::<Index>().prop_map(Mutation::DuplicateChunk),
        2 => (any::<Index>(), dtype).prop_map(|(i, d)| Mutation::Dtype(i, d)),
        2 => (any::<Index>(), weird_name(), 0u8..3).prop_map(|(i, n, w)| Mutation::RenameFile(i, n, w)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::CopyNumber(a, b)),
    ]
}

fn apply(v: &mut Value, m: &Mutation) {
    let numbers = paths(v, &|_, v| v.is_number());
    match m {
        Mutation::Number(i, n) if !numbers.is_empty() => {
            *get_mut(v, &numbers[i.index(numbers.len())]).unwrap() = json!(*n);
        }
        Mutation::WrongType(i, new) if !numbers.is_empty() => {
            *get_mut(v, &numbers[i.index(numbers.len())]).unwrap() = new.clone();
        }
        Mutation::CopyNumber(from, to) if !numbers.is_empty() => {
            let n = get_mut(v, &numbers[from.index(numbers.len())])
                .unwrap()
                .clone();
            *get_mut(v, &numbers[to.index(numbers.len())]).unwrap() = n;
        }
        Mutation::DeleteKey(i) => {
            let keys = paths(v, &|p, _| last_key(p).is_some());
            if keys.is_empty() {
                return;
            }
            let path = &keys[i.index(keys.len())];
            let (last, parent) = path.split_last().unwrap();
            if let (Seg::Key(k), Some(Value::Object(map))) = (last, get_mut(v, parent)) {
                map.remove(k);
            }
        }
        Mutation::DuplicateChunk(i) => {
            let lists = paths(v, &|p, v| last_key(p) == Some("chunks") && v.is_array());
            if lists.is_empty() {
                return;
            }
            if let Some(Value::Array(chunks)) = get_mut(v, &lists[i.index(lists.len())])
                && let Some(first) = chunks.first().cloned()
            {
                let pick = chunks.get(i.index(chunks.len())).cloned().unwrap_or(first);
                chunks.push(pick);
            }
        }
        Mutation::Dtype(i, name) => {
            let dtypes = paths(v, &|p, v| last_key(p) == Some("dtype") && v.is_string());
            if !dtypes.is_empty() {
                *get_mut(v, &dtypes[i.index(dtypes.len())]).unwrap() = json!(name);
            }
        }
        Mutation::RenameFile(i, new, where_) => {
            let Some(Value::Object(files)) = v.get("files") else {
                return;
            };
            let names: Vec<String> = files.keys().cloned().collect();
            if names.is_empty() {
                return;
            }
            let old = &names[i.index(names.len())];
            if *where_ != 1
                && let Some(Value::Object(files)) = v.get_mut("files")
                && let Some(entry) = files.remove(old)
            {
                files.insert(new.clone(), entry);
            }
            if *where_ != 0 {
                let refs = paths(v, &|p, v| {
                    last_key(p) == Some("file") && v.as_str() == Some(old.as_str())
                });
                for path in refs {
                    *get_mut(v, &path).unwrap() = json!(new);
                }
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_records_are_refused_or_valid(
        split in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut v = if split { base_split() } else { base_single() };
        for m in &mutations {
            apply(&mut v, m);
        }
        let compact = serde_json::to_vec(&v).unwrap();
        parse_record(&compact);
        // The same value pretty-printed must get the same verdict.
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        prop_assert_eq!(parse_record(&compact), parse_record(&pretty));
    }

    /// Mutating the serialised bytes themselves: truncation and single-byte changes.
    #[test]
    fn damaged_record_bytes_are_refused_or_valid(
        split in any::<bool>(),
        at in any::<Index>(),
        byte in any::<u8>(),
        truncate in any::<bool>(),
    ) {
        let v = if split { base_split() } else { base_single() };
        let mut bytes = serde_json::to_vec(&v).unwrap();
        let i = at.index(bytes.len());
        if truncate {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        parse_record(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Header: layout → parse round trip, and single-byte damage.
// ---------------------------------------------------------------------------------------------

fn tensor_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.]{0,12}",
        "\\PC{1,8}".prop_filter("reserved name", |s| s != "__metadata__"
            && !s.contains('\0')),
        Just("__metadata__x".to_owned()),
        Just("a\"quote\\back/slash".to_owned()),
    ]
}

fn shard_item(name: String) -> impl Strategy<Value = ShardItem> {
    (
        prop::sample::select(Dtype::ALL.to_vec()),
        prop::collection::vec(0u64..7, 0..4),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(dtype, mut shape, split, seed)| {
            if dtype.byte_len(element_count(&shape).unwrap()).is_none() {
                // Sub-byte kinds: a last dimension of 4 makes any count whole bytes.
                shape.push(4);
            }
            let byte_len = dtype.byte_len(element_count(&shape).unwrap()).unwrap();
            let offsets = shape
                .iter()
                .enumerate()
                .map(|(d, _)| if split { (seed >> (d * 8)) % 5 } else { 0 })
                .collect();
            ShardItem {
                name: name.clone(),
                dtype,
                shape,
                offsets,
                byte_len,
                split,
            }
        })
}

fn shard_items() -> impl Strategy<Value = Vec<ShardItem>> {
    prop::collection::btree_set(tensor_name(), 0..8)
        .prop_flat_map(|names| names.into_iter().map(shard_item).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn layout_then_parse_round_trips(items in shard_items()) {
        let layout = layout_shard(&items).expect("small headers fit");
        let header_len = layout.header.len() as u64;
        prop_assert_eq!(header_len % DATA_ALIGNMENT, 0);
        prop_assert_eq!(layout.placements.len(), items.len());
        let parsed = parse_and_check_header(&layout.header, layout.file_len)
            .expect("a laid-out header parses");
        prop_assert_eq!(parsed.header_len, header_len);
        prop_assert_eq!(parsed.tensors.len(), items.len());
        for &(i, start) in &layout.placements {
            let item = &items[i];
            let t = &parsed.tensors[&item.name];
            prop_assert_eq!(t.dtype, item.dtype);
            prop_assert_eq!(&t.shape, &item.shape);
            prop_assert_eq!(t.data_offsets, [start - header_len, start - header_len + item.byte_len]);
            prop_assert_eq!(start % item.dtype.alignment(), 0);
        }
        if items.iter().any(|it| it.split) {
            let info: Value = serde_json::from_str(&parsed.metadata[DCP_SHARDING_INFO_KEY]).unwrap();
            for item in &items {
                prop_assert_eq!(&info[&item.name]["saved_offsets"], &json!(item.offsets));
            }
        } else {
            prop_assert!(parsed.metadata.is_empty());
        }
        // A file one byte longer or shorter no longer matches.
        prop_assert!(parse_header(&layout.header, layout.file_len + 1).is_err());
        if layout.file_len > header_len {
            prop_assert!(parse_header(&layout.header, layout.file_len - 1).is_err());
        }
    }

    #[test]
    fn damaged_headers_are_refused_or_still_tile(
        items in shard_items(),
        at in any::<Index>(),
        xor in 1u8..=255,
        in_json_text in prop::bool::weighted(0.8),
    ) {
        let layout = layout_shard(&items).expect("small headers fit");
        let text_end = 8 + layout.header[8..].iter().rposition(|&b| b == b'}').unwrap() + 1;
        // Mostly inside the JSON text; otherwise anywhere, the length prefix and padding included.
        let i = if in_json_text { 8 + at.index(text_end - 8) } else { at.index(layout.header.len()) };
        let mut damaged = layout.header.clone();
        damaged[i] ^= xor;
        parse_and_check_header(&damaged, layout.file_len);
        parse_and_check_header(&damaged, damaged.len() as u64);
    }
}

/// The properties above are not vacuous: a fair share of the mutated records and damaged headers
/// is still accepted, so the invariant checks on accepted values do run.
#[test]
fn mutations_leave_some_inputs_valid() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any::<bool>(), prop::collection::vec(mutation(), 1..3));
    let mut accepted = 0;
    for _ in 0..256 {
        let (split, mutations) = strategy.new_tree(&mut runner).unwrap().current();
        let mut v = if split { base_split() } else { base_single() };
        for m in &mutations {
            apply(&mut v, m);
        }
        accepted += usize::from(parse_record(&serde_json::to_vec(&v).unwrap()).is_some());
    }
    assert!((8..248).contains(&accepted), "{accepted} of 256 accepted");

    let strategy = (shard_items(), any::<Index>(), 1u8..=255);
    let mut accepted = 0;
    for _ in 0..256 {
        let (items, at, xor) = strategy.new_tree(&mut runner).unwrap().current();
        let layout = layout_shard(&items).unwrap();
        let text_end = 8 + layout.header[8..].iter().rposition(|&b| b == b'}').unwrap() + 1;
        let mut damaged = layout.header.clone();
        damaged[8 + at.index(text_end - 8)] ^= xor;
        accepted += usize::from(parse_and_check_header(&damaged, layout.file_len).is_some());
    }
    assert!((8..248).contains(&accepted), "{accepted} of 256 accepted");
}
