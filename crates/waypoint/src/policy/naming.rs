//! Checkpoint names, pure: the default filename templates, rendering a template into one path
//! component, the `-last` suffix and the `-vN` version counter. Owns what a valid checkpoint name
//! is; never looks at a directory (the caller says which names exist).

use super::template::{self, Segment, Value};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Suffix of the last checkpoint's name (NeMo's `"-last"`).
pub const LAST_SUFFIX: &str = "-last";

/// Longest formatted checkpoint name, in bytes: leaves room under the usual 255-byte limit of a
/// file name for the `-vN`, `-last` and `-unfinished` suffixes and temporary names.
pub const MAX_NAME_LEN: usize = 200;

/// NeMo's default filename template: `"{name}--{<monitor>:.4f}-{epoch}-{step}"` with a monitor,
/// `"{name}--{epoch}-{step}"` without.
///
/// ```
/// use waypoint::policy::default_filename;
/// assert_eq!(default_filename(Some("val_loss")), "{name}--{val_loss:.4f}-{epoch}-{step}");
/// assert_eq!(default_filename(None), "{name}--{epoch}-{step}");
/// ```
pub fn default_filename(monitor: Option<&str>) -> String {
    match monitor {
        Some(m) => format!("{{name}}--{{{m}:.4f}}-{{epoch}}-{{step}}"),
        None => "{name}--{epoch}-{step}".to_string(),
    }
}

/// Renders a checkpoint name from a filename template.
///
/// - `{name}` is `experiment_name`, never prefixed; `{epoch}` and `{step}` are the counters given
///   here (a `values` entry with the same key is ignored); any other placeholder is looked up in
///   `values`, and one without a value renders `nan` — never a stale or made-up number (Lightning
///   rendered 0, NeMo #10675 a stale value).
/// - With `auto_insert`, every placeholder but `{name}` is prefixed with its key: `{epoch}` →
///   `epoch=3`, `{val_loss:.4f}` → `val_loss=0.1235`.
/// - Numbers render as Python's `format` would, for the specs none, `.Nf`, `d` and `.Ne`.
/// - `/` and `\` in the result become `_`, so a metric such as `val/loss` cannot create a
///   subdirectory. The result must then be one valid name (see [`name_problem`]).
///
/// ```
/// use std::collections::BTreeMap;
/// use waypoint::policy::format_name;
/// let values = BTreeMap::from([("val_loss".to_string(), 0.123456)]);
/// let name = format_name("{name}--{val_loss:.4f}-{epoch}-{step}", "gpt", &values, 0, 30, true)?;
/// assert_eq!(name, "gpt--val_loss=0.1235-epoch=0-step=30");
/// let stale = format_name("{name}--{val_loss:.4f}-{epoch}-{step}", "gpt", &BTreeMap::new(), 0, 30, true)?;
/// assert_eq!(stale, "gpt--val_loss=nan-epoch=0-step=30");
/// # Ok::<(), waypoint::Error>(())
/// ```
pub fn format_name(
    template: &str,
    experiment_name: &str,
    values: &BTreeMap<String, f64>,
    epoch: u64,
    step: u64,
    auto_insert: bool,
) -> Result<String> {
    let segments = template::parse(template)?;
    render_segments(&segments, experiment_name, values, epoch, step, auto_insert)
}

/// [`format_name`] over an already parsed template.
pub(crate) fn render_segments(
    segments: &[Segment],
    experiment_name: &str,
    values: &BTreeMap<String, f64>,
    epoch: u64,
    step: u64,
    auto_insert: bool,
) -> Result<String> {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Field { name, .. } if name == "name" => out.push_str(experiment_name),
            Segment::Field { name, spec, pad } => {
                let value = match name.as_str() {
                    "epoch" => Value::Int(epoch),
                    "step" => Value::Int(step),
                    key => Value::Float(values.get(key).copied().unwrap_or(f64::NAN)),
                };
                if auto_insert {
                    out.push_str(name);
                    out.push('=');
                }
                out.push_str(&template::render_padded(value, *spec, *pad));
            }
        }
    }
    let out = out.replace(['/', '\\'], "_");
    match name_problem(&out) {
        None => Ok(out),
        Some(problem) => Err(Error::InvalidArgument {
            name: "filename",
            reason: format!("checkpoint name {out:?} {problem}"),
        }),
    }
}

