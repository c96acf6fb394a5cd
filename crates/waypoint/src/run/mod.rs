//! [`Run`]: the one handle a training loop talks to. It owns the glue between the pure policy
//! ([`crate::policy`]), AutoResume ([`crate::resume`]) and the engine: where checkpoints go,
//! which one to resume from, turning the policy's actions into saves, links and deletions (saves
//! first, deletions only after their replacement committed), and restoring every piece of state.
//! It works with no framework: the loop calls it at step, validation and epoch ends.

mod actions;
mod ranks;

pub(crate) use ranks::share;

use crate::dist::SharedCoordinator;
use crate::engine::{Checkpointer, LoadOptions, RegionSlot, SaveOptions, SinkSlot, TensorRef};
use crate::error::{Error, Result};
use crate::policy::{Event, MetricValue, Metrics, ModelCheckpoint, Policy, PolicyState};
use crate::resume::{
    AutoResume, Selection, checkpoints_nearby, discover, read_record, record_completed, select,
};
use crate::storage::{SharedStorage, StoragePath, is_url, local_storage, open_dir, open_location};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Key of the policy's state in the commit record's reserved `waypoint` slot.
pub const POLICY_STATE_KEY: &str = "model_checkpoint";
/// Key of the run's own facts (completed, weights_only, experiment) in the reserved slot.
pub const RUN_STATE_KEY: &str = "run";
/// Key of the checkpoints the decision that saved this one was about to delete: a resumed run
/// finishes those deletions, so a crash between a save and its deletions leaves no orphan.
pub const PENDING_DELETES_KEY: &str = "pending_deletes";
/// Key of the metric loggers' resume states (by logger name: the MLflow run id, the W&B run id)
/// in the reserved slot: a run resumed from the checkpoint continues the same tracking run.
pub const LOGGERS_STATE_KEY: &str = "loggers";

/// What a training loop hands over to be checkpointed, and restored into on resume.
///
/// Model and optimizer tensors are kept apart so that weights-only saves (`save_weights_only`,
/// or the train-end save without `save_optim_on_train_end`) can leave the optimizer out. The
/// trainer state is any JSON value: step counters, the RNG state, the data position.
pub trait Checkpointable {
    /// The model's tensors, borrowed without copying.
    fn model_tensors(&self) -> Vec<TensorRef<'_>>;
    /// The optimizer's tensors (moments, …); left out of weights-only saves.
    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        Vec::new()
    }
    /// Everything else needed to continue bit for bit (counters, RNG, data position).
    fn trainer_state(&self) -> serde_json::Value;
    /// Buffers to load model and optimizer tensors into, in place.
    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>>;
    /// Buffers for the tensors this rank holds only a region of (sharded state; with several
    /// ranks, each restores its own shards, whatever partition the checkpoint was saved with).
    fn restore_regions(&mut self) -> Vec<RegionSlot<'_>> {
        Vec::new()
    }
    /// Takes the trainer state back.
    fn restore_trainer_state(&mut self, state: serde_json::Value) -> Result<()>;
}

/// The checkpoint a run resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// Where it is.
    pub path: PathBuf,
    /// Its name in its directory.
    pub name: String,
    /// The step in its commit record.
    pub step: u64,
    /// The epoch in its commit record.
    pub epoch: u64,
    /// Whether it ends a completed run (and `resume_past_end` is off): nothing is left to do.
    pub completed: bool,
    /// Why it was chosen.
    pub reason: String,
}

/// A checkpoint the run saved (or linked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// Its name in the checkpoints directory.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// The step.
    pub step: u64,
    /// Bytes written (0 for a link).
    pub bytes: u64,
    /// Wall time of the write (commit included).
    pub elapsed: Duration,
    /// How long the training thread was blocked by it (staging for an asynchronous save, the
    /// whole save for a synchronous one).
    pub blocked: Duration,
    /// Whether it is a link to another checkpoint saved at this step.
    pub link: bool,
}

