//! `ckpt-train` and `ckpt-load`: checkpoints written by every rank of a real MPI job.
//!
//! - `ckpt-train <dir> <until> [fail|abort <rank> | fail-at <rank> <step>]`: every rank builds a
//!   `Run` on `<dir>` (resume if a checkpoint is there) with the MPI coordinator and asynchronous
//!   saves every 2 steps, and trains up to step `<until>`. With `fail <rank>` that rank's storage
//!   fails the first write of the last save; with `abort <rank>` that rank's process aborts there
//!   (a killed rank); with `fail-at <rank> <step>` that rank's writes of the step-`<step>` save
//!   fail while training goes on, so the failure surfaces at a later call. Prints
//!   `resumed=<step|none> final=<step> consistent=<bool>`, or `error_rank=<rank>
//!   error_step=<the step of the call that returned the error>`. `WAYPOINT_HARNESS_MAX_PENDING`
//!   sets `max_pending_saves` (default 1).
//! - `ckpt-load <dir> <name>`: every rank loads its rows of checkpoint `<name>` (saved by any
//!   number of ranks) and prints `step=<step> saved_by=<world> consistent=<bool>`.
//!
//! It owns the injected faults (a storage wrapper that fails or aborts writes) and the run's
//! configuration. It must not save, resume or agree across ranks on its own: `Run` and the
//! coordinator do, and the state and its consistency check are `shard.rs`'s.

use super::shard::Shard;
use crate::report::Ctx;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use waypoint::dist::{Coordinator, SharedCoordinator};
use waypoint::storage::{CountingStorage, SharedStorage, StorageOp, StoragePath, local_storage};
use waypoint::{AutoResume, Checkpointer, ModelCheckpoint, Run};

/// `inner` behind a hook that, once `armed`, fails (or, with `abort`, aborts the process at)
/// every write: a fault a real disk does not produce on demand.
fn armed_storage(inner: SharedStorage, armed: Arc<AtomicBool>, abort: bool) -> SharedStorage {
    Arc::new(CountingStorage::new(inner).with_fault_hook(move |op| {
        if op.kind != StorageOp::Write || !armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if abort {
            eprintln!("mpi-harness: aborting in the middle of a save, as a killed rank");
            std::process::abort();
        }
        Err(waypoint::Error::InvalidArgument {
            name: "harness",
            reason: "injected write failure".into(),
        })
    }))
}

/// `inner` behind a hook that fails every write of the checkpoint saved at `step` (its temporary
/// `.<name>.waypoint-tmp-…` included), and nothing else.
fn failing_step_storage(inner: SharedStorage, step: u64) -> SharedStorage {
    let (in_name, in_temporary) = (format!("-step={step}/"), format!("-step={step}."));
    Arc::new(CountingStorage::new(inner).with_fault_hook(move |op| {
        let path = op.path.as_str();
        if op.kind == StorageOp::Write && (path.contains(&in_name) || path.contains(&in_temporary))
        {
            return Err(waypoint::Error::InvalidArgument {
                name: "harness",
                reason: format!("injected write failure in the step-{step} save"),
            });
        }
        Ok(())
    }))
}

/// `ckpt-train <dir> <until> [fail|abort <rank> | fail-at <rank> <step>]`.
pub fn train(ctx: &Ctx) -> anyhow::Result<()> {
    let dir: PathBuf = ctx.arg(0, "dir")?;
    let until: u64 = ctx.arg(1, "until")?;
    let fault: String = ctx.arg_or(2, "fault", String::new())?;
    let victim: u64 = ctx.arg_or(3, "rank", u64::MAX)?;
    if !matches!(fault.as_str(), "" | "fail" | "abort" | "fail-at") {
        bail!("fault {fault:?} is neither fail, abort nor fail-at");
    }
    let armed = Arc::new(AtomicBool::new(false));
    let storage = match fault.as_str() {
        "fail-at" if ctx.rank() == victim => {
            failing_step_storage(local_storage(&dir)?, ctx.arg(4, "step")?)
        }
        _ => armed_storage(local_storage(&dir)?, armed.clone(), fault == "abort"),
    };
    let coordinator: SharedCoordinator = Arc::from(ctx.coordinator.duplicate()?);
    let policy = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .async_save(true)
        .max_pending_saves(max_pending()?)
        .build()?;
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .build()?;
    let mut run = Run::builder()
        .log_dir(dir.join("logs"))
        .storage(storage)
        .checkpoint(policy)
        .resume(resume)
        .coordinator(coordinator)
        .build()
        .context("building the run")?;
    let mut shard = Shard::new(ctx.rank(), ctx.world_size());
    let resumed = run.restore(&mut shard)?.map(|p| p.step);
    let mut outcome = Ok(());
    while shard.step < until {
        shard.train_step();
        if shard.step == until && matches!(fault.as_str(), "fail" | "abort") && ctx.rank() == victim
        {
            armed.store(true, Ordering::SeqCst);
        }
        // The last save is synchronous (finish waits), so its failure surfaces here.
        if let Err(e) = run.step_end(shard.step, 0, &shard) {
            outcome = Err(e);
            break;
        }
    }
    let outcome = outcome.and_then(|()| run.wait_for_saves().map(|_| ()));
    match outcome {
        Ok(()) => ctx.say(&[
            (
                "resumed",
                &resumed.map_or("none".to_string(), |s| s.to_string()),
            ),
            ("final", &shard.step),
            ("consistent", &shard.is_consistent()),
        ]),
        Err(waypoint::Error::RankFailed { rank, .. }) => {
            ctx.say(&[("error_rank", &rank), ("error_step", &shard.step)])
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `max_pending_saves` from `WAYPOINT_HARNESS_MAX_PENDING` (1 when unset).
fn max_pending() -> anyhow::Result<usize> {
    match std::env::var("WAYPOINT_HARNESS_MAX_PENDING") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("WAYPOINT_HARNESS_MAX_PENDING={v:?} is not a count")),
        Err(_) => Ok(1),
    }
}

/// `ckpt-load <dir> <name>`.
pub fn load(ctx: &Ctx) -> anyhow::Result<()> {
    let dir: PathBuf = ctx.arg(0, "dir")?;
    let name: String = ctx.arg(1, "name")?;
    let reader = Checkpointer::new(local_storage(&dir)?).open(&StoragePath::new(&name)?)?;
    let mut shard = Shard::new(ctx.rank(), ctx.world_size());
    {
        let mut regions = waypoint::Checkpointable::restore_regions(&mut shard);
        reader.load_regions(&mut regions, &Default::default())?;
    }
    {
        let mut slots = waypoint::Checkpointable::restore_slots(&mut shard);
        reader.load_into(&mut slots, &Default::default())?;
    }
    shard.step = reader.record().step;
    ctx.coordinator.barrier()?;
    ctx.say(&[
        ("step", &shard.step),
        ("saved_by", &reader.record().world_size),
        ("consistent", &shard.is_consistent()),
    ]);
    Ok(())
}
