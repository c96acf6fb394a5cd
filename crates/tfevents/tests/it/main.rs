//! Writer → reader round trips, damaged files (truncated at every byte, flipped bytes, a failing
//! disk, a writer killed mid-run), file-name ordering across quick restarts, and proptests of
//! random scalar sequences and arbitrary bytes; and the real TensorBoard reading what we wrote
//! (`tensorboard_interop`). One test binary; the shared helpers are here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod damage;
mod files;
mod round_trip;
mod tensorboard_interop;

use proptest::prelude::*;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::path::Path;
use tempfile::TempDir;
use tfevents::proto::hparams::{HParamsPluginData, SessionStatus, h_params_plugin_data::Data};
use tfevents::proto::session_log::SessionStatus as LogStatus;
use tfevents::proto::summary::value::Value as V;
use tfevents::proto::{Event, Summary, event::What, summary};
use tfevents::{Error, EventReader, EventWriter, HParamValue, WriterOptions, hparams};

/// The bytes of an in-memory event file written by `build`.
fn write_to_vec(build: impl FnOnce(&mut EventWriter<Vec<u8>>)) -> Vec<u8> {
    let mut w = EventWriter::new(Vec::new(), "memory", 1.0).unwrap();
    build(&mut w);
    w.into_inner().unwrap()
}

fn read_all(bytes: &[u8]) -> Vec<Event> {
    EventReader::new(Cursor::new(bytes), "memory")
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Start offsets of the records in a well-formed file.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        offsets.push(at);
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
    }
    assert_eq!(at, bytes.len());
    offsets
}

fn only_value(event: &Event) -> &summary::Value {
    let summary = event.summary().expect("a summary");
    assert_eq!(summary.value.len(), 1);
    &summary.value[0]
}
