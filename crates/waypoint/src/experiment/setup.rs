//! [`ExperimentLogger::setup`] as its named steps, in order: resolve the ranks, choose the
//! version (rank 0 shares it), check the run before creating anything (its knobs, where it
//! resumes, whether that run is complete), make the directory and take the lock, move an earlier
//! run's files, open the log files, write the run files, register preemption, build the run. A
//! setup that fails its checks leaves nothing; a complete run started again moves, opens and
//! writes nothing. Also
//! [`RunSpec`], what the run is built from (kept by the [`Experiment`] to build it again).
//!
//! Each step does one thing and hands its result to the next; the rules they apply live in their
//! own modules (versions in `version.rs`, the lock in `lock.rs`, …). It must not build metric
//! loggers itself (`crate::loggers` does, from a [`LoggerSpec`]) nor write into `checkpoints/`.

use super::version::{self, VersionInputs, VersionSource, resolve_version};
use super::{
    CMD_ARGS_FILE, Experiment, ExperimentLogger, GIT_INFO_FILE, HPARAMS_FILE, VERSION_ENV,
};
use super::{context, files, lock, logs, signals};
use crate::dist::{RankInfo, RankSource, SharedCoordinator};
use crate::error::{Error, Result};
use crate::loggers::LoggerSpec;
use crate::policy::{ModelCheckpoint, Policy};
use crate::resume::{AutoResume, ResumePoint, choose};
use crate::run::{Run, RunConfig};
use crate::storage::{FsStorage, MemoryFs, SharedStorage, is_url, local_storage, open_location};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What a [`Run`] of the experiment is built from, beyond the resume rules: the settings
/// (adjusted for the version and `explicit_log_dir`) and the handles.
#[derive(Debug, Clone)]
pub(super) struct RunSpec {
    pub(super) config: RunConfig,
    pub(super) preemption: Option<Arc<AtomicBool>>,
    pub(super) loggers: LoggerSpec,
    pub(super) coordinator: Option<SharedCoordinator>,
}

impl RunSpec {
    /// The run, with freshly started loggers.
    pub(super) fn build(&self, resume: &AutoResume) -> Result<Run> {
        let mut b = Run::builder()
            .config(self.config.clone())
            .resume(resume.clone());
        if let Some(flag) = &self.preemption {
            b = b.preemption(flag.clone());
        }
        if let Some(loggers) = self.loggers.spawn()? {
            b = b.loggers(loggers);
        }
        if let Some(c) = &self.coordinator {
            b = b.coordinator(c.clone());
        }
        b.build()
    }
}

/// The version directory, made, and (global rank 0) its lock.
struct Directory {
    path: PathBuf,
    existed: bool,
    lock: Option<lock::RunLock>,
    stale_lock: Option<String>,
}

impl ExperimentLogger {
    /// Makes the version directory and the run, in this order: the ranks and the version (see
    /// [`crate::experiment`]; `resume` says whether the run resumes), the checks that need
    /// nothing created (the run's knobs, and AutoResume's choice: a required checkpoint that is
    /// missing fails here, leaving nothing), the directory, its lock (global rank 0; a live
    /// holder → [`Error::RunLocked`], a dead one's lock is taken over with a warning), the loose
    /// files of an earlier run moved into `run_<N>/`, this rank's log files, the run files
    /// (rank 0), the preemption handlers, and the [`Run`] (which chooses the checkpoint to resume
    /// from). When that checkpoint ends a completed run, nothing is moved, opened or written: the
    /// run restores the final state and its loop has nothing to do.
    pub fn setup(&self, resume: &AutoResume) -> Result<Experiment> {
        let ranks = self.resolve_ranks()?;
        // With several ranks in a group, rank 0 chooses the version and tells the others.
        let group = self.coordinator.as_ref().filter(|c| c.world_size() > 1);
        let (version, source) = self.choose_version(resume, ranks, group)?;
        // Before anything is created: a run that cannot start fails here, leaving nothing.
        let completed = self.preflight(resume, version.as_deref(), ranks, group)?;
        let dir = self.make_directory(version.as_deref(), ranks)?;
        let previous_run = self.move_earlier_run(&dir.path, ranks, group, completed)?;
        // A complete run started again changes nothing in its directory: no log lines, files.
        let logs = match completed {
            true => None,
            false => self.open_log_files(&dir.path, ranks)?,
        };
        // From here on, events reach this rank's log files.
        self.report(&dir, version.as_deref(), source, ranks, &previous_run);
        if ranks.is_root() && !completed {
            self.write_run_files(&dir.path)?;
        }
        let preemption = self.register_preemption()?;
        let spec = self.run_spec(&dir.path, version, ranks, preemption.as_ref())?;
        let run = spec.build(resume)?;
        Ok(Experiment {
            run,
            spec,
            logger_dir: self.update_logger_directory.then(|| dir.path.clone()),
            version_dir: dir.path,
            ranks,
            previous_run,
            stale_lock: dir.stale_lock,
            preemption,
            logs,
            // What a complete run skipped, done if it is reopened to train on.
            skipped: completed.then(|| Box::new(self.clone())),
            lock: dir.lock,
        })
    }

