//! Crash safety of the commit protocol: a fault, a process crash or a power cut at every storage
//! operation of a save, checked on what survives (bytes and listings). Also the failpoint grammar,
//! and a real `abort()` in a child process on the local disk.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use tempfile::TempDir;
use waypoint::Error;
use waypoint::storage::{
    FAILPOINT_ENV, FailpointPlan, FaultKind, FaultyFs, FileSystem, FsStorage, LocalFs, MemoryFs,
    Storage, TEMP_MARKER, local_storage,
};

/// The older checkpoint every scenario starts from, and the one being saved.
const OLD: &str = "runs/old";
const NEW: &str = "runs/new";

/// A `MemoryFs` holding the committed (durable) checkpoint `runs/old`.
fn with_old_checkpoint() -> MemoryFs {
    let memory = MemoryFs::new();
    write_checkpoint(
        &FsStorage::new(Arc::new(memory.clone())),
        &path(OLD),
        &checkpoint(1),
    )
    .unwrap();
    memory
}

/// Saves `runs/new` through `fs`.
fn save_new(fs: Arc<dyn FileSystem>) -> waypoint::Result<()> {
    write_checkpoint(&FsStorage::new(fs), &path(NEW), &checkpoint(2))
}

/// How many storage operations a fault-free save of `runs/new` takes.
fn ops_of_a_save() -> u64 {
    let faulty = Arc::new(FaultyFs::new(
        Arc::new(with_old_checkpoint()),
        FailpointPlan::default(),
    ));
    save_new(faulty.clone()).unwrap();
    faulty.ops()
}

/// Checks what a restarted process would find, then cleans up: `old` intact; `new` absent or
/// complete; anything else a temporary that `cleanup_temporaries` removes and names. Returns
/// whether `new` is there.
fn check_recovery(storage: &dyn Storage, context: &str) -> bool {
    let runs = path("runs");
    assert_eq!(
        read_tree(storage, &path(OLD)).unwrap(),
        checkpoint(1),
        "{context}: old damaged"
    );
    let listing = names(storage, &runs);
    let has_new = listing.iter().any(|n| n == "new");
    if has_new {
        assert_eq!(
            read_tree(storage, &path(NEW)).unwrap(),
            checkpoint(2),
            "{context}: new is partial"
        );
    }
    let leftovers: Vec<String> = listing
        .into_iter()
        .filter(|n| n != "old" && n != "new")
        .collect();
    for name in &leftovers {
        assert!(
            name.starts_with(".new") && name.contains(TEMP_MARKER),
            "{context}: stray {name}"
        );
    }
    assert_eq!(
        storage.cleanup_temporaries(&runs).unwrap(),
        leftovers,
        "{context}"
    );
    let expected: &[&str] = if has_new { &["new", "old"] } else { &["old"] };
    assert_eq!(names(storage, &runs), expected, "{context}");
    has_new
}

/// (a) The process dies at operation N (every later operation fails): what is left, without a
/// power cut, is safe; `new` appears only once the rename has happened, and stays.
#[test]
fn process_crash_at_every_operation() {
    let total = ops_of_a_save();
    assert!(total > 10, "a save takes {total} operations");
    let mut appeared_at = None;
    for n in 1..=total {
        let memory = with_old_checkpoint();
        let faulty = FaultyFs::new(
            Arc::new(memory.clone()),
            FailpointPlan::new(FaultKind::Crash, n),
        );
        let err = save_new(Arc::new(faulty)).unwrap_err();
        assert!(is_injected(&err), "crash@{n}: {err:?}");
        let has_new = check_recovery(&FsStorage::new(Arc::new(memory)), &format!("crash@{n}"));
        match (has_new, appeared_at) {
            (true, None) => appeared_at = Some(n),
            (false, Some(first)) => {
                panic!("new visible after crash@{first} but not after crash@{n}")
            }
            _ => {}
        }
    }
    assert_eq!(
        appeared_at,
        Some(total),
        "only the last step (fsync of the parent) follows the rename"
    );
}

