//! The hunter's world: one checkpoints directory (in memory or on disk), the training process
//! working in it, another process saving into it, the user, and the model of what must be
//! there. [`World::apply`] carries out one [`Op`] and then [`World::check`]s every invariant;
//! a broken one is an `Err` saying what and where.

use super::net::{BIAS, global_w};
use super::ops::{Backend, FAULT_OPS, Knobs, Op, VALUES};
use super::process::{Cmd, Faults, Process, faulty_view, is_hang};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tempfile::TempDir;
use waypoint::resume::discover;
use waypoint::storage::{
    EntryKind, FsStorage, MemoryFs, SharedStorage, StorageOp, StoragePath, TEMP_MARKER,
    local_storage,
};
use waypoint::{AutoResume, CheckpointMeta, Checkpointer, Dtype, Error, SaveOptions, TensorRef};

/// A save of the other process held before its commit: a live temporary.
struct Held {
    name: String,
    step: u64,
    release: Sender<()>,
    faults: Arc<Faults>,
    join: JoinHandle<waypoint::Result<()>>,
}

/// What the model knows.
#[derive(Debug, Default)]
struct Model {
    /// Checkpoints the training process was told were saved, with their steps.
    told: BTreeMap<String, u64>,
    /// Checkpoints the other process committed.
    foreign: BTreeMap<String, u64>,
    /// Checkpoints the user deleted (names may come back: a later save of that name).
    user_deleted: BTreeSet<String>,
    /// Told checkpoints seen gone while the policy did not keep them: deleted by the policy.
    rotated: BTreeSet<String>,
    /// The newest step the directory must hold: the highest step anyone was told was committed,
    /// lowered only by the user's deletions.
    floor: u64,
    /// What rank 0's policy keeps now.
    kept: super::process::Kept,
}

/// A committed checkpoint as the checker sees it.
#[derive(Debug, Clone)]
struct Found {
    name: String,
    step: u64,
    completed: bool,
}

/// The world of one case.
pub struct World {
    knobs: Knobs,
    memory: Option<MemoryFs>,
    tmp: TempDir,
    /// The checker's (and the user's) view: no faults, no counting.
    plain: SharedStorage,
    process: Option<Process>,
    held: Option<Held>,
    model: Model,
    /// What happened so far, for the failure message.
    history: Vec<String>,
}

