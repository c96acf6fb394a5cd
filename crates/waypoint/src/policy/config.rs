//! The checkpoint configuration: [`ModelCheckpoint`], NeMo's knobs with NeMo's defaults, validated
//! once by [`ModelCheckpointBuilder::build`] so that nothing downstream meets a misconfiguration.
//! Owns the knobs and their validation; decides nothing (see `decide`).

use super::knobs::{MissingMonitor, Mode, PendingFull, SaveLast, Trigger};
use super::naming::render_segments;
use super::template::{self, Segment};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// The validated checkpoint configuration, NeMo's `ModelCheckpoint` knobs. Build it with
/// [`ModelCheckpoint::builder`]; it cannot be changed afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCheckpoint {
    monitor: Option<String>,
    mode: Mode,
    save_top_k: i64,
    save_last: SaveLast,
    trigger: Trigger,
    save_on_train_epoch_end: bool,
    save_weights_only: bool,
    save_optim_on_train_end: bool,
    always_save_context: bool,
    save_context_on_train_end: bool,
    dirpath: Option<String>,
    filename: String,
    template: Vec<Segment>,
    auto_insert_metric_name: bool,
    enable_version_counter: bool,
    async_save: bool,
    max_pending_saves: usize,
    when_pending_full: PendingFull,
    max_to_keep: Option<usize>,
    keep_every_n_steps: Option<u64>,
    keep_time_interval: Option<Duration>,
    on_missing_monitor: MissingMonitor,
    /// The filename was not set: NeMo's default, which adds `-{consumed_samples}` when the
    /// trainer reports it.
    default_filename: bool,
}

impl ModelCheckpoint {
    /// A builder holding NeMo's defaults: monitor `val_loss`, mode min, save_top_k 3, save_last
    /// true, every epoch, filename `"{name}--{val_loss:.4f}-{epoch}-{step}"`.
    ///
    /// ```
    /// use waypoint::{ModelCheckpoint, Mode, SaveLast};
    ///
    /// let checkpoint = ModelCheckpoint::builder()
    ///     .monitor("val_loss")
    ///     .mode(Mode::Min)
    ///     .save_top_k(2)
    ///     .save_last(SaveLast::Yes)
    ///     .every_n_train_steps(30)
    ///     .build()?;
    /// assert_eq!(checkpoint.every_n_train_steps(), Some(30));
    /// assert_eq!(checkpoint.every_n_epochs(), None);
    /// assert_eq!(checkpoint.filename(), "{name}--{val_loss:.4f}-{epoch}-{step}");
    ///
    /// // Misconfigurations are refused when building, naming the knob.
    /// let err = ModelCheckpoint::builder().no_monitor().save_top_k(3).build().unwrap_err();
    /// assert!(err.to_string().contains("save_top_k"));
    /// # Ok::<(), waypoint::Error>(())
    /// ```
    pub fn builder() -> ModelCheckpointBuilder {
        ModelCheckpointBuilder::default()
    }