/// (a)+(b) Power cut after the first k operations, for every k, up to a completed save.
#[test]
fn power_cut_at_every_operation() {
    let total = ops_of_a_save();
    for done in 0..=total {
        let memory = with_old_checkpoint();
        let faulty = FaultyFs::new(
            Arc::new(memory.clone()),
            FailpointPlan::new(FaultKind::Crash, done + 1),
        );
        let result = save_new(Arc::new(faulty));
        assert_eq!(
            result.is_ok(),
            done == total,
            "after {done} operations: {result:?}"
        );
        memory.power_cut();
        let context = format!("power cut after {done} of {total} operations");
        let has_new = check_recovery(&FsStorage::new(Arc::new(memory)), &context);
        if done == total {
            assert!(has_new, "{context}: a committed save must survive");
        }
    }
}

/// (b) A power cut right after a successful save keeps it, byte for byte, and leaves nothing else.
#[test]
fn power_cut_after_commit_keeps_new() {
    let memory = with_old_checkpoint();
    save_new(Arc::new(memory.clone())).unwrap();
    memory.power_cut();
    let keys: Vec<String> = memory.snapshot().into_keys().collect();
    let mut expected: Vec<String> = checkpoint(1).keys().map(|k| format!("{OLD}/{k}")).collect();
    expected.extend(checkpoint(2).keys().map(|k| format!("{NEW}/{k}")));
    expected.sort();
    assert_eq!(keys, expected);
    assert!(check_recovery(
        &FsStorage::new(Arc::new(memory)),
        "power cut after commit"
    ));
}

/// A transient failure at any operation: the dropped transaction cleans up after itself, so no
/// temporary is left even before `cleanup_temporaries`.
#[test]
fn transient_failure_at_every_operation_cleans_up() {
    let total = ops_of_a_save();
    for n in 1..=total {
        let memory = with_old_checkpoint();
        let faulty = FaultyFs::new(
            Arc::new(memory.clone()),
            FailpointPlan::new(FaultKind::Fail, n),
        );
        let err = save_new(Arc::new(faulty)).unwrap_err();
        assert!(is_injected(&err), "fail@{n}: {err:?}");
        let storage = FsStorage::new(Arc::new(memory.clone()));
        let listing = names(&storage, &path("runs"));
        assert!(
            listing.iter().all(|n| !n.contains(TEMP_MARKER)),
            "fail@{n}: {listing:?}"
        );
        // Failing the final fsync of the parent reports an error after the rename took place.
        let expected: &[&str] = if n == total {
            &["new", "old"]
        } else {
            &["old"]
        };
        assert_eq!(listing, expected, "fail@{n}");
        check_recovery(&storage, &format!("fail@{n}"));
    }
}

/// `remove_dir_all` takes the commit record first: interrupted at any point (with or without a
/// power cut), a checkpoint whose record is still there is complete.
#[test]
fn remove_dir_all_interrupted_never_leaves_a_record_without_its_files() {
    let record = path(OLD).join(RECORD).unwrap();
    let counting = Arc::new(FaultyFs::new(
        Arc::new(with_old_checkpoint()),
        FailpointPlan::default(),
    ));
    FsStorage::new(counting.clone())
        .remove_dir_all(&path(OLD), &record)
        .unwrap();
    let total = counting.ops();
    for n in 1..=total {
        for power_cut in [false, true] {
            let memory = with_old_checkpoint();
            let faulty = FaultyFs::new(
                Arc::new(memory.clone()),
                FailpointPlan::new(FaultKind::Crash, n),
            );
            assert!(
                FsStorage::new(Arc::new(faulty))
                    .remove_dir_all(&path(OLD), &record)
                    .is_err()
            );
            if power_cut {
                memory.power_cut();
            }
            let storage = FsStorage::new(Arc::new(memory));
            if storage.stat(&record).unwrap().is_some() {
                assert_eq!(
                    read_tree(&storage, &path(OLD)).unwrap(),
                    checkpoint(1),
                    "crash@{n}, cut {power_cut}"
                );
            }
        }
    }
}