impl World {
    pub fn new(knobs: Knobs) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let (memory, plain): (Option<MemoryFs>, SharedStorage) = match knobs.backend {
            Backend::Memory => {
                let memory = MemoryFs::new();
                let plain = Arc::new(FsStorage::new(Arc::new(memory.clone())));
                (Some(memory), plain)
            }
            Backend::Disk => (None, local_storage(tmp.path().join("checkpoints")).unwrap()),
        };
        World {
            knobs,
            memory,
            tmp,
            plain,
            process: None,
            held: None,
            model: Model::default(),
            history: Vec::new(),
        }
    }

    /// Applies `op` and checks every invariant.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        self.history.push(format!("{op:?}"));
        self.act(op).map_err(|e| self.failure(&e))?;
        self.check().map_err(|e| self.failure(&e))?;
        let now: Vec<String> = self
            .found()
            .unwrap_or_default()
            .iter()
            .map(|f| format!("{}@{}", f.name, f.step))
            .collect();
        if let Some(last) = self.history.last_mut() {
            last.push_str(&format!(" -> {now:?}"));
        }
        Ok(())
    }

    /// Ends the case: the held save goes on, the process exits; then one last check.
    pub fn close(mut self) -> Result<(), String> {
        self.history.push("(end)".into());
        self.release().map_err(|e| self.failure(&e))?;
        self.stop(false).map_err(|e| self.failure(&e))?;
        self.check().map_err(|e| self.failure(&e))?;
        if std::env::var_os("WAYPOINT_HUNT_TRACE").is_some() {
            eprintln!("{}", self.failure("(trace)"));
        }
        Ok(())
    }

    /// The commands that ended in an error so far (each ends its process).
    pub fn errors(&self) -> Vec<&str> {
        self.history
            .iter()
            .filter(|h| h.contains(" [error: "))
            .map(String::as_str)
            .collect()
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\n  knobs: {:?}\n  ops (-> what is committed after each):\n    {}\n  model: {:?}",
            self.knobs,
            self.history.join("\n    "),
            self.model
        )
    }

    fn act(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Train { steps, validate } => {
                let validate = validate.map(|v| VALUES[v as usize % VALUES.len()]);
                self.command(&Cmd::Train { steps, validate })
            }
            Op::Fault { op, nth } => {
                self.ensure_started()?;
                if let Some(process) = &self.process {
                    process
                        .faults
                        .arm(FAULT_OPS[op as usize % FAULT_OPS.len()], nth);
                }
                Ok(())
            }
            Op::PowerCut => {
                if let Some(process) = &self.process {
                    process.faults.kill();
                }
                if let Some(held) = &self.held {
                    held.faults.kill();
                }
                self.stop(true)?;
                let _ = self.release();
                if let Some(memory) = &self.memory {
                    memory.power_cut();
                }
                Ok(())
            }
            Op::Restart => {
                self.stop(false)?;
                self.ensure_started()
            }
            Op::ResumeFrom(i) => {
                self.stop(false)?;
                let found = self.found()?;
                if self.knobs.backend == Backend::Memory || found.is_empty() {
                    return self.ensure_started();
                }
                let chosen = found[i as usize % found.len()].clone();
                if !self.knobs.version_counter {
                    // A rewind with the counter off saves under the names the newer checkpoints
                    // hold (`-last`, a name of the filename template) and replaces them, as
                    // NeMo's ModelCheckpoint does: the user chose to go back, so progress may
                    // fall to the step they went back to.
                    self.model.floor = self.model.floor.min(chosen.step);
                }
                let resume = resume()
                    .resume_from_path(self.tmp.path().join("checkpoints").join(&chosen.name));
                self.start(resume.build().unwrap(), Some(chosen))
            }
            Op::Finish => {
                let result = self.command(&Cmd::Finish);
                if let Some(process) = self.process.take() {
                    process.end()?;
                }
                result
            }
            Op::Foreign { name, step, hold } => self.foreign(name, u64::from(step).max(1), hold),
            Op::Release => self.release(),
            Op::UserDelete(i) => {
                // The user deletes what they were told exists, not a save still in flight: the
                // very checkpoint (name and step) they were told of. A name alone may hold a newer
                // save the run has not reported yet (an asynchronous save is reported at the next
                // command); deleting that one and then hearing it was saved is the user's doing,
                // not a loss (the first model matched by name and took it for one).
                if !self.knobs.version_counter && self.knobs.async_save {
                    // With the counter off a save in flight may be replacing the very name the
                    // user deletes (an atomic exchange): a deletion by name racing with it may
                    // take the new checkpoint too, as `rm -rf` racing a writer would. No storage
                    // can promise otherwise, so this user deletes reused names between runs:
                    // the process exits first (its saves in flight complete).
                    self.stop(false)?;
                }
                let mut found = self.found()?;
                found.retain(|f| {
                    self.model.told.get(&f.name) == Some(&f.step)
                        || self.model.foreign.get(&f.name) == Some(&f.step)
                });
                if found.is_empty() {
                    return Ok(());
                }
                let chosen = &found[i as usize % found.len()];
                let dir = path(&chosen.name);
                let record = dir.join("weights/metadata.json").unwrap();
                self.plain
                    .remove_dir_all(&dir, &record)
                    .map_err(|e| format!("the user's deletion of {}: {e}", chosen.name))?;
                self.model.user_deleted.insert(chosen.name.clone());
                self.model.rotated.insert(chosen.name.clone());
                self.model.told.remove(&chosen.name);
                self.model.foreign.remove(&chosen.name);
                // The floor falls to what remains of what anyone was told is committed (a
                // save still in flight may yet be rolled back).
                let rest = self.found()?;
                // (Only what the policy still keeps: it goes on rotating the others away.)
                let kept = &self.model.kept;
                let known = rest.iter().filter(|f| {
                    let is_kept =
                        kept.top_k.contains(&f.name) || kept.last.as_ref() == Some(&f.name);
                    (self.model.told.contains_key(&f.name) && is_kept)
                        || self.model.foreign.contains_key(&f.name)
                });
                let remaining = known.map(|f| f.step).max().unwrap_or(0);
                self.model.floor = self.model.floor.min(remaining);
                Ok(())
            }
        }
    }

    /// Runs `cmd` on every rank; an error ends the process (a training job exits on an error).
    fn command(&mut self, cmd: &Cmd) -> Result<(), String> {
        self.ensure_started()?;
        let Some(process) = &self.process else {
            return Ok(());
        };
        let answers = process.command(cmd);
        if let Some((rank, _)) = answers.iter().enumerate().find(|(_, a)| is_hang(a)) {
            let seen: Vec<_> = answers.iter().map(|a| &a.result).collect();
            // Leave the hung process behind: joining it would hang the test.
            std::mem::forget(self.process.take());
            return Err(format!("rank {rank} hung; the ranks answered {seen:?}"));
        }
        let first = answers[0].clone();
        for (rank, answer) in answers.iter().enumerate().skip(1) {
            let agree = match (&answer.result, &first.result) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            };
            if !agree {
                return Err(format!(
                    "rank {rank} saw {:?} where rank 0 saw {:?}",
                    answer.result, first.result
                ));
            }
        }
        self.model.kept = first.kept.clone();
        match first.result {
            Ok(told) => {
                self.tell(&told);
                Ok(())
            }
            Err(e) => {
                if let Some(last) = self.history.last_mut() {
                    last.push_str(&format!(" [error: {e}]"));
                }
                self.stop(false)
            }
        }
    }

    fn tell(&mut self, told: &[(String, u64)]) {
        for (name, step) in told {
            if !self.knobs.version_counter {
                // With the counter off the run's save under the other process's name replaced
                // its checkpoint (NeMo overwrites a name, by design): the name holds the run's
                // own checkpoint now, which its policy may rotate away (a ranked -last saved at
                // the step's validation end deletes the step end's -last of that name).
                if self.model.foreign.remove(name).is_some() {
                    // The replaced checkpoint may have been the newest: the floor falls to
                    // what else is known to stay (this save is counted just below).
                    let kept = &self.model.kept;
                    let told_kept = (self.model.told.iter())
                        .filter(|(n, _)| kept.top_k.contains(*n) || kept.last.as_ref() == Some(*n))
                        .map(|(_, s)| *s);
                    let remaining = (self.model.foreign.values().copied())
                        .chain(told_kept)
                        .max()
                        .unwrap_or(0);
                    self.model.floor = self.model.floor.min(remaining);
                }
            }
            self.model.told.insert(name.clone(), *step);
            self.model.user_deleted.remove(name);
            self.model.rotated.remove(name);
            self.model.floor = self.model.floor.max(*step);
        }
    }

    /// Ends the running process, if any: cleanly, or dead (`kill`).
    fn stop(&mut self, kill: bool) -> Result<(), String> {
        match self.process.take() {
            Some(process) => {
                if kill {
                    process.faults.kill();
                }
                process.end()
            }
            None => Ok(()),
        }
    }

    fn ensure_started(&mut self) -> Result<(), String> {
        if self.process.is_some() {
            return Ok(());
        }
        self.start(resume().build().unwrap(), None)
    }

    /// Starts a process resuming as `resume` says; `from` is the checkpoint `resume_from_path`
    /// names, else the model expects the newest committed one.
    fn start(&mut self, resume: AutoResume, from: Option<Found>) -> Result<(), String> {
        let found = self.found()?;
        let expected = from.or_else(|| newest(&found)).map(|f| (f.name, f.step));
        let (process, starts) = Process::start(&self.plain, &self.knobs, &resume);
        self.process = Some(process);
        for (rank, started) in starts.into_iter().enumerate() {
            match started {
                Ok((point, restored)) => {
                    if point != expected {
                        return Err(format!(
                            "rank {rank} resumed from {point:?}; the model says {expected:?} (committed: {found:?})"
                        ));
                    }
                    restored.map_err(|e| format!("rank {rank}: {e}"))?;
                }
                Err(e) => return Err(format!("rank {rank} could not start: {e}")),
            }
        }
        // What the resumed run's policy keeps is known at its first command.
        self.model.kept = Default::default();
        Ok(())
    }

    /// The other process saves the state of `step` as one of the names this run may use.
    fn foreign(&mut self, name: u8, step: u64, hold: bool) -> Result<(), String> {
        let name = self.foreign_name(name);
        // A save held across the run's start: cleanup must leave its live temporary alone.
        let hold = hold && self.held.is_none();
        let faults = Arc::new(Faults::default());
        let (release, wait) = channel::<()>();
        let wait = Mutex::new(wait);
        let gate_faults = faults.clone();
        let view: SharedStorage = if hold {
            let inner = faulty_view(&self.plain, &faults);
            Arc::new(
                waypoint::storage::CountingStorage::new(inner).with_fault_hook(move |op| {
                    if op.kind == StorageOp::Commit {
                        let _ = wait.lock().unwrap().recv();
                        // Killed while held: its commit never happens.
                        return gate_faults.check(StorageOp::List);
                    }
                    Ok(())
                }),
            )
        } else {
            self.plain.clone()
        };
        let world = self.knobs.world;
        let dir = path(&name);
        let join = std::thread::spawn(move || {
            let w = global_w(step, world);
            let b: Vec<u8> = (0..BIAS)
                .map(|i| (step.wrapping_mul(7) ^ i) as u8)
                .collect();
            let tensors = vec![
                TensorRef::whole("w", Dtype::U8, vec![w.len() as u64], w.as_slice()),
                TensorRef::whole("b", Dtype::U8, vec![BIAS], b.as_slice()),
            ];
            Checkpointer::new(view)
                .with_options(SaveOptions {
                    threads: 1,
                    ..Default::default()
                })
                .save(
                    &dir,
                    &CheckpointMeta::at_step(step),
                    &tensors,
                    &serde_json::json!({ "step": step }),
                )
                .map(|_| ())
        });
        let held = Held {
            name,
            step,
            release,
            faults,
            join,
        };
        if hold {
            self.held = Some(held);
            return Ok(());
        }
        self.finish_foreign(held, false)
    }

    /// Lets the held save commit and records its outcome.
    fn release(&mut self) -> Result<(), String> {
        match self.held.take() {
            Some(held) => {
                let _ = held.release.send(());
                self.finish_foreign(held, true)
            }
            None => Ok(()),
        }
    }

    fn finish_foreign(&mut self, held: Held, was_held: bool) -> Result<(), String> {
        let killed = held.faults.is_dead();
        match held.join.join().expect("the other process panicked") {
            Ok(()) => {
                self.model.foreign.insert(held.name.clone(), held.step);
                self.model.user_deleted.remove(&held.name);
                self.model.floor = self.model.floor.max(held.step);
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(_) if killed => Ok(()),
            Err(e) if was_held => Err(format!(
                "the other process's save of {}, live while this one ran, failed: {e}",
                held.name
            )),
            Err(e) => Err(format!("the other process's save of {}: {e}", held.name)),
        }
    }

    /// Names the other process saves under: ones this run may choose too.
    fn foreign_name(&self, i: u8) -> String {
        let value = VALUES[i as usize % VALUES.len()];
        // Names the run may use too (a checkpoint of the other process under a name the run used
        // before, then rotated away: found deleted by a resumed run's pending deletions, fixed).
        match i % 4 {
            0 => format!("val_loss={value:.2}"),
            1 => format!("step={}", i % 24),
            2 => self
                .model
                .told
                .keys()
                .nth(i as usize / 4 % self.model.told.len().max(1))
                .cloned()
                .unwrap_or_else(|| "other".into()),
            _ => format!("other-{i}"),
        }
    }

    /// The committed checkpoints, by name; anything else in the directory that a reader could
    /// take for one is an error.
    fn found(&self) -> Result<Vec<Found>, String> {
        let discovery = discover(self.plain.as_ref(), &StoragePath::root())
            .map_err(|e| format!("discovery failed: {e}"))?;
        if !discovery.skipped.is_empty() {
            return Err(format!(
                "visible but not committed (a temporary, or a record the reader refuses): {:?}",
                discovery.skipped
            ));
        }
        let mut found: Vec<Found> = discovery
            .committed
            .into_iter()
            .map(|c| Found {
                name: c.name,
                step: c.step,
                completed: c.completed,
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Every invariant, against the directory as it is now.
    fn check(&mut self) -> Result<(), String> {
        let found = self.found()?;
        let checker = Checkpointer::new(self.plain.clone());
        for f in &found {
            if f.name.contains(TEMP_MARKER) {
                return Err(format!(
                    "a temporary is visible as a checkpoint: {}",
                    f.name
                ));
            }
            let mut verified = checker.verify(&path(&f.name), &mut |_| {});
            if !verified.as_ref().is_ok_and(|r| r.is_ok()) && !self.still_committed(&f.name)? {
                continue; // deleted since it was listed (the run deletes in the background)
            }
            if !verified.as_ref().is_ok_and(|r| r.is_ok()) && !self.knobs.version_counter {
                // With the counter off a background save may swap a new checkpoint in under
                // this name while it is read (the reader then meets files of the new one and
                // says so by their checksums): what is there once the swap is done must verify.
                verified = checker.verify(&path(&f.name), &mut |_| {});
            }
            match verified {
                Ok(report) if report.is_ok() => {}
                Ok(report) => {
                    return Err(format!(
                        "{} is committed but does not verify: {:?}",
                        f.name, report.problems
                    ));
                }
                Err(e) => return Err(format!("{} is committed but does not open: {e}", f.name)),
            }
        }
        let names: BTreeSet<&str> = found.iter().map(|f| f.name.as_str()).collect();
        let links = self.links()?;
        let newest = found.iter().map(|f| f.step).max().unwrap_or(0);
        if newest < self.model.floor {
            return Err(format!(
                "the newest committed step went back from {} to {newest} (committed: {found:?})",
                self.model.floor
            ));
        }
        for (name, step) in &self.model.foreign {
            if !names.contains(name.as_str()) {
                return Err(format!(
                    "the other process's checkpoint {name} (step {step}) is gone"
                ));
            }
        }
        let kept: BTreeSet<String> = (self.model.kept.top_k.iter())
            .chain(&self.model.kept.last)
            .cloned()
            .collect();
        for name in self.model.told.keys() {
            let present = names.contains(name.as_str()) || links.contains(name);
            if !present && !kept.contains(name) {
                self.model.rotated.insert(name.clone());
            }
        }
        for name in &kept {
            // Told about this very save (a name freed by a rotation may be reused later).
            let same = self.model.told.get(name) == self.model.kept.steps.get(name);
            let told = same && !self.model.rotated.contains(name);
            if told && !names.contains(name.as_str()) && !links.contains(name) {
                return Err(format!(
                    "{name}, kept by the policy, is not committed (committed: {found:?})"
                ));
            }
        }
        Ok(())
    }

    fn still_committed(&self, name: &str) -> Result<bool, String> {
        Ok(self.found()?.iter().any(|f| f.name == name))
    }

    /// Symbolic links in the directory (a `save_last = link` checkpoint); on disk, each must
    /// point at a committed sibling.
    fn links(&self) -> Result<BTreeSet<String>, String> {
        let entries = self
            .plain
            .list(&StoragePath::root())
            .map_err(|e| format!("listing: {e}"))?;
        let mut links = BTreeSet::new();
        for entry in entries.into_iter().filter(|e| e.kind == EntryKind::Symlink) {
            if self.knobs.backend == Backend::Disk {
                let link = self.tmp.path().join("checkpoints").join(&entry.name);
                let record = link.join("weights/metadata.json");
                let target = std::fs::read_link(&link).unwrap_or_default();
                let by_user =
                    (target.to_str()).is_some_and(|t| self.model.user_deleted.contains(t));
                if !record.is_file() && !by_user {
                    return Err(format!(
                        "the link {} points at no committed checkpoint",
                        entry.name
                    ));
                }
            }
            links.insert(entry.name);
        }
        Ok(links)
    }
}

/// The model's resume choice: the highest step; at that step a completed run's checkpoint, then
/// a `-last`, then the greatest name.
fn newest(found: &[Found]) -> Option<Found> {
    let is_last = |f: &Found| f.name.ends_with("-last") || f.name.contains("-last-v");
    found
        .iter()
        .max_by(|a, b| {
            (a.step, a.completed, is_last(a), &a.name).cmp(&(
                b.step,
                b.completed,
                is_last(b),
                &b.name,
            ))
        })
        .cloned()
}

fn resume() -> waypoint::resume::AutoResumeBuilder {
    AutoResume::builder()
        .resume_if_exists(true)
        .resume_ignore_no_checkpoint(true)
        .resume_past_end(true)
}

fn path(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}
