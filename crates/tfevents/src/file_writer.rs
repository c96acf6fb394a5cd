//! [`EventWriter::create`]: a new event file in a directory, named to sort after the files
//! already there, and [`EventWriter::sync`].
//!
//! Owns the file-system side of writing (listing, creating, syncing); the naming rule itself
//! is the pure [`file_name`](crate::file_name) module, and the records are [`EventWriter`]'s.
//!
//! It must not encode or frame records: `EventWriter::create` only picks the name, creates the file
//! (never replacing an existing one) and hands it to `EventWriter::new`.

use crate::error::{Error, Result};
use crate::file_name::{self, NameParts};
use crate::writer::{BUFFER_CAPACITY, EventWriter, wall_time_now};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many names [`EventWriter::create`] tries when a name it picked already exists.
const CREATE_ATTEMPTS: u32 = 16;

/// Files created by this process, for the counter component of file names.
static FILES_CREATED: AtomicU64 = AtomicU64::new(0);

/// Options of [`EventWriter::create`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// Host name component of the file name; the machine's host name when `None`.
    pub hostname: Option<String>,
    /// Appended to the file name after the counter (e.g. `".v2"`); empty by default.
    pub suffix: String,
}

impl EventWriter<BufWriter<File>> {
    /// Creates a new event file in `dir` (which must exist) and writes its first record.
    ///
    /// The name sorts after every event file already in `dir`, even when one was created in the
    /// same second: see [`file_name`](crate::file_name) for the rule.
    pub fn create(dir: impl AsRef<Path>, options: &WriterOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let hostname = file_name::sanitize_component(
            options.hostname.as_deref().unwrap_or(&machine_hostname()),
        );
        let suffix = file_name::sanitize_component(&options.suffix);
        let suffix = if options.suffix.is_empty() {
            ""
        } else {
            suffix.as_str()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut attempt = 0;
        loop {
            let existing = list_event_files(dir)?;
            let parts = NameParts {
                hostname: &hostname,
                pid: std::process::id(),
                counter: FILES_CREATED.fetch_add(1, Ordering::Relaxed),
                suffix,
            };
            let name = file_name::next_file_name(existing.iter().map(String::as_str), now, &parts);
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let out = BufWriter::with_capacity(BUFFER_CAPACITY, file);
                    let mut writer = EventWriter::new(out, path, wall_time_now())?;
                    writer.unsynced_dir = Some(dir.to_path_buf());
                    return Ok(writer);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < CREATE_ATTEMPTS => {
                    attempt += 1;
                }
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
    }

    /// Flushes the buffer and asks the OS to put the file's data on disk (`fdatasync`); the
    /// first call also syncs the directory, so that the file's name survives a crash too.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        let result = self.get_ref().get_ref().sync_data();
        result.map_err(|source| self.fail(source))?;
        if let Some(dir) = self.unsynced_dir.take() {
            let synced = File::open(&dir).and_then(|d| d.sync_all());
            if let Err(source) = synced {
                self.unsynced_dir = Some(dir.clone());
                return Err(Error::Io { path: dir, source });
            }
        }
        Ok(())
    }
}

/// Names of the event files in `dir`.
fn list_event_files(dir: &Path) -> Result<Vec<String>> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(name) = entry.file_name().to_str()
            && file_name::is_event_file_name(name)
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The machine's host name, from the kernel or the environment; `localhost` if neither says.
fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .chain(std::env::var("HOSTNAME").ok())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
