//! What a new user sees first: the message an error prints where `main` returns it (`Debug`,
//! which std's `main` uses), and `?` across crates built on waypoint.

use waypoint::{AutoResume, Run};

#[test]
fn an_error_returned_from_main_prints_what_to_do_not_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let resume = AutoResume::builder()
        .resume_if_exists(true)
        .build()
        .unwrap();
    let err = Run::builder()
        .log_dir(dir.path())
        .name("first")
        .resume(resume)
        .build()
        .unwrap_err();
    assert!(matches!(err, waypoint::Error::NoCheckpoint { .. }), "{err}");
    // std's `fn main() -> Result<(), E>` prints `Error: {err:?}`; so does `Box<dyn Error>`.
    let printed = format!("{:?}", Box::<dyn std::error::Error>::from(err));
    assert!(
        printed.contains("set resume_ignore_no_checkpoint to start from scratch"),
        "{printed}"
    );
    assert!(!printed.contains("NoCheckpoint {"), "{printed}");
}

#[test]
fn causes_the_message_does_not_quote_are_listed_under_it() {
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the disk said no")
        }
    }
    impl std::error::Error for Inner {}
    #[derive(Debug)]
    struct Outer(Inner);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("building the snapshot failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let err = waypoint::Error::caller("step 7", Outer(Inner));
    assert_eq!(
        format!("{err:?}"),
        "step 7: building the snapshot failed\n  caused by: the disk said no"
    );
}

/// Every file under `dir` with its bytes (relative paths, sorted).
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            match path.is_dir() {
                true => {
                    out.push((format!("{name}/"), Vec::new()));
                    stack.push(path);
                }
                false => out.push((name, std::fs::read(&path).unwrap())),
            }
        }
    }
    out.sort();
    out
}

fn logger(root: &std::path::Path, name: &str) -> waypoint::ExperimentLoggerBuilder {
    let policy = waypoint::ModelCheckpoint::builder()
        .no_monitor()
        .save_top_k(-1)
        .every_n_train_steps(2)
        .async_save(false)
        .build()
        .unwrap();
    waypoint::ExperimentLogger::builder()
        .log_dir(root)
        .name(name)
        .checkpoint(policy)
        .max_steps(4)
        .preemption_signals(vec![])
}

#[test]
fn a_setup_that_fails_on_a_knob_or_a_missing_checkpoint_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let required = AutoResume::builder()
        .resume_if_exists(true)
        .build()
        .unwrap();
    let err = logger(root.path(), "exp")
        .build()
        .unwrap()
        .setup(&required)
        .unwrap_err();
    assert!(matches!(err, waypoint::Error::NoCheckpoint { .. }), "{err}");
    // A name the run refuses (two path components): refused before `a/` is created.
    let err = logger(root.path(), "a/b")
        .build()
        .and_then(|l| l.setup(&AutoResume::default()))
        .unwrap_err();
    assert!(err.to_string().contains("\"a/b\""), "{err}");
    let left: Vec<String> = tree(root.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "a failed setup left files behind"
    );
}

#[test]
fn a_complete_run_started_again_changes_nothing_in_its_directory() {
    use crate::common::training::{Tiny, resume};
    let root = tempfile::tempdir().unwrap();
    let mut exp = logger(root.path(), "exp")
        .build()
        .unwrap()
        .setup(&resume())
        .unwrap();
    let mut toy = Tiny::new();
    while toy.step < 4 {
        toy.train_step();
        exp.run_mut().step_end(toy.step, 0, &toy).unwrap();
    }
    exp.finish(toy.step, 0, &toy).unwrap();
    let before = tree(root.path());
    assert!(
        before.iter().any(|(n, _)| n.ends_with("cmd-args.log")),
        "{before:?}"
    );

    let mut again = logger(root.path(), "exp")
        .build()
        .unwrap()
        .setup(&resume())
        .unwrap();
    let mut fresh = Tiny::new();
    let point = again.run_mut().restore(&mut fresh).unwrap().unwrap();
    assert!(point.completed);
    assert_eq!(
        fresh.step, 4,
        "the completed run's weights and state are loaded"
    );
    drop(again);
    let after = tree(root.path());
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&after),
        names(&before),
        "a run_N/ or a log file appeared"
    );
    assert_eq!(after, before, "a file changed");
}
