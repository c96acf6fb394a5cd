//! [`Restorer`]: a burn module (and its optimizer and LR scheduler) as the target of waypoint's
//! [`waypoint::Run::restore`], loaded in place: checkpoint bytes go into staging buffers typed
//! like the module's parameters, then into the module through burn-store's `apply` (param ids
//! included), and the optimizer's and scheduler's records are put back together from the
//! checkpoint's tensors and trainer state.
//!
//! It owns the load side only: saving goes through [`crate::Snapshot`]; choosing the checkpoint
//! is waypoint's AutoResume.

use crate::dtype::{to_burn, to_waypoint};
use crate::error::{Error, Result};
use crate::snapshot::{BURN_STATE_KEY, OPTIM_PREFIX, USER_STATE_KEY};
use crate::tensors::{Owned, Record, scalars_from_json};
use burn::lr_scheduler::LrSchedulerRecord;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleSnapshot;
use burn::tensor::{Bytes, DType};
use serde_json::Value;
use waypoint::engine::Checkpointer;
use waypoint::storage::{StoragePath, open_dir};
use waypoint::{Checkpointable, Dtype, Run, SinkSlot, serde_json};

/// One staging buffer: a tensor's name, dtypes on both sides, shape and bytes.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    dtype: Dtype,
    burn: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl Slot {
    pub(crate) fn new(name: String, dtype: Dtype, burn: DType, shape: Vec<u64>) -> Result<Self> {
        let elements = shape.iter().product::<u64>();
        let len = dtype
            .byte_len(elements)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::Mismatch {
                tensor: name.clone(),
                expected: "a tensor that fits in memory".into(),
                found: format!("{} {:?}", dtype.name(), shape),
            })?;
        Ok(Slot {
            name,
            dtype,
            burn,
            shape,
            data: vec![0; len],
        })
    }

    pub(crate) fn sink(&mut self) -> SinkSlot<'_> {
        SinkSlot {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            data: &mut self.data,
        }
    }

    pub(crate) fn into_owned(self, name: String, param_id: Option<u64>) -> Owned {
        Owned {
            name,
            dtype: self.dtype,
            shape: self.shape,
            bytes: Bytes::from_bytes_vec(self.data),
            param_id,
        }
    }
}

/// Restores a burn module's parameters and buffers, and optionally an optimizer's and an LR
/// scheduler's state, from the checkpoint a [`waypoint::Run`] resumes from. Pass it to
/// [`waypoint::Run::restore`]; then [`Restorer::trainer_state`] holds the loop's own state.
///
/// Every parameter is checked by name, dtype and shape (an error names the tensor); the
/// module's param ids become the checkpoint's, so that the optimizer's state (keyed by them)
/// finds its parameters. A weights-only checkpoint restores the module and leaves the optimizer
/// as it is.
///
/// The optimizer's tensors are known only from the checkpoint (a fresh optimizer has no state
/// yet), so [`Restorer::new`] reads the resume checkpoint's commit record once more; this works
/// for checkpoints on a file system (a `Run` on object storage restores the module, and the
/// optimizer only through burn-train's checkpointers, see docs/BURN.md).
pub struct Restorer<'a, M: Module> {
    module: &'a mut M,
    model: Vec<Slot>,
    /// The checkpoint's optimizer tensors (name, dtype, shape), from its commit record.
    saved_optim: Vec<(String, Dtype, Vec<u64>)>,
    optimizer: Option<(&'a mut ModuleOptimizer, Vec<Slot>)>,
    scheduler: Option<&'a mut ModuleLrScheduler>,
    trainer_state: Option<Value>,
}

impl<M: Module> std::fmt::Debug for Restorer<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("model", &self.model)
            .field("optimizer", &self.optimizer.as_ref().map(|(_, s)| s))
            .field("scheduler", &self.scheduler.is_some())
            .finish()
    }
}

impl<'a, M: Module> Restorer<'a, M> {
    /// Restores `module` from the checkpoint `run` resumes from (if any). Allocates one staging
    /// buffer per parameter now, so that a load never fails for want of one half-way.
    pub fn new(run: &Run, module: &'a mut M) -> Result<Self> {
        let mut model = Vec::new();
        for t in module.collect(None, None, false) {
            let dtype = to_waypoint(t.dtype).ok_or_else(|| Error::UnsupportedDtype {
                tensor: t.name.clone(),
                dtype: format!("{:?}", t.dtype),
            })?;
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            model.push(Slot::new(t.name, dtype, t.dtype, shape)?);
        }
        Ok(Restorer {
            module,
            model,
            saved_optim: saved_optimizer_tensors(run)?,
            optimizer: None,
            scheduler: None,
            trainer_state: None,
        })
    }