    /// The steps a complete run's setup skipped (the earlier run's files moved, this rank's log
    /// files, the run files), for an [`Experiment::reopen`] that trains on: returns the
    /// `run_<N>/` the files went to and the log files.
    pub(super) fn skipped_steps(
        &self,
        dir: &Path,
        ranks: RankInfo,
    ) -> Result<(Option<PathBuf>, Option<logs::LogFiles>)> {
        let group = self.coordinator.as_ref().filter(|c| c.world_size() > 1);
        let previous_run = self.move_earlier_run(dir, ranks, group, false)?;
        let logs = self.open_log_files(dir, ranks)?;
        if ranks.is_root() {
            self.write_run_files(dir)?;
        }
        Ok((previous_run, logs))
    }

    /// The builder's ranks; else the coordinator's rank with the environment's local rank;
    /// else the environment's, by [`RankInfo::from_env`]'s rule (a half-set is an error).
    fn resolve_ranks(&self) -> Result<RankInfo> {
        match (self.ranks, &self.coordinator) {
            (Some(r), _) => Ok(r),
            (None, Some(c)) => Ok(RankInfo {
                rank: c.rank(),
                world_size: c.world_size(),
                local_rank: RankInfo::from_env()?.local_rank,
                source: RankSource::Explicit,
            }),
            (None, None) => RankInfo::from_env(),
        }
    }

    /// The version (see [`crate::experiment`]); in a group, rank 0 resolves it and
    /// broadcasts its choice (or its error) to the others.
    fn choose_version(
        &self,
        resume: &AutoResume,
        ranks: RankInfo,
        group: Option<&SharedCoordinator>,
    ) -> Result<(Option<String>, VersionSource)> {
        const WHAT: &str = "choosing the version directory";
        let env_version = std::env::var(VERSION_ENV).ok();
        let inputs = VersionInputs {
            explicit_log_dir: self.explicit_log_dir.is_some(),
            knob: self.config.version.as_deref(),
            env: env_version.as_deref(),
            resume_if_exists: resume.resume_if_exists(),
            use_datetime_version: self.use_datetime_version,
            global_rank: if group.is_some() { 0 } else { ranks.rank },
        };
        match group {
            Some(c) if c.is_root() => {
                let chosen = resolve_version(inputs, version::datetime_version);
                let message = chosen.as_ref().map(|(v, _)| v.clone()).map_err(clone_error);
                let shared = crate::run::share(c.as_ref(), WHAT, Some(message));
                let chosen = chosen?;
                shared?;
                Ok(chosen)
            }
            Some(c) => {
                let version = crate::run::share::<Option<String>>(c.as_ref(), WHAT, None)?;
                Ok((version, VersionSource::Rank0))
            }
            None => resolve_version(inputs, version::datetime_version),
        }
    }

