//! The crate's one error type. Every variant names what it is about: the file, the tensor, the
//! argument or the step, so that a message alone tells the user where to look.
//!
//! It owns the type, its messages and the helpers that build them. It must not decide how an error
//! is handled (retried, skipped, rolled back): that is the caller's.

use std::path::PathBuf;

/// Everything that can go wrong in waypoint.
///
/// Variants carry the path, tensor or key they concern. The enum is `#[non_exhaustive]`: match the
/// variants you handle and keep a wildcard arm.
///
/// Its `Debug` form is its message (then the causes the message does not already quote), so that
/// `fn main() -> Result<(), Box<dyn std::error::Error>>` and `.unwrap()` print what to do, not the
/// variant's fields; match on the variants for the fields.
///
/// ```
/// let err = waypoint::Error::NotFound { path: "/ckpt/step=10".into() };
/// assert_eq!(format!("{err:?}"), "/ckpt/step=10 does not exist");
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "rename", …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The disk (or quota) is full while writing `path`.
    #[error(
        "no space left on device while writing {path}: free space and retry; the earlier checkpoints are untouched"
    )]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// A path handed to the storage layer is not a plain relative path inside the root.
    #[error("path {path:?} is not allowed: {reason}")]
    UnsafePath {
        /// The offending path, as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A symbolic link was found where a checkpoint's own file or directory should be.
    #[error("{path} is a symbolic link; waypoint never follows links inside a checkpoint")]
    SymlinkRefused {
        /// The link.
        path: PathBuf,
    },
    /// A file or directory the operation needs does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// What was looked for.
        path: PathBuf,
    },
    /// A file or directory that must not exist yet already does.
    #[error("{path} already exists")]
    AlreadyExists {
        /// What is in the way.
        path: PathBuf,
    },
    /// A checkpoint (or link) was put under its name, complete, but the step that makes that
    /// durable failed: it is visible now and may not survive a power cut. The operation that
    /// made it made the name: undoing it may remove it.
    #[error(
        "{path} is committed and complete, but making the commit durable failed (it may not survive a power cut): {source}"
    )]
    NotDurable {
        /// The checkpoint or link.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// The commit record (`weights/metadata.json`) is malformed or inconsistent.
    #[error("{path}: {reason}")]
    InvalidRecord {
        /// The record's path.
        path: PathBuf,
        /// What is wrong, naming the key, tensor or file.
        reason: String,
    },
    /// The record was written by a newer, incompatible format version.
    #[error(
        "{path}: format_version {found} is newer than this waypoint reads (up to {supported}); upgrade waypoint"
    )]
    UnsupportedVersion {
        /// The record's path.
        path: PathBuf,
        /// The version in the record.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// A shard file's safetensors header is malformed or disagrees with the commit record.
    #[error("{path}: {reason}")]
    InvalidShard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard file is shorter or longer than the commit record says.
    #[error("{path}: size is {actual} bytes, the commit record says {expected}")]
    ShardSize {
        /// The shard file.
        path: PathBuf,
        /// The size in the record.
        expected: u64,
        /// The size on storage.
        actual: u64,
    },
    /// Data read back does not match its recorded CRC-32C.
    #[error(
        "{path}: checksum mismatch in {what} at bytes {start}..{end} (expected crc32c {expected:#010x}, found {actual:#010x})"
    )]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// The tensor (or "safetensors header") whose bytes are damaged.
        what: String,
        /// First byte of the damaged block, in the file.
        start: u64,
        /// One past the last byte of the damaged block, in the file.
        end: u64,
        /// The recorded checksum.
        expected: u32,
        /// The checksum of what was read.
        actual: u32,
    },
    /// A torch distributed checkpoint (DCP) file is malformed, unsafe or unsupported: the reason
    /// names the tensor, object, archive entry or pickle byte concerned. Nothing in it was run.
    #[error("{path}: {reason}")]
    Dcp {
        /// The file (`.metadata`, `__0_0.distcp`, `common.pt`) or directory concerned.
        path: PathBuf,
        /// What is wrong and where.
        reason: String,
    },
    /// A tensor handed to save (or asked for on load) is invalid.
    #[error("tensor {tensor:?}: {reason}")]
    InvalidTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor asked for is not in the checkpoint.
    #[error("tensor {tensor:?} is not in checkpoint {path}")]
    MissingTensor {
        /// The tensor's name.
        tensor: String,
        /// The checkpoint.
        path: PathBuf,
    },
    /// The checkpoint directory holds files the commit record does not know.
    #[error("{path}: unexpected file {file:?} in weights/; the commit record does not list it")]
    UnexpectedFile {
        /// The checkpoint's weights directory.
        path: PathBuf,
        /// The stray file.
        file: String,
    },
    /// The trainer state could not be serialised or deserialised.
    #[error("trainer state in {path}: {source}")]
    TrainerState {
        /// The record's path (or the checkpoint being written).
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An option or argument has a value that cannot work.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The option's name.
        name: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// The caller's own code failed inside a waypoint call (building a snapshot for a save,
    /// restoring into its state), or an error of a crate built on waypoint (`waypoint-candle`).
    #[error("{context}: {source}")]
    Caller {
        /// What was being done (for example `"waypoint-candle"`, `"building the snapshot"`).
        context: String,
        /// The caller's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A fault injected by [`crate::storage::FaultyFs`] or [`crate::storage::CountingStorage`]
    /// (tests and failpoints only).
    #[error("injected fault at storage operation {op_index} ({op} {path})")]
    InjectedFault {
        /// The 1-based index of the failing operation: among all operations for `FaultyFs`,
        /// among those of its kind for `CountingStorage`.
        op_index: u64,
        /// The operation.
        op: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// AutoResume found no committed checkpoint where it looked.
    #[error("{}", no_checkpoint_message(searched, skipped, nearby))]
    NoCheckpoint {
        /// The directory searched.
        searched: PathBuf,
        /// Directories there that are not committed checkpoints (interrupted saves).
        skipped: Vec<String>,
        /// Directories below it that do hold committed checkpoints (a search pointed at the log
        /// root instead of a checkpoints directory).
        nearby: Vec<PathBuf>,
    },
    /// A request to an object store failed (after object_store's retries with backoff), or the
    /// store could not be configured.
    #[error("object store: {op} {url} failed: {reason}")]
    ObjectStore {
        /// What was being done ("put", "upload part", "list", "configure", …).
        op: &'static str,
        /// The object or prefix concerned, as a URL (`s3://bucket/prefix/step=10/...`).
        url: String,
        /// The store's error, with its root cause (a refused connection, a denied request).
        reason: String,
    },
    /// A background worker of a save or load panicked.
    #[error("a worker thread of {what} panicked")]
    WorkerPanicked {
        /// The job the worker belonged to.
        what: String,
    },
    /// A metric logger failed (an error without an I/O cause, or a panic).
    #[error("metric logger {logger}: {reason}")]
    Logger {
        /// The logger (`"tensorboard"`, `"csv"`, `"loggers"` for the fan-out itself).
        logger: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A request to a tracking server (MLflow) failed or was refused.
    #[error("metric logger {logger}: {url}: {reason}")]
    Tracking {
        /// The logger (`"mlflow"`).
        logger: &'static str,
        /// The endpoint called (the tracking URI and the REST path).
        url: String,
        /// What went wrong: the server's error code and message, or why no answer came.
        reason: String,
    },
    /// Another live run holds the version directory's lock (`.waypoint.lock`): two runs must
    /// never write into one version directory.
    #[error(
        "{path} is held by another live run ({holder}): wait for it, stop it, or choose another name or version"
    )]
    RunLocked {
        /// The lock file.
        path: PathBuf,
        /// The holder, as its lock file records it: pid, host, start time.
        holder: String,
    },
    /// A collective operation between ranks failed: a rank died or left, or the transport
    /// failed. Nothing is committed after it.
    #[error("rank {rank}: {op} between ranks failed: {reason}")]
    Collective {
        /// The operation ("all-gather", "broadcast", "barrier", "duplicate"; "init" when joining
        /// an MPI job fails).
        op: &'static str,
        /// The rank that saw the failure.
        rank: u64,
        /// What happened.
        reason: String,
    },
    /// A save written by several ranks failed on `rank`; no rank committed it, and every rank
    /// reports this same error.
    #[error(
        "save of step {step} failed on rank {rank} of {world_size}: {reason}; nothing was committed, the earlier checkpoints are untouched"
    )]
    RankFailed {
        /// The step being saved.
        step: u64,
        /// The first rank that failed.
        rank: u64,
        /// The number of ranks.
        world_size: u64,
        /// That rank's error.
        reason: String,
    },
    /// A rank received a checkpoint decision of rank 0 made for another call than its own: the
    /// ranks no longer call the run at the same steps (or one of them missed a decision after an
    /// error). Nothing is saved on this rank for the call.
    #[error(
        "rank {rank} is at step {step} ({event}), but rank 0's checkpoint decision #{sequence} is for step {leader_step} ({leader_event}), where this rank expected decision #{expected}: every rank must call the run at the same steps, and stop at the first error"
    )]
    RanksDiverged {
        /// The rank that noticed.
        rank: u64,
        /// The step this rank is at.
        step: u64,
        /// The event this rank is at ("train step end", …).
        event: &'static str,
        /// The step rank 0 decided for.
        leader_step: u64,
        /// The event rank 0 decided for.
        leader_event: String,
        /// The number of rank 0's decision.
        sequence: u64,
        /// The number this rank expected.
        expected: u64,
    },
    /// A tensor's dtype or shape differs between what the run asks for and what a source holds.
    #[error(
        "tensor {tensor:?}: the run expects {expected}, {path} holds {found}; restore a source saved with the same model, or map or skip the tensor (RestoreConfig's prefix_map, Strictness::Report)"
    )]
    TensorMismatch {
        /// The tensor's name in the source.
        tensor: String,
        /// The source.
        path: PathBuf,
        /// The run's dtype and shape.
        expected: String,
        /// The source's dtype and shape.
        found: String,
    },
    /// A restore from another run's checkpoint (`RestoreConfig`) found tensors missing,
    /// mismatched or (with `Strictness::StrictAll`) unexpected; nothing was loaded.
    #[error(
        "restoring from {path}: {summary}; nothing was loaded. Names that differ by a prefix need RestoreConfig::prefix_map (e.g. \"model.\" -> \"\"); Strictness::Report loads what matches"
    )]
    RestoreMismatch {
        /// The source.
        path: PathBuf,
        /// Counts and a few names of each kind, each mismatch with both dtypes and shapes.
        summary: String,
        /// Every tensor concerned, by kind.
        tensors: Box<MismatchedTensors>,
    },
    /// A checkpoint's `context/` file (`io.json`) cannot be read back.
    #[error("{path}: {reason}")]
    InvalidContext {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Validations ran but the monitored metric was never reported, with
    /// `on_missing_monitor(Error)`: no checkpoint could ever be ranked.
    #[error(
        "monitor {monitor:?} was never reported, and a validation ended at step {step}: log it with Run::log_metrics at the validation's step, fix `monitor` (metrics reported so far: {reported}), or set on_missing_monitor(Warn)"
    )]
    MonitorMissing {
        /// The monitored metric.
        monitor: String,
        /// The step of the validation end.
        step: u64,
        /// The names of the metrics reported so far, comma-separated.
        reported: String,
    },
}

