//! TensorBoard event files: a writer and a reader, usable on their own.
//!
//! An event file (`events.out.tfevents.*`) is a sequence of records, each a framed,
//! CRC-protected, serialized `Event` protobuf. This crate writes what TensorBoard's dashboards
//! read — scalars, text, histograms, the hparams plugin's experiment and session summaries, and
//! the `SessionLog` `START` that keeps curves from doubling back after a resume — and reads
//! files back, checking every CRC and stopping cleanly before a record still being written.
//!
//! This file only declares the modules, re-exports the public names and compiles the README's
//! example; the work is in the modules. The crate must not depend on waypoint or know of
//! checkpoints and runs, so that it stays usable on its own.
//!
//! ```
//! use tfevents::{EventWriter, WriterOptions, read_scalars, wall_time_now};
//!
//! # fn main() -> Result<(), tfevents::Error> {
//! let dir = std::env::temp_dir().join(format!("tfevents-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|source| tfevents::Error::Io { path: dir.clone(), source })?;
//! let mut writer = EventWriter::create(&dir, &WriterOptions::default())?;
//! for step in 0..3 {
//!     writer.add_scalars(step, wall_time_now(), &[("loss", 1.0 / (step as f32 + 1.0)), ("lr", 0.1)])?;
//! }
//! writer.add_text("notes", "*first* run", 2, wall_time_now())?;
//! writer.flush()?;
//!
//! let points = read_scalars(writer.path())?;
//! assert_eq!(points.len(), 6);
//! assert_eq!((points[2].tag.as_str(), points[2].step, points[2].value), ("loss", 1, 0.5));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

mod encode;
mod error;
pub mod file_name;
mod file_writer;
pub mod histogram;
pub mod hparams;
pub mod proto;
mod reader;
pub mod record;
pub mod summaries;
mod writer;

pub use error::{Error, Result};
pub use file_writer::WriterOptions;
pub use hparams::HParamValue;
pub use reader::{EventReader, ScalarPoint, read_events, read_scalars};
pub use writer::{BUFFER_CAPACITY, EventWriter, FILE_VERSION, wall_time, wall_time_now};

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