/// Builds a [`Run`]: where the experiment lives, the checkpoint policy and the resume rules.
pub struct RunBuilder {
    log_dir: PathBuf,
    name: String,
    version: Option<String>,
    checkpoint: Option<ModelCheckpoint>,
    resume: AutoResume,
    save_options: SaveOptions,
    clock: Box<dyn Fn() -> f64 + Send>,
    storage: Option<SharedStorage>,
    max_steps: Option<u64>,
    context: Vec<(String, Vec<u8>)>,
    preemption: Option<Arc<AtomicBool>>,
    loggers: Option<crate::loggers::Loggers>,
    coordinator: Option<SharedCoordinator>,
}

impl std::fmt::Debug for RunBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuilder")
            .field("log_dir", &self.log_dir)
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RunBuilder {
    /// The root of all experiments (NeMo's `log_dir`; default `./waypoint_runs`).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = dir.into();
        self
    }

    /// The experiment's name (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The version directory (none by default: `<log_dir>/<name>/checkpoints`, so that running
    /// the same command again resumes).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The checkpoint policy (default: `ModelCheckpoint::builder().build()`, NeMo's defaults).
    pub fn checkpoint(mut self, checkpoint: ModelCheckpoint) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The resume rules (default: no resume).
    pub fn resume(mut self, resume: AutoResume) -> Self {
        self.resume = resume;
        self
    }

    /// How checkpoints are written (shard size, block size, threads).
    pub fn save_options(mut self, options: SaveOptions) -> Self {
        self.save_options = options;
        self
    }

    /// The clock the time trigger reads, in seconds (default: wall-clock time).
    pub fn clock(mut self, clock: impl Fn() -> f64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The step training ends at. Checkpoints saved at or after it are marked as the end of a
    /// completed run, so that AutoResume says so instead of resuming (unless `resume_past_end`).
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.max_steps = Some(steps);
        self
    }

    /// Files written into every checkpoint's `context/` directory (with `always_save_context`,
    /// NeMo's default) or into the train-end one (`save_context_on_train_end`): the run's
    /// configuration, e.g. `io.json` and `model.yaml`. Names are single path components.
    pub fn context_files(mut self, files: Vec<(String, Vec<u8>)>) -> Self {
        self.context = files;
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
    pub fn loggers(mut self, loggers: crate::loggers::Loggers) -> Self {
        self.loggers = Some(loggers);
        self
    }

    /// The ranks this run trains with (default: a single process). Every rank builds its own
    /// `Run` with the same settings and calls the same methods at the same steps; rank 0 chooses
    /// the checkpoint to resume from, makes every checkpoint decision (names, top-k, deletions)
    /// and broadcasts it, commits each checkpoint once all ranks have written their shards, and
    /// alone deletes and logs metrics (the loggers of other ranks are not used). The ranks must
    /// share the checkpoint storage (a shared file system, or an object store).
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
        if self.name.is_empty() || self.name.contains('/') || self.name.starts_with('.') {
            return Err(Error::InvalidArgument {
                name: "name",
                reason: format!(
                    "{:?} must be one non-empty path component not starting with '.'",
                    self.name
                ),
            });
        }
        let checkpoint = match self.checkpoint {
            Some(c) => c,
            None => ModelCheckpoint::builder().build()?,
        };
        let mut exp_dir = self.log_dir.join(&self.name);
        if let Some(v) = &self.version {
            exp_dir = exp_dir.join(v);
        }
        let url_dirpath = checkpoint.dirpath().filter(|d| is_url(d));
        let (dirpath, storage) = match (self.storage, url_dirpath) {
            (Some(storage), _) => (storage.describe(&StoragePath::root()), storage),
            // An object store (s3://bucket/prefix, …): nothing to create locally.
            (None, Some(url)) => (
                PathBuf::from(url.trim_end_matches('/')),
                open_location(url)?,
            ),
            (None, None) => {
                let dirpath = checkpoint
                    .dirpath()
                    .map_or_else(|| exp_dir.join("checkpoints"), PathBuf::from);
                std::fs::create_dir_all(&dirpath)
                    .map_err(|e| Error::io("create directory", &dirpath, e))?;
                let dirpath = std::fs::canonicalize(&dirpath)
                    .map_err(|e| Error::io("resolve", &dirpath, e))?;
                let storage = local_storage(&dirpath)?;
                (dirpath, storage)
            }
        };
        let coordinator: SharedCoordinator = self
            .coordinator
            .unwrap_or_else(|| Arc::new(crate::dist::SingleProcess));
        let root = coordinator.is_root();
        let checkpointer = Checkpointer::new(storage.clone())
            .with_options(self.save_options)
            .with_coordinator(coordinator.clone());
        let policy = Policy::new(checkpoint, self.name.clone())?;
        // Rank 0 cleans up and chooses; with several ranks it tells the others what it chose
        // (or why it failed), so every rank resumes from the same checkpoint.
        let chosen = if root {
            let chosen = checkpointer
                .cleanup_temporaries(&StoragePath::root())
                .and_then(|removed| {
                    if !removed.is_empty() {
                        tracing::warn!(dir = %dirpath.display(), removed = ?removed, "removed the leftovers of interrupted saves");
                    }
                    choose_resume(&self.resume, &storage, &dirpath)
                });
            if coordinator.world_size() > 1 {
                ranks::share_resume(coordinator.as_ref(), Some(chosen))
            } else {
                chosen
            }
        } else {
            ranks::share_resume(coordinator.as_ref(), None)
        };
        let resume = chosen?;
        // Background saves talk over a channel of their own.
        let background: SharedCoordinator = if coordinator.world_size() > 1 {
            Arc::from(coordinator.duplicate()?)
        } else {
            coordinator.clone()
        };
        let mut loggers = self.loggers;
        if !root && loggers.take().is_some() {
            tracing::debug!("metrics are logged by rank 0; this rank's loggers are not used");
        }
        if resume.is_none()
            && let Some(loggers) = &mut loggers
        {
            // Starting from scratch: whatever an earlier (killed) run logged in the same place
            // is superseded from step 0, as a resume supersedes what followed its checkpoint.
            loggers.resumed(0);
        }
        let dirpath_text = dirpath.display().to_string();
        let mut state = policy.initial_state(&dirpath_text);
        let mut protected = None;
        if let Some(point) = &resume
            && point.path.parent() == Some(dirpath.as_path())
        {
            protected = Some(point.name.clone());
            let record = read_record(storage.as_ref(), &StoragePath::new(&point.name)?)?;
            let restored = record
                .trainer_state
                .waypoint
                .get(POLICY_STATE_KEY)
                .and_then(|v| serde_json::from_value::<PolicyState>(v.clone()).ok());
            let committed = committed_steps(&storage)?;
            let (restored, notes) = policy.restore(restored, &dirpath_text, &|n: &str| {
                committed.iter().find(|(c, _)| c == n).map(|(_, s)| *s)
            });
            state = restored;
            for note in notes {
                tracing::info!("{note}");
            }
            let pending: Vec<String> = record
                .trainer_state
                .waypoint
                .get(PENDING_DELETES_KEY)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            if root {
                finish_pending_deletes(&storage, &pending, &point.name, &state, &committed);
            }
        }
        Ok(Run {
            storage,
            checkpointer,
            dirpath,
            exp_dir,
            policy,
            state,
            metrics: Metrics::new(),
            resume,
            protected,
            clock: self.clock,
            experiment: self.name,
            version: self.version,
            max_steps: self.max_steps,
            pending: std::collections::VecDeque::new(),
            undeleted: Vec::new(),
            deleting: None,
            context: self.context,
            preemption: self.preemption,
            stopped: false,
            loggers,
            logged_from: 0,
            pool: std::sync::Arc::new(crate::engine::StagingPool::new()),
            coordinator,
            background,
        })
    }
}