/// The tensors of an [`Error::RestoreMismatch`], by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MismatchedTensors {
    /// The run's tensors the source lacks.
    pub missing: Vec<String>,
    /// The run's tensors whose dtype or shape differ.
    pub mismatched: Vec<String>,
    /// The source's tensors the run does not have (only when they fail the restore).
    pub unexpected: Vec<String>,
}

fn no_checkpoint_message(
    searched: &std::path::Path,
    skipped: &[String],
    nearby: &[PathBuf],
) -> String {
    let mut m = format!(
        "no committed checkpoint to resume from in {}; set resume_ignore_no_checkpoint to start from scratch",
        searched.display()
    );
    if !skipped.is_empty() {
        m.push_str(&format!(
            "; not committed (interrupted saves): {}",
            skipped.join(", ")
        ));
    }
    if !nearby.is_empty() {
        let dirs: Vec<String> = nearby.iter().map(|p| p.display().to_string()).collect();
        m.push_str(&format!(
            "; committed checkpoints exist in: {} (point resume_from_directory there)",
            dirs.join(", ")
        ));
    }
    m
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Debug for Error {
    /// The message, then each cause whose text the message does not already quote.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.to_string();
        f.write_str(&message)?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            source = cause.source();
        }
        Ok(())
    }
}

impl Error {
    /// Wraps an I/O error, mapping "no space left on device" and "quota exceeded" onto
    /// [`Error::NoSpace`] and "not found" onto [`Error::NotFound`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return Error::NoSpace { path },
            Some(libc::ELOOP) => return Error::SymlinkRefused { path },
            _ => {}
        }
        match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path },
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists { path },
            _ => Error::Io { op, path, source },
        }
    }

    /// Wraps an error of the caller's code (or of a crate built on waypoint) with what was being
    /// done, for a `Result` that must be waypoint's.
    ///
    /// ```
    /// let parse = "x".parse::<u32>().unwrap_err();
    /// let err = waypoint::Error::caller("reading the trainer state", parse);
    /// assert!(err.to_string().starts_with("reading the trainer state: invalid digit"));
    /// ```
    pub fn caller(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Caller {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::InvalidRecord`].
    pub(crate) fn record(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidRecord {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidShard`].
    pub(crate) fn shard(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidShard {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidTensor`].
    pub(crate) fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidTensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
