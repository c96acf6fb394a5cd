//! `hparams.yaml`: a JSON object written as block-style YAML that both YAML 1.1 readers
//! (PyYAML, which Lightning's `load_hparams_from_yaml` uses) and YAML 1.2 readers parse back to
//! the same values and types.
//!
//! Written by hand rather than with a crate: the input is a `serde_json` value, JSON scalars are
//! YAML scalars once strings are double-quoted, and the two details that matter (floats that
//! YAML 1.1 still reads as floats, reserved words quoted) are a few lines. `serde_yaml` is
//! unmaintained; its successors add a C-derived emitter or several crates for this one file.
//!
//! Pure: it returns a string and must not write any file (the loggers do) nor read YAML back.

use serde_json::{Map, Value};
use std::fmt::Write;

/// The YAML text of `params`, one top-level key per line (`{}` for an empty object).
pub fn to_yaml(params: &Map<String, Value>) -> String {
    let mut out = String::new();
    if params.is_empty() {
        out.push_str("{}\n");
    } else {
        write_map(&mut out, params, 0);
    }
    out
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (key, value) in map {
        push_indent(out, indent);
        write_key(out, key);
        out.push(':');
        write_value_after(out, value, indent);
    }
}

/// Writes `value` after `key:` or `-`: scalars and empty collections on the same line, others
/// on the following lines, indented.
fn write_value_after(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            for item in items {
                push_indent(out, indent + 2);
                out.push('-');
                write_value_after(out, item, indent + 2);
            }
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar);
            out.push('\n');
        }
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => {
                let _ = write!(out, "{u}");
            }
            (None, Some(i), _) => {
                let _ = write!(out, "{i}");
            }
            (None, None, Some(f)) => write_float(out, f),
            (None, None, None) => write_string(out, &n.to_string()),
        },
        Value::String(s) => write_string(out, s),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// A float that reads back exactly, and as a float in YAML 1.1 too (whose floats need a `.`,
/// and a signed exponent): Rust's shortest round-trip digits, in positional form from 1e-4 to
/// 1e16 (`3.0`, `0.0003`) and in exponent form outside it (`1.0e-5`, `2.5e+20`), as Python's
/// `repr` chooses.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str(".nan");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { ".inf" } else { "-.inf" });
    } else if f == 0.0 || (1e-4..1e16).contains(&f.abs()) {
        let start = out.len();
        let _ = write!(out, "{f}");
        if !out.get(start..).is_some_and(|s| s.contains('.')) {
            out.push_str(".0");
        }
    } else {
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((text.as_str(), "0"));
        out.push_str(mantissa);
        if !mantissa.contains('.') {
            out.push_str(".0");
        }
        out.push('e');
        if !exponent.starts_with('-') {
            out.push('+');
        }
        out.push_str(exponent);
    }
}

/// Keys that stay plain: identifier-like and not a word YAML 1.1 reads as a bool or null.
fn write_key(out: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        out.push_str(key);
    } else {
        write_string(out, key);
    }
}

/// Plain words that YAML 1.1 or 1.2 resolves to something other than a string.
const RESERVED: &[&str] = &[
    "y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf",
];

/// A double-quoted string: JSON's escapes, plus the characters YAML does not allow unescaped
/// (DEL, the C1 controls, and the BOM).
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || ((c as u32) >= 0x7f && (c as u32) < 0xa0) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{feff}' => out.push_str("\\ufeff"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout() {
        let params = json!({
            "lr": 0.0003, "batch_size": 32, "big": 1e300, "whole": 3.0, "neg": -2, "x": -2.5e-20,
            "name": "adam \"w\"\n", "on": true, "nothing": null,
            "sched": {"kind": "cosine", "warmup": 100, "empty": {}},
            "layers": [64, 32], "none": [], "tiny": 1e-7, "nan_key": "x"
        });
        let text = to_yaml(params.as_object().unwrap());
        let want = [
            "batch_size: 32\n",
            "big: 1.0e+300\n",
            "layers:\n  - 64\n  - 32\n",
            "lr: 0.0003\n",
            "name: \"adam \\\"w\\\"\\n\"\n",
            "nan_key: \"x\"\n",
            "neg: -2\n",
            "none: []\n",
            "nothing: null\n",
            "\"on\": true\n",
            "sched:\n  empty: {}\n  kind: \"cosine\"\n  warmup: 100\n",
            "tiny: 1.0e-7\n",
            "whole: 3.0\n",
            "x: -2.5e-20\n",
        ]
        .concat();
        assert_eq!(text, want);
        assert_eq!(to_yaml(&Map::new()), "{}\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let params = json!({"k y": "a\u{1}\u{7f}\u{85}b"});
        assert_eq!(
            to_yaml(params.as_object().unwrap()),
            "\"k y\": \"a\\x01\\x7f\\x85b\"\n"
        );
    }
}