/// (c) A full disk fails the save with `NoSpace` naming the file; abort leaves only `old`.
#[test]
fn no_space_fails_the_save_and_abort_leaves_nothing() {
    let memory = with_old_checkpoint();
    let faulty = FaultyFs::new(
        Arc::new(memory.clone()),
        FailpointPlan::new(FaultKind::NoSpace, 2000),
    );
    let storage = FsStorage::new(Arc::new(faulty));
    let txn = storage.begin(&path(NEW)).unwrap();
    let files = checkpoint(2);
    let shard = "weights/shard-00000.safetensors";
    let handle = txn.create(&path(shard), files[shard].len() as u64).unwrap();
    let mut outcomes = files[shard]
        .chunks(512)
        .enumerate()
        .map(|(i, c)| handle.write_at(i as u64 * 512, c));
    assert_eq!(
        outcomes.by_ref().take_while(Result::is_ok).count(),
        3,
        "1536 bytes fit in 2000"
    );
    let err = assert_err!(handle.write_at(0, b"x"), Error::NoSpace { .. });
    assert!(err.to_string().contains("shard-00000"), "{err}");
    drop(handle);
    txn.abort().unwrap();
    assert_eq!(names(&storage, &path("runs")), ["old"]);
    let keys = memory.snapshot().into_keys();
    assert!(keys.into_iter().all(|k| k.starts_with("runs/old/")));

    // Exactly enough space is enough.
    let needed: usize = files.values().map(Vec::len).sum();
    let memory = with_old_checkpoint();
    let plan = FailpointPlan::new(FaultKind::NoSpace, needed as u64);
    save_new(Arc::new(FaultyFs::new(Arc::new(memory.clone()), plan))).unwrap();
    check_recovery(&FsStorage::new(Arc::new(memory)), "enough space");
}

/// (d) A torn write is reported, and only its first half reached the file.
#[test]
fn short_write_is_reported_and_tears_the_data() {
    // Find the index of the first write: begin and create, counted.
    let counting = Arc::new(FaultyFs::new(
        Arc::new(MemoryFs::new()),
        FailpointPlan::default(),
    ));
    let txn = FsStorage::new(counting.clone()).begin(&path(NEW)).unwrap();
    drop(txn.create(&path("weights/shard"), 8).unwrap());
    let first_write = counting.ops() + 1;
    drop(txn);

    let memory = MemoryFs::new();
    let plan = FailpointPlan::new(FaultKind::ShortWrite, first_write);
    let storage = FsStorage::new(Arc::new(FaultyFs::new(Arc::new(memory.clone()), plan)));
    let txn = storage.begin(&path(NEW)).unwrap();
    let handle = txn.create(&path("weights/shard"), 8).unwrap();
    let err = assert_err!(handle.write_at(0, b"abcdefgh"), Error::InjectedFault { .. });
    assert!(err.to_string().contains("weights/shard"), "{err}");
    let files = memory.snapshot();
    let torn: Vec<_> = files
        .iter()
        .filter(|(k, _)| k.ends_with("/weights/shard"))
        .collect();
    assert_eq!(torn.len(), 1, "{files:?}");
    assert_eq!(torn[0].1, b"abcd\0\0\0\0");
    handle.write_at(0, b"abcdefgh").unwrap(); // a later write goes through
    assert_eq!(memory.snapshot()[torn[0].0.as_str()], b"abcdefgh");
}

