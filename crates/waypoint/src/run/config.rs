//! Building a [`Run`]: [`RunConfig`], the run's settings as one value (the experiment keeps the
//! same value and hands it over), and [`RunBuilder`], which adds the live handles (storage,
//! loggers, ranks, the preemption flag, a clock) and builds the run in named steps: open the
//! checkpoints directory, clean up and choose the resume point (rank 0, shared with the others),
//! plan the resume, start the save queue.
//!
//! It must not save, load or delete checkpoints beyond the cleanup of interrupted saves and the
//! deletions the resume plan finishes.

use super::{Run, ranks};
use crate::dist::{SharedCoordinator, SingleProcess};
use crate::engine::{Checkpointer, SaveOptions, SaveQueue};
use crate::error::{Error, Result};
use crate::format::CommitRecord;
use crate::loggers::Loggers;
use crate::policy::{Metrics, ModelCheckpoint, Policy};
use crate::resume::{AutoResume, ResumePlan, ResumePoint, choose_read};
use crate::storage::{SharedStorage, StoragePath, is_url, local_storage, open_location};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

/// A run's settings: where the experiment lives, the checkpoint policy, how checkpoints are
/// written, where training ends and what goes into `context/`. [`crate::ExperimentLogger`] holds
/// one and hands it to the run it sets up.
///
/// ```
/// use waypoint::{RunConfig, Run};
/// let mut config = RunConfig::default();
/// config.name = "mlp".into();
/// config.max_steps = Some(100);
/// let builder = Run::builder().config(config.clone());
/// assert_eq!(builder.run_config(), &config);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunConfig {
    /// The root of all experiments (NeMo's `log_dir`; default `./waypoint_runs`).
    pub log_dir: PathBuf,
    /// The experiment's name (default `"default"`): one path component not starting with `.`.
    pub name: String,
    /// The version directory (none by default: `<log_dir>/<name>/checkpoints`, so that running
    /// the same command again resumes).
    pub version: Option<String>,
    /// The checkpoint policy (default: NeMo's, `ModelCheckpoint::builder().build()`).
    pub checkpoint: Option<ModelCheckpoint>,
    /// How checkpoints are written (shard size, block size, threads).
    pub save_options: SaveOptions,
    /// The step training ends at: checkpoints saved at or after it end a completed run.
    pub max_steps: Option<u64>,
    /// Files written into `context/` (file name → bytes), e.g. `io.json` and `model.yaml`.
    pub context: Vec<(String, Vec<u8>)>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            log_dir: PathBuf::from("waypoint_runs"),
            name: "default".into(),
            version: None,
            checkpoint: None,
            save_options: SaveOptions::default(),
            max_steps: None,
            context: Vec::new(),
        }
    }
}

impl RunConfig {
    /// `<log_dir>/<name>[/<version>]`.
    pub fn experiment_dir(&self) -> PathBuf {
        let dir = self.log_dir.join(&self.name);
        match &self.version {
            Some(v) => dir.join(v),
            None => dir,
        }
    }

    /// Checks the name (one non-empty path component not starting with `.`) and the save options.
    pub(crate) fn check(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::InvalidArgument {
                name: "name",
                reason: format!(
                    "{name:?} must be one non-empty path component not starting with '.'"
                ),
            });
        }
        self.save_options.check()
    }
}

/// Builds a [`Run`]: its [`RunConfig`], the resume rules and the live handles.
pub struct RunBuilder {
    config: RunConfig,
    resume: AutoResume,
    clock: Box<dyn Fn() -> f64 + Send>,
    storage: Option<SharedStorage>,
    preemption: Option<Arc<AtomicBool>>,
    loggers: Option<Loggers>,
    coordinator: Option<SharedCoordinator>,
}

impl std::fmt::Debug for RunBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuilder")
            .field("config", &self.config)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for RunBuilder {
    fn default() -> Self {
        RunBuilder {
            config: RunConfig::default(),
            resume: AutoResume::default(),
            clock: Box::new(wall_clock),
            storage: None,
            preemption: None,
            loggers: None,
            coordinator: None,
        }
    }
}

impl RunBuilder {
    /// All settings at once (the experiment's way); the setters below change one of them.
    pub fn config(mut self, config: RunConfig) -> Self {
        self.config = config;
        self
    }

    /// The settings so far.
    pub fn run_config(&self) -> &RunConfig {
        &self.config
    }

