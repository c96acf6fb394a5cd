//! Asynchronous saves through the Run handle: the training thread only stages; failures of the
//! background writer at every storage operation surface as errors on a later call and leave the
//! top-k bookkeeping consistent with what is on disk; a full queue skips (or waits) as configured;
//! saves in flight are finalized in order, deletions only after their replacement committed.

use crate::common::faults::{assert_disk_sound, why_silent};
use crate::common::root_names;
use crate::common::training::{TOY_BYTES, Toy};
use std::sync::{Arc, Condvar, Mutex};
use waypoint::storage::{
    DirEntry, FailpointPlan, FaultKind, FaultyFs, FileSystem, FsFile, FsStorage, MemoryFs,
    SharedStorage, StoragePath, TEMP_MARKER,
};
use waypoint::{AutoResume, ModelCheckpoint, PendingFull, Run};

fn policy(full: PendingFull) -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .monitor("val_loss")
        .save_top_k(2)
        .every_n_train_steps(2)
        .when_pending_full(full)
        .build()
        .unwrap()
}

/// Trains 20 steps, carrying on after save errors (as a loop that logs and continues would);
/// returns how many calls reported an error.
fn train_through_errors(run: &mut Run, toy: &mut Toy) -> usize {
    let mut errors = 0;
    while toy.step < 20 {
        toy.train_step();
        if toy.step.is_multiple_of(4) {
            run.log_metrics(toy.step, &[("val_loss", toy.val_loss())]);
            errors += usize::from(run.validation_end(toy.step, 0, &*toy).is_err());
        }
        errors += usize::from(run.step_end(toy.step, 0, &*toy).is_err());
    }
    errors += usize::from(run.wait_for_saves().is_err());
    errors
}

/// Every name the policy keeps is committed on disk, and nothing else is there.
fn assert_consistent(run: &Run, storage: &SharedStorage) {
    let state = run.policy_state();
    let mut kept: Vec<String> = state.top_k.iter().map(|e| e.name.clone()).collect();
    kept.extend(state.last_model_path.clone());
    kept.sort();
    kept.dedup();
    // Temporaries of a deletion interrupted by the fault may remain; the next setup removes them.
    let visible: Vec<String> = root_names(storage)
        .into_iter()
        .filter(|n| !n.contains(TEMP_MARKER))
        .collect();
    assert_eq!(
        visible, kept,
        "the policy's bookkeeping disagrees with the directory"
    );
    for name in kept {
        let reader =
            waypoint::Checkpointer::new(storage.clone()).open(&StoragePath::new(&name).unwrap());
        assert!(
            reader.is_ok(),
            "{name} is not a complete checkpoint: {:?}",
            reader.err()
        );
    }
}

#[test]
fn a_failure_at_every_background_operation_surfaces_and_keeps_the_bookkeeping_consistent() {
    let counter = Arc::new(FaultyFs::new(
        Arc::new(MemoryFs::new()),
        FailpointPlan::default(),
    ));
    let storage: SharedStorage = Arc::new(FsStorage::new(counter.clone()));
    let mut run = Run::builder()
        .storage(storage)
        .checkpoint(policy(PendingFull::Wait))
        .build()
        .unwrap();
    let setup = counter.ops();
    assert_eq!(train_through_errors(&mut run, &mut Toy::new()), 0);
    drop(run);
    let total = counter.ops();
    let (mut surfaced, mut silent) = (0, Vec::new());
    let mut reasons = std::collections::BTreeMap::new();
    for n in setup + 1..=total {
        let memory = Arc::new(MemoryFs::new());
        let faulty = Arc::new(FaultyFs::new(
            memory.clone(),
            FailpointPlan::new(FaultKind::Fail, n),
        ));
        let storage: SharedStorage = Arc::new(FsStorage::new(faulty.clone()));
        // The test looks through a view without faults.
        let view: SharedStorage = Arc::new(FsStorage::new(memory));
        let mut run = Run::builder()
            .storage(storage.clone())
            .checkpoint(policy(PendingFull::Wait))
            .build()
            .unwrap();
        let errors = train_through_errors(&mut run, &mut Toy::new());
        let fired = faulty.fired();
        if errors == 0 {
            match why_silent(fired.as_ref(), faulty.ops(), n) {
                Some(reason) => *reasons.entry(reason).or_insert(0) += 1,
                None => silent.push((n, fired)),
            }
        } else {
            surfaced += 1;
        }
        assert_consistent(&run, &view);
        assert_disk_sound(&view, &format!("failure at op {n}"));
        drop(run);
        let next = Run::builder()
            .storage(view.clone())
            .checkpoint(policy(PendingFull::Wait))
            .build()
            .unwrap();
        let left = root_names(&view);
        assert!(
            left.iter().all(|n| !n.contains(TEMP_MARKER)),
            "setup left {left:?}"
        );
        drop(next);
    }
    let tried = (total - setup) as usize;
    eprintln!(
        "failed each of the {tried} storage operations of a run's saves in turn: {surfaced} surfaced, {reasons:?}"
    );
    assert!(
        silent.is_empty(),
        "{} of {tried} injected failures neither surfaced nor had a reason: {silent:?}",
        silent.len()
    );
    assert_eq!(surfaced + reasons.values().sum::<usize>(), tried);
}

