//! Fuzzes `parse_header` and `header_len_from_prefix`, the parsers of a shard's safetensors header.
//!
//! Input: 8 bytes of little-endian file length, then the header bytes (prefix + JSON). The bytes are
//! also parsed a second time as a whole file (file length = input length). Any input may be
//! refused; none may panic. An accepted header must lie within the file and its tensors must tile
//! the data section exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::format::{element_count, header_len_from_prefix, parse_header};

fuzz_target!(|data: &[u8]| {
    if let Some((len, rest)) = data.split_first_chunk::<8>() {
        check(rest, u64::from_le_bytes(*len));
    }
    check(data, data.len() as u64);
});

fn check(bytes: &[u8], file_len: u64) {
    let from_prefix = bytes
        .first_chunk::<8>()
        .map(|p| header_len_from_prefix(*p, file_len));
    let Ok(parsed) = parse_header(bytes, file_len) else {
        return;
    };
    assert_eq!(
        from_prefix.and_then(Result::ok),
        Some(parsed.header_len),
        "parse_header and header_len_from_prefix disagree"
    );
    assert!(parsed.header_len >= 8);
    assert!(parsed.header_len <= file_len);
    assert!(parsed.header_len <= bytes.len() as u64);
    assert!(!parsed.tensors.contains_key("__metadata__"));
    let data_len = file_len - parsed.header_len;
    let mut spans = Vec::with_capacity(parsed.tensors.len());
    for tensor in parsed.tensors.values() {
        let [b, e] = tensor.data_offsets;
        assert!(
            b <= e && e <= data_len,
            "data_offsets {b}..{e} outside 0..{data_len}"
        );
        let elements = element_count(&tensor.shape).expect("element count fits u64");
        assert_eq!(tensor.dtype.byte_len(elements), Some(e - b));
        spans.push((b, e));
    }
    spans.sort_unstable();
    let mut cursor = 0;
    for (b, e) in spans {
        assert_eq!(b, cursor, "hole or overlap in the data section");
        cursor = e;
    }
    assert_eq!(cursor, data_len, "tensors do not cover the data section");
}
