//! [`EventReader`]: reads the records of an event file, checking both CRCs of each.
//!
//! A record cut short at the end of the file (a file still being written, or a writer killed
//! mid-record) is not an error: iteration ends before it, [`EventReader::leftover`] tells how
//! many of its bytes were read, and calling `next` again later resumes from them once the file
//! has grown (a follower polls this way). A corrupt record is an error carrying its byte offset.
//! After a data CRC or decoding error (whose length was intact) the reader moves on to the next
//! record; after a bad length, the framing is lost and the reader ends.

use crate::error::{Error, Result};
use crate::proto::{Event, summary::value};
use crate::record::{self, FOOTER_LEN, HEADER_LEN, HeaderError};
use prost::Message;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Reads the events of one file: an iterator of `Result<Event>`.
///
/// Both CRCs of every record are checked. A record cut short at the end of the input ends the
/// iteration without an error; [`leftover`](Self::leftover) tells how many of its bytes were
/// read, and calling `next` again once the file has grown resumes from them. A corrupt record is
/// an error carrying its byte offset; after a data CRC or decoding error the reader moves on to
/// the next record, after a bad length (the framing is lost) it ends.
#[derive(Debug)]
pub struct EventReader<R: Read = BufReader<File>> {
    inner: R,
    path: PathBuf,
    /// Byte offset of `pending[0]`: the start of the next record.
    offset: u64,
    /// The bytes of the next record read so far.
    pending: Vec<u8>,
    /// Length of the record in `pending` once its header passed, to consume before reading on.
    complete: Option<usize>,
    /// The framing was lost: nothing more can be read.
    lost: bool,
}

impl EventReader<BufReader<File>> {
    /// Opens an event file for reading.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(EventReader::new(BufReader::new(file), path))
    }
}

impl<R: Read> EventReader<R> {
    /// Reads records from `inner`; `path` names the source in errors.
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Self {
        EventReader {
            inner,
            path: path.into(),
            offset: 0,
            pending: Vec::new(),
            complete: None,
            lost: false,
        }
    }

    /// Byte offset just past the last record returned or skipped: the start of the next one.
    pub fn offset(&self) -> u64 {
        self.offset + self.complete.map_or(0, |len| len as u64)
    }

    /// Bytes of an unfinished record read but not yet returned: 0 when the file ended exactly
    /// at a record boundary.
    pub fn leftover(&self) -> u64 {
        if self.complete.is_some() {
            0
        } else {
            self.pending.len() as u64
        }
    }

    /// The data of the next record, CRCs checked; `None` at the end of the complete records.
    pub fn next_record(&mut self) -> Option<Result<&[u8]>> {
        if let Some(len) = self.complete.take() {
            self.offset += len as u64;
            self.pending.clear();
        }
        if self.lost {
            return None;
        }
        match self.fill(HEADER_LEN) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(self.pending.get(..HEADER_LEN).unwrap_or(&[0; HEADER_LEN]));
        let data_len = match record::parse_header(&header) {
            Ok(len) => len as usize,
            Err(e) => {
                self.lost = true;
                let (path, offset) = (self.path.clone(), self.offset);
                return Some(Err(match e {
                    HeaderError::Crc { stored, computed } => Error::LengthCrc {
                        path,
                        offset,
                        stored,
                        computed,
                    },
                    HeaderError::TooLong { length } => Error::RecordTooLarge {
                        path,
                        offset,
                        length,
                    },
                }));
            }
        };
        let total = HEADER_LEN + data_len + FOOTER_LEN;
        match self.fill(total) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        self.complete = Some(total);
        let data = self
            .pending
            .get(HEADER_LEN..HEADER_LEN + data_len)
            .unwrap_or_default();
        let footer = self
            .pending
            .get(HEADER_LEN + data_len..total)
            .unwrap_or_default();
        let stored = u32::from_le_bytes(footer.try_into().unwrap_or([0; 4]));
        let computed = record::masked_crc32c(data);
        if stored != computed {
            let (path, offset) = (self.path.clone(), self.offset);
            return Some(Err(Error::DataCrc {
                path,
                offset,
                stored,
                computed,
            }));
        }
        Some(Ok(data))
    }

    /// Reads until `pending` holds `want` bytes; `false` if the input ended first.
    fn fill(&mut self, want: usize) -> Result<bool> {
        let missing = want.saturating_sub(self.pending.len()) as u64;
        if missing > 0 {
            let read = (&mut self.inner)
                .take(missing)
                .read_to_end(&mut self.pending);
            read.map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(self.pending.len() >= want)
    }
}

impl<R: Read> Iterator for EventReader<R> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = match self.next_record()? {
            Ok(data) => data,
            Err(e) => return Some(Err(e)),
        };
        Some(Event::decode(data).map_err(|source| Error::Decode {
            path: self.path.clone(),
            offset: self.offset,
            source,
        }))
    }
}

/// Every event of a complete file, in order; the first corrupt record is an error. A partial
/// record at the end is ignored.
pub fn read_events(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    EventReader::open(path)?.collect()
}

/// One point of a scalar series.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarPoint {
    /// The series.
    pub tag: String,
    /// The step.
    pub step: i64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// The value.
    pub value: f32,
}

/// Every `simple_value` scalar of a file, in file order. The first corrupt record is an error;
/// a partial record at the end is ignored.
pub fn read_scalars(path: impl AsRef<Path>) -> Result<Vec<ScalarPoint>> {
    let mut points = Vec::new();
    for event in EventReader::open(path)? {
        let event = event?;
        let Some(summary) = event.summary() else {
            continue;
        };
        for v in &summary.value {
            if let Some(value::Value::SimpleValue(value)) = v.value {
                points.push(ScalarPoint {
                    tag: v.tag.clone(),
                    step: event.step,
                    wall_time: event.wall_time,
                    value,
                });
            }
        }
    }
    Ok(points)
}