/// Opened (true) by the test; [`Gated`] fsyncs wait for it.
type Gate = Arc<(Mutex<bool>, Condvar)>;

/// A storage on a [`Gated`] file system whose fsyncs fail once the gate opens when `fail`, and
/// the gate.
fn gated_storage(fail: bool) -> (Gate, SharedStorage) {
    let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(Gated {
        inner: MemoryFs::new(),
        open: gate.clone(),
        fail,
    })));
    (gate, storage)
}

fn open_gate(gate: &Gate) {
    let (lock, cvar) = &**gate;
    *lock.lock().unwrap() = true;
    cvar.notify_all();
}

/// A file system whose fsyncs wait for a gate: a save stays in flight until the test opens it.
#[derive(Debug)]
struct Gated {
    inner: MemoryFs,
    open: Gate,
    /// Every fsync fails once the gate opens.
    fail: bool,
}

struct GatedFile {
    inner: Box<dyn FsFile>,
    open: Gate,
    fail: bool,
}

impl FsFile for GatedFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> waypoint::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> waypoint::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn sync(&self) -> waypoint::Result<()> {
        let (lock, cvar) = &*self.open;
        let _open = cvar
            .wait_while(lock.lock().unwrap(), |open| !*open)
            .unwrap();
        if self.fail {
            return Err(waypoint::Error::io(
                "fsync",
                "gated",
                std::io::Error::other("injected"),
            ));
        }
        self.inner.sync()
    }
}

impl FileSystem for Gated {
    fn describe(&self, path: &StoragePath) -> std::path::PathBuf {
        self.inner.describe(path)
    }
    fn create_new(&self, path: &StoragePath, len: u64) -> waypoint::Result<Box<dyn FsFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.create_new(path, len)?,
            open: self.open.clone(),
            fail: self.fail,
        }))
    }
    fn open_read(&self, path: &StoragePath) -> waypoint::Result<Box<dyn FsFile>> {
        self.inner.open_read(path)
    }
    fn mkdir(&self, path: &StoragePath) -> waypoint::Result<()> {
        self.inner.mkdir(path)
    }
    fn sync_dir(&self, path: &StoragePath) -> waypoint::Result<()> {
        self.inner.sync_dir(path)
    }
    fn rename_noreplace(&self, from: &StoragePath, to: &StoragePath) -> waypoint::Result<()> {
        self.inner.rename_noreplace(from, to)
    }
    fn remove_file(&self, path: &StoragePath) -> waypoint::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &StoragePath) -> waypoint::Result<()> {
        self.inner.remove_dir(path)
    }
    fn list(&self, dir: &StoragePath) -> waypoint::Result<Vec<DirEntry>> {
        self.inner.list(dir)
    }
    fn stat(&self, path: &StoragePath) -> waypoint::Result<Option<DirEntry>> {
        self.inner.stat(path)
    }
    fn symlink(&self, target: &str, link: &StoragePath) -> waypoint::Result<()> {
        FileSystem::symlink(&self.inner, target, link)
    }
}