    /// The root of all experiments (NeMo's `log_dir`; default `./waypoint_runs`).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.log_dir = dir.into();
        self
    }

    /// The experiment's name (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The version directory (none by default: `<log_dir>/<name>/checkpoints`, so that running
    /// the same command again resumes).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = Some(version.into());
        self
    }

    /// The checkpoint policy (default: `ModelCheckpoint::builder().build()`, NeMo's defaults).
    pub fn checkpoint(mut self, checkpoint: ModelCheckpoint) -> Self {
        self.config.checkpoint = Some(checkpoint);
        self
    }

    /// How checkpoints are written (shard size, block size, threads).
    pub fn save_options(mut self, options: SaveOptions) -> Self {
        self.config.save_options = options;
        self
    }

    /// The step training ends at. Checkpoints saved at or after it are marked as the end of a
    /// completed run, so that AutoResume says so instead of resuming (unless `resume_past_end`).
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.config.max_steps = Some(steps);
        self
    }

    /// Files written into every checkpoint's `context/` directory (with `always_save_context`,
    /// NeMo's default) or into the train-end one (`save_context_on_train_end`): the run's
    /// configuration, e.g. `io.json` and `model.yaml`. Names are single path components.
    pub fn context_files(mut self, files: Vec<(String, Vec<u8>)>) -> Self {
        self.config.context = files;
        self
    }

    /// The resume rules (default: no resume).
    pub fn resume(mut self, resume: AutoResume) -> Self {
        self.resume = resume;
        self
    }

    /// The clock the time trigger reads, in seconds (default: wall-clock time).
    pub fn clock(mut self, clock: impl Fn() -> f64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// A flag that, once set (by a signal handler: see [`crate::preemption`]), makes the next
    /// [`Run::step_end`] save the `-last` checkpoint, wait for it, and report
    /// [`Run::should_stop`].
    pub fn preemption(mut self, flag: Arc<AtomicBool>) -> Self {
        self.preemption = Some(flag);
        self
    }

    /// Metric loggers (TensorBoard, CSV, …): the run forwards its metrics, hyperparameters and
    /// checkpoint events to them, tells them where a resume starts, flushes them before each save
    /// and finalizes them with the run's status.
    pub fn loggers(mut self, loggers: Loggers) -> Self {
        self.loggers = Some(loggers);
        self
    }

    /// The ranks this run trains with (default: a single process). Every rank builds its own
    /// `Run` with the same settings and calls the same methods at the same steps; rank 0 chooses
    /// the checkpoint to resume from, makes every checkpoint decision (names, top-k, deletions,
    /// which saves in flight are finalized) and broadcasts it, commits each checkpoint once all
    /// ranks have written their shards, and alone deletes and logs metrics (the loggers of other
    /// ranks are not used). The ranks must share the checkpoint storage (a shared file system, or
    /// an object store).
    pub fn coordinator(mut self, coordinator: SharedCoordinator) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    /// Keeps checkpoints in `storage` (its root is the checkpoints directory) instead of the local
    /// directory derived from `log_dir`: for object stores, and for tests on [`crate::storage::MemoryFs`].
    pub fn storage(mut self, storage: SharedStorage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Creates the directories, removes leftovers of interrupted saves and chooses the checkpoint
    /// to resume from.
    pub fn build(self) -> Result<Run> {
        self.config.check()?;
        let checkpoint = match &self.config.checkpoint {
            Some(c) => c.clone(),
            None => ModelCheckpoint::builder().build()?,
        };
        let exp_dir = self.config.experiment_dir();
        let (dirpath, storage) = open_checkpoints(self.storage, &checkpoint, &exp_dir)?;
        let coordinator: SharedCoordinator =
            self.coordinator.unwrap_or_else(|| Arc::new(SingleProcess));
        let checkpointer = Checkpointer::new(storage.clone())
            .with_options(self.config.save_options.clone())
            .with_coordinator(coordinator.clone());
        let (point, record) = resume_point(&self.resume, &checkpointer, &coordinator, &dirpath)?;
        let policy = Policy::new(checkpoint, self.config.name.clone())?;
        let plan = ResumePlan::with_record(point, record, &policy, &storage, &dirpath)?;
        let loggers = start_loggers(self.loggers, coordinator.is_root(), &plan);
        let queue = save_queue(&storage, &self.config.save_options, &coordinator, &policy)?;
        let elsewhere = super::restore::Elsewhere::applies(&self.resume, plan.point.as_ref());
        let mut run = Run {
            config: self.config,
            storage,
            checkpointer,
            dirpath,
            exp_dir,
            state: plan.policy_state,
            policy,
            metrics: Metrics::new(),
            resume: plan.point,
            protected: plan.protected,
            elsewhere,
            clock: self.clock,
            queue,
            preemption: self.preemption,
            stopped: false,
            loggers,
            logged_from: 0,
            coordinator,
            decisions: 0,
            monitor_warned: false,
        };
        if run.coordinator.is_root() {
            run.finish_interrupted_deletions(plan.pending_deletes);
        }
        Ok(run)
    }
}

/// The checkpoints directory and its storage: the storage given, an object store named by a URL
/// `dirpath`, or a local directory (`dirpath`, or `<experiment>/checkpoints`), created.
fn open_checkpoints(
    given: Option<SharedStorage>,
    checkpoint: &ModelCheckpoint,
    exp_dir: &Path,
) -> Result<(PathBuf, SharedStorage)> {
    if let Some(storage) = given {
        return Ok((storage.describe(&StoragePath::root()), storage));
    }
    if let Some(url) = checkpoint.dirpath().filter(|d| is_url(d)) {
        // An object store (s3://bucket/prefix, …): nothing to create locally.
        return Ok((
            PathBuf::from(url.trim_end_matches('/')),
            open_location(url)?,
        ));
    }
    let dirpath = checkpoint
        .dirpath()
        .map_or_else(|| exp_dir.join("checkpoints"), PathBuf::from);
    std::fs::create_dir_all(&dirpath).map_err(|e| Error::io("create directory", &dirpath, e))?;
    let dirpath = std::fs::canonicalize(&dirpath).map_err(|e| Error::io("resolve", &dirpath, e))?;
    let storage = local_storage(&dirpath)?;
    Ok((dirpath, storage))
}

/// Rank 0 removes the leftovers of interrupted saves and chooses the checkpoint to resume from;
/// with several ranks it tells the others what it chose (or why it failed), so every rank
/// resumes from the same checkpoint. Rank 0 also keeps the chosen record where choosing read
/// it (the other ranks read it themselves).
fn resume_point(
    resume: &AutoResume,
    checkpointer: &Checkpointer,
    coordinator: &SharedCoordinator,
    dirpath: &Path,
) -> Result<(Option<ResumePoint>, Option<CommitRecord>)> {
    let mut record = None;
    let chosen = coordinator.is_root().then(|| {
        let removed = checkpointer.cleanup_temporaries(&StoragePath::root())?;
        if !removed.is_empty() {
            tracing::warn!(dir = %dirpath.display(), removed = ?removed, "removed the leftovers of interrupted saves");
        }
        let chosen = choose_read(resume, checkpointer.storage(), dirpath)?;
        Ok(chosen.map(|(point, read)| {
            record = read;
            point
        }))
    });
    let point = match (coordinator.world_size(), chosen) {
        (1, Some(chosen)) => chosen,
        (_, chosen) => ranks::share(
            coordinator.as_ref(),
            "choosing the checkpoint to resume",
            chosen,
        ),
    }?;
    Ok((point, record))
}

/// The loggers, on rank 0 only, told where the run starts before anything else reaches them.
/// Starting from scratch, whatever an earlier (killed) run logged in the same place is superseded
/// from step 0, as a resume supersedes what followed its checkpoint (the resumed run tells them
/// at restore, after their saved states). A run that is already complete logs nothing: its
/// loggers are discarded, leaving no file, row or remote run behind.
fn start_loggers(loggers: Option<Loggers>, root: bool, plan: &ResumePlan) -> Option<Loggers> {
    let mut loggers = loggers;
    if !root && loggers.take().is_some() {
        tracing::debug!("metrics are logged by rank 0; this rank's loggers are not used");
    }
    let mut loggers = loggers?;
    match &plan.point {
        None => loggers.resumed(0),
        Some(point) if point.completed => {
            if let Err(e) = loggers.discard() {
                tracing::warn!(error = %e, "a metric logger failed while the completed run's loggers were discarded");
            }
            return None;
        }
        Some(_) => {}
    }
    Some(loggers)
}

/// The queue of background saves: on a channel of its own to the other ranks, so that its
/// collectives never interleave with the training thread's (each job then gets a duplicate of
/// it, so that jobs in flight at once never interleave with each other's).
fn save_queue<T>(
    storage: &SharedStorage,
    options: &SaveOptions,
    coordinator: &SharedCoordinator,
    policy: &Policy,
) -> Result<SaveQueue<T>> {
    let channel: SharedCoordinator = if coordinator.world_size() > 1 {
        Arc::from(coordinator.duplicate()?)
    } else {
        coordinator.clone()
    };
    let config = policy.config();
    Ok(SaveQueue::new(
        storage.clone(),
        options,
        channel,
        config.max_pending_saves(),
        config.when_pending_full(),
        config.async_save(),
    ))
}