/// Why `name` cannot be a checkpoint name (one path component inside the checkpoint directory), or
/// `None` when it can. Also used to vet names read back from a restored policy state.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.starts_with('.') {
        Some("must not start with '.' (hidden and relative names are reserved)")
    } else if name.contains(['/', '\\']) {
        Some("must not contain a path separator")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 200 bytes")
    } else {
        None
    }
}

/// The last checkpoint's name for a checkpoint name: `"{name}-last"`.
///
/// ```
/// assert_eq!(waypoint::policy::last_name("gpt--epoch=0-step=30"), "gpt--epoch=0-step=30-last");
/// ```
pub fn last_name(name: &str) -> String {
    format!("{name}{LAST_SUFFIX}")
}

/// The version counter: `name` if it does not exist, else the first of `name-v1`, `name-v2`, …
/// that does not. `existing` must be false for some version, as it is for any finite listing.
///
/// ```
/// use waypoint::policy::with_version;
/// let taken = ["a", "a-v1"];
/// assert_eq!(with_version("a", &|n| taken.contains(&n)), "a-v2");
/// assert_eq!(with_version("b", &|n| taken.contains(&n)), "b");
/// ```
pub fn with_version(name: &str, existing: &dyn Fn(&str) -> bool) -> String {
    if !existing(name) {
        return name.to_string();
    }
    let mut version: u64 = 1;
    loop {
        let candidate = format!("{name}-v{version}");
        if !existing(&candidate) {
            return candidate;
        }
        version = version.saturating_add(1);
    }
}

