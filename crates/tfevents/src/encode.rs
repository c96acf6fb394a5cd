//! Allocation-free encoding of the hottest event: one step's scalars as `simple_value`s.
//!
//! Produces exactly the bytes `prost` would for the equivalent [`Event`](crate::proto::Event)
//! (checked by the tests below), without building the message's `String`s and `Vec`s.
//!
//! It owns the event's bytes only: the record framing and its CRCs are `record`'s, and writing is
//! `EventWriter`'s. It must not encode any other event: everything else goes through `prost`.

use prost::encoding::{encode_varint, encoded_len_varint};

/// Key of `Event.wall_time` (field 1, fixed64).
const KEY_WALL_TIME: u8 = 1 << 3 | 1;
/// Key of `Event.step` (field 2, varint).
const KEY_STEP: u8 = 2 << 3;
/// Key of `Event.summary` (field 5, length-delimited).
const KEY_SUMMARY: u8 = 5 << 3 | 2;
/// Key of `Summary.value` (field 1, length-delimited).
const KEY_VALUE: u8 = 1 << 3 | 2;
/// Key of `Summary.Value.tag` (field 1, length-delimited).
const KEY_TAG: u8 = 1 << 3 | 2;
/// Key of `Summary.Value.simple_value` (field 2, fixed32).
const KEY_SIMPLE_VALUE: u8 = 2 << 3 | 5;

/// Length of one encoded `Summary.Value` holding a tag and a `simple_value`.
fn value_len(tag: &str) -> usize {
    let tag_len = if tag.is_empty() {
        0
    } else {
        1 + encoded_len_varint(tag.len() as u64) + tag.len()
    };
    tag_len + 5
}

/// Appends to `out` the encoding of an `Event` at `step` and `wall_time` whose summary holds
/// one `simple_value` per `(tag, value)`.
pub fn scalars_event<T: AsRef<str>>(
    out: &mut Vec<u8>,
    step: i64,
    wall_time: f64,
    values: &[(T, f32)],
) {
    let summary_len: usize = values
        .iter()
        .map(|(tag, _)| {
            let len = value_len(tag.as_ref());
            1 + encoded_len_varint(len as u64) + len
        })
        .sum();
    // Same presence rules as prost for proto3 fields: defaults are not written.
    if wall_time != 0.0 {
        out.push(KEY_WALL_TIME);
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        out.push(KEY_STEP);
        encode_varint(step as u64, out);
    }
    out.push(KEY_SUMMARY);
    encode_varint(summary_len as u64, out);
    for (tag, value) in values {
        let tag = tag.as_ref();
        out.push(KEY_VALUE);
        encode_varint(value_len(tag) as u64, out);
        if !tag.is_empty() {
            out.push(KEY_TAG);
            encode_varint(tag.len() as u64, out);
            out.extend_from_slice(tag.as_bytes());
        }
        out.push(KEY_SIMPLE_VALUE);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Event, Summary, event::What};
    use crate::summaries;
    use proptest::prelude::*;
    use prost::Message;

    type Scalars = Vec<(String, f32)>;

    fn reference(step: i64, wall_time: f64, values: &[(String, f32)]) -> Vec<u8> {
        Event {
            wall_time,
            step,
            what: Some(What::Summary(Summary {
                value: values
                    .iter()
                    .map(|(t, v)| summaries::scalar(t, *v))
                    .collect(),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn matches_prost_on_edge_cases() {
        let cases: Vec<(i64, f64, Scalars)> = vec![
            (0, 0.0, vec![]),
            (0, 0.0, vec![(String::new(), 0.0)]),
            (-1, -0.0, vec![("a".into(), -0.0)]),
            (
                i64::MAX,
                1.7e9,
                vec![("loss".into(), f32::NAN), ("x".repeat(300), f32::INFINITY)],
            ),
            (i64::MIN, f64::MAX, vec![("é/ü".into(), f32::MIN_POSITIVE)]),
        ];
        for (step, wall_time, values) in cases {
            let mut out = Vec::new();
            scalars_event(&mut out, step, wall_time, &values);
            assert_eq!(
                out,
                reference(step, wall_time, &values),
                "{step} {wall_time} {values:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn matches_prost(
            step in any::<i64>(),
            wall_time in any::<f64>(),
            values in proptest::collection::vec((".{0,200}", any::<f32>()), 0..12),
        ) {
            let mut out = vec![7u8]; // appends, leaving what is there
            scalars_event(&mut out, step, wall_time, &values);
            prop_assert_eq!(out[0], 7);
            prop_assert_eq!(&out[1..], &reference(step, wall_time, &values)[..]);
        }
    }
}