/// Completes the deletions that the decision behind the resumed checkpoint had planned but a crash
/// interrupted: only names still committed, and never the resumed checkpoint or anything the
/// restored state keeps.
fn finish_pending_deletes(
    storage: &SharedStorage,
    pending: &[String],
    resumed: &str,
    state: &PolicyState,
    committed: &[(String, u64)],
) {
    for name in pending {
        let kept = name == resumed
            || state.last_model_path.as_deref() == Some(name.as_str())
            || state.top_k.iter().any(|e| &e.name == name);
        if kept || !committed.iter().any(|(c, _)| c == name) {
            continue;
        }
        match actions::delete_checkpoint(storage.as_ref(), name) {
            Ok(()) => {
                tracing::info!(checkpoint = %name, "deleted: superseded before the previous run was interrupted")
            }
            Err(e) => {
                tracing::warn!(checkpoint = %name, error = %e, "could not delete a superseded checkpoint")
            }
        }
    }
}

/// The steps of every committed checkpoint in the run's directory.
fn committed_steps(storage: &SharedStorage) -> Result<Vec<(String, u64)>> {
    let found = discover(storage.as_ref(), &StoragePath::root())?;
    Ok(found
        .committed
        .into_iter()
        .map(|c| (c.name, c.step))
        .collect())
}