/// (e) The failpoint grammar, good and bad.
#[test]
fn failpoint_plan_parsing() {
    use FaultKind::*;
    /// Text, the clauses it means, and how it prints back.
    type Case = (&'static str, &'static [(FaultKind, u64)], &'static str);
    let good: &[Case] = &[
        ("", &[], ""),
        ("  ", &[], ""),
        ("fail@3", &[(Fail, 3)], "fail@3"),
        ("crash@1", &[(Crash, 1)], "crash@1"),
        ("abort@12", &[(Abort, 12)], "abort@12"),
        ("short@2", &[(ShortWrite, 2)], "short@2"),
        ("enospc@0", &[(NoSpace, 0)], "enospc@0"),
        ("pause-write@7", &[(PauseWrite, 7)], "pause-write@7"),
        (
            " fail@3 , crash@9",
            &[(Fail, 3), (Crash, 9)],
            "fail@3,crash@9",
        ),
        (
            "enospc@1048576,short@4,fail@4",
            &[(NoSpace, 1 << 20), (ShortWrite, 4), (Fail, 4)],
            "enospc@1048576,short@4,fail@4",
        ),
    ];
    for (text, clauses, canonical) in good {
        let plan: FailpointPlan = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(plan.clauses(), *clauses, "{text:?}");
        assert_eq!(plan.to_string(), *canonical);
        assert_eq!(
            canonical.parse::<FailpointPlan>().unwrap(),
            plan,
            "round trip of {text:?}"
        );
    }
    let bad = [
        "fail",
        "fail@",
        "@3",
        "fail@x",
        "fail@0",
        "crash@0",
        "abort@0",
        "short@0",
        "boom@3",
        "FAIL@3",
        "fail@-1",
        "fail@3,",
        "fail@3,,crash@4",
        "fail@3;crash@4",
        "fail@1@2",
        "fail@ 3",
        "fail@18446744073709551616",
    ];
    for text in bad {
        let err = assert_err!(text.parse::<FailpointPlan>(), Error::InvalidArgument { .. });
        assert!(
            err.to_string().contains("failpoint plan"),
            "{text:?}: {err}"
        );
    }
    assert_eq!(
        FailpointPlan::new(Fail, 1).and(Crash, 2).to_string(),
        "fail@1,crash@2"
    );
    assert!(FailpointPlan::default().is_empty());
}

// ---- (f) real crashes: child processes re-running this test binary ----------------------------

/// Set (to a storage root) in a child process started by one of the tests below.
const CHILD_ROOT: &str = "WAYPOINT_TEST_CHILD_ROOT";

/// Runs the child test `{name}_child` of this module in a child process, on `root`, with `failpoint`.
fn run_child(name: &str, root: &Path, failpoint: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("storage_faults::{name}_child"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, root)
        .env(FAILPOINT_ENV, failpoint)
        .output()
        .unwrap()
}

fn child_root() -> Option<std::path::PathBuf> {
    std::env::var_os(CHILD_ROOT).map(Into::into)
}

fn describe(output: &Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    format!("{:?}\n--- stdout\n{out}\n--- stderr\n{err}", output.status)
}

/// The child saves `runs/new` through `local_storage` with the failpoint from the environment.
/// In the parent: for every operation N of that save, a child is killed by `abort@N`; the parent
/// then finds `old` intact, no visible partial `new`, and only temporaries to clean up.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "reads WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn abort_in_a_child_process_at_every_operation() {
    let old_only = |dir: &TempDir| -> FsStorage {
        let storage = FsStorage::new(Arc::new(LocalFs::new(dir.path()).unwrap()));
        write_checkpoint(&storage, &path(OLD), &checkpoint(1)).unwrap();
        storage
    };
    let counting_dir = TempDir::new().unwrap();
    old_only(&counting_dir);
    let local = Arc::new(LocalFs::new(counting_dir.path()).unwrap());
    let counting = Arc::new(FaultyFs::new(local, FailpointPlan::default()));
    save_new(counting.clone()).unwrap();
    let total = counting.ops();

    for n in 1..=total {
        let dir = TempDir::new().unwrap();
        let storage = old_only(&dir);
        let output = run_child(
            "abort_in_a_child_process_at_every_operation",
            dir.path(),
            &format!("abort@{n}"),
        );
        assert!(
            !output.status.success() && output.status.code().is_none(),
            "abort@{n}: {}",
            describe(&output)
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "abort@{n}: {}",
            describe(&output)
        );
        let has_new = check_recovery(&storage, &format!("abort@{n}"));
        assert!(
            !has_new || n == total,
            "abort@{n}: new visible before the rename"
        );
    }
}

