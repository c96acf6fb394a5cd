//! Incremental saves: files of unchanged tensors carried over from the previous save of a run (a
//! hard link on a file system, a server-side copy on an object store) instead of written again.
//! What a reader sees: the carried files verify on their own, the checkpoint stays whole when the
//! one it came from is deleted, a changed tensor (one bit) is written again, the knob turns it
//! off, and a save interrupted at any storage operation (the link or copy included) leaves no
//! partial checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use waypoint::storage::{
    CountingStorage, FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, MemoryFs,
    SharedStorage, StorageOp, local_storage,
};
use waypoint::{
    CheckpointMeta, Checkpointer, Dtype, Error, LoadOptions, SaveOptions, SaveReport, Tensor,
    TensorRef,
};

use crate::common::{is_injected, path, pattern};

type State = Vec<(String, Vec<u8>)>;

/// A frozen base of four 300 KiB tensors and a trainable part of two small ones (`seed` changes
/// only the trainable part).
fn state(seed: u8) -> State {
    let mut s: State = (0..4)
        .map(|i| (format!("base.{i}"), pattern(300 << 10, 100 + i)))
        .collect();
    s.push(("lora.a".into(), pattern(10_000, seed)));
    s.push(("lora.b".into(), pattern(3_000, seed.wrapping_add(7))));
    s
}

fn refs(state: &State) -> Vec<TensorRef<'_>> {
    state
        .iter()
        .map(|(n, d)| TensorRef::whole(n.as_str(), Dtype::U8, vec![d.len() as u64], d.as_slice()))
        .collect()
}

fn frozen() -> BTreeSet<String> {
    (0..4).map(|i| format!("base.{i}")).collect()
}

/// Two base tensors per file, the trainable part in a file of its own.
fn options(frozen: BTreeSet<String>) -> SaveOptions {
    SaveOptions {
        max_shard_bytes: 700 << 10,
        block_size: 64 << 10,
        threads: 2,
        frozen,
        ..Default::default()
    }
}

fn save(cp: &Checkpointer, name: &str, step: u64, state: &State) -> SaveReport {
    cp.save(
        &path(name),
        &CheckpointMeta::at_step(step),
        &refs(state),
        &(),
    )
    .unwrap_or_else(|e| panic!("saving {name}: {e}"))
}

/// Asserts that checkpoint `name` verifies on its own and holds exactly `want`.
fn assert_whole(cp: &Checkpointer, name: &str, want: &State) {
    let report = cp.verify(&path(name), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
    let loaded = cp
        .open(&path(name))
        .unwrap()
        .load_all(&LoadOptions::default())
        .unwrap();
    let want: BTreeMap<String, Tensor> = want
        .iter()
        .map(|(n, d)| {
            let t = Tensor {
                dtype: Dtype::U8,
                shape: vec![d.len() as u64],
                data: d.clone(),
            };
            (n.clone(), t)
        })
        .collect();
    assert!(loaded == want, "{name} does not hold the state saved");
}

/// The files of checkpoint `name` that its record says were carried over, with their source.
fn carried(cp: &Checkpointer, name: &str) -> BTreeMap<String, (String, String)> {
    let reader = cp.open(&path(name)).unwrap();
    reader
        .record()
        .files
        .iter()
        .filter_map(|(file, entry)| {
            let from = entry.carried_from.as_ref()?;
            Some((file.clone(), (from.checkpoint.clone(), from.file.clone())))
        })
        .collect()
}

/// The tensors of each file of checkpoint `name`.
fn tensors_by_file(cp: &Checkpointer, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let reader = cp.open(&path(name)).unwrap();
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, entry) in &reader.record().tensors {
        for chunk in &entry.chunks {
            files
                .entry(chunk.file.clone())
                .or_default()
                .insert(tensor.clone());
        }
    }
    files
}

