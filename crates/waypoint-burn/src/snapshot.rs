//! [`Snapshot`]: a burn training state (module, optimizer record, LR scheduler record, the
//! loop's own state) as waypoint's [`Checkpointable`], for one save call.
//!
//! It must not restore or save anything itself: the saving is waypoint's, and restoring into
//! it is refused (loading goes through [`crate::Restorer`]). The names it gives are fixed here:
//! module tensors under burn's module paths, optimizer state under [`OPTIM_PREFIX`], the rest
//! of burn's records in the trainer state under [`BURN_STATE_KEY`].

use crate::error::{Error, Result};
use crate::tensors::{Owned, Record, module_tensors, scalars_to_json};
use burn::lr_scheduler::LrSchedulerRecord;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use waypoint::{Checkpointable, SinkSlot, TensorRef, serde_json};

/// The prefix of the optimizer's state tensors in a checkpoint: burn's record names
/// (`<param id>.<field>`) with the param id replaced by the parameter's module path, so that
/// Adam's first moment of `fc.weight` is `optim.fc.weight.momentum.moment_1`.
pub const OPTIM_PREFIX: &str = "optim.";

/// The key of burn's own state in the checkpoint's trainer state (param ids, the optimizer's
/// and the scheduler's scalars); the loop's state is beside it under [`USER_STATE_KEY`].
pub const BURN_STATE_KEY: &str = "burn";

/// The key of the loop's own trainer state (what [`Snapshot::of`] was given).
pub const USER_STATE_KEY: &str = "user";

/// What one save call writes: a module's parameters and buffers, the optimizer's and LR
/// scheduler's records, and the loop's trainer state (step, RNG, data position…).
///
/// Build it inside [`waypoint::Run::step_end_with`], so that it is built only when a save is
/// due: the tensors are read out of burn then (one copy, see the crate's documentation) and
/// lent to the save without another.
///
/// The crate's documentation has a whole loop.
#[derive(Debug)]
pub struct Snapshot {
    model: Vec<Owned>,
    optimizer: Vec<Owned>,
    burn: Map<String, Value>,
    user: Value,
}

impl Snapshot {
    /// A snapshot of `module`'s parameters and buffers (by burn's module paths, with their
    /// param ids) and `trainer_state`.
    pub fn of<M: Module>(module: &M, trainer_state: Value) -> Result<Self> {
        Self::from_tensors(module_tensors(module)?, trainer_state)
    }

    /// A snapshot of a module record (burn-train hands its checkpointers these) and
    /// `trainer_state`.
    pub fn of_record(record: ModuleRecord, trainer_state: Value) -> Result<Self> {
        let bytes = record.into_bytes().map_err(|e| Error::burn("model", e))?;
        Self::from_tensors(Record::read(bytes, "model")?.tensors, trainer_state)
    }

    fn from_tensors(model: Vec<Owned>, trainer_state: Value) -> Result<Self> {
        let mut names = BTreeSet::new();
        let mut ids = Map::new();
        for t in &model {
            if t.name.starts_with(OPTIM_PREFIX) || !names.insert(t.name.as_str()) {
                return Err(Error::DuplicateName {
                    tensor: t.name.clone(),
                });
            }
            if let Some(id) = t.param_id {
                ids.insert(t.name.clone(), json!(id));
            }
        }
        let mut burn = Map::new();
        burn.insert("param_ids".into(), Value::Object(ids));
        Ok(Snapshot {
            model,
            optimizer: Vec::new(),
            burn,
            user: trainer_state,
        })
    }

    /// Adds the optimizer's state (`to_record`: Adam's moments, step counts, ranks).
    pub fn with_optimizer(self, optimizer: &ModuleOptimizer) -> Result<Self> {
        self.with_optimizer_record(optimizer.to_record())
    }

    /// Adds an optimizer record (burn-train hands its checkpointers these).
    pub fn with_optimizer_record(mut self, record: OptimizerRecord) -> Result<Self> {
        let bytes = record
            .into_bytes()
            .map_err(|e| Error::burn("optimizer", e))?;
        let record = Record::read(bytes, "optimizer")?;
        let mut tensors = Map::new();
        for mut t in record.tensors {
            let name = OPTIM_PREFIX.to_owned() + &by_path(&t, &record.metadata);
            tensors.insert(
                name.clone(),
                json!({ "record": t.name, "param_id": t.param_id }),
            );
            t.name = name;
            self.optimizer.push(t);
        }
        let metadata: Map<String, Value> = record
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        self.burn.insert(
            "optimizer".into(),
            json!({
                "tensors": tensors,
                "scalars": scalars_to_json(&record.scalars),
                "metadata": metadata,
            }),
        );
        Ok(self)
    }

    /// Adds an LR scheduler's state (`to_record`: its position), as burn's schedulers are built
    /// (`CosineAnnealingLrSchedulerConfig::init`…). A bare [`burn::lr_scheduler::LrScheduler`]
    /// goes through [`Snapshot::with_scheduler_record`].
    pub fn with_scheduler(self, scheduler: &ModuleLrScheduler) -> Result<Self> {
        self.with_scheduler_record(scheduler.to_record())
    }

    /// Adds an LR scheduler record (burn-train hands its checkpointers these).
    pub fn with_scheduler_record(mut self, record: LrSchedulerRecord) -> Result<Self> {
        let bytes = record
            .into_bytes()
            .map_err(|e| Error::burn("scheduler", e))?;
        let record = Record::read(bytes, "scheduler")?;
        self.burn.insert(
            "scheduler".into(),
            json!({ "scalars": scalars_to_json(&record.scalars) }),
        );
        Ok(self)
    }

    /// The tensors' names and bytes, model then optimizer (for hashing a training state).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.model
            .iter()
            .chain(&self.optimizer)
            .map(|t| (t.name.as_str(), &t.bytes[..]))
    }
}

/// An optimizer record tensor's name with its param id replaced by the parameter's module path
/// (`<id>.momentum.moment_1` → `fc.weight.momentum.moment_1`); unchanged where the record has no
/// path for it.
fn by_path(t: &Owned, paths: &std::collections::BTreeMap<String, String>) -> String {
    let Some(id) = t.param_id.map(|id| id.to_string()) else {
        return t.name.clone();
    };
    match (t.name.strip_prefix(&id), paths.get(&id)) {
        (Some(rest), Some(path)) if rest.starts_with('.') => format!("{path}{rest}"),
        _ => t.name.clone(),
    }
}

impl Checkpointable for Snapshot {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        self.model.iter().map(Owned::tensor_ref).collect()
    }

    fn optimizer_tensors(&self) -> Vec<TensorRef<'_>> {
        self.optimizer.iter().map(Owned::tensor_ref).collect()
    }

    fn trainer_state(&self) -> Value {
        json!({ USER_STATE_KEY: self.user, BURN_STATE_KEY: self.burn })
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        Vec::new()
    }

    fn restore_trainer_state(&mut self, _state: Value) -> waypoint::Result<()> {
        Err(waypoint::Error::InvalidArgument {
            name: "waypoint_burn::Snapshot",
            reason: "a snapshot is for saving; restore with waypoint_burn::Restorer".into(),
        })
    }
}
