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