#[test]
fn frozen_files_are_hard_linked_verify_alone_and_outlive_their_source() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(options(frozen()));
    let first = save(&cp, "step-1", 1, &state(1));
    assert_eq!(first.carried_files, 0);
    // The frozen tensors sit in files of their own from the first save on.
    for (file, tensors) in tensors_by_file(&cp, "step-1") {
        let bases = tensors.iter().filter(|t| t.starts_with("base.")).count();
        assert!(
            bases == 0 || bases == tensors.len(),
            "{file} mixes: {tensors:?}"
        );
    }
    let (one, two) = (state(1), state(2));
    let second = save(&cp, "step-2", 2, &two);
    let carried = carried(&cp, "step-2");
    assert_eq!(second.carried_files, 2, "{carried:?}");
    assert_eq!(carried.len(), 2);
    let files = tensors_by_file(&cp, "step-2");
    for (file, (from, source)) in &carried {
        assert_eq!(from, "step-1");
        assert!(files[file].iter().all(|t| t.starts_with("base.")));
        let new = std::fs::metadata(tmp.path().join("step-2/weights").join(file)).unwrap();
        let old = std::fs::metadata(tmp.path().join("step-1/weights").join(source)).unwrap();
        assert_eq!(new.ino(), old.ino(), "{file} is a hard link of {source}");
        assert!(new.is_file());
    }
    assert_eq!(
        second.carried_bytes,
        second.file_bytes - files_bytes(&cp, "step-2", |f| !carried.contains_key(f))
    );
    assert_whole(&cp, "step-1", &one);
    assert_whole(&cp, "step-2", &two);
    // Deleting the checkpoint the files came from leaves the new one whole.
    cp.storage()
        .remove_dir_all(&path("step-1"), &path("step-1/weights/metadata.json"))
        .unwrap();
    assert!(!tmp.path().join("step-1").exists());
    assert_whole(&cp, "step-2", &two);
    // And the next save carries from step-2, hard links of hard links.
    let third = save(&cp, "step-3", 3, &state(3));
    assert_eq!(third.carried_files, 2);
    assert!(
        carried_from_names(&cp, "step-3")
            .iter()
            .all(|c| c == "step-2")
    );
    assert_whole(&cp, "step-3", &state(3));
}

fn files_bytes(cp: &Checkpointer, name: &str, keep: impl Fn(&str) -> bool) -> u64 {
    let reader = cp.open(&path(name)).unwrap();
    let record = reader.record();
    record
        .files
        .iter()
        .filter(|(f, _)| keep(f))
        .map(|(_, e)| e.size)
        .sum()
}

fn carried_from_names(cp: &Checkpointer, name: &str) -> Vec<String> {
    carried(cp, name).into_values().map(|(c, _)| c).collect()
}

#[test]
fn unchanged_tensors_are_found_by_checksums_and_a_flipped_bit_is_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let counting = Arc::new(CountingStorage::new(local_storage(tmp.path()).unwrap()));
    let storage: SharedStorage = counting.clone();
    // Nothing marked frozen: the unchanged tensors are found by their block checksums.
    let detecting = SaveOptions {
        detect_unchanged: true,
        ..options(BTreeSet::new())
    };
    let cp = Checkpointer::new(storage).with_options(detecting);
    let one = state(1);
    save(&cp, "step-1", 1, &one);
    // The same bytes again: every file is carried over.
    let again = save(&cp, "step-2", 2, &one);
    assert_eq!(again.carried_files, again.files);
    assert_whole(&cp, "step-2", &one);
    // One bit of one trainable tensor flipped: the file holding it is written again, with the
    // new bit; the unchanged tensors of that file now go to files apart.
    let mut flipped = one.clone();
    flipped[4].1[1234] ^= 0x10;
    let third = save(&cp, "step-3", 3, &flipped);
    let carried3 = carried(&cp, "step-3");
    for (file, tensors) in tensors_by_file(&cp, "step-3") {
        if tensors.contains("lora.a") {
            assert!(
                !carried3.contains_key(&file),
                "{file} holds the changed tensor"
            );
        }
    }
    assert!(third.carried_files < third.files);
    assert_whole(&cp, "step-3", &flipped);
    // The next save with that tensor changed again writes little more than its bytes (a tensor
    // that changes seldom, like lora.b here, sits with the unchanged ones until it changes).
    let mut fourth_state = flipped.clone();
    fourth_state[4].1[99] ^= 0x01;
    counting.reset();
    let fourth = save(&cp, "step-4", 4, &fourth_state);
    let trainable = 10_000u64;
    let written = counting.counts().bytes_written;
    assert!(fourth.carried_files >= 2, "{fourth:?}");
    // The trainable tensors, a header page per file and the record.
    assert!(
        written < trainable + 3 * 4096 + 4096,
        "{written} bytes written for a {trainable}-byte trainable part"
    );
    assert_eq!(counting.counts().bytes_carried, fourth.carried_bytes);
    assert_whole(&cp, "step-4", &fourth_state);
}