    /// The monitored metric, if any.
    pub fn monitor(&self) -> Option<&str> {
        self.monitor.as_deref()
    }
    /// Whether lower or higher monitored values are better.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// How many ranked checkpoints to keep: -1 all, 0 none, k the k best.
    pub fn save_top_k(&self) -> i64 {
        self.save_top_k
    }
    /// Whether a `-last` checkpoint is kept, and whether as a link.
    pub fn save_last(&self) -> SaveLast {
        self.save_last
    }
    /// The resolved trigger (every epoch when none was set).
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }
    /// `Some(n)` when saving every n optimizer steps.
    pub fn every_n_train_steps(&self) -> Option<u64> {
        match self.trigger {
            Trigger::EveryNTrainSteps(n) => Some(n),
            _ => None,
        }
    }
    /// `Some(n)` when saving every n epochs (`Some(1)` when no trigger was set).
    pub fn every_n_epochs(&self) -> Option<u64> {
        match self.trigger {
            Trigger::EveryNEpochs(n) => Some(n),
            _ => None,
        }
    }
    /// `Some(d)` when saving at the first step end after `d` of training time.
    pub fn train_time_interval(&self) -> Option<Duration> {
        match self.trigger {
            Trigger::TrainTimeInterval(d) => Some(d),
            _ => None,
        }
    }
    /// Epoch-triggered saves happen at train-epoch end (true) or at validation end (false).
    pub fn save_on_train_epoch_end(&self) -> bool {
        self.save_on_train_epoch_end
    }
    /// Every save holds the weights only (no optimizer state).
    pub fn save_weights_only(&self) -> bool {
        self.save_weights_only
    }
    /// Whether the save at train end keeps the optimizer state (NeMo: false, weights only).
    pub fn save_optim_on_train_end(&self) -> bool {
        self.save_optim_on_train_end
    }
    /// Whether every checkpoint gets its `context/` directory.
    pub fn always_save_context(&self) -> bool {
        self.always_save_context
    }
    /// Whether the context is written at train end.
    pub fn save_context_on_train_end(&self) -> bool {
        self.save_context_on_train_end
    }
    /// The checkpoint directory, or `None` for `<log_dir>/<name>/<version>/checkpoints`.
    pub fn dirpath(&self) -> Option<&str> {
        self.dirpath.as_deref()
    }
    /// The filename template (NeMo's default when none was set).
    pub fn filename(&self) -> &str {
        &self.filename
    }
    /// Whether placeholders render as `key=value` rather than the bare value.
    pub fn auto_insert_metric_name(&self) -> bool {
        self.auto_insert_metric_name
    }
    /// Whether a name collision gets a `-vN` suffix (otherwise the save replaces the checkpoint
    /// of that name atomically, or is refused where the storage cannot).
    pub fn enable_version_counter(&self) -> bool {
        self.enable_version_counter
    }
    /// Whether saves run in the background (default true, NeMo's `ckpt_async_save`).
    pub fn async_save(&self) -> bool {
        self.async_save
    }
    /// How many saves may be in flight at once (default 1).
    pub fn max_pending_saves(&self) -> usize {
        self.max_pending_saves
    }
    /// What a save does when `max_pending_saves` are already in flight (default `Wait`).
    pub fn when_pending_full(&self) -> PendingFull {
        self.when_pending_full
    }
    /// `Some(n)`: the `n` latest saves are kept, whatever their rank (Orbax's `max_to_keep`
    /// without a `best_fn`), alongside the top-k.
    pub fn max_to_keep(&self) -> Option<usize> {
        self.max_to_keep
    }
    /// `Some(n)`: a save at a step that is a multiple of `n` is kept for good (Orbax's
    /// `keep_period`).
    pub fn keep_every_n_steps(&self) -> Option<u64> {
        self.keep_every_n_steps
    }
    /// `Some(d)`: a save at least `d` of the run's clock after the previous one kept this way
    /// (the first save included) is kept for good (Orbax's `keep_time_interval`).
    pub fn keep_time_interval(&self) -> Option<Duration> {
        self.keep_time_interval
    }
    /// What the run does when validations ran but the monitor was never reported.
    pub fn on_missing_monitor(&self) -> MissingMonitor {
        self.on_missing_monitor
    }
    /// Whether the filename is NeMo's default (it then ends in `-consumed_samples=<n>` at steps
    /// where the trainer reports a metric `consumed_samples`).
    pub fn uses_default_filename(&self) -> bool {
        self.default_filename
    }
    /// The same policy with checkpoints in `dirpath` (ExperimentLogger's `explicit_log_dir`).
    pub(crate) fn with_dirpath(mut self, dirpath: String) -> Self {
        self.dirpath = Some(dirpath);
        self
    }
    /// The parsed filename template.
    pub(crate) fn template(&self) -> &[Segment] {
        &self.template
    }
}