#[test]
fn a_full_queue_skips_with_skip_and_the_skipped_save_leaves_no_trace() {
    let (gate, storage) = gated_storage(false);
    let no_monitor = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .when_pending_full(PendingFull::Skip)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(no_monitor)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    for _ in 0..6 {
        toy.train_step();
        // Step 2 starts a save that cannot finish; steps 4 and 6 find the queue full and skip.
        assert!(run.step_end(toy.step, 0, &toy).unwrap().is_empty());
        assert_eq!(run.pending_saves(), usize::from(toy.step >= 2));
    }
    assert!(run.staging_bytes() >= (TOY_BYTES.0 + TOY_BYTES.1) as u64);
    open_gate(&gate);
    let saved = run.wait_for_saves().unwrap();
    let saved: Vec<(u64, bool)> = saved.iter().map(|s| (s.step, s.link)).collect();
    assert_eq!(
        saved,
        vec![(2, false), (2, false)],
        "the top-k and last of step 2 only"
    );
    let listed = root_names(&storage);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|n| n.contains("step=2")), "{listed:?}");
}

#[test]
fn the_saved_state_is_the_state_at_the_trigger_not_later() {
    // The loop mutates its buffers right after step_end returns; the checkpoint must hold the
    // values of the step it was taken at (staging copied them).
    let storage: SharedStorage = Arc::new(FsStorage::new(Arc::new(MemoryFs::new())));
    let every = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(waypoint::SaveLast::No)
        .every_n_train_steps(1)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(every)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    let mut expected = Vec::new();
    for _ in 0..5 {
        toy.train_step();
        expected.push((toy.step, toy.w.clone()));
        run.step_end(toy.step, 0, &toy).unwrap();
    }
    run.wait_for_saves().unwrap();
    let cp = waypoint::Checkpointer::new(storage.clone());
    for (step, w) in expected {
        let name = root_names(&storage)
            .into_iter()
            .find(|n| n.ends_with(&format!("step={step}")))
            .unwrap();
        let reader = cp.open(&StoragePath::new(&name).unwrap()).unwrap();
        assert_eq!(
            reader
                .load_tensor("model.w", &Default::default())
                .unwrap()
                .data,
            w,
            "step {step}"
        );
    }
    drop(run);
    // And a resume restores the newest.
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .storage(storage)
        .resume(resume)
        .checkpoint(policy(PendingFull::Wait))
        .build()
        .unwrap();
    let mut back = Toy::new();
    assert_eq!(run.restore(&mut back).unwrap().unwrap().step, 5);
    assert_eq!(back, toy);
}

