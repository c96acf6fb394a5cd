//! `tensorboard.Event` (one record of an event file), `SessionLog` and `LogMessage`.

use super::Summary;

/// One record of an event file: a time, a step and one payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch, with fractions, when the event happened.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global training step of the event.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The payload.
    #[prost(oneof = "event::What", tags = "3, 5, 6, 7")]
    pub what: Option<event::What>,
}

/// Nested types of [`Event`].
pub mod event {
    /// The payload of an [`Event`](super::Event).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// File format version, `"brain.Event:2"`, in the first record of every file.
        #[prost(string, tag = "3")]
        FileVersion(String),
        /// Tagged values: scalars, histograms, tensors (text, hparams, ...).
        #[prost(message, tag = "5")]
        Summary(super::Summary),
        /// A log line (deprecated by TensorFlow, still decoded).
        #[prost(message, tag = "6")]
        LogMessage(super::LogMessage),
        /// Session status: a `START` after a restart makes readers drop stale points.
        #[prost(message, tag = "7")]
        SessionLog(super::SessionLog),
    }
}

/// A change of session status (start, stop, checkpoint).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// A [`session_log::SessionStatus`] value.
    #[prost(enumeration = "session_log::SessionStatus", tag = "1")]
    pub status: i32,
    /// Path of the checkpoint written, for `CHECKPOINT`.
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    /// Free-form message.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// Nested types of [`SessionLog`].
pub mod session_log {
    /// What happened to the session.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SessionStatus {
        /// Not set.
        StatusUnspecified = 0,
        /// The session (re)started: readers discard points at or after this step.
        Start = 1,
        /// The session stopped.
        Stop = 2,
        /// A checkpoint was written.
        Checkpoint = 3,
    }
}

/// A log line carried in an event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogMessage {
    /// A [`log_message::Level`] value.
    #[prost(enumeration = "log_message::Level", tag = "1")]
    pub level: i32,
    /// The text.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Nested types of [`LogMessage`].
pub mod log_message {
    /// Severity of a [`LogMessage`](super::LogMessage).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Level {
        /// Not set.
        Unknown = 0,
        /// Debugging.
        Debugging = 10,
        /// Information.
        Info = 20,
        /// Warning.
        Warn = 30,
        /// Error.
        Error = 40,
        /// Fatal.
        Fatal = 50,
    }
}

impl Event {
    /// The summary carried by this event, if it carries one.
    pub fn summary(&self) -> Option<&Summary> {
        match &self.what {
            Some(event::What::Summary(summary)) => Some(summary),
            _ => None,
        }
    }

    /// The session log carried by this event, if it carries one.
    pub fn session_log(&self) -> Option<&SessionLog> {
        match &self.what {
            Some(event::What::SessionLog(log)) => Some(log),
            _ => None,
        }
    }

    /// The file version carried by this event (the first of a file), if it carries one.
    pub fn file_version(&self) -> Option<&str> {
        match &self.what {
            Some(event::What::FileVersion(version)) => Some(version),
            _ => None,
        }
    }
}