/// Checksums are not bytes: without `detect_unchanged` (the default) a tensor not marked frozen is
/// written again even when its bytes are the same, so a changed block whose CRC-32C happens to
/// equal the old one can never keep stale bytes.
#[test]
fn by_default_only_frozen_tensors_are_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap())
        .with_options(options(BTreeSet::new()));
    let one = state(1);
    save(&cp, "step-1", 1, &one);
    let again = save(&cp, "step-2", 2, &one);
    assert_eq!(again.carried_files, 0);
    assert_whole(&cp, "step-2", &one);
}

#[test]
fn the_knob_off_writes_every_file() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let off = SaveOptions {
        incremental: false,
        ..options(frozen())
    };
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(off);
    save(&cp, "step-1", 1, &state(1));
    let second = save(&cp, "step-2", 2, &state(2));
    assert_eq!((second.carried_files, second.carried_bytes), (0, 0));
    assert!(carried(&cp, "step-2").is_empty());
    for entry in std::fs::read_dir(tmp.path().join("step-2/weights")).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.nlink(), 1);
    }
    assert_whole(&cp, "step-2", &state(2));
}

/// After an interrupted save of `runs/new` carrying from `runs/old`: `old` whole, `new` absent
/// or whole, and nothing else once the temporaries are cleaned up. Returns whether `new` is there.
fn check_after(cp: &Checkpointer, old: &State, new: &State) -> bool {
    assert_whole(cp, "runs/old", old);
    let exists = match cp.open(&path("runs/new")) {
        Ok(_) => {
            assert_whole(cp, "runs/new", new);
            true
        }
        Err(Error::NotFound { .. }) => false,
        Err(e) => panic!("a partial checkpoint is visible: {e}"),
    };
    cp.cleanup_temporaries(&path("runs")).unwrap();
    let names: Vec<String> = cp
        .storage()
        .list(&path("runs"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let expected = match exists {
        true => vec!["new", "old"],
        false => vec!["old"],
    };
    assert_eq!(names, expected);
    exists
}

/// The operations of a carrying save of `runs/new` after `runs/old` (one FaultyFs counts both;
/// the options share the history, so the second save carries from the first).
fn carrying_save_ops() -> (u64, u64) {
    let memory = Arc::new(MemoryFs::new());
    let faulty = Arc::new(FaultyFs::new(memory, FailpointPlan::default()));
    let cp =
        Checkpointer::new(Arc::new(FsStorage::new(faulty.clone()))).with_options(options(frozen()));
    save(&cp, "runs/old", 1, &state(1));
    let before = faulty.ops();
    let report = save(&cp, "runs/new", 2, &state(2));
    assert_eq!(report.carried_files, 2);
    (before, faulty.ops() - before)
}

#[test]
fn a_crash_at_any_operation_of_a_carrying_save_leaves_nothing_partial() {
    let (old, new) = (state(1), state(2));
    let (_, total) = carrying_save_ops();
    assert!(total > 10, "a save takes many operations, took {total}");
    let mut visible = 0;
    for n in 1..=total {
        let memory = Arc::new(MemoryFs::new());
        let opts = options(frozen());
        // The first save on the plain file system, the second through the fault injector; the
        // options (and so the history) are shared, and both describe the same root.
        let setup =
            Checkpointer::new(Arc::new(FsStorage::new(memory.clone()))).with_options(opts.clone());
        save(&setup, "runs/old", 1, &old);
        let faulty: Arc<dyn FileSystem> = Arc::new(FaultyFs::new(
            memory.clone(),
            FailpointPlan::new(FaultKind::Crash, n),
        ));
        let cp = Checkpointer::new(Arc::new(FsStorage::new(faulty))).with_options(opts);
        let result = cp.save(
            &path("runs/new"),
            &CheckpointMeta::at_step(2),
            &refs(&new),
            &(),
        );
        assert!(result.is_err(), "op {n} of {total} did not fail the save");
        memory.power_cut();
        if check_after(&setup, &old, &new) {
            visible += 1;
        }
    }
    // Only a crash after the rename became durable (the last operation) may keep the new one.
    assert!(
        visible <= 1,
        "{visible} crash points kept the new checkpoint"
    );
}

/// Saves `runs/old`, then `runs/new` on `counting`, whose second carry fails: the save fails with
/// the injected error and leaves nothing of `runs/new`. Returns the checkpointer and both states.
fn fail_the_second_carry(counting: Arc<CountingStorage>) -> (Checkpointer, State, State) {
    let cp = Checkpointer::new(counting).with_options(options(frozen()));
    let (old, new) = (state(1), state(2));
    save(&cp, "runs/old", 1, &old);
    let err = cp
        .save(
            &path("runs/new"),
            &CheckpointMeta::at_step(2),
            &refs(&new),
            &(),
        )
        .unwrap_err();
    assert!(is_injected(&err), "{err}");
    assert!(!check_after(&cp, &old, &new));
    (cp, old, new)
}

#[test]
fn a_failed_link_fails_the_save_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let counting = Arc::new(
        CountingStorage::new(local_storage(tmp.path()).unwrap()).fail_at(StorageOp::Carry, 2),
    );
    let (cp, old, new) = fail_the_second_carry(counting.clone());
    // One link was made before the second failed: the save was carrying, and undid it all.
    assert_eq!(counting.counts().of(StorageOp::Carry), 2);
    // The next save carries again.
    let report = save(&cp, "runs/new", 2, &new);
    assert_eq!(report.carried_files, 2);
    assert!(check_after(&cp, &old, &new));
}

#[test]
fn a_source_changed_on_disk_is_written_not_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(options(frozen()));
    save(&cp, "step-1", 1, &state(1));
    // Someone replaces a file of step-1 with one of another size: the header check refuses it.
    let victim = carried_candidates(&cp, "step-1");
    let file = tmp.path().join("step-1/weights").join(&victim);
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, b"not a shard").unwrap();
    let report = save(&cp, "step-2", 2, &state(2));
    assert_eq!(report.carried_files, 1);
    assert_whole(&cp, "step-2", &state(2));
}