/// Builds a [`ModelCheckpoint`]; one setter per NeMo knob, NeMo's defaults for the rest.
#[derive(Debug, Clone)]
pub struct ModelCheckpointBuilder {
    monitor: Option<String>,
    mode: Mode,
    save_top_k: i64,
    save_last: SaveLast,
    every_n_train_steps: Option<u64>,
    every_n_epochs: Option<u64>,
    train_time_interval: Option<Duration>,
    save_on_train_epoch_end: bool,
    save_weights_only: bool,
    save_optim_on_train_end: bool,
    always_save_context: bool,
    save_context_on_train_end: bool,
    dirpath: Option<String>,
    filename: Option<String>,
    auto_insert_metric_name: bool,
    enable_version_counter: bool,
    async_save: bool,
    max_pending_saves: usize,
    when_pending_full: PendingFull,
    max_to_keep: Option<usize>,
    keep_every_n_steps: Option<u64>,
    keep_time_interval: Option<Duration>,
    on_missing_monitor: MissingMonitor,
}

impl Default for ModelCheckpointBuilder {
    fn default() -> Self {
        Self {
            monitor: Some("val_loss".to_string()),
            mode: Mode::Min,
            save_top_k: 3,
            save_last: SaveLast::Yes,
            every_n_train_steps: None,
            every_n_epochs: None,
            train_time_interval: None,
            save_on_train_epoch_end: false,
            save_weights_only: false,
            save_optim_on_train_end: false,
            always_save_context: true,
            save_context_on_train_end: true,
            dirpath: None,
            filename: None,
            auto_insert_metric_name: true,
            enable_version_counter: true,
            async_save: true,
            max_pending_saves: 1,
            when_pending_full: PendingFull::Wait,
            max_to_keep: None,
            keep_every_n_steps: None,
            keep_time_interval: None,
            on_missing_monitor: MissingMonitor::Warn,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl ModelCheckpointBuilder {
    /// Ranks checkpoints by this metric (default `val_loss`).
    pub fn monitor(mut self, metric: impl Into<String>) -> Self {
        self.monitor = Some(metric.into());
        self
    }
    /// Monitors nothing: only save_top_k -1, 0 or 1 are then allowed.
    pub fn no_monitor(mut self) -> Self {
        self.monitor = None;
        self
    }
    setter!(/// Lower (`Min`, default) or higher (`Max`) is better.
        mode: Mode);
    setter!(/// -1 keeps every checkpoint, 0 none, k the k best (default 3).
        save_top_k: i64);
    setter!(/// Keep a `-last` checkpoint (default `Yes`), as a link when possible, or none.
        save_last: SaveLast);
    setter!(/// Take epoch-triggered saves at train-epoch end (true) rather than at validation
        /// end (false, the default).
        save_on_train_epoch_end: bool);
    setter!(/// Every save holds the weights only (default false).
        save_weights_only: bool);
    setter!(/// Keep the optimizer state in the train-end save (default false).
        save_optim_on_train_end: bool);
    setter!(/// Write `context/` with every checkpoint (default true).
        always_save_context: bool);
    setter!(/// Write the context at train end (default true).
        save_context_on_train_end: bool);
    setter!(/// Render `key=value` rather than the bare value (default true).
        auto_insert_metric_name: bool);
    setter!(/// Add `-vN` on a name collision (default true). Off, a save whose name is taken
        /// replaces that checkpoint, as NeMo and Lightning overwrite it, but atomically: the new
        /// one takes the name only once it is complete, the old one stays readable until then
        /// and is removed after (local disk and memory; a file system without an atomic
        /// exchange, such as NFS, and object stores refuse the save with an error naming this
        /// knob, keeping the old checkpoint).
        ///
        /// A name is taken when it is on disk, managed by the policy, or reserved by a save
        /// still in flight (`async_save` with `max_pending_saves > 1`): no two saves in flight
        /// are ever given one name. On, a save whose name (or `-last`) a save in flight still
        /// writes gets the next `-vN`; off, it waits for that save to be finalized (whatever
        /// `when_pending_full` says), so the newer one replaces the older, in order. With one
        /// save in flight at a time (the default) the queue is empty when a save is decided, and
        /// the names are NeMo's.
        enable_version_counter: bool);
    setter!(/// Save in the background (default true, as NeMo's `ckpt_async_save`); the training
        /// thread is blocked only while the state is staged. `false` saves synchronously.
        async_save: bool);
    setter!(/// How many asynchronous saves may be in flight at once (default 1); each holds one
        /// staging copy of the state.
        max_pending_saves: usize);
    setter!(/// What a save does when `max_pending_saves` are in flight: `Wait` (default) for the
        /// oldest to finish, or `Skip` this save with a warning.
        when_pending_full: PendingFull);

    setter!(/// What the run does when validations ran but the monitored metric was never
        /// reported: `Warn` once, loudly (default), or fail with an `Error` (Lightning raises).
        on_missing_monitor: MissingMonitor);

    /// Keep the `n` latest saves whatever their rank (Orbax's `max_to_keep`), alongside
    /// `save_top_k`: a save is kept while any rule keeps it. With it, every trigger saves a
    /// checkpoint under its name (not only the `-last`), also when its monitored value is stale.
    pub fn max_to_keep(mut self, n: usize) -> Self {
        self.max_to_keep = Some(n);
        self
    }
    /// Keep for good every save at a step that is a multiple of `n` (Orbax's `keep_period`);
    /// rotation never deletes it. Only steps where a save happens count: choose a multiple of
    /// the trigger's period.
    pub fn keep_every_n_steps(mut self, n: u64) -> Self {
        self.keep_every_n_steps = Some(n);
        self
    }
    /// Keep for good the first save, and each save at least `interval` after the previous one
    /// kept this way (Orbax's `keep_time_interval`), by the run's clock (wall time by default,
    /// so the interval carries across restarts); rotation never deletes them.
    pub fn keep_time_interval(mut self, interval: Duration) -> Self {
        self.keep_time_interval = Some(interval);
        self
    }

    /// Save every `n` optimizer steps (global step a multiple of `n`).
    pub fn every_n_train_steps(mut self, n: u64) -> Self {
        self.every_n_train_steps = Some(n);
        self
    }
    /// Save every `n` epochs.
    pub fn every_n_epochs(mut self, n: u64) -> Self {
        self.every_n_epochs = Some(n);
        self
    }
    /// Save at the first step end after `interval` since the previous time-triggered save.
    pub fn train_time_interval(mut self, interval: Duration) -> Self {
        self.train_time_interval = Some(interval);
        self
    }
    /// The checkpoint directory (default: `<log_dir>/<name>/<version>/checkpoints`).
    pub fn dirpath(mut self, dirpath: impl Into<String>) -> Self {
        self.dirpath = Some(dirpath.into());
        self
    }
    /// The filename template, e.g. `"{name}-{val_loss:.2f}-{step}"`.
    pub fn filename(mut self, template: impl Into<String>) -> Self {
        self.filename = Some(template.into());
        self
    }

    /// Validates the knobs and builds the configuration. Each refusal is an
    /// [`Error::InvalidArgument`] naming the knob and saying why.
    pub fn build(self) -> Result<ModelCheckpoint> {
        let invalid = |name: &'static str, reason: String| Error::InvalidArgument { name, reason };
        if self.save_top_k < -1 {
            return Err(invalid(
                "save_top_k",
                format!(
                    "must be -1 (keep all), 0 (none) or a count, got {}",
                    self.save_top_k
                ),
            ));
        }
        if let Some(m) = &self.monitor
            && (m.is_empty() || m.contains(['{', '}', ':', '\0']))
        {
            return Err(invalid(
                "monitor",
                format!("{m:?} is not a metric name (empty, or holds '{{', '}}', ':' or NUL)"),
            ));
        }
        if self.monitor.is_none() && !(-1..=1).contains(&self.save_top_k) {
            return Err(invalid(
                "save_top_k",
                format!(
                    "save_top_k={} needs a monitor to rank checkpoints by: set a monitor, or use -1 (keep all), 0 (none) or 1 (the newest)",
                    self.save_top_k
                ),
            ));
        }
        let trigger = self.trigger()?;
        if self.max_pending_saves == 0 {
            return Err(invalid(
                "max_pending_saves",
                "must be at least 1 (use async_save(false) for synchronous saves)".to_string(),
            ));
        }
        if let Some(d) = &self.dirpath
            && (d.is_empty() || d.contains('\0'))
        {
            return Err(invalid("dirpath", format!("{d:?} is empty or holds NUL")));
        }
        if self.max_to_keep == Some(0) {
            return Err(invalid(
                "max_to_keep",
                "must be at least 1 (leave it unset to keep no latest saves beyond the top-k and -last)"
                    .to_string(),
            ));
        }
        if self.keep_every_n_steps == Some(0) {
            return Err(invalid(
                "keep_every_n_steps",
                "must be at least 1 (leave it unset to disable it)".to_string(),
            ));
        }
        if self.keep_time_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "keep_time_interval",
                "must be more than zero (leave it unset to disable it)".to_string(),
            ));
        }
        let default_filename = self.filename.is_none();
        let filename = self
            .filename
            .unwrap_or_else(|| super::naming::default_filename(self.monitor.as_deref()));
        let template = template::parse(&filename)?;
        // A trial render catches templates that can never give a valid name (".{step}").
        render_segments(
            &template,
            "x",
            &BTreeMap::new(),
            0,
            0,
            self.auto_insert_metric_name,
        )?;
        Ok(ModelCheckpoint {
            monitor: self.monitor,
            mode: self.mode,
            save_top_k: self.save_top_k,
            save_last: self.save_last,
            trigger,
            save_on_train_epoch_end: self.save_on_train_epoch_end,
            save_weights_only: self.save_weights_only,
            save_optim_on_train_end: self.save_optim_on_train_end,
            always_save_context: self.always_save_context,
            save_context_on_train_end: self.save_context_on_train_end,
            dirpath: self.dirpath,
            filename,
            template,
            auto_insert_metric_name: self.auto_insert_metric_name,
            enable_version_counter: self.enable_version_counter,
            async_save: self.async_save,
            max_pending_saves: self.max_pending_saves,
            when_pending_full: self.when_pending_full,
            max_to_keep: self.max_to_keep,
            keep_every_n_steps: self.keep_every_n_steps,
            keep_time_interval: self.keep_time_interval,
            on_missing_monitor: self.on_missing_monitor,
            default_filename,
        })
    }

    fn trigger(&self) -> Result<Trigger> {
        let zero = |name: &'static str| Error::InvalidArgument {
            name,
            reason: "must be at least 1 (leave it unset to disable it)".to_string(),
        };
        let set = [
            self.every_n_train_steps
                .map(|n| ("every_n_train_steps", Trigger::EveryNTrainSteps(n), n == 0)),
            self.every_n_epochs
                .map(|n| ("every_n_epochs", Trigger::EveryNEpochs(n), n == 0)),
            self.train_time_interval.map(|d| {
                (
                    "train_time_interval",
                    Trigger::TrainTimeInterval(d),
                    d.is_zero(),
                )
            }),
        ];
        let mut set = set.into_iter().flatten();
        let first = set.next();
        if let (Some((a, ..)), Some((b, ..))) = (first, set.next()) {
            return Err(Error::InvalidArgument {
                name: a,
                reason: format!(
                    "{a} and {b} are both set; every_n_train_steps, every_n_epochs and train_time_interval are mutually exclusive"
                ),
            });
        }
        match first {
            None => Ok(Trigger::EveryNEpochs(1)),
            Some((name, _, true)) => Err(zero(name)),
            Some((_, trigger, false)) => Ok(trigger),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
