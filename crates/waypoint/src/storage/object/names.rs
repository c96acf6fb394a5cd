//! Names and listings of the object storage: the pending markers' names
//! (`.<dir>.waypoint-tmp-<process>-<k>`), one level of a listing, key parts' `%XX` escapes,
//! objects' times, and error messages with their root cause.
//!
//! Pure helpers that make no request of the store: which markers are stale and what to do with them
//! is `mod.rs`'s cleanup, and a name that does not parse as a marker is never taken for one.

use crate::storage::TEMP_MARKER;
use crate::storage::owner::Tag;
use std::time::SystemTime;

/// A pending marker found in a listing: `.<dir><TEMP_MARKER><owner>[-removed]` (the owner tag of
/// `storage::owner`; earlier versions wrote `<pid>.<time>-<k>`).
#[derive(Debug, Clone)]
pub(super) struct Marker {
    /// The marker object's name.
    pub(super) name: String,
    /// The checkpoint directory's name it covers.
    pub(super) dir: String,
    /// When the store last modified it.
    pub(super) modified: SystemTime,
    /// Its owner and creation time, where its name records them.
    pub(super) tag: Option<Tag>,
}

impl Marker {
    pub(super) fn parse(name: &str, modified: SystemTime) -> Option<Marker> {
        let body = name.strip_prefix('.')?;
        let (dir, rest) = body.split_once(TEMP_MARKER)?;
        if dir.is_empty() || rest.is_empty() {
            return None;
        }
        Some(Marker {
            name: name.to_owned(),
            dir: dir.to_owned(),
            modified,
            tag: Tag::parse(rest),
        })
    }
}

/// One level of a listing: the objects and the sub-prefixes directly under a prefix.
#[derive(Debug, Default)]
pub(super) struct Level {
    pub(super) files: Vec<(String, u64, SystemTime)>,
    pub(super) dirs: Vec<String>,
}

impl Level {
    pub(super) fn markers(&self) -> impl Iterator<Item = Marker> + '_ {
        self.files
            .iter()
            .filter_map(|(name, _, modified)| Marker::parse(name, *modified))
    }
}

/// Decodes the `%XX` escapes object_store puts into unusual characters of key parts.
pub(super) fn decode_part(part: &str) -> String {
    if !part.contains('%') {
        return part.to_owned();
    }
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| part.to_owned())
}

/// `e`'s message, followed by its innermost cause when the message does not already end with it
/// (object_store's messages carry the request and the retries, not why the connection failed).
pub(super) fn with_root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let message = e.to_string();
    let mut root = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    if std::ptr::addr_eq(root, e) || message.ends_with(&cause) {
        message
    } else {
        format!("{message}: {cause}")
    }
}

/// An object's modification time (object_store reports chrono values).
pub(super) fn modified(object: &object_store::ObjectMeta) -> SystemTime {
    let seconds = object.last_modified.timestamp();
    let nanos = object.last_modified.timestamp_subsec_nanos();
    u64::try_from(seconds)
        .ok()
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(s, nanos)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[test]
    fn marker_names_table() {
        let t = SystemTime::UNIX_EPOCH;
        let ours = format!(".ckpt{TEMP_MARKER}{}", crate::storage::owner::new_tag());
        let table: [(&str, Option<(&str, bool)>); 6] = [
            (&ours, Some(("ckpt", true))),
            (".ckpt.waypoint-tmp-1.abc-7", Some(("ckpt", false))),
            (".a=b.waypoint-tmp-9.f-0-removed", Some(("a=b", false))),
            ("ckpt", None),
            (".waypoint-tmp-1-2", None),
            (".x.waypoint-tmp-", None),
        ];
        for (name, expected) in table {
            let parsed = Marker::parse(name, t).map(|m| (m.dir, m.tag.is_some()));
            assert_eq!(parsed, expected.map(|(d, o)| (d.to_owned(), o)), "{name}");
        }
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn root_cause_table() {
        let leaf = |m| Some(Box::new(Chain(m, None)));
        let table = [
            (Chain("alone", None), "alone"),
            (
                Chain("request failed", leaf("refused")),
                "request failed: refused",
            ),
            (Chain("failed: refused", leaf("refused")), "failed: refused"),
            (
                Chain("a", Some(Box::new(Chain("b", leaf("root"))))),
                "a: root",
            ),
        ];
        for (error, expected) in table {
            assert_eq!(with_root_cause(&error), expected);
        }
    }

    #[test]
    fn decode_table() {
        for (raw, decoded) in [
            ("plain", "plain"),
            ("a%25b", "a%b"),
            ("%7Bx%7D", "{x}"),
            ("bad%zz", "bad%zz"),
            ("end%2", "end%2"),
        ] {
            assert_eq!(decode_part(raw), decoded, "{raw}");
        }
    }
}