/// A file of `name` holding base tensors only.
fn carried_candidates(cp: &Checkpointer, name: &str) -> String {
    tensors_by_file(cp, name)
        .into_iter()
        .find(|(_, t)| t.iter().all(|t| t.starts_with("base.")))
        .map(|(f, _)| f)
        .unwrap()
}

#[cfg(feature = "object-store")]
mod object {
    use super::*;
    use waypoint::storage::{ObjectStorage, ObjectStorageOptions};

    /// Carries over by server-side copy, and the copy outlives its source.
    fn copies_outlive_their_source(storage: SharedStorage) {
        let cp = Checkpointer::new(storage.clone()).with_options(options(frozen()));
        save(&cp, "step-1", 1, &state(1));
        let second = save(&cp, "step-2", 2, &state(2));
        assert_eq!(second.carried_files, 2);
        assert!(
            carried_from_names(&cp, "step-2")
                .iter()
                .all(|c| c == "step-1")
        );
        storage
            .remove_dir_all(&path("step-1"), &path("step-1/weights/metadata.json"))
            .unwrap();
        assert!(cp.open(&path("step-1")).is_err());
        assert_whole(&cp, "step-2", &state(2));
    }

    #[test]
    fn server_side_copies_in_memory() {
        let storage = ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap();
        copies_outlive_their_source(Arc::new(storage));
    }

    #[cfg(feature = "s3")]
    #[test]
    fn server_side_copies_on_s3s_fs() {
        let endpoint = crate::common::s3::shared();
        let storage = endpoint.storage("incremental", ObjectStorageOptions::default());
        copies_outlive_their_source(Arc::new(storage));
    }

    #[test]
    fn a_failed_copy_fails_the_save_and_leaves_nothing() {
        let inner = ObjectStorage::in_memory(ObjectStorageOptions::default()).unwrap();
        let counting = Arc::new(CountingStorage::new(Arc::new(inner)).fail_at(StorageOp::Carry, 2));
        fail_the_second_carry(counting);
    }
}

/// A model with a frozen base and a trainable part, as under LoRA.
struct Adapted {
    base: Vec<u8>,
    lora: Vec<u8>,
    step: u64,
}

