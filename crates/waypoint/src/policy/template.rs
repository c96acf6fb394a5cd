//! The checkpoint filename template: parsing `"{name}--{val_loss:.4f}-{epoch}-{step}"` into
//! literal text and placeholders, and rendering numbers exactly as Python's `format` does for the
//! specs NeMo and Lightning use, with Python's width and zero padding (`{step:05d}`,
//! `{val_loss:08.4f}`). Owns the template grammar; knows nothing of files or metrics.

use crate::error::{Error, Result};

/// Largest precision accepted in `:.Nf` and `:.Ne`.
pub const MAX_PRECISION: usize = 20;

/// Largest width accepted in a format spec (`{step:05d}` has width 5); a checkpoint name holds
/// at most 200 bytes anyway.
pub const MAX_WIDTH: usize = 64;

/// How a placeholder's value is rendered (a subset of Python's format-spec mini-language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// No spec: integers as integers, floats as Python's `repr` (`0.5`, `1e-05`, `1.0`).
    Plain,
    /// `:.Nf`: fixed point with N decimals.
    Fixed(usize),
    /// `:.Ne`: scientific with N decimals and a signed, two-digit exponent (`1.23e-04`).
    Exp(usize),
    /// `:d`: an integer; a float value is rounded to the nearest integer (half to even).
    Int,
}

/// Python's width and `0` flag (`[0][width]` before the precision and type): a rendered value
/// shorter than `width` is padded on the left, with zeros after the sign when `zero` (as Python
/// pads numbers with the `0` flag, `nan` and `inf` included), else with spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad {
    /// The minimum width in characters (0: no padding).
    pub width: usize,
    /// Pad with zeros after the sign instead of spaces.
    pub zero: bool,
}

impl Pad {
    /// `text` padded to the width, as Python's `format` pads a number.
    pub fn apply(self, text: String) -> String {
        let len = text.chars().count();
        if len >= self.width {
            return text;
        }
        let fill = self.width - len;
        if !self.zero {
            return format!("{}{text}", " ".repeat(fill));
        }
        let (sign, digits) = match text.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", text.as_str()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as it is.
    Literal(String),
    /// A `{field}` or `{field:spec}` placeholder.
    Field {
        /// The placeholder's name: `name`, `epoch`, `step` or a metric name.
        name: String,
        /// How its value is rendered.
        spec: Spec,
        /// Its width and padding (none by default).
        pad: Pad,
    },
}

/// A value to render into a placeholder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An integer counter (epoch, step).
    Int(u64),
    /// A metric value; NaN renders `nan`, infinities `inf` / `-inf`.
    Float(f64),
}

fn invalid(reason: String) -> Error {
    Error::InvalidArgument {
        name: "filename",
        reason,
    }
}

