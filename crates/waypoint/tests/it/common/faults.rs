//! Accounting for injected faults (docs/TESTING.md, "Every injected failure accounted for"): a
//! test that injects a fault at each storage operation in turn must show, for each one, that it
//! surfaced as an error, or name the reason it could not: [`why_silent`] gives the reasons the
//! design allows, and nothing else passes.

use std::path::Path;
use waypoint::Checkpointer;
use waypoint::storage::{InjectedOp, SharedStorage, StoragePath, TEMP_MARKER};

/// Why an injected fault that did not stop the run is allowed to be silent, or `None` when no
/// documented reason applies (a failure that should have surfaced). `fired` is what the
/// `FaultyFs` injected, `ops` how many operations the run made, `n` the planned operation.
pub fn why_silent(fired: Option<&InjectedOp>, ops: u64, n: u64) -> Option<&'static str> {
    let Some(fired) = fired else {
        // Operations depend on which deletions and retries ran when: this run made fewer.
        return (ops < n).then_some("never reached: the run made fewer operations");
    };
    let top_level = |p: &Path| p.to_str().is_some_and(|s| s.matches('/').count() == 1);
    let in_deletion = fired.thread.as_deref() == Some("waypoint-delete")
        || fired
            .path
            .to_str()
            .is_some_and(|p| p.contains(TEMP_MARKER) && p.contains("-removed"));
    if in_deletion {
        // ARCHITECTURE.md, "A deletion that fails is retried after the next save, at `finish`,
        // and by a resumed run".
        return Some("a deletion of a superseded checkpoint: retried, not an error");
    }
    if fired.op == "stat"
        && top_level(&fired.path)
        && fired.thread.as_deref() != Some("waypoint-save")
    {
        // The policy's "is this name taken" (run/events.rs): a failed check reads as "free", and
        // the writer's own check before it writes refuses a name that exists (run_async.rs,
        // a_failed_existence_check_never_replaces_another_runs_checkpoint).
        return Some("the policy's name check: the writer checks again");
    }
    None
}

/// What a crash may leave, checked with the reader's own code: every visible name of the
/// checkpoints directory (not a hidden temporary) is a committed checkpoint, or a `-last` link
/// to one, that `verify` passes; hidden entries are temporaries of this library only (the next
/// setup removes them). `context` goes into the messages.
pub fn assert_disk_sound(storage: &SharedStorage, context: &str) {
    let root = StoragePath::root();
    let discovery = waypoint::resume::discover(storage.as_ref(), &root)
        .unwrap_or_else(|e| panic!("{context}: discover: {e}"));
    assert!(
        discovery.skipped.is_empty(),
        "{context}: visible directories that are not committed checkpoints: {:?}",
        discovery.skipped
    );
    let entries = storage
        .list(&root)
        .unwrap_or_else(|e| panic!("{context}: list: {e}"));
    for entry in entries {
        if entry.name.starts_with('.') {
            assert!(
                entry.name.contains(TEMP_MARKER),
                "{context}: a hidden entry that is not ours: {}",
                entry.name
            );
            continue;
        }
        let path = root.join(&entry.name).unwrap();
        let report = Checkpointer::new(storage.clone())
            .verify(&path, &mut |_| {})
            .unwrap_or_else(|e| panic!("{context}: verify {}: {e}", entry.name));
        assert!(
            report.is_ok(),
            "{context}: {} does not verify: {:?}",
            entry.name,
            report.problems
        );
    }
}