/// Applies AutoResume's rules: which checkpoint (if any) to continue from.
fn choose_resume(
    resume: &AutoResume,
    storage: &SharedStorage,
    dirpath: &Path,
) -> Result<Option<ResumePoint>> {
    if let Some(path) = resume.resume_from_path() {
        let path = if path.to_str().is_some_and(is_url) {
            path.to_path_buf()
        } else {
            std::fs::canonicalize(path)
                .map_err(|e| Error::io("resolve resume_from_path", path, e))?
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(Error::InvalidArgument {
                name: "resume_from_path",
                reason: format!("{} is not a checkpoint directory", path.display()),
            });
        };
        let record = read_record(open_dir(parent)?.as_ref(), &StoragePath::new(name)?)?;
        return Ok(Some(ResumePoint {
            completed: record_completed(&record) && !resume.resume_past_end(),
            path: path.clone(),
            name: name.to_owned(),
            step: record.step,
            epoch: record.epoch,
            reason: "resume_from_path names it".into(),
        }));
    }
    if !resume.resume_if_exists() {
        let existing = discover(storage.as_ref(), &StoragePath::root())?;
        if !existing.committed.is_empty() {
            tracing::warn!(
                dir = %dirpath.display(),
                checkpoints = existing.committed.len(),
                "checkpoints of an earlier run exist here, but resume_if_exists is off: training starts from scratch"
            );
        }
        return Ok(None);
    }
    let (search_dir, search_storage) = match resume.resume_from_directory() {
        Some(dir) if dir.to_str().is_some_and(is_url) => (dir.clone(), open_dir(dir)?),
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::NoCheckpoint {
                    searched: dir.clone(),
                    skipped: Vec::new(),
                    nearby: Vec::new(),
                });
            }
            let dir = std::fs::canonicalize(dir)
                .map_err(|e| Error::io("resolve resume_from_directory", dir, e))?;
            let s = local_storage(&dir)?;
            (dir, s)
        }
        None => (dirpath.to_path_buf(), storage.clone()),
    };
    let found = discover(search_storage.as_ref(), &StoragePath::root())?;
    for (name, why) in &found.skipped {
        tracing::warn!(checkpoint = %name, reason = %why, "not a committed checkpoint; ignored by resume");
    }
    match select(&found.committed, resume.resume_past_end()) {
        Selection::Resume { candidate, reason } => {
            tracing::info!(checkpoint = %candidate.name, step = candidate.step, "resuming: {reason}");
            Ok(Some(ResumePoint {
                path: search_dir.join(&candidate.name),
                name: candidate.name,
                step: candidate.step,
                epoch: candidate.epoch,
                completed: false,
                reason,
            }))
        }
        Selection::Completed { candidate } => {
            tracing::info!(checkpoint = %candidate.name, step = candidate.step, "the run already completed");
            Ok(Some(ResumePoint {
                path: search_dir.join(&candidate.name),
                name: candidate.name,
                step: candidate.step,
                epoch: candidate.epoch,
                completed: true,
                reason: "the newest checkpoint ends a completed run (resume_past_end is off)"
                    .into(),
            }))
        }
        Selection::Nothing => {
            let nearby = checkpoints_nearby(search_storage.as_ref(), &StoragePath::root());
            // resume_ignore_no_checkpoint allows starting over, but not when a directory given
            // explicitly was simply the wrong one and checkpoints lie below it (NeMo #14259).
            let misdirected = resume.resume_from_directory().is_some() && !nearby.is_empty();
            if resume.resume_ignore_no_checkpoint() && !misdirected {
                tracing::info!(dir = %search_dir.display(), "no committed checkpoint to resume from: training from scratch");
                return Ok(None);
            }
            Err(Error::NoCheckpoint {
                nearby,
                searched: search_dir,
                skipped: found.skipped.into_iter().map(|(n, _)| n).collect(),
            })
        }
    }
}

