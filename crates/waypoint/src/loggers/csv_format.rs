//! The CSV side of [`CsvLogger`](super::CsvLogger), pure: quoting and parsing (RFC 4180: `,`
//! between fields, `"` around fields holding `,`, `"` or a line break, `""` for a quote), and
//! the file-level helpers it needs (reading a table, replacing a file atomically).
//!
//! It must not know what the columns mean (the step, the metrics, the checkpoints): that is
//! `CsvLogger`'s. It trusts no file it reads: a last row cut short is reported (`Table::partial`)
//! for the logger to drop, and lines that are not UTF-8 (or that the logger refuses) are set
//! aside in `<file>.corrupt`.

use super::corrupt::{corrupt_path, set_aside};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// A parsed file: the header's fields, the complete rows, and whether the text ended inside a
/// row (a writer killed mid-row), which is then left out.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub partial: bool,
    /// Lines were set aside while reading: the file must be rewritten without them.
    pub set_aside: bool,
}

/// Parses `text`: the first record is the header. Only records ended by a line break count.
pub(super) fn parse(text: &str) -> Table {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut pending = false;
    while let Some(c) = chars.next() {
        pending = true;
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                pending = false;
            }
            (false, c) => field.push(c),
        }
    }
    let mut records = records.into_iter();
    Table {
        header: records.next().unwrap_or_default(),
        rows: records.collect(),
        partial: pending,
        set_aside: false,
    }
}

/// Appends `field` to `out`, quoted if it needs to be.
pub(super) fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Appends `fields` as one record, ended by `\n`.
pub(super) fn push_record<'a>(out: &mut String, fields: impl IntoIterator<Item = &'a str>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, field);
    }
    out.push('\n');
}

/// Reads `path` as a table; `None` if it does not exist. What cannot be read is set aside in
/// `<path>.corrupt` with a warning ([`set_aside`]) instead of failing: lines that are not UTF-8
/// and rows `row_ok` refuses (the table's `set_aside` then says the file needs rewriting), or the
/// whole file when `header_ok` refuses its header (the file is then moved away: `None`).
pub(super) fn read_table(
    path: &Path,
    header_ok: impl Fn(&[String]) -> bool,
    row_ok: impl Fn(&[String]) -> bool,
) -> Result<Option<Table>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let mut aside = Vec::new();
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let mut text = String::new();
            for line in e.as_bytes().split_inclusive(|b| *b == b'\n') {
                match std::str::from_utf8(line) {
                    Ok(line) => text.push_str(line),
                    Err(_) => aside.extend_from_slice(line),
                }
            }
            text
        }
    };
    let mut table = parse(&text);
    if !header_ok(&table.header) {
        set_file_aside(path, &text, aside)?;
        return Ok(None);
    }
    let (rows, refused): (Vec<_>, Vec<_>) = table.rows.into_iter().partition(|r| row_ok(r));
    table.rows = rows;
    let mut refused_text = String::new();
    for row in &refused {
        push_record(&mut refused_text, row.iter().map(String::as_str));
    }
    aside.extend_from_slice(refused_text.as_bytes());
    if !aside.is_empty() {
        set_aside(
            path,
            &aside,
            "lines of a CSV file that are not UTF-8 or hold no step",
        );
        table.set_aside = true;
    }
    Ok(Some(table))
}

/// Moves a file whose header is not the logger's out of the way (to `<path>.corrupt`, or
/// appended to it when it exists).
fn set_file_aside(path: &Path, text: &str, mut invalid: Vec<u8>) -> Result<()> {
    let why = "a CSV file whose header is not this logger's";
    let target = corrupt_path(path);
    if !target.exists() && invalid.is_empty() {
        std::fs::rename(path, &target).map_err(|e| Error::io("rename", path, e))?;
        tracing::warn!(file = %path.display(), set_aside = %target.display(), "{why}: moved aside, the logger starts a new one");
        return Ok(());
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.append(&mut invalid);
    set_aside(path, &bytes, why);
    std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
}

/// Removes the temporaries [`replace_file`] left for `path` in processes that died before their
/// rename (a crash in the middle of a rewrite: `.<name>.tmp-<pid>`, never renamed, never
/// removed by anyone else). A live process's temporary is left alone.
pub(super) fn remove_dead_temporaries(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let prefix = format!(".{name}.tmp-");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 sends nothing; it only asks whether `pid` exists.
        let gone = pid != std::process::id() as libc::pid_t
            && unsafe { libc::kill(pid, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let stale = entry.path();
            tracing::info!(path = %stale.display(), "removing the temporary of a rewrite interrupted by a crash");
            std::fs::remove_file(&stale).map_err(|e| Error::io("remove", &stale, e))?;
        }
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically: a temporary file beside it, synced, renamed over
/// it, and the directory synced. A reader sees the old file or the new one, never a mix.
pub(super) fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&temp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_data()))
        .map_err(|e| Error::io("write", &temp, e));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    crate::storage::abort_point("csv-temp-written");
    std::fs::rename(&temp, path).map_err(|e| Error::io("rename", path, e))?;
    crate::storage::abort_point("csv-renamed");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_rows() {
        let mut text = String::new();
        push_record(&mut text, ["step", "a,b", "q\"x", "line\nbreak"]);
        push_record(&mut text, ["1", "0.5", "", "2"]);
        assert_eq!(text, "step,\"a,b\",\"q\"\"x\",\"line\nbreak\"\n1,0.5,,2\n");
        let table = parse(&format!("{text}2,0.2"));
        assert_eq!(table.header, ["step", "a,b", "q\"x", "line\nbreak"]);
        assert_eq!(table.rows, [["1", "0.5", "", "2"]]);
        assert!(table.partial);
        assert!(!parse(&text).partial);
        assert_eq!(parse("step,x\r\n1,2\r\n").rows, [["1", "2"]]);
        assert_eq!(parse(""), Table::default());
    }
}