/// Parses a filename template. Braces must balance without nesting; a placeholder needs a name;
/// the spec after `:` is an optional `0` flag and width (at most [`MAX_WIDTH`]) followed by one of
/// none (with a width), `.Nf`, `d`, `.Ne`; `{name}` takes no spec.
pub fn parse(template: &str) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = template.char_indices();
    while let Some((open, c)) = chars.next() {
        match c {
            '{' => {
                let mut inner = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    match c {
                        '}' => {
                            closed = true;
                            break;
                        }
                        '{' => {
                            return Err(invalid(format!(
                                "nested '{{' in the placeholder starting at byte {open} of {template:?}"
                            )));
                        }
                        c => inner.push(c),
                    }
                }
                if !closed {
                    return Err(invalid(format!(
                        "unbalanced braces: the '{{' at byte {open} of {template:?} is never closed"
                    )));
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(parse_field(&inner, template)?);
            }
            '}' => {
                return Err(invalid(format!(
                    "unbalanced braces: '}}' at byte {open} of {template:?} closes nothing"
                )));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn parse_field(inner: &str, template: &str) -> Result<Segment> {
    let (name, spec) = match inner.split_once(':') {
        Some((name, spec)) => (name, Some(spec)),
        None => (inner, None),
    };
    if name.is_empty() {
        return Err(invalid(format!(
            "empty placeholder {{{inner}}} in {template:?}"
        )));
    }
    let (spec, pad) = match spec {
        None => (Spec::Plain, Pad::default()),
        Some(spec) => parse_padded(spec).ok_or_else(|| {
            invalid(format!(
                "unknown format spec {spec:?} in {{{inner}}}: use none, .Nf, d or .Ne (N at most {MAX_PRECISION}), optionally after a width and Python's 0 flag (05d, 08.4f; width at most {MAX_WIDTH})"
            ))
        })?,
    };
    if name == "name" && (spec != Spec::Plain || pad != Pad::default()) {
        return Err(invalid(format!(
            "the {{name}} placeholder (the experiment name) takes no format spec, got {{{inner}}}"
        )));
    }
    Ok(Segment::Field {
        name: name.to_string(),
        spec,
        pad,
    })
}

/// `[0][width]` then a spec of [`parse_spec`], or a width alone (Python's `{epoch:02}`).
fn parse_padded(spec: &str) -> Option<(Spec, Pad)> {
    let zero = spec.starts_with('0');
    let rest = if zero { &spec[1..] } else { spec };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (width, rest) = rest.split_at(digits);
    let width: usize = match width {
        "" => 0,
        w if w.len() <= 2 => w.parse().ok()?,
        _ => return None,
    };
    if width > MAX_WIDTH {
        return None;
    }
    let kind = match rest {
        "" if zero || width > 0 => Spec::Plain,
        rest => parse_spec(rest)?,
    };
    Some((kind, Pad { width, zero }))
}

fn parse_spec(spec: &str) -> Option<Spec> {
    if spec == "d" {
        return Some(Spec::Int);
    }
    let body = spec.strip_prefix('.')?;
    let kind = body.chars().next_back()?;
    let digits = body.get(..body.len() - kind.len_utf8())?;
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let precision: usize = digits.parse().ok()?;
    if precision > MAX_PRECISION {
        return None;
    }
    match kind {
        'f' => Some(Spec::Fixed(precision)),
        'e' => Some(Spec::Exp(precision)),
        _ => None,
    }
}

/// Renders `value` with `spec` and `pad` as Python's `format(value, spec)` would.
pub fn render_padded(value: Value, spec: Spec, pad: Pad) -> String {
    pad.apply(render(value, spec))
}

/// Renders `value` with `spec` as Python's `format(value, spec)` would.
pub fn render(value: Value, spec: Spec) -> String {
    match (value, spec) {
        (Value::Int(i), Spec::Plain | Spec::Int) => i.to_string(),
        (Value::Int(i), _) => render(Value::Float(i as f64), spec),
        (Value::Float(x), _) if x.is_nan() => "nan".to_string(),
        (Value::Float(x), _) if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.to_string(),
        (Value::Float(x), Spec::Plain) => py_repr(x),
        (Value::Float(x), Spec::Fixed(p)) => format!("{x:.p$}"),
        (Value::Float(x), Spec::Int) => format!("{x:.0}"),
        (Value::Float(x), Spec::Exp(p)) => py_exponent(&format!("{x:.p$e}")),
    }
}

/// Python's `repr(float)` for a finite value: the shortest round-trip digits, scientific when the
/// decimal exponent is below -4 or at least 16, and always a `.0` or an exponent.
fn py_repr(x: f64) -> String {
    let sci = format!("{x:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return sci;
    };
    if !(-4..16).contains(&exp) {
        return py_exponent(&sci);
    }
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if digits.len() > point {
            format!("{}.{}", &digits[..point], &digits[point..])
        } else {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        }
    };
    format!("{sign}{body}")
}

/// Rewrites Rust's exponent (`1.5e-5`, `1e16`) into Python's (`1.5e-05`, `1e+16`).
fn py_exponent(rust: &str) -> String {
    match rust.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => rust.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, spec: Spec) -> Segment {
        Segment::Field {
            name: name.into(),
            spec,
            pad: Pad::default(),
        }
    }

    #[test]
    fn parse_table() {
        let lit = |s: &str| Segment::Literal(s.into());
        let table = [
            (
                "{epoch}-{step}",
                vec![
                    field("epoch", Spec::Plain),
                    lit("-"),
                    field("step", Spec::Plain),
                ],
            ),
            (
                "a{val_loss:.4f}b",
                vec![lit("a"), field("val_loss", Spec::Fixed(4)), lit("b")],
            ),
            (
                "{x:d}{y:.2e}",
                vec![field("x", Spec::Int), field("y", Spec::Exp(2))],
            ),
            ("{val/loss:.12f}", vec![field("val/loss", Spec::Fixed(12))]),
            ("plain", vec![lit("plain")]),
            ("", vec![]),
        ];
        for (template, want) in table {
            assert_eq!(parse(template).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let table = [
            ("{epoch", "never closed"),
            ("epoch}", "closes nothing"),
            ("{a{b}}", "nested"),
            ("{}", "empty placeholder"),
            ("{:.2f}", "empty placeholder"),
            ("{val_loss:.4g}", "unknown format spec \".4g\""),
            ("{val_loss:>10}", "unknown format spec \">10\""),
            ("{val_loss:.f}", "unknown format spec \".f\""),
            ("{val_loss:.21f}", "unknown format spec \".21f\""),
            ("{val_loss:.4}", "unknown format spec \".4\""),
            ("{val_loss:.4é}", "unknown format spec \".4é\""),
            ("{name:.2f}", "takes no format spec"),
        ];
        for (template, needle) in table {
            let err = parse(template).unwrap_err().to_string();
            assert!(err.contains(needle), "{template}: {err}");
            assert!(err.starts_with("invalid filename"), "{err}");
        }
    }

    #[test]
    fn render_matches_python() {
        // Expected strings are Python 3's format(value, spec).
        let table = [
            (Value::Float(0.123456), Spec::Fixed(4), "0.1235"),
            (Value::Float(0.125), Spec::Fixed(2), "0.12"),
            (Value::Float(2.675), Spec::Fixed(2), "2.67"),
            (Value::Float(-0.0), Spec::Fixed(4), "-0.0000"),
            (Value::Float(1e-5), Spec::Fixed(4), "0.0000"),
            (Value::Float(f64::NAN), Spec::Fixed(4), "nan"),
            (Value::Float(f64::INFINITY), Spec::Fixed(4), "inf"),
            (Value::Float(f64::NEG_INFINITY), Spec::Exp(2), "-inf"),
            (Value::Float(0.000123), Spec::Exp(2), "1.23e-04"),
            (Value::Float(12345.0), Spec::Exp(2), "1.23e+04"),
            (Value::Float(0.0), Spec::Exp(2), "0.00e+00"),
            (Value::Float(1.5e300), Spec::Exp(1), "1.5e+300"),
            (Value::Float(0.5), Spec::Plain, "0.5"),
            (Value::Float(1.0), Spec::Plain, "1.0"),
            (Value::Float(1e-5), Spec::Plain, "1e-05"),
            (Value::Float(2.5e-5), Spec::Plain, "2.5e-05"),
            (Value::Float(0.0001), Spec::Plain, "0.0001"),
            (Value::Float(-0.0), Spec::Plain, "-0.0"),
            (Value::Float(1e15), Spec::Plain, "1000000000000000.0"),
            (Value::Float(1e16), Spec::Plain, "1e+16"),
            (
                Value::Float(123456789012345678.0),
                Spec::Plain,
                "1.2345678901234568e+17",
            ),
            (Value::Float(123.456), Spec::Plain, "123.456"),
            (Value::Float(f64::NAN), Spec::Plain, "nan"),
            (Value::Float(2.5), Spec::Int, "2"),
            (Value::Float(1024.0), Spec::Int, "1024"),
            (Value::Int(3), Spec::Plain, "3"),
            (Value::Int(3), Spec::Int, "3"),
            (Value::Int(3), Spec::Fixed(4), "3.0000"),
            (Value::Int(1000), Spec::Exp(1), "1.0e+03"),
        ];
        for (value, spec, want) in table {
            assert_eq!(render(value, spec), want, "{value:?} {spec:?}");
        }
    }

    /// Python's width and `0` flag (issue 18, "Python format specs with width and zero
    /// padding"). The expected strings were generated with the pinned venv's Python 3,
    /// `format(value, spec)`, and pasted here; Python refuses `d` for a float, which waypoint
    /// rounds (half to even) and pads like an integer.
    #[test]
    fn padded_render_matches_python_format() {
        let table: &[(Value, &str, &str)] = &[
            (Value::Int(30), "05d", "00030"),
            (Value::Int(3), "02d", "03"),
            (Value::Int(123456), "03d", "123456"),
            (Value::Int(30), "5d", "   30"),
            (Value::Int(7), "02", "07"),
            (Value::Int(7), "2", " 7"),
            (Value::Int(3), "08.2f", "00003.00"),
            (Value::Float(0.123456), "08.4f", "000.1235"),
            (Value::Float(-1.5), "08.3f", "-001.500"),
            (Value::Float(f64::NAN), "08.4f", "00000nan"),
            (Value::Float(f64::INFINITY), "08.2f", "00000inf"),
            (Value::Float(f64::NEG_INFINITY), "08.2f", "-0000inf"),
            (Value::Float(0.000123), "010.2e", "001.23e-04"),
            (Value::Float(-0.000123), "010.2e", "-01.23e-04"),
            (Value::Float(0.5), "08", "000000.5"),
            (Value::Float(1e-5), "08", "0001e-05"),
            (Value::Float(0.5), "8.3f", "   0.500"),
            (Value::Float(0.0), "06.1f", "0000.0"),
            (Value::Float(-0.0), "06.1f", "-000.0"),
            // Not Python (it refuses `d` for a float): rounded, then padded as an integer.
            (Value::Float(2.5), "04d", "0002"),
        ];
        for &(value, spec, want) in table {
            let template = format!("{{x:{spec}}}");
            let Segment::Field {
                spec: kind, pad, ..
            } = &parse(&template).unwrap()[0]
            else {
                panic!("{template}: not a field");
            };
            assert_eq!(render_padded(value, *kind, *pad), want, "{value:?} {spec}");
        }
        let refused = [
            "{x:065d}",
            "{x:100d}",
            "{x:05.4}",
            "{x:05g}",
            "{x:}",
            "{name:05}",
        ];
        for template in refused {
            assert!(parse(template).is_err(), "{template} accepted");
        }
    }
}
