//! The event-file naming convention, and the choice of a new file's name so that it sorts after
//! every event file already in the directory.
//!
//! Pure functions over names and numbers: no clock, no directory listing (the writer supplies
//! both).
//!
//! Names are `events.out.tfevents.{10-digit unix seconds}.{hostname}.{pid}.{counter}{suffix}`.
//! TensorBoard reads the files of a run in the lexicographic order of their names, so the time
//! component decides the order. Two files created in the same second (a quick restart) would be
//! ordered by hostname and process id, which is arbitrary; instead, when the current second is
//! not later than the largest timestamp among the directory's event files, the new file takes
//! that largest timestamp plus one. Its name then sorts after every existing event file, and the
//! timestamp is off by at most the number of restarts within a second.

/// Every event file name starts with this.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// Whether `name` (a file name, not a path) is an event file's: TensorBoard's rule is that the
/// name contains `tfevents`; this crate's reader and writer use the stricter prefix.
pub fn is_event_file_name(name: &str) -> bool {
    name.starts_with(FILE_PREFIX)
}

/// The timestamp component of an event file name, if it has one.
pub fn timestamp_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(FILE_PREFIX)?;
    let digits = rest.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The parts of a new event file's name other than its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts<'a> {
    /// Host name (already sanitized with [`sanitize_component`]).
    pub hostname: &'a str,
    /// Process id.
    pub pid: u32,
    /// Per-process counter of files created.
    pub counter: u64,
    /// Appended verbatim after the counter (e.g. `".v2"`); may be empty.
    pub suffix: &'a str,
}

/// The timestamp for a new file: `now_secs`, or one more than the largest timestamp among
/// `existing` names when that is not earlier than `now_secs`.
pub fn next_timestamp<'a>(existing: impl IntoIterator<Item = &'a str>, now_secs: u64) -> u64 {
    let newest = existing.into_iter().filter_map(timestamp_of).max();
    match newest {
        Some(newest) if newest >= now_secs => newest.saturating_add(1),
        _ => now_secs,
    }
}

/// The name of a new event file created at `now_secs` in a directory holding `existing`.
pub fn next_file_name<'a>(
    existing: impl IntoIterator<Item = &'a str>,
    now_secs: u64,
    parts: &NameParts<'_>,
) -> String {
    format_file_name(next_timestamp(existing, now_secs), parts)
}

/// The event file name for a timestamp and parts.
pub fn format_file_name(timestamp: u64, parts: &NameParts<'_>) -> String {
    format!(
        "{FILE_PREFIX}{timestamp:010}.{}.{}.{}{}",
        parts.hostname, parts.pid, parts.counter, parts.suffix
    )
}

/// Makes a host name safe as one component of a file name: characters other than ASCII
/// letters, digits, `-`, `_` and `.` become `_`; an empty name becomes `localhost`.
pub fn sanitize_component(name: &str) -> String {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "localhost".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTS: NameParts<'static> = NameParts {
        hostname: "host",
        pid: 42,
        counter: 0,
        suffix: "",
    };

    #[test]
    fn format_pads_to_ten_digits() {
        assert_eq!(
            format_file_name(12, &PARTS),
            "events.out.tfevents.0000000012.host.42.0"
        );
        let parts = NameParts {
            counter: 3,
            suffix: ".v2",
            ..PARTS
        };
        assert_eq!(
            format_file_name(1_700_000_000, &parts),
            "events.out.tfevents.1700000000.host.42.3.v2"
        );
    }

    #[test]
    fn timestamps_parse() {
        let table: &[(&str, Option<u64>)] = &[
            (
                "events.out.tfevents.1700000000.host.1.0",
                Some(1_700_000_000),
            ),
            ("events.out.tfevents.0000000012.h", Some(12)),
            ("events.out.tfevents.1700000000", Some(1_700_000_000)),
            ("events.out.tfevents..host", None),
            ("events.out.tfevents.17x0.host", None),
            ("other.1700000000", None),
            ("events.out.tfevents.99999999999999999999999.h", None),
        ];
        for (name, want) in table {
            assert_eq!(timestamp_of(name), *want, "{name}");
        }
    }

    #[test]
    fn next_timestamp_table() {
        let table: &[(&[&str], u64, u64)] = &[
            (&[], 100, 100),
            (&["events.out.tfevents.0000000050.h.1.0"], 100, 100),
            (&["events.out.tfevents.0000000100.h.1.0"], 100, 101),
            (
                &[
                    "events.out.tfevents.0000000100.h.1.0",
                    "events.out.tfevents.0000000101.h.2.0",
                ],
                100,
                102,
            ),
            (&["events.out.tfevents.0000000200.h.1.0"], 100, 201),
            (&["unrelated.txt", "events.out.tfevents.garbage"], 100, 100),
        ];
        for (existing, now, want) in table {
            assert_eq!(
                next_timestamp(existing.iter().copied(), *now),
                *want,
                "{existing:?}"
            );
        }
    }

    #[test]
    fn new_name_sorts_after_existing_ones_in_the_same_second() {
        // A quick restart: a higher-sorting host/pid already wrote a file this very second.
        let first = format_file_name(
            100,
            &NameParts {
                hostname: "zz",
                pid: 99_999,
                ..PARTS
            },
        );
        let second = next_file_name([first.as_str()], 100, &NameParts { pid: 1, ..PARTS });
        assert!(second > first, "{second} should sort after {first}");
    }

    #[test]
    fn sanitize() {
        assert_eq!(
            sanitize_component("node-1.example.com"),
            "node-1.example.com"
        );
        assert_eq!(sanitize_component(" a/b c\n"), "a_b_c");
        assert_eq!(sanitize_component(""), "localhost");
    }
}
