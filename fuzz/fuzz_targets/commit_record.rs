//! Fuzzes `CommitRecord::from_json`, the parser of `weights/metadata.json`.
//!
//! Any input may be refused, but none may panic, overflow or allocate without bound; an accepted
//! record must satisfy docs/FORMAT.md's invariants (checked here independently of `validate`, with
//! u128 arithmetic) and survive `to_json` → `from_json` unchanged.
//!
//! The fuzzer once found floats in `trainer_state` coming back 1 ULP off (serde_json without
//! `float_roundtrip`); the workspace now enables that feature, and the round trip must be exact.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::Path;
use waypoint::format::{CommitRecord, element_count};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("metadata.json");
    let Ok(record) = CommitRecord::from_json(data, path) else {
        return;
    };
    if let Err(e) = record.validate(path) {
        panic!("an accepted record fails validate: {e}");
    }
    let _ = record.total_bytes();
    check_invariants(&record);
    let json = record.to_json();
    match CommitRecord::from_json(&json, path) {
        Ok(again) => assert_round_trip(&record, again),
        Err(e) => panic!("to_json output is refused: {e}"),
    }
});

/// docs/FORMAT.md §3's invariants, recomputed without trusting `validate`.
fn check_invariants(record: &CommitRecord) {
    assert!(record.world_size >= 1);
    assert!((1..=1 << 30).contains(&record.block_size));
    // Bytes of chunk data per file.
    let mut per_file: BTreeMap<&str, u128> = BTreeMap::new();
    for (name, tensor) in &record.tensors {
        assert!(!name.is_empty() && name != "__metadata__" && !name.contains('\0'));
        let total = element_count(&tensor.shape).expect("tensor element count fits u64");
        let mut covered: u128 = 0;
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
            assert_eq!(bits % 8, 0);
            let [start, end] = chunk.byte_range;
            assert!(start <= end);
            assert_eq!(u128::from(end - start), bits / 8);
            let file = record.files.get(&chunk.file).expect("chunk file is listed");
            assert!(file.header_len <= start && end <= file.size);
            *per_file.entry(chunk.file.as_str()).or_default() += u128::from(end - start);
            let blocks = (end - start).div_ceil(record.block_size);
            assert_eq!(chunk.block_crc32c.len() as u64, blocks);
        }
        assert_eq!(covered, u128::from(total), "chunks of {name:?} tile it");
    }
    for (name, file) in &record.files {
        let (rank, _) =
            waypoint::format::parse_shard_file_name(name).expect("file name is a shard name");
        assert!(!name.contains('/') && !name.contains('\\'));
        assert_eq!(rank, file.rank);
        assert!(rank < record.world_size);
        assert!(file.header_len <= file.size);
        let data = u128::from(file.size - file.header_len);
        assert_eq!(
            per_file.get(name.as_str()).copied().unwrap_or(0),
            data,
            "chunks of {name:?} tile its data section"
        );
    }
}

/// `again == record`, exactly: trainer-state floats included.
fn assert_round_trip(record: &CommitRecord, again: CommitRecord) {
    assert_eq!(again, *record, "to_json → from_json changed the record");
}