/// Not a test of its own: the child process of
/// `abort_in_a_child_process_at_every_operation`, which runs it.
#[test]
#[ignore = "the child process of abort_in_a_child_process_at_every_operation, run by it with --ignored --exact"]
fn abort_in_a_child_process_at_every_operation_child() {
    let root = child_root().expect(
        "run by abort_in_a_child_process_at_every_operation, which sets WAYPOINT_TEST_CHILD_ROOT",
    );
    // No core files from the deliberate aborts.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit for the duration of the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let storage = local_storage(&root).unwrap();
    write_checkpoint(storage.as_ref(), &path(NEW), &checkpoint(2)).unwrap();
}

/// `local_storage` reads the failpoint variable: empty means none, a plan is injected, a bad plan
/// is refused naming the variable.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "reads WAYPOINT_FAILPOINT: needs --features fault-injection (scripts/test.sh has it)"
)]
fn failpoint_env_configures_local_storage() {
    for plan in ["", "fail@1", "explode@1"] {
        let dir = TempDir::new().unwrap();
        let output = run_child("failpoint_env_configures_local_storage", dir.path(), plan);
        assert!(output.status.success(), "{plan:?}: {}", describe(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("1 passed"),
            "{plan:?}: the child ran the test: {stdout}"
        );
    }
}

/// Not a test of its own: the child process of
/// `failpoint_env_configures_local_storage`, which runs it.
#[test]
#[ignore = "the child process of failpoint_env_configures_local_storage, run by it with --ignored --exact"]
fn failpoint_env_configures_local_storage_child() {
    let root = child_root().expect(
        "run by failpoint_env_configures_local_storage, which sets WAYPOINT_TEST_CHILD_ROOT",
    );
    let plan = std::env::var(FAILPOINT_ENV).unwrap();
    match plan.as_str() {
        "" => assert!(
            local_storage(&root)
                .unwrap()
                .list(&path(""))
                .unwrap()
                .is_empty()
        ),
        "fail@1" => {
            let storage = local_storage(&root).unwrap();
            assert_err!(
                storage.list(&path("")),
                Error::InjectedFault { op_index: 1, .. }
            );
            assert!(storage.list(&path("")).unwrap().is_empty());
        }
        _ => {
            let err = assert_err!(local_storage(&root), Error::InvalidArgument { .. });
            assert!(err.to_string().contains(FAILPOINT_ENV), "{err}");
        }
    }
}

/// Without the `fault-injection` feature (the build users get), the failpoint variable is never
/// read: a stray `WAYPOINT_FAILPOINT` in a user's job neither fails an operation nor refuses a
/// plan it cannot parse. The child saves and lists through `local_storage`.
#[test]
#[cfg(not(feature = "fault-injection"))]
fn a_stray_failpoint_variable_changes_nothing_without_the_feature() {
    for plan in ["fail@1", "crash@1", "abort@1", "explode@1"] {
        let dir = TempDir::new().unwrap();
        let output = run_child(
            "a_stray_failpoint_variable_changes_nothing_without_the_feature",
            dir.path(),
            plan,
        );
        assert!(output.status.success(), "{plan:?}: {}", describe(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("1 passed"), "{plan:?}: {stdout}");
        let storage = FsStorage::new(Arc::new(LocalFs::new(dir.path()).unwrap()));
        assert_eq!(
            read_tree(&storage, &path(NEW)).unwrap(),
            checkpoint(2),
            "{plan:?}"
        );
    }
}

/// Not a test of its own: the child process of
/// `a_stray_failpoint_variable_changes_nothing_without_the_feature`, which runs it.
#[test]
#[cfg(not(feature = "fault-injection"))]
#[ignore = "the child process of a_stray_failpoint_variable_changes_nothing_without_the_feature, run by it with --ignored --exact"]
fn a_stray_failpoint_variable_changes_nothing_without_the_feature_child() {
    let root = child_root().expect("run by a_stray_failpoint_variable_changes_nothing_without_the_feature, which sets WAYPOINT_TEST_CHILD_ROOT");
    let storage = local_storage(&root).unwrap();
    write_checkpoint(storage.as_ref(), &path(NEW), &checkpoint(2)).unwrap();
    assert_eq!(storage.list(&path("runs")).unwrap().len(), 1);
}
