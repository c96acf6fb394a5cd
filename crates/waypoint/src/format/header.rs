//! The safetensors header of one shard file: laying out its tensors (alignment, order), writing the
//! padded JSON header, and parsing one back with every length checked. Pure: no I/O.

use super::dtype::Dtype;
use super::names::{DCP_SHARDING_INFO_KEY, SAFETENSORS_METADATA_KEY};
use super::record::MAX_HEADER_LEN;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The data section of every shard starts on a multiple of this (through header padding).
pub const DATA_ALIGNMENT: u64 = 4096;

/// A tensor (or chunk) to place into a shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardItem {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape of the stored piece (the chunk's sizes).
    pub shape: Vec<u64>,
    /// Offsets of the piece in the global tensor (all zero for a whole tensor).
    pub offsets: Vec<u64>,
    /// Bytes of the piece.
    pub byte_len: u64,
    /// Whether the tensor is split into several chunks (anywhere in the checkpoint).
    pub split: bool,
}

/// The computed layout of one shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// The full header: 8-byte length, JSON, space padding. `header.len()` is a multiple of
    /// [`DATA_ALIGNMENT`].
    pub header: Vec<u8>,
    /// `(item index, absolute start in the file)` for each item, in file order.
    pub placements: Vec<(usize, u64)>,
    /// Total file size.
    pub file_len: u64,
}

/// Lays out `items` in one file: larger alignments first (so every tensor starts at a multiple of
/// its element size with no holes, as safetensors forbids holes), then by name for determinism.
/// When any item is split, `__metadata__` carries `DCP_SHARDING_INFO` for every item in the file.
///
/// Returns `None` when the header would exceed safetensors' 100 MB limit.
pub fn layout_shard(items: &[ShardItem]) -> Option<ShardLayout> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (ia, ib) = (&items[a], &items[b]);
        ib.dtype
            .alignment()
            .cmp(&ia.dtype.alignment())
            .then_with(|| ia.name.cmp(&ib.name))
    });
    let mut json = serde_json::Map::new();
    let mut cursor = 0u64;
    let mut relative = Vec::with_capacity(items.len());
    for &i in &order {
        let item = &items[i];
        let end = cursor.checked_add(item.byte_len)?;
        json.insert(
            item.name.clone(),
            serde_json::json!({"dtype": item.dtype.name(), "shape": item.shape, "data_offsets": [cursor, end]}),
        );
        relative.push((i, cursor));
        cursor = end;
    }
    if items.iter().any(|it| it.split) {
        let info: serde_json::Map<String, serde_json::Value> = items
            .iter()
            .map(|it| {
                (
                    it.name.clone(),
                    serde_json::json!({"saved_offsets": it.offsets}),
                )
            })
            .collect();
        let info = serde_json::Value::Object(info).to_string();
        json.insert(
            SAFETENSORS_METADATA_KEY.to_owned(),
            serde_json::json!({ DCP_SHARDING_INFO_KEY: info }),
        );
    }
    let mut text = serde_json::Value::Object(json).to_string().into_bytes();
    let unpadded = 8 + text.len() as u64;
    let header_len = unpadded.div_ceil(DATA_ALIGNMENT) * DATA_ALIGNMENT;
    if header_len - 8 > MAX_HEADER_LEN {
        return None;
    }
    text.resize((header_len - 8) as usize, b' ');
    let mut header = Vec::with_capacity(header_len as usize);
    header.extend_from_slice(&(header_len - 8).to_le_bytes());
    header.extend_from_slice(&text);
    let placements = relative
        .into_iter()
        .map(|(i, rel)| (i, rel + header_len))
        .collect();
    Some(ShardLayout {
        header,
        placements,
        file_len: header_len.checked_add(cursor)?,
    })
}

/// One tensor entry of a parsed safetensors header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HeaderTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// `[begin, end)` relative to the data section.
    pub data_offsets: [u64; 2],
}

/// A parsed safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    /// Bytes before the data section (8 + the JSON length).
    pub header_len: u64,
    /// The tensors, by name.
    pub tensors: BTreeMap<String, HeaderTensor>,
    /// The `__metadata__` map, if any.
    pub metadata: BTreeMap<String, String>,
}

/// Reads the 8-byte length prefix and checks it against the file size and the 100 MB limit.
/// Returns the full header length (8 + N).
pub fn header_len_from_prefix(prefix: [u8; 8], file_len: u64) -> Result<u64, String> {
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_LEN {
        return Err(format!(
            "safetensors header length {n} exceeds the 100 MB limit"
        ));
    }
    if 8 + n > file_len {
        return Err(format!(
            "safetensors header length {n} runs past the end of the {file_len}-byte file"
        ));
    }
    Ok(8 + n)
}

