//! Per-rank text logs through `tracing`: `log_globalrank-G_localrank-L.txt` (events at INFO and
//! above) and `log_globalrank-G_localrank-L.err.txt` (WARN and above) in the version directory.
//!
//! A process has one global subscriber, so the files are reached through a *route*: the layer
//! [`log_files_layer`] writes to the files of the newest live [`crate::Experiment`] of the
//! process (none: nothing is written), and an Experiment that ends hands the route back to the
//! one before it. [`crate::ExperimentLogger::setup`] installs a global subscriber (this layer,
//! plus stderr filtered by `RUST_LOG`, default `warn`) only when none is set yet; a program with
//! its own subscriber adds [`log_files_layer`] to it, or the files stay empty (setup says so).
//!
//! Each file is written by a `tracing-appender` worker thread through a bounded channel of
//! 128,000 lines in blocking mode: a burst of logging waits for the disk rather than losing
//! lines. The workers' guards live in the Experiment and flush the files when it is dropped.
//!
//! It must not decide which ranks write (the setup does) nor replace a subscriber a program set.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The live routes, newest last.
static ROUTES: Mutex<Vec<Route>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// Whether a [`log_files_layer`] was built (so some subscriber can reach the routes).
static LAYER_BUILT: AtomicBool = AtomicBool::new(false);

struct Route {
    id: u64,
    text: NonBlocking,
    errors: NonBlocking,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Errors,
}

/// Hands each event to the current route's file of its kind.
#[derive(Debug, Clone, Copy)]
struct RouteWriter(Kind);

/// One event's writer: the current route's channel, or nowhere.
struct RouteSink(Option<NonBlocking>);

impl Write for RouteSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for RouteWriter {
    type Writer = RouteSink;

    fn make_writer(&'a self) -> RouteSink {
        let routes = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
        RouteSink(routes.last().map(|r| match self.0 {
            Kind::Text => r.text.clone(),
            Kind::Errors => r.errors.clone(),
        }))
    }
}

/// The layer that writes the per-rank log files of the current [`crate::Experiment`]: INFO and
/// above to the text log, WARN and above to the error log. Add it to your own subscriber when
/// you install one before [`crate::ExperimentLogger::setup`]:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let subscriber = tracing_subscriber::registry().with(waypoint::experiment::log_files_layer());
/// let _ = tracing::subscriber::set_global_default(subscriber);
/// ```
pub fn log_files_layer<S>() -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    LAYER_BUILT.store(true, Ordering::SeqCst);
    let text = tracing_subscriber::fmt::layer()
        .with_writer(RouteWriter(Kind::Text))
        .with_filter(LevelFilter::INFO);
    let errors = tracing_subscriber::fmt::layer()
        .with_writer(RouteWriter(Kind::Errors))
        .with_filter(LevelFilter::WARN);
    text.and_then(errors)
}

/// Installs the global subscriber (stderr by `RUST_LOG`, default `warn`, plus the log files)
/// unless one is set. Returns whether events can reach the log files.
pub(crate) fn ensure_subscriber() -> bool {
    if !tracing::dispatcher::has_been_set() {
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(
                EnvFilter::builder()
                    .with_default_directive(LevelFilter::WARN.into())
                    .from_env_lossy(),
            );
        let _ = tracing_subscriber::registry()
            .with(stderr)
            .with(log_files_layer())
            .try_init();
    }
    LAYER_BUILT.load(Ordering::SeqCst)
}

/// A rank's open log files, routed to while alive.
pub(crate) struct LogFiles {
    id: u64,
    text_path: PathBuf,
    errors_path: PathBuf,
    _guards: [WorkerGuard; 2],
}

impl std::fmt::Debug for LogFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFiles")
            .field("text", &self.text_path)
            .field("errors", &self.errors_path)
            .finish_non_exhaustive()
    }
}

impl LogFiles {
    /// Opens (appending) the two log files of global rank `global` and local rank `local` in
    /// `dir` and routes events to them.
    pub fn open(dir: &Path, global: u64, local: u64) -> Result<LogFiles> {
        let (text_name, errors_name) = super::files::log_file_names(global, local);
        let open = |name: &str| -> Result<(PathBuf, NonBlocking, WorkerGuard)> {
            let path = dir.join(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("open log", &path, e))?;
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(false)
                .thread_name("waypoint-log")
                .finish(file);
            Ok((path, writer, guard))
        };
        let (text_path, text, text_guard) = open(&text_name)?;
        let (errors_path, errors, errors_guard) = open(&errors_name)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        ROUTES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Route { id, text, errors });
        Ok(LogFiles {
            id,
            text_path,
            errors_path,
            _guards: [text_guard, errors_guard],
        })
    }

    /// The text log.
    pub fn text_path(&self) -> &Path {
        &self.text_path
    }

    /// The error log.
    pub fn errors_path(&self) -> &Path {
        &self.errors_path
    }
}

impl Drop for LogFiles {
    fn drop(&mut self) {
        // Unrouted first; the guards (dropped next) then flush what was sent.
        ROUTES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r| r.id != self.id);
    }
}
