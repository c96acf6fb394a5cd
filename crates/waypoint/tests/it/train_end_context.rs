//! `save_context_on_train_end` when the last step was already saved (NeMo's behaviour): the
//! context goes into the checkpoint(s) of that step, all or nothing, and a checkpoint never stops
//! verifying, whatever storage operation fails or crashes.

use crate::common::training::Toy;
use std::sync::Arc;
use waypoint::resume::discover;
use waypoint::storage::{
    FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, MemoryFs, SharedStorage,
    StoragePath, TEMP_MARKER,
};
use waypoint::{Checkpointer, ModelCheckpoint, Run};

const IO: &[u8] = b"{\"lr\":0.1}";
const YAML: &[u8] = b"lr: 0.1\n";

/// Four steps, saves every two (the last step saved by `step_end`), then `finish`.
fn scenario(fs: Arc<dyn FileSystem>) -> waypoint::Result<()> {
    let storage: SharedStorage = Arc::new(FsStorage::new(fs));
    let config = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .always_save_context(false)
        .async_save(false)
        .build()?;
    let mut run = Run::builder()
        .storage(storage)
        .checkpoint(config)
        .context_files(vec![
            ("io.json".into(), IO.to_vec()),
            ("model.yaml".into(), YAML.to_vec()),
        ])
        .build()?;
    let mut toy = Toy::new();
    for _ in 0..4 {
        toy.train_step();
        run.step_end(toy.step, 0, &toy)?;
    }
    run.finish(toy.step, 0, &toy)?;
    Ok(())
}

/// What a reader finds: every committed checkpoint verifies; its context is absent or whole;
/// with `no_temporaries`, nothing hidden inside any. Returns the names with a context.
fn check(memory: &Arc<MemoryFs>, no_temporaries: bool, case: &str) -> Vec<String> {
    let storage: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
    let checkpointer = Checkpointer::new(storage.clone());
    let files = memory.snapshot();
    let mut with_context = Vec::new();
    for c in discover(storage.as_ref(), &StoragePath::root())
        .unwrap()
        .committed
    {
        let report = checkpointer
            .verify(&StoragePath::new(&c.name).unwrap(), &mut |_| {})
            .unwrap();
        assert!(
            report.is_ok(),
            "{case}: {} fails verify: {report:?}",
            c.name
        );
        let inside: Vec<&String> = files
            .keys()
            .filter(|k| k.starts_with(&format!("{}/", c.name)))
            .collect();
        let io = files.get(&format!("{}/context/io.json", c.name));
        let yaml = files.get(&format!("{}/context/model.yaml", c.name));
        match (io, yaml) {
            (Some(io), Some(yaml)) => {
                assert_eq!((io.as_slice(), yaml.as_slice()), (IO, YAML), "{case}");
                with_context.push(c.name.clone());
            }
            (None, None) => {}
            _ => panic!("{case}: {} holds part of its context: {inside:?}", c.name),
        }
        if no_temporaries {
            assert!(
                !inside.iter().any(|k| k.contains(TEMP_MARKER)),
                "{case}: a temporary left in {}: {inside:?}",
                c.name
            );
        }
    }
    with_context
}

/// The step-4 checkpoints were saved by `step_end` without a context; `finish` adds it to them
/// (and only them), and they still verify.
#[test]
fn the_context_goes_into_the_checkpoints_already_saved_at_the_last_step() {
    let memory = Arc::new(MemoryFs::new());
    scenario(memory.clone()).unwrap();
    let with_context = check(&memory, true, "no fault");
    assert!(!with_context.is_empty(), "no checkpoint got the context");
    assert!(
        with_context.iter().all(|n| n.contains("step=4")),
        "{with_context:?}"
    );
    let storage: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
    let at_4 = discover(storage.as_ref(), &StoragePath::root())
        .unwrap()
        .committed
        .into_iter()
        .filter(|c| c.step == 4)
        .count();
    assert_eq!(with_context.len(), at_4, "{with_context:?}");
}

/// Each storage operation of the scenario failing once, then each crashing (it and all later
/// ones fail, as a killed process): no checkpoint ever fails verify or holds part of a context;
/// after a single failure no temporary is left inside a checkpoint either.
#[test]
fn a_fault_at_any_operation_leaves_checkpoints_whole() {
    let counting = Arc::new(FaultyFs::new(
        Arc::new(MemoryFs::new()),
        FailpointPlan::default(),
    ));
    scenario(counting.clone()).unwrap();
    let total = counting.ops();
    let mut failed_in_finish = 0;
    for kind in [FaultKind::Fail, FaultKind::Crash] {
        for n in 1..=total {
            let memory = Arc::new(MemoryFs::new());
            let faulty = Arc::new(FaultyFs::new(memory.clone(), FailpointPlan::new(kind, n)));
            let result = scenario(faulty);
            let case = format!("{} at operation {n} of {total}", kind.keyword());
            let with_context = check(&memory, kind == FaultKind::Fail, &case);
            if result.is_ok() {
                assert!(
                    !with_context.is_empty(),
                    "{case}: finish succeeded without the context"
                );
            } else if with_context.is_empty() {
                failed_in_finish += 1;
            }
        }
    }
    assert!(failed_in_finish > 0);
}

/// On an object store the context files are create-only puts next to the committed checkpoint:
/// each whole, the record untouched.
#[cfg(feature = "s3")]
#[test]
fn the_context_goes_into_an_s3_checkpoint_too() {
    use crate::common::s3;
    use waypoint::storage::{open_location, read_to_vec};
    let bucket = s3::shared().bucket; // fails, saying how to start it, without the server
    let url = format!("s3://{bucket}/{}", s3::unique_prefix("ctx"));
    let tmp = tempfile::tempdir().unwrap();
    let config = ModelCheckpoint::builder()
        .dirpath(&url)
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .always_save_context(false)
        .async_save(false)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .log_dir(tmp.path())
        .checkpoint(config)
        .context_files(vec![("io.json".into(), IO.to_vec())])
        .build()
        .unwrap();
    let mut toy = Toy::new();
    for _ in 0..4 {
        toy.train_step();
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    run.finish(toy.step, 0, &toy).unwrap();
    let storage = open_location(&url).unwrap();
    let checkpointer = Checkpointer::new(storage.clone());
    let found = discover(storage.as_ref(), &StoragePath::root()).unwrap();
    assert!(!found.committed.is_empty());
    for c in found.committed {
        let dir = StoragePath::new(&c.name).unwrap();
        let io = read_to_vec(
            storage.as_ref(),
            &dir.join("context/io.json").unwrap(),
            1 << 20,
        );
        match c.step {
            4 => assert_eq!(io.unwrap(), IO, "{}", c.name),
            _ => assert!(io.is_err(), "{}", c.name),
        }
        let report = checkpointer.verify(&dir, &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{}: {report:?}", c.name);
    }
}