/// Parses a header (`bytes` is the whole header including the 8-byte prefix) and checks that the
/// tensors tile the data section of a file of `file_len` bytes exactly.
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<ParsedHeader, String> {
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("file is shorter than the 8-byte header length")?;
    let header_len = header_len_from_prefix(prefix, file_len)?;
    let json = bytes
        .get(8..header_len as usize)
        .ok_or("header is truncated")?;
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8: {e}"))?;
    if !text.starts_with('{') {
        return Err("header does not start with '{'".into());
    }
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in raw {
        if name == SAFETENSORS_METADATA_KEY {
            metadata = serde_json::from_value(value)
                .map_err(|e| format!("__metadata__ is not a string map: {e}"))?;
        } else {
            let t: HeaderTensor = serde_json::from_value(value)
                .map_err(|e| format!("tensor {name:?} in header: {e}"))?;
            tensors.insert(name, t);
        }
    }
    let data_len = file_len - header_len;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let [b, e] = t.data_offsets;
        let elements = super::dtype::element_count(&t.shape)
            .ok_or(format!("tensor {name:?}: shape overflows"))?;
        let want = t.dtype.byte_len(elements).ok_or(format!(
            "tensor {name:?}: {elements} elements of {} is not whole bytes",
            t.dtype
        ))?;
        if e < b || e - b != want || e > data_len {
            return Err(format!(
                "tensor {name:?}: data_offsets {b}..{e} do not hold {want} bytes within {data_len}"
            ));
        }
        spans.push((b, e, name));
    }
    spans.sort_unstable();
    let mut cursor = 0;
    for (b, e, name) in spans {
        if b != cursor {
            return Err(format!(
                "tensor {name:?} starts at {b}, expected {cursor} (hole or overlap)"
            ));
        }
        cursor = e;
    }
    if cursor != data_len {
        return Err(format!("tensors cover {cursor} of {data_len} data bytes"));
    }
    Ok(ParsedHeader {
        header_len,
        tensors,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, dtype: Dtype, shape: &[u64], split: bool) -> ShardItem {
        let n = super::super::dtype::element_count(shape).unwrap();
        ShardItem {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            offsets: vec![0; shape.len()],
            byte_len: dtype.byte_len(n).unwrap(),
            split,
        }
    }

    #[test]
    fn layout_aligns_data_and_each_tensor() {
        let items = vec![
            item("u8", Dtype::U8, &[3], false),
            item("f64", Dtype::F64, &[2], false),
            item("f16", Dtype::F16, &[3], false),
            item("f4", Dtype::F4, &[2], false),
            item("f32", Dtype::F32, &[1], false),
        ];
        let l = layout_shard(&items).unwrap();
        assert_eq!(l.header.len() as u64 % DATA_ALIGNMENT, 0);
        for &(i, start) in &l.placements {
            assert_eq!(start % items[i].dtype.alignment(), 0, "{}", items[i].name);
        }
        let parsed = parse_header(&l.header, l.file_len).unwrap();
        assert_eq!(parsed.header_len, l.header.len() as u64);
        assert_eq!(parsed.tensors.len(), 5);
        assert!(parsed.metadata.is_empty());
        assert_eq!(l.file_len, l.header.len() as u64 + 3 + 16 + 6 + 1 + 4);
    }

    #[test]
    fn split_items_carry_dcp_sharding_info_for_every_tensor() {
        let mut a = item("a", Dtype::F32, &[2, 3], true);
        a.offsets = vec![2, 0];
        let items = vec![a, item("whole", Dtype::F32, &[4], false)];
        let l = layout_shard(&items).unwrap();
        let parsed = parse_header(&l.header, l.file_len).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&parsed.metadata[DCP_SHARDING_INFO_KEY]).unwrap();
        assert_eq!(info["a"]["saved_offsets"], serde_json::json!([2, 0]));
        assert_eq!(info["whole"]["saved_offsets"], serde_json::json!([0]));
    }

    #[test]
    fn parse_rejects_table() {
        let good = layout_shard(&[item("x", Dtype::F32, &[2], false)]).unwrap();
        let mut huge = good.header.clone();
        huge[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
        let mut not_json = good.header.clone();
        not_json[8] = b'[';
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (huge, good.file_len, "100 MB"),
            (good.header[..5].to_vec(), good.file_len, "shorter"),
            (
                good.header.clone(),
                good.header.len() as u64 - 1,
                "past the end",
            ),
            (not_json, good.file_len, "start with"),
            (good.header.clone(), good.file_len + 4, "cover 8 of 12"),
        ];
        for (bytes, len, fragment) in cases {
            let err = parse_header(&bytes, len).unwrap_err();
            assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
        }
    }
}