    /// Also restores `optimizer`'s state (moments, step counts), when the checkpoint has it.
    pub fn with_optimizer(mut self, optimizer: &'a mut ModuleOptimizer) -> Result<Self> {
        let mut slots = Vec::new();
        for (name, dtype, shape) in &self.saved_optim {
            let burn = to_burn(*dtype).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.clone(),
                dtype: dtype.name().to_owned(),
            })?;
            slots.push(Slot::new(name.clone(), *dtype, burn, shape.clone())?);
        }
        self.optimizer = Some((optimizer, slots));
        Ok(self)
    }

    /// Also restores `scheduler`'s position, when the checkpoint has it.
    pub fn with_scheduler(mut self, scheduler: &'a mut ModuleLrScheduler) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// The loop's trainer state the checkpoint was saved with, once restored (`None` before,
    /// or when the run started from scratch).
    pub fn trainer_state(&self) -> Option<&Value> {
        self.trainer_state.as_ref()
    }

    /// Puts the staged tensors into the module (param ids from `burn`), checked by burn-store.
    fn apply_model(&mut self, burn: &Value) -> Result<()> {
        let ids = &burn["param_ids"];
        let tensors = std::mem::take(&mut self.model)
            .into_iter()
            .map(|slot| {
                let id = ids.get(&slot.name).and_then(Value::as_u64);
                let dtype = slot.burn;
                let name = slot.name.clone();
                slot.into_owned(name, id).into_pack(dtype)
            })
            .collect();
        let result = self.module.apply(tensors, None, None, false);
        if let Some(e) = result.errors.first() {
            return Err(Error::burn("model", format!("{e:?}")));
        }
        if let Some((path, _)) = result.missing.first() {
            return Err(Error::Mismatch {
                tensor: path.clone(),
                expected: "a parameter".into(),
                found: "none".into(),
            });
        }
        Ok(())
    }
}

/// The optimizer tensors (name, dtype, shape) of the checkpoint `run` resumes from.
fn saved_optimizer_tensors(run: &Run) -> Result<Vec<(String, Dtype, Vec<u64>)>> {
    saved_tensors(run, |name| name.starts_with(OPTIM_PREFIX))
}

/// The tensors (name, dtype, shape) of the checkpoint `run` resumes from whose names `keep`
/// accepts (none when it starts from scratch).
pub(crate) fn saved_tensors(
    run: &Run,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Dtype, Vec<u64>)>> {
    let Some(point) = run.resume_point() else {
        return Ok(Vec::new());
    };
    let Some(parent) = point.path.parent() else {
        return Ok(Vec::new());
    };
    let reader = Checkpointer::new(open_dir(parent)?).open(&StoragePath::new(&point.name)?)?;
    Ok(reader
        .record()
        .tensors
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, t)| (name.clone(), t.dtype, t.shape.clone()))
        .collect())
}

/// The optimizer record saved beside `slots` (their record names and param ids in `state`).
pub(crate) fn optimizer_record(slots: Vec<Slot>, state: &Value) -> Result<OptimizerRecord> {
    let key = "burn.optimizer";
    let names = state["tensors"].as_object();
    let mut record = Record {
        scalars: scalars_from_json(key, &state["scalars"])?,
        ..Record::default()
    };
    for slot in slots {
        let entry = names
            .and_then(|n| n.get(&slot.name))
            .ok_or_else(|| Error::state(key, format!("no entry for tensor {}", slot.name)))?;
        let name = entry["record"].as_str().map(str::to_owned);
        let name = name.ok_or_else(|| Error::state(key, format!("{}: no name", slot.name)))?;
        let id = entry["param_id"].as_u64();
        record.tensors.push(slot.into_owned(name, id));
    }
    if let Some(metadata) = state["metadata"].as_object() {
        for (k, v) in metadata {
            let v = v.as_str().ok_or_else(|| Error::state(key, "metadata"))?;
            record.metadata.insert(k.clone(), v.to_owned());
        }
    }
    let bytes = record.write("optimizer")?;
    OptimizerRecord::from_bytes(bytes).map_err(|e| Error::burn("optimizer", e))
}

/// The scheduler record saved in `state`.
pub(crate) fn scheduler_record(state: &Value) -> Result<LrSchedulerRecord> {
    let record = Record {
        scalars: scalars_from_json("burn.scheduler", &state["scalars"])?,
        ..Record::default()
    };
    let bytes = record.write("scheduler")?;
    LrSchedulerRecord::from_bytes(bytes).map_err(|e| Error::burn("scheduler", e))
}

impl<M: Module> Checkpointable for Restorer<'_, M> {
    fn model_tensors(&self) -> Vec<waypoint::TensorRef<'_>> {
        Vec::new()
    }

    fn trainer_state(&self) -> Value {
        Value::Null
    }

    fn restore_slots(&mut self) -> Vec<SinkSlot<'_>> {
        let mut slots: Vec<SinkSlot<'_>> = self.model.iter_mut().map(Slot::sink).collect();
        if let Some((_, optim)) = &mut self.optimizer {
            slots.extend(optim.iter_mut().map(Slot::sink));
        }
        slots
    }

    fn restore_trainer_state(&mut self, mut state: Value) -> waypoint::Result<()> {
        let burn = state
            .get_mut(BURN_STATE_KEY)
            .map(Value::take)
            .ok_or_else(|| Error::state(BURN_STATE_KEY, "missing"))?;
        self.apply_model(&burn)?;
        if let Some((optimizer, slots)) = self.optimizer.take()
            && !slots.is_empty()
        {
            let record = optimizer_record(slots, &burn["optimizer"])?;
            *optimizer = optimizer.clone().load_record(record);
        }
        if let Some(scheduler) = self.scheduler.take()
            && burn.get("scheduler").is_some()
        {
            *scheduler = scheduler
                .clone()
                .load_record(scheduler_record(&burn["scheduler"])?);
        }
        let user = state.get_mut(USER_STATE_KEY).map(Value::take);
        self.trainer_state = Some(user.unwrap_or(Value::Null));
        Ok(())
    }
}