    /// The version directory: `explicit_log_dir` as it is, else `<log_dir>/<name>[/<version>]`.
    fn version_dir(&self, version: Option<&str>) -> PathBuf {
        match &self.explicit_log_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.config.log_dir.join(&self.config.name);
                version.map_or(d.clone(), |v| d.join(v))
            }
        }
    }

    /// What the run would refuse, checked before anything is created (the name, the filename
    /// template, the resume rules: no checkpoint where one is required, a restore_config source
    /// that cannot be read), and whether the run it
    /// resumes is already complete. Rank 0 checks and, in a group, tells the others.
    fn preflight(
        &self,
        resume: &AutoResume,
        version: Option<&str>,
        ranks: RankInfo,
        group: Option<&SharedCoordinator>,
    ) -> Result<bool> {
        const WHAT: &str = "checking the run before setting it up";
        let check = || -> Result<bool> {
            let dir = self.version_dir(version);
            let spec = self.run_spec(&dir, version.map(str::to_owned), ranks, None)?;
            let point = peek_resume_point(&spec.config, resume)?;
            // A restore_config that will apply must name a readable source (its headers are
            // read, no tensor): a wrong path fails here, before the directory is made.
            if let (None, Some(restore)) = (&point, resume.restore_config()) {
                crate::restore::open_source(&restore.path)?;
            }
            Ok(point.is_some_and(|p| p.completed))
        };
        match group {
            Some(c) if c.is_root() => crate::run::share(c.as_ref(), WHAT, Some(check())),
            Some(c) => crate::run::share(c.as_ref(), WHAT, None),
            None => check(),
        }
    }

    /// The version directory (see [`Self::version_dir`]) created and made absolute; global
    /// rank 0 takes its lock before anything in it is touched.
    fn make_directory(&self, version: Option<&str>, ranks: RankInfo) -> Result<Directory> {
        let dir = self.version_dir(version);
        let existed = dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let path = std::fs::canonicalize(&dir).map_err(|e| Error::io("resolve", &dir, e))?;
        let (lock, stale_lock) = match ranks.is_root() {
            true => {
                let (lock, stale) = lock::RunLock::acquire(&path)?;
                (Some(lock), stale)
            }
            false => (None, None),
        };
        Ok(Directory {
            path,
            existed,
            lock,
            stale_lock,
        })
    }

    /// Global rank 0 moves the loose files of an earlier run into `run_<N>/` (unless the run is
    /// `completed` and will write none); in a group, no rank goes on (to open its log files)
    /// before that is done.
    fn move_earlier_run(
        &self,
        dir: &Path,
        ranks: RankInfo,
        group: Option<&SharedCoordinator>,
        completed: bool,
    ) -> Result<Option<PathBuf>> {
        let copied: Vec<String> = self
            .files_to_copy
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
            .collect();
        let previous_run = match ranks.is_root() && !completed {
            true => files::move_earlier_run(dir, &copied),
            false => Ok(None),
        };
        if let Some(c) = group {
            c.barrier()?;
        }
        previous_run
    }

    /// This rank's log files, unless a rank-0-only knob silences it or a global subscriber
    /// without [`logs::log_files_layer`] is set (said at INFO).
    fn open_log_files(&self, dir: &Path, ranks: RankInfo) -> Result<Option<logs::LogFiles>> {
        let local_rank = ranks.local_rank.unwrap_or(0);
        let silenced = (self.log_global_rank_0_only && ranks.rank != 0)
            || (self.log_local_rank_0_only && local_rank != 0);
        if silenced {
            return Ok(None);
        }
        if !logs::ensure_subscriber() {
            tracing::info!(
                "a global tracing subscriber without waypoint::experiment::log_files_layer() is set: no per-rank log files are written"
            );
            return Ok(None);
        }
        logs::LogFiles::open(dir, ranks.rank, local_rank).map(Some)
    }

    /// The setup's log lines: a stale lock taken over, a reused `explicit_log_dir`, the
    /// directory and where its version came from, an earlier run moved.
    fn report(
        &self,
        dir: &Directory,
        version: Option<&str>,
        source: VersionSource,
        ranks: RankInfo,
        previous_run: &Option<PathBuf>,
    ) {
        let path = dir.path.display();
        if let Some(holder) = &dir.stale_lock {
            tracing::warn!(dir = %path, "took over the stale lock of a run that died ({holder})");
        }
        if self.explicit_log_dir.is_some() && dir.existed {
            tracing::info!(dir = %path, "explicit_log_dir exists already: reusing it");
        }
        tracing::info!(
            dir = %path,
            version = version.unwrap_or(""),
            from = source_text(source),
            global_rank = ranks.rank,
            local_rank = ranks.local_rank.unwrap_or(0),
            "experiment directory"
        );
        if let Some(p) = previous_run {
            tracing::info!(dir = %p.display(), "moved the files of an earlier run here");
        }
    }

    /// `cmd-args.log`, `git-info.log`, `hparams.yaml` and the copies (global rank 0).
    fn write_run_files(&self, dir: &Path) -> Result<()> {
        let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
        files::write(dir, CMD_ARGS_FILE, files::cmd_args(args).as_bytes())?;
        files::write(dir, GIT_INFO_FILE, files::git_info(&cwd()).as_bytes())?;
        if let Some(hparams) = &self.hparams {
            let text = context::yaml("hparams", hparams)?;
            files::write(dir, HPARAMS_FILE, text.as_bytes())?;
        }
        files::copy_files(dir, &self.files_to_copy)?;
        Ok(())
    }

    /// The signal handlers that set the run's preemption flag, unless no signal is asked for.
    fn register_preemption(&self) -> Result<Option<signals::Preemption>> {
        match self.preemption_signals.is_empty() {
            true => Ok(None),
            false => signals::Preemption::register(&self.preemption_signals).map(Some),
        }
    }

    /// What the run is built from: the settings with the version chosen (with
    /// `explicit_log_dir`: the directory as the root, no version, checkpoints in
    /// `<dir>/checkpoints` unless `dirpath` says otherwise), the flag, the loggers, the ranks.
    fn run_spec(
        &self,
        version_dir: &Path,
        version: Option<String>,
        ranks: RankInfo,
        preemption: Option<&signals::Preemption>,
    ) -> Result<RunSpec> {
        let mut config = self.config.clone();
        let mut checkpoint = match config.checkpoint.take() {
            Some(c) => c,
            None => ModelCheckpoint::builder().build()?,
        };
        config.version = version;
        if self.explicit_log_dir.is_some() {
            if checkpoint.dirpath().is_none() {
                let dirpath = version_dir.join("checkpoints");
                let dirpath = dirpath.to_str().ok_or_else(|| Error::InvalidArgument {
                    name: "explicit_log_dir",
                    reason: format!("{} is not valid UTF-8", dirpath.display()),
                })?;
                checkpoint = checkpoint.with_dirpath(dirpath.to_owned());
            }
            config.log_dir = version_dir.to_path_buf();
            config.version = None;
        }
        config.checkpoint = Some(checkpoint);
        Ok(RunSpec {
            loggers: self.logger_spec(version_dir, config.version.clone(), ranks),
            config,
            preemption: preemption.map(|p| p.flag().clone()),
            coordinator: self.coordinator.clone(),
        })
    }

    /// The loggers' knobs, with the directory they write into and the run's names.
    fn logger_spec(
        &self,
        version_dir: &Path,
        version: Option<String>,
        ranks: RankInfo,
    ) -> LoggerSpec {
        LoggerSpec {
            dir: match self.update_logger_directory {
                true => version_dir.to_path_buf(),
                false => self.config.log_dir.clone(),
            },
            tensorboard: self.tensorboard,
            csv: self.csv,
            mlflow: self.mlflow.clone(),
            wandb_offline: self.wandb_offline,
            experiment: self.config.name.clone(),
            run_name: version.unwrap_or_else(|| self.config.name.clone()),
            version_dir: version_dir.to_path_buf(),
            git_commit: self.mlflow.as_ref().and_then(|_| files::git_commit(&cwd())),
            hparams: self.hparams.clone(),
            global_rank: ranks.rank,
            objects: self.loggers.clone(),
        }
    }
}