/// The handle a training loop talks to: report metrics, tell it where training is, and it saves,
/// rotates and deletes checkpoints as the [`ModelCheckpoint`] policy says, synchronously.
///
/// ```
/// use waypoint::{AutoResume, Checkpointable, Dtype, ModelCheckpoint, Run, SinkSlot, TensorRef};
///
/// struct Model { w: Vec<u8>, step: u64 }
/// impl Checkpointable for Model {
///     fn model_tensors(&self) -> Vec<TensorRef<'_>> { vec![TensorRef::whole("w", Dtype::U8, vec![4], self.w.as_slice())] }
///     fn trainer_state(&self) -> serde_json::Value { serde_json::json!({"step": self.step}) }
///     fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
///         vec![SinkSlot { name: "w", dtype: Dtype::U8, shape: &[4], data: &mut self.w }]
///     }
///     fn restore_trainer_state(&mut self, s: serde_json::Value) -> waypoint::Result<()> {
///         self.step = s["step"].as_u64().unwrap_or(0);
///         Ok(())
///     }
/// }
///
/// let tmp = tempfile::tempdir().unwrap();
/// let policy = ModelCheckpoint::builder().no_monitor().save_top_k(1).every_n_train_steps(2).build().unwrap();
/// let resume = AutoResume::builder().resume_if_exists(true).resume_ignore_no_checkpoint(true).build().unwrap();
/// let mut model = Model { w: vec![0; 4], step: 0 };
/// let mut run = Run::builder().log_dir(tmp.path()).checkpoint(policy.clone()).resume(resume.clone()).build().unwrap();
/// run.restore(&mut model).unwrap();
/// for step in model.step + 1..=4 {
///     model.w[0] = step as u8;
///     model.step = step;
///     run.step_end(step, 0, &model).unwrap();
/// }
/// run.finish(4, 0, &model).unwrap();
///
/// // A new process: the same command resumes from step 4.
/// let mut model = Model { w: vec![0; 4], step: 0 };
/// let mut run = Run::builder().log_dir(tmp.path()).checkpoint(policy).resume(resume).build().unwrap();
/// let point = run.restore(&mut model).unwrap().unwrap();
/// assert_eq!((point.step, model.step, model.w[0]), (4, 4, 4));
/// ```
pub struct Run {
    storage: SharedStorage,
    checkpointer: Checkpointer,
    dirpath: PathBuf,
    exp_dir: PathBuf,
    policy: Policy,
    state: PolicyState,
    metrics: Metrics,
    resume: Option<ResumePoint>,
    protected: Option<String>,
    clock: Box<dyn Fn() -> f64 + Send>,
    experiment: String,
    version: Option<String>,
    max_steps: Option<u64>,
    pending: std::collections::VecDeque<actions::Pending>,
    /// Superseded checkpoints whose deletion failed; retried after the next save.
    undeleted: Vec<String>,
    /// Deletions running in the background (asynchronous mode): their names, and the thread,
    /// which returns what failed.
    deleting: Option<(Vec<String>, std::thread::JoinHandle<Vec<String>>)>,
    context: Vec<(String, Vec<u8>)>,
    preemption: Option<Arc<AtomicBool>>,
    stopped: bool,
    loggers: Option<crate::loggers::Loggers>,
    /// Metrics of earlier steps were logged by the run this one resumed from.
    logged_from: u64,
    pool: std::sync::Arc<crate::engine::StagingPool>,
    /// The ranks (the training thread's channel).
    coordinator: SharedCoordinator,
    /// The background saves' own channel to the other ranks.
    background: SharedCoordinator,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("dirpath", &self.dirpath)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Starts a builder with NeMo's defaults.
    pub fn builder() -> RunBuilder {
        RunBuilder {
            log_dir: PathBuf::from("waypoint_runs"),
            name: "default".into(),
            version: None,
            checkpoint: None,
            resume: AutoResume::default(),
            save_options: SaveOptions::default(),
            clock: Box::new(wall_clock),
            storage: None,
            max_steps: None,
            context: Vec::new(),
            preemption: None,
            loggers: None,
            coordinator: None,
        }
    }