impl waypoint::Checkpointable for Adapted {
    fn model_tensors(&self) -> Vec<TensorRef<'_>> {
        vec![
            TensorRef::whole("base", Dtype::U8, vec![self.base.len() as u64], &self.base),
            TensorRef::whole("lora", Dtype::U8, vec![self.lora.len() as u64], &self.lora),
        ]
    }
    fn trainer_state(&self) -> serde_json::Value {
        serde_json::json!({ "step": self.step })
    }
    fn restore_slots(&mut self) -> Vec<waypoint::SinkSlot<'_>> {
        Vec::new()
    }
    fn restore_trainer_state(&mut self, _: serde_json::Value) -> waypoint::Result<()> {
        Ok(())
    }
}

/// The committed checkpoints below `dir` (directories holding `weights/metadata.json`).
fn committed_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.join("weights/metadata.json").is_file() {
            found.push(path);
        } else if path.is_dir() && !path.is_symlink() {
            found.extend(committed_below(&path));
        }
    }
    found
}

#[test]
fn a_run_with_background_saves_carries_its_frozen_base_over() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = waypoint::ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(1)
        .save_last(waypoint::SaveLast::No)
        .every_n_train_steps(2)
        .build()
        .unwrap();
    let options = SaveOptions {
        frozen: ["base".to_owned()].into(),
        ..Default::default()
    };
    let mut run = waypoint::Run::builder()
        .log_dir(tmp.path())
        .name("lora")
        .checkpoint(policy)
        .save_options(options)
        .build()
        .unwrap();
    let mut model = Adapted {
        base: pattern(256 << 10, 3),
        lora: pattern(4096, 0),
        step: 0,
    };
    let mut saved = Vec::new();
    for step in 1..=8 {
        model.step = step;
        model.lora = pattern(4096, step as u8);
        saved.extend(run.step_end(step, 0, &model).unwrap());
    }
    saved.extend(run.wait_for_saves().unwrap());
    drop(run);
    assert_eq!(saved.len(), 4);
    // The last save carried the base over from the one before, which the top-1 rotation then
    // deleted: the one left is whole on its own.
    let previous = saved[2].name.clone();
    let left = committed_below(tmp.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let (parent, name) = (left[0].parent().unwrap(), left[0].file_name().unwrap());
    let cp = Checkpointer::new(local_storage(parent).unwrap());
    let name = name.to_str().unwrap();
    let carried = carried(&cp, name);
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert!(carried.values().all(|(from, _)| *from == previous));
    assert!(!parent.join(&previous).exists());
    let want: State = vec![
        ("base".into(), model.base.clone()),
        ("lora".into(), model.lora.clone()),
    ];
    assert_whole(&cp, name, &want);
}

/// Runs `args` with the pinned Python; panics with its output unless it succeeds.
fn python(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(test_python::python())
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_reads_a_carried_checkpoint_whose_source_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpointer::new(local_storage(tmp.path()).unwrap()).with_options(options(frozen()));
    save(&cp, "step-1", 1, &state(1));
    let two = state(2);
    assert_eq!(save(&cp, "step-2", 2, &two).carried_files, 2);
    cp.storage()
        .remove_dir_all(&path("step-1"), &path("step-1/weights/metadata.json"))
        .unwrap();
    let ckpt = tmp.path().join("step-2");
    // The reader written from docs/FORMAT.md alone, which knows nothing of `carried_from`.
    let reader = test_python::scripts_dir().join("reader.py");
    let summary: serde_json::Value =
        serde_json::from_str(&python(&[reader.as_os_str(), ckpt.as_os_str()])).unwrap();
    assert_eq!(summary["step"], 2);
    assert_eq!(summary["tensors"].as_object().unwrap().len(), two.len());
    // And safetensors reads every file, carried or not, as the plain file it is.
    let script = "import sys, glob, hashlib\n\
                  from safetensors.numpy import load_file\n\
                  seen = {}\n\
                  for f in sorted(glob.glob(sys.argv[1] + '/weights/*.safetensors')):\n\
                  \x20   for k, v in load_file(f).items():\n\
                  \x20       seen[k] = hashlib.sha256(v.tobytes()).hexdigest()\n\
                  for k in sorted(seen):\n\
                  \x20   print(k, seen[k])\n";
    let out = python(&["-c".as_ref(), script.as_ref(), ckpt.as_os_str()]);
    let want: Vec<String> = two
        .iter()
        .map(|(n, d)| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(d);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{n} {hex}")
        })
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}