/// Where a run of `config` would resume, read without creating or removing anything: the
/// knobs the run checks first, then AutoResume's choice (over an empty directory when the local
/// checkpoints directory does not exist yet).
fn peek_resume_point(config: &RunConfig, resume: &AutoResume) -> Result<Option<ResumePoint>> {
    config.check()?;
    let checkpoint = match &config.checkpoint {
        Some(c) => c.clone(),
        None => ModelCheckpoint::builder().build()?,
    };
    Policy::new(checkpoint.clone(), config.name.clone())?;
    let (dirpath, storage): (PathBuf, SharedStorage) = match checkpoint.dirpath() {
        Some(url) if is_url(url) => (
            PathBuf::from(url.trim_end_matches('/')),
            open_location(url)?,
        ),
        dirpath => {
            let dirpath = dirpath.map_or_else(
                || config.experiment_dir().join("checkpoints"),
                PathBuf::from,
            );
            let storage: SharedStorage = match dirpath.is_dir() {
                true => local_storage(&dirpath)?,
                false => Arc::new(FsStorage::new(Arc::new(MemoryFs::new()))),
            };
            (dirpath, storage)
        }
    };
    choose(resume, &storage, &dirpath)
}

/// The working directory (`.` when it cannot be read), where git is asked about the work tree.
fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn source_text(source: VersionSource) -> &'static str {
    match source {
        VersionSource::ExplicitLogDir => "explicit_log_dir",
        VersionSource::Knob => "version",
        VersionSource::Env => VERSION_ENV,
        VersionSource::Resume => "resume_if_exists (no version directory)",
        VersionSource::Datetime => "use_datetime_version",
        VersionSource::None => "none",
        VersionSource::Rank0 => "rank 0",
    }
}

/// The message of an error, for telling the other ranks.
fn clone_error(e: &Error) -> Error {
    Error::InvalidArgument {
        name: "version",
        reason: e.to_string(),
    }
}