    /// The checkpoints directory.
    pub fn checkpoint_dir(&self) -> &Path {
        &self.dirpath
    }

    /// The experiment directory (`<log_dir>/<name>[/<version>]`).
    pub fn experiment_dir(&self) -> &Path {
        &self.exp_dir
    }

    /// The checkpoint chosen to resume from, if any.
    pub fn resume_point(&self) -> Option<&ResumePoint> {
        self.resume.as_ref()
    }

    /// The policy's current state (top-k, last, …).
    pub fn policy_state(&self) -> &PolicyState {
        &self.state
    }

    /// Restores `state` from the resume checkpoint: model and optimizer tensors in place, then the
    /// trainer state. Returns the resume point, or `None` when starting from scratch. A
    /// weights-only checkpoint restores the model and leaves the optimizer as it is, with a warning.
    pub fn restore(&mut self, state: &mut dyn Checkpointable) -> Result<Option<ResumePoint>> {
        let Some(point) = self.resume.clone() else {
            return Ok(None);
        };
        let (parent, name) = match (point.path.parent(), StoragePath::new(&point.name)) {
            (Some(p), Ok(n)) => (p.to_path_buf(), n),
            _ => {
                return Err(Error::NotFound {
                    path: point.path.clone(),
                });
            }
        };
        let storage = if parent == self.dirpath {
            self.storage.clone()
        } else {
            open_dir(&parent)?
        };
        let reader = Checkpointer::new(storage).open(&name)?;
        let weights_only = reader
            .record()
            .trainer_state
            .waypoint
            .get(RUN_STATE_KEY)
            .and_then(|r| r.get("weights_only"))
            .and_then(|w| w.as_bool())
            .unwrap_or(false);
        let user = reader.record().trainer_state.user.clone();
        {
            let mut slots = state.restore_slots();
            let missing: Vec<String> = slots
                .iter()
                .filter(|s| !reader.record().tensors.contains_key(s.name))
                .map(|s| s.name.to_owned())
                .collect();
            if !missing.is_empty() {
                if !weights_only {
                    return Err(Error::MissingTensor {
                        tensor: missing.join(", "),
                        path: point.path.clone(),
                    });
                }
                tracing::warn!(checkpoint = %point.path.display(), missing = ?missing, "weights-only checkpoint: these tensors (optimizer state) keep their current values");
                slots.retain(|s| !missing.iter().any(|m| m == s.name));
            }
            reader.load_into(&mut slots, &LoadOptions::default())?;
        }
        {
            let mut regions = state.restore_regions();
            if weights_only {
                regions.retain(|r| reader.record().tensors.contains_key(r.name));
            }
            reader.load_regions(&mut regions, &LoadOptions::default())?;
        }
        state.restore_trainer_state(user)?;
        if let Some(loggers) = &mut self.loggers {
            if let Some(states) = reader
                .record()
                .trainer_state
                .waypoint
                .get(LOGGERS_STATE_KEY)
                .and_then(|v| v.as_object())
            {
                loggers.restore_state(states);
            }
            // What earlier runs logged after the checkpoint is superseded from here on; what
            // they logged up to it stays, and is not logged twice.
            loggers.resumed(point.step + 1);
        }
        self.logged_from = point.step + 1;
        tracing::info!(checkpoint = %point.path.display(), step = point.step, "restored");
        Ok(Some(point))
    }

