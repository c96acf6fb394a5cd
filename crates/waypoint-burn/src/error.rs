//! The crate's one error type. Every variant names the tensor (or record) it is about.
//!
//! It owns the error type only: it must not recover from an error, and waypoint's own errors pass
//! through unchanged (`Error::Waypoint`).

/// Everything that can go wrong handing burn modules and records to waypoint and back.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a wildcard arm.
///
/// Its `Debug` form is its message, as waypoint's is, so that `?` in `main` prints what to do.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// burn could not produce or take `tensor`'s bytes (a device read-back, a burnpack record).
    #[error("tensor {tensor}: burn failed: {reason}")]
    Burn {
        /// The tensor's (or record's) name.
        tensor: String,
        /// burn's message.
        reason: String,
    },
    /// The tensor's dtype has no counterpart on the other side.
    #[error(
        "tensor {tensor}: dtype {dtype} is not supported by waypoint-burn (quantized tensors and \
         four-byte booleans are not; dequantize, or move the module to a CPU device, first)"
    )]
    UnsupportedDtype {
        /// The tensor's name.
        tensor: String,
        /// The dtype, as its side names it.
        dtype: String,
    },
    /// Two tensors would be saved under the same name.
    #[error(
        "tensor {tensor}: the name is used twice (a module field named `optim` collides with the \
         optimizer's state, saved under `optim.`; rename the field)"
    )]
    DuplicateName {
        /// The name.
        tensor: String,
    },
    /// A checkpoint's tensor does not fit the parameter it is loaded into, or is missing.
    #[error("tensor {tensor}: the checkpoint has {found}, the model expects {expected}")]
    Mismatch {
        /// The tensor's name.
        tensor: String,
        /// What the model's parameter is (dtype and shape).
        expected: String,
        /// What the checkpoint holds.
        found: String,
    },
    /// The checkpoint's burn state (param ids, optimizer scalars) is not what this crate wrote.
    #[error(
        "checkpoint state `{key}`: {reason} (was it saved by waypoint_burn::Snapshot? restore it \
         with waypoint_burn::Restorer)"
    )]
    State {
        /// Where in the trainer state.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// waypoint refused or failed an operation.
    #[error(transparent)]
    Waypoint(#[from] waypoint::Error),
}

impl Error {
    /// A burn failure on `tensor`.
    pub(crate) fn burn(tensor: &str, reason: impl std::fmt::Display) -> Self {
        Error::Burn {
            tensor: tensor.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// A malformed burn state at `key`.
    pub(crate) fn state(key: &str, reason: impl Into<String>) -> Self {
        Error::State {
            key: key.to_owned(),
            reason: reason.into(),
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

/// A `waypoint-burn` error as waypoint's, for a `Checkpointable` or a closure of
/// [`waypoint::Run::step_end_with`]: waypoint's own errors come back unchanged, the others as
/// [`waypoint::Error::Caller`].
impl From<Error> for waypoint::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Waypoint(e) => e,
            other => waypoint::Error::caller("waypoint-burn", other),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
