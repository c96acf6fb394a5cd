//! Terminal output: the buffered stdout writer every command prints through ([`Out`]), whether
//! to colour, broken-pipe detection, and the small formatting helpers (byte sizes, shapes, text
//! from a checkpoint made safe for a terminal). It decides how things look, never what is shown.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, BufWriter, IsTerminal, StdoutLock, Write};

/// Stdout, buffered, with the colour decision taken once.
///
/// Writes return [`StdoutError`], so that `main` can tell a closed pipe (exit 0, quietly) from a
/// real failure. `writeln!(out, ...)` works through the inherent [`Out::write_fmt`].
pub struct Out {
    writer: BufWriter<StdoutLock<'static>>,
    colour: bool,
}

/// Writing to stdout failed.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot write to stdout")
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Out {
    /// Locks stdout; colours when it is a terminal and `NO_COLOR` is unset or empty.
    pub fn stdout() -> Self {
        let stdout = io::stdout();
        let colour = colour_wanted(
            stdout.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        Out {
            writer: BufWriter::new(stdout.lock()),
            colour,
        }
    }

    /// Writes formatted text (what `write!` and `writeln!` call).
    pub fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
        self.writer.write_fmt(args).map_err(StdoutError)
    }

    /// Flushes what is buffered.
    pub fn flush(&mut self) -> Result<(), StdoutError> {
        self.writer.flush().map_err(StdoutError)
    }

    /// `text` in `style` when colouring, as is otherwise.
    pub fn paint<T: fmt::Display>(&self, style: Style, text: T) -> Painted<T> {
        Painted {
            style: self.colour.then_some(style),
            text,
        }
    }
}

/// Whether to colour: only on a terminal, and never when `NO_COLOR` holds a non-empty value
/// (<https://no-color.org>).
pub fn colour_wanted(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Whether an error is (caused by) a write to a closed pipe: not a failure of the command.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The few styles the commands use (plain ANSI SGR codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Headings and labels.
    Bold,
    /// Success.
    Green,
    /// Failure.
    Red,
    /// Secondary details.
    Dim,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Bold => "\x1b[1m",
            Style::Green => "\x1b[1;32m",
            Style::Red => "\x1b[1;31m",
            Style::Dim => "\x1b[2m",
        }
    }
}

/// Text with an optional style; see [`Out::paint`].
pub struct Painted<T> {
    style: Option<Style>,
    text: T,
}

impl<T: fmt::Display> fmt::Display for Painted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.style {
            Some(style) => write!(f, "{}{}\x1b[0m", style.code(), self.text),
            None => self.text.fmt(f),
        }
    }
}

/// A byte count for people: `512 B`, `4.0 KiB`, `1.5 GiB` (powers of 1024, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 and above would print as "1024.0": move to the next unit instead.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for people, in its largest whole unit: `45s`, `12m`, `3h`, `9d`.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Rows laid out as columns two spaces apart, padded by characters; `right[i]` right-aligns
/// column `i`. Trailing blanks are trimmed.
pub fn table(rows: &[Vec<String>], right: &[bool]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
                    if right.get(i).copied().unwrap_or(false) {
                        format!("{pad}{cell}")
                    } else {
                        format!("{cell}{pad}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// A shape as `[32, 64]` (`[]` for a scalar).
pub fn shape(dims: &[u64]) -> String {
    let dims: Vec<String> = dims.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Text read from a checkpoint (tensor names, keys, producer), made safe to print: control
/// characters (escape sequences, newlines) are shown escaped instead of reaching the terminal.
pub fn safe(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_debug().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` cut to at most `max` characters, ending in `...` when cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.chars().count() <= max {
        return Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    Cow::Owned(format!("{kept}..."))
}

/// The last line of a check (`verify`, `dcp verify`): `OK: {ok}` in green when `problems` is 0,
/// otherwise `FAILED: N problem(s){why}` in red.
pub fn write_verdict(
    out: &mut Out,
    problems: usize,
    ok: &str,
    why: &str,
) -> Result<(), StdoutError> {
    if problems == 0 {
        writeln!(out, "{} {ok}", out.paint(Style::Green, "OK:"))
    } else {
        writeln!(
            out,
            "{} {}{why}",
            out.paint(Style::Red, "FAILED:"),
            count(problems, "problem")
        )
    }
}

/// `n` and a noun, pluralised with an `s` unless `n` is 1.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_byte_sizes() {
        let cases = [
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (4096, "4.0 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            (1 << 20, "1.0 MiB"),
            (3 << 29, "1.5 GiB"),
            (1 << 40, "1.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_bytes(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn colour_decision() {
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (tty, no_color, want) in cases {
            assert_eq!(
                colour_wanted(tty, no_color.map(OsStr::new)),
                want,
                "tty {tty}, NO_COLOR {no_color:?}"
            );
        }
    }

    #[test]
    fn ages_and_tables() {
        let ages = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (86_400, "1d"),
            (700_000, "8d"),
        ];
        for (s, want) in ages {
            assert_eq!(human_age(s), want);
        }
        let rows = vec![
            vec!["NAME".to_owned(), "STEP".to_owned(), String::new()],
            vec!["é".to_owned(), "100".to_owned(), String::new()],
        ];
        assert_eq!(table(&rows, &[false, true]), ["NAME  STEP", "é      100"]);
    }

    #[test]
    fn shapes() {
        assert_eq!(shape(&[]), "[]");
        assert_eq!(shape(&[7]), "[7]");
        assert_eq!(shape(&[32, 64]), "[32, 64]");
    }

    #[test]
    fn unsafe_text_is_escaped() {
        assert_eq!(safe("layer.0/w"), "layer.0/w");
        assert_eq!(safe("a\x1b[31mb"), "a\\u{1b}[31mb");
        assert_eq!(safe("two\nlines"), "two\\nlines");
        assert_eq!(safe("\u{9b}"), "\\u{9b}");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("0123456789", 10), "0123456789");
        assert_eq!(truncate("0123456789a", 10), "0123456...");
        assert_eq!(truncate("ééééé", 4), "é...");
    }

    #[test]
    fn broken_pipes_are_recognised_through_context() {
        let pipe = anyhow::Error::new(StdoutError(io::ErrorKind::BrokenPipe.into()));
        assert!(is_broken_pipe(&pipe.context("printing")));
        let other = anyhow::Error::new(StdoutError(io::ErrorKind::PermissionDenied.into()));
        assert!(!is_broken_pipe(&other));
        assert!(!is_broken_pipe(&anyhow::anyhow!("broken pipe")));
    }

    #[test]
    fn painting() {
        let plain = Painted {
            style: None,
            text: "ok",
        };
        assert_eq!(plain.to_string(), "ok");
        let red = Painted {
            style: Some(Style::Red),
            text: "bad",
        };
        assert_eq!(red.to_string(), "\x1b[1;31mbad\x1b[0m");
    }
}
