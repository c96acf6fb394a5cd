//! The crate's one error type. Every variant names the tensor (or var) it is about.
//!
//! It owns the error type only: it must not recover from an error, and waypoint's own errors pass
//! through unchanged (`Error::Waypoint`).

/// Everything that can go wrong handing candle tensors to waypoint and back.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a wildcard arm.
///
/// Its `Debug` form is its message, as waypoint's is, so that `?` in `main` prints what to do.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A candle operation on `tensor` failed.
    #[error("tensor {tensor}: {source}")]
    Candle {
        /// The tensor's name.
        tensor: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// The tensor's dtype has no counterpart on the other side.
    #[error("tensor {tensor}: dtype {dtype} is not supported by waypoint-candle")]
    UnsupportedDtype {
        /// The tensor's name.
        tensor: String,
        /// The dtype, as its side names it.
        dtype: String,
    },
    /// The tensor does not live in CPU memory (move it with `to_device(&Device::Cpu)` first).
    #[error("tensor {tensor}: on {device}, waypoint-candle reads and writes CPU tensors only")]
    NotOnCpu {
        /// The tensor's name.
        tensor: String,
        /// Where it lives.
        device: String,
    },
    /// The tensor is a strided view, not a contiguous run of its storage.
    #[error("tensor {tensor}: not contiguous (call .contiguous() before handing it over)")]
    NotContiguous {
        /// The tensor's name.
        tensor: String,
    },
    /// Two tensors were given the same name.
    #[error("tensor {tensor}: the name is used twice")]
    DuplicateName {
        /// The name.
        tensor: String,
    },
    /// A checkpoint's tensor does not fit the var it is loaded into.
    #[error("tensor {tensor}: the checkpoint has {found}, the model expects {expected}")]
    Mismatch {
        /// The tensor's name.
        tensor: String,
        /// What the model's var is (dtype and shape).
        expected: String,
        /// What the checkpoint holds.
        found: String,
    },
    /// waypoint refused or failed an operation.
    #[error(transparent)]
    Waypoint(#[from] waypoint::Error),
}

impl Error {
    /// A candle error on `tensor`.
    pub(crate) fn candle(tensor: &str, source: candle_core::Error) -> Self {
        Error::Candle {
            tensor: tensor.to_owned(),
            source,
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Waypoint(e) => std::fmt::Debug::fmt(e, f),
            other => write!(f, "{other}"), // every message quotes its cause
        }
    }
}

/// A `waypoint-candle` error as waypoint's, for a `Checkpointable` or a closure of
/// [`waypoint::Run::step_end_with`]: waypoint's own errors come back unchanged, the others as
/// [`waypoint::Error::Caller`].
impl From<Error> for waypoint::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Waypoint(e) => e,
            other => waypoint::Error::caller("waypoint-candle", other),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
