//! Byte sizes on the command line (`--size`, `--block-size`): `1GiB`, `1.5 MB`, `4096`.
//!
//! It owns the parsing only (units, fractions, overflow refused with a message): it must not decide
//! which sizes an option accepts, which is the caller's.

/// Parses a byte size: a whole or decimal number with an optional unit, `B`, `KiB`, `MiB`,
/// `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000), case-insensitive, with or
/// without a space (`1GiB`, `1.5 MB`, `4096`). A fractional byte count is rounded down.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(format!("{text:?} does not start with a number"));
    }
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(format!("{text:?} is not a number"));
    }
    let overflow = || format!("{text:?} is too large");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| overflow())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(overflow)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        let scale = 10u128.pow(fraction.len() as u32);
        let extra =
            u64::try_from(digits * u128::from(multiplier) / scale).map_err(|_| overflow())?;
        bytes = bytes.checked_add(extra).ok_or_else(overflow)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("12B", Some(12)),
            ("1KiB", Some(1024)),
            ("1kib", Some(1024)),
            ("2MiB", Some(2 << 20)),
            ("1GiB", Some(1 << 30)),
            ("1 GiB", Some(1 << 30)),
            (" 3KB ", Some(3000)),
            ("5MB", Some(5_000_000)),
            ("2GB", Some(2_000_000_000)),
            ("1.5KiB", Some(1536)),
            ("0.5MB", Some(500_000)),
            (".5KiB", Some(512)),
            ("1.0001B", Some(1)),
            ("16777216GiB", Some(1 << 54)),
            ("17179869184GiB", None), // 2^64 bytes
            ("99999999999999999999", None),
            ("", None),
            ("GiB", None),
            (".", None),
            ("1.2.3MiB", None),
            ("1TiB", None),
            ("1 GiBs", None),
            ("-1MiB", None),
            ("1e3", None),
            ("0x10", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).ok(), *want, "{text:?}");
        }
    }
}
