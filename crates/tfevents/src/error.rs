//! The crate's error type: every variant names the file, and those about a record its offset.
//!
//! It owns the error type and its messages only: it must not decide what to do about an error
//! (retry, skip a record), which is the writer's and the reader's call.

use std::io;
use std::path::PathBuf;

/// An error of writing or reading an event file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system failed a read, a write, a flush, an fsync or a directory listing.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A record's length does not match the CRC stored beside it: the framing is lost from here.
    #[error(
        "{path}: corrupt record at byte offset {offset}: length CRC mismatch \
         (stored {stored:#010x}, computed {computed:#010x})"
    )]
    LengthCrc {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record's first byte.
        offset: u64,
        /// Masked CRC stored in the file.
        stored: u32,
        /// Masked CRC computed from the length bytes.
        computed: u32,
    },
    /// A record announces more data than any valid record holds (see
    /// [`record::MAX_DATA_LEN`](crate::record::MAX_DATA_LEN)).
    #[error("{path}: corrupt record at byte offset {offset}: length {length} is too large")]
    RecordTooLarge {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record's first byte.
        offset: u64,
        /// The length stored in the file.
        length: u64,
    },
    /// A record's data does not match the CRC stored after it.
    #[error(
        "{path}: corrupt record at byte offset {offset}: data CRC mismatch \
         (stored {stored:#010x}, computed {computed:#010x})"
    )]
    DataCrc {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record's first byte.
        offset: u64,
        /// Masked CRC stored in the file.
        stored: u32,
        /// Masked CRC computed from the data.
        computed: u32,
    },
    /// A record passed its CRCs but its data is not a valid `Event` protobuf.
    #[error("{path}: record at byte offset {offset} is not a valid Event: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record's first byte.
        offset: u64,
        /// What the protobuf decoder said.
        source: prost::DecodeError,
    },
    /// An earlier write to this file failed; the file may end with a partial record, so the
    /// writer refuses to append records after it (a reader would see them as garbage).
    #[error("{path}: an earlier write failed; the writer accepts no more records")]
    WriterFailed {
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    /// The file or directory the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::Io { path, .. }
            | Error::LengthCrc { path, .. }
            | Error::RecordTooLarge { path, .. }
            | Error::DataCrc { path, .. }
            | Error::Decode { path, .. }
            | Error::WriterFailed { path } => path,
        }
    }

    /// Byte offset of the record the error is about, for errors about a record.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::LengthCrc { offset, .. }
            | Error::RecordTooLarge { offset, .. }
            | Error::DataCrc { offset, .. }
            | Error::Decode { offset, .. } => Some(*offset),
            Error::Io { .. } | Error::WriterFailed { .. } => None,
        }
    }
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