    /// Records metric values measured at `step`; the policy ranks by the monitored one.
    pub fn log_metrics(&mut self, step: u64, metrics: &[(&str, f64)]) {
        for (name, value) in metrics {
            self.metrics.insert(
                (*name).to_owned(),
                MetricValue {
                    value: *value,
                    step,
                },
            );
        }
        if step < self.logged_from {
            return; // logged by the run this one resumed
        }
        if let Some(loggers) = &mut self.loggers {
            loggers.log_metrics(step, metrics);
        }
    }

    /// Hands hyperparameters to the loggers (TensorBoard's hparams, the CSV logger's hparams.yaml).
    pub fn log_hyperparams(&mut self, params: &serde_json::Map<String, serde_json::Value>) {
        if let Some(loggers) = &mut self.loggers {
            loggers.log_hyperparams(params);
        }
    }

    /// Logs a text record (TensorBoard's text plugin).
    pub fn log_text(&mut self, step: u64, tag: &str, text: &str) {
        if let Some(loggers) = &mut self.loggers {
            loggers.log_text(step, tag, text);
        }
    }

    /// Call after each optimizer step; `step` counts optimizer steps completed (1 after the first).
    pub fn step_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        let mut saved = self.handle(Event::TrainStepEnd { step, epoch, now_s }, state, false)?;
        let mut preempted = self
            .preemption
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if self.preemption.is_some() && !self.stopped && self.coordinator.world_size() > 1 {
            // The signal may reach the ranks at different steps: stop together at the first.
            preempted = ranks::any_rank(self.coordinator.as_ref(), preempted)?;
        }
        if !self.stopped && preempted {
            tracing::warn!(
                step,
                "preemption requested: saving the -last checkpoint, then stopping"
            );
            saved.extend(self.save_for_preemption(step, epoch, state)?);
            self.stopped = true;
            if let Some(loggers) = &mut self.loggers
                && let Err(e) = loggers.finalize(crate::loggers::RunStatus::Preempted)
            {
                tracing::warn!(error = %e, "a metric logger failed while the run was preempted");
            }
        }
        Ok(saved)
    }

    /// Whether the loop should stop: a preemption was requested and its checkpoint is saved.
    pub fn should_stop(&self) -> bool {
        self.stopped
    }

    /// Call after a validation run whose metrics were reported with [`Run::log_metrics`].
    pub fn validation_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        self.handle(Event::ValidationEnd { step, epoch, now_s }, state, false)
    }

    /// Call after a training epoch.
    pub fn epoch_end(
        &mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        let now_s = (self.clock)();
        self.handle(Event::TrainEpochEnd { step, epoch, now_s }, state, false)
    }

    /// Call when training completed: saves the last checkpoint if the policy says so, marked as
    /// the end of a completed run (AutoResume then says so instead of resuming).
    pub fn finish(
        mut self,
        step: u64,
        epoch: u64,
        state: &dyn Checkpointable,
    ) -> Result<Vec<SavedCheckpoint>> {
        // Saves in flight finish first: their errors surface here, before the last save.
        let mut saved = self.finalize_ready(true)?;
        let now_s = (self.clock)();
        saved.extend(self.handle(Event::TrainEnd { step, epoch, now_s }, state, true)?);
        self.retry_deletions();
        if let Some(loggers) = &mut self.loggers {
            loggers.finalize(crate::loggers::RunStatus::Success)?;
        }
        Ok(saved)
    }
}