/// A save fails while the next trigger waits for it (when_pending_full = wait): the waiting call
/// returns the failure; nothing deadlocks, nothing of the failed save is visible.
#[test]
fn a_failure_while_the_next_save_waits_is_returned_not_deadlocked() {
    let (gate, storage) = gated_storage(true);
    let every = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(every)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    toy.train_step();
    toy.train_step();
    run.step_end(2, 0, &toy).unwrap(); // the save of step 2 starts and blocks in fsync
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || open_gate(&gate)
    });
    toy.train_step();
    toy.train_step();
    let err = run.step_end(4, 0, &toy).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    opener.join().unwrap();
    assert_eq!(run.pending_saves(), 0);
    let left: Vec<String> = root_names(&storage)
        .into_iter()
        .filter(|n| !n.contains(TEMP_MARKER))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The policy asks whether a name exists before it picks it (another run's checkpoint there gets
/// a `-v1` version). A failed check reads as "free" there; the writer's own check before it
/// writes must then refuse the name: the step's error, never a replaced checkpoint.
#[test]
fn a_failed_existence_check_never_replaces_another_runs_checkpoint() {
    let memory = Arc::new(MemoryFs::new());
    let view: SharedStorage = Arc::new(FsStorage::new(memory.clone()));
    let mut first = Run::builder()
        .storage(view.clone())
        .checkpoint(policy(PendingFull::Wait))
        .build()
        .unwrap();
    let mut toy = Toy::new();
    toy.train_step();
    toy.train_step();
    first.step_end(2, 0, &toy).unwrap();
    first.wait_for_saves().unwrap();
    drop(first);
    let names = root_names(&view);
    assert_eq!(names.len(), 1, "{names:?}");
    let record = |name: &str| {
        let path = StoragePath::new(name)
            .unwrap()
            .join("weights")
            .unwrap()
            .join("metadata.json")
            .unwrap();
        waypoint::storage::read_to_vec(view.as_ref(), &path, 1 << 20).unwrap()
    };
    let before = record(&names[0]);
    // A second, fresh run of the same directory whose check of that name fails once: find the
    // operation by failing each in turn until the injected fault is that check.
    let mut other = Toy::new();
    other.rng ^= 0xFFFF; // another state: a replacement would change the record's checksums
    other.train_step();
    other.train_step();
    for n in 1.. {
        let faulty = Arc::new(FaultyFs::new(
            memory.clone(),
            FailpointPlan::new(FaultKind::Fail, n),
        ));
        let Ok(mut second) = Run::builder()
            .storage(Arc::new(FsStorage::new(faulty.clone())))
            .checkpoint(policy(PendingFull::Wait))
            .build()
        else {
            continue; // a fault in the setup
        };
        let result = second
            .step_end(2, 0, &other)
            .and_then(|_| second.wait_for_saves());
        let fired = faulty
            .fired()
            .expect("the run's operations include the check");
        let is_the_check = fired.op == "stat" && fired.path.ends_with(&names[0]);
        drop(second);
        if !is_the_check {
            // Another operation: undo what that run left (a -v1 checkpoint) and try the next.
            for name in root_names(&view).into_iter().filter(|n| *n != names[0]) {
                waypoint::engine::delete_checkpoint(view.as_ref(), &name).unwrap();
            }
            continue;
        }
        let error = result.expect_err("the save into an existing name must fail");
        assert!(error.to_string().contains("already exists"), "{error}");
        assert_eq!(
            record(&names[0]),
            before,
            "the other run's checkpoint was replaced"
        );
        break;
    }
}

/// `max_pending_saves > 1`: three saves in flight at once (held by the gate), finalized in the
/// order they were taken, each committed with the state of its own step.
#[test]
fn several_saves_in_flight_are_finalized_in_order_each_with_its_own_state() {
    let (gate, storage) = gated_storage(false);
    let every_save = ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .save_last(waypoint::SaveLast::No)
        .every_n_train_steps(2)
        .max_pending_saves(3)
        .build()
        .unwrap();
    let mut run = Run::builder()
        .storage(storage.clone())
        .checkpoint(every_save)
        .build()
        .unwrap();
    let mut toy = Toy::new();
    let mut taken = Vec::new();
    for _ in 0..6 {
        toy.train_step();
        // Nothing is finalized while the gate holds every save.
        assert!(run.step_end(toy.step, 0, &toy).unwrap().is_empty());
        if toy.step.is_multiple_of(2) {
            taken.push(toy.clone());
        }
        assert_eq!(run.pending_saves(), taken.len(), "step {}", toy.step);
    }
    open_gate(&gate);
    let saved = run.wait_for_saves().unwrap();
    let steps: Vec<u64> = saved.iter().map(|s| s.step).collect();
    assert_eq!(steps, vec![2, 4, 6], "finalized in the order taken");
    for (saved, state) in saved.iter().zip(&taken) {
        let reader = waypoint::Checkpointer::new(storage.clone())
            .open(&StoragePath::new(&saved.name).unwrap())
            .unwrap();
        assert_eq!(reader.record().step, state.step);
        let w = reader
            .load_tensor("model.w", &waypoint::LoadOptions::default())
            .unwrap();
        assert_eq!(w.data, state.w, "{}: another step's weights", saved.name);
    }
    assert_disk_sound(&storage, "three saves in flight");
}