/// The versioned last name: `"{name}-last"`, else `"{name}-v1-last"`, `"{name}-v2-last"`, … The
/// version goes before the suffix so the name still ends in `last`: NeMo's AutoResume only picks
/// names ending in `last`, and never found Lightning's `-last-v1` again.
///
/// ```
/// use waypoint::policy::last_with_version;
/// let taken = ["a-last"];
/// assert_eq!(last_with_version("a", &|n| taken.contains(&n)), "a-v1-last");
/// ```
pub fn last_with_version(name: &str, existing: &dyn Fn(&str) -> bool) -> String {
    last_name(&with_version(name, &|base| existing(&last_name(base))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Issue 18: widths and zero padding in a template, with the metric names inserted
    /// (Python: `"step={:05d}".format(30)` is `step=00030`).
    #[test]
    fn padded_placeholders_in_names() {
        let values = vals(&[("val_loss", 0.123456)]);
        let name = format_name(
            "{epoch:02d}-{step:05d}-{val_loss:08.4f}",
            "gpt",
            &values,
            3,
            30,
            true,
        );
        assert_eq!(name.unwrap(), "epoch=03-step=00030-val_loss=000.1235");
        let bare = format_name("{name}-{step:05d}", "gpt", &values, 3, 30, false);
        assert_eq!(bare.unwrap(), "gpt-00030");
    }

    #[test]
    fn format_table() {
        let nemo = "{name}--{val_loss:.4f}-{epoch}-{step}";
        #[rustfmt::skip]
        type Row<'a> = (&'a str, &'a str, &'a [(&'a str, f64)], u64, u64, bool, &'a str);
        let table: &[Row] = &[
            (
                nemo,
                "gpt",
                &[("val_loss", 0.123456)],
                2,
                300,
                true,
                "gpt--val_loss=0.1235-epoch=2-step=300",
            ),
            (
                nemo,
                "gpt",
                &[("val_loss", 0.123456)],
                2,
                300,
                false,
                "gpt--0.1235-2-300",
            ),
            // NeMo #10675: no value for the monitor renders nan, never a stale or zero value.
            (
                nemo,
                "gpt",
                &[],
                0,
                30,
                true,
                "gpt--val_loss=nan-epoch=0-step=30",
            ),
            (
                nemo,
                "gpt",
                &[("val_loss", f64::NAN)],
                0,
                30,
                true,
                "gpt--val_loss=nan-epoch=0-step=30",
            ),
            (
                nemo,
                "gpt",
                &[("val_loss", f64::INFINITY)],
                0,
                30,
                true,
                "gpt--val_loss=inf-epoch=0-step=30",
            ),
            (
                nemo,
                "gpt",
                &[("val_loss", f64::NEG_INFINITY)],
                0,
                30,
                true,
                "gpt--val_loss=-inf-epoch=0-step=30",
            ),
            (
                "{name}--{epoch}-{step}",
                "gpt",
                &[],
                1,
                7,
                true,
                "gpt--epoch=1-step=7",
            ),
            (
                "{epoch}-{step}",
                "",
                &[("epoch", 99.0), ("step", 99.0)],
                1,
                7,
                true,
                "epoch=1-step=7",
            ),
            (
                "{val/loss:.2f}",
                "x",
                &[("val/loss", 0.5)],
                0,
                0,
                true,
                "val_loss=0.50",
            ),
            (
                "{name}-{lr:.1e}",
                "a/b",
                &[("lr", 0.0003)],
                0,
                0,
                true,
                "a_b-lr=3.0e-04",
            ),
            (
                "{name}-{acc}",
                "x",
                &[("acc", 0.75)],
                0,
                0,
                true,
                "x-acc=0.75",
            ),
            (
                "{name}-{samples:d}",
                "x",
                &[("samples", 1024.0)],
                0,
                0,
                true,
                "x-samples=1024",
            ),
            ("{name}-{step:.2f}", "x", &[], 0, 5, false, "x-5.00"),
            ("run\\{step}", "x", &[], 0, 5, false, "run_5"),
        ];
        for (template, exp, values, epoch, step, auto, want) in table {
            let got = format_name(template, exp, &vals(values), *epoch, *step, *auto).unwrap();
            assert_eq!(got, *want, "{template} {values:?}");
        }
    }

    #[test]
    fn format_refuses_invalid_names() {
        let table = [
            ("{name}", "", "must not be empty"),
            (".{step}", "x", "must not start with '.'"),
            ("{name}", ".hidden", "must not start with '.'"),
            ("{name}", "a\0b", "must not contain NUL"),
            ("{name}-{step}", &"x".repeat(250), "longer than 200 bytes"),
            ("{step", "x", "never closed"),
        ];
        for (template, exp, needle) in table {
            let err = format_name(template, exp, &BTreeMap::new(), 0, 1, true).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{template} {exp:?}: {err}"
            );
        }
    }

    #[test]
    fn name_problem_table() {
        let table = [
            ("gpt--epoch=0-step=30", true),
            ("a-last", true),
            ("", false),
            (".", false),
            ("..", false),
            ("../x", false),
            ("a/b", false),
            ("a\\b", false),
            ("a\0", false),
        ];
        for (name, ok) in table {
            assert_eq!(name_problem(name).is_none(), ok, "{name:?}");
        }
    }

    #[test]
    fn version_counter_table() {
        let table: &[(&str, &[&str], &str, &str)] = &[
            ("a", &[], "a", "a-last"),
            ("a", &["a"], "a-v1", "a-last"),
            ("a", &["a", "a-v1", "a-v2"], "a-v3", "a-last"),
            ("a", &["a-last"], "a", "a-v1-last"),
            ("a", &["a-last", "a-v1-last"], "a", "a-v2-last"),
            ("a", &["a-v1"], "a", "a-last"),
        ];
        for (name, taken, want, want_last) in table {
            let exists = |n: &str| taken.contains(&n);
            assert_eq!(with_version(name, &exists), *want, "{taken:?}");
            assert_eq!(last_with_version(name, &exists), *want_last, "{taken:?}");
        }
    }

    #[test]
    fn default_templates_render_like_nemo() {
        let values = vals(&[("val_loss", 1.5)]);
        let with = format_name(
            &default_filename(Some("val_loss")),
            "e",
            &values,
            3,
            40,
            true,
        );
        assert_eq!(with.unwrap(), "e--val_loss=1.5000-epoch=3-step=40");
        let without = format_name(&default_filename(None), "e", &values, 3, 40, true);
        assert_eq!(without.unwrap(), "e--epoch=3-step=40");
        assert_eq!(last_name("e--epoch=3-step=40"), "e--epoch=3-step=40-last");
    }
}
