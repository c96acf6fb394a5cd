//! Event files on disk: names that sort in creation order across quick restarts, errors that
//! name the directory, and `sync`.

use super::*;

#[test]
fn writers_created_in_the_same_second_sort_in_creation_order() {
    let dir = TempDir::new().unwrap();
    let options = WriterOptions {
        hostname: Some("zz-host".into()),
        ..WriterOptions::default()
    };
    let mut paths = Vec::new();
    for i in 0..5 {
        let mut w = EventWriter::create(dir.path(), &options).unwrap();
        w.add_scalar("run", i as f32, i, 1.0).unwrap();
        w.flush().unwrap();
        paths.push(w.path().to_path_buf());
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(sorted, paths, "file names must sort in creation order");
    let name = paths[0].file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let parts: Vec<&str> = name
        .trim_start_matches("events.out.tfevents.")
        .split('.')
        .collect();
    assert_eq!(parts[0].len(), 10);
    assert_eq!(parts[1], "zz-host");
    assert_eq!(parts[2], std::process::id().to_string());
    // Each file is complete and readable.
    for (i, p) in paths.iter().enumerate() {
        let scalars = tfevents::read_scalars(p).unwrap();
        assert_eq!((scalars[0].step, scalars[0].value), (i as i64, i as f32));
    }
}

#[test]
fn a_new_file_sorts_after_a_file_from_the_future() {
    let dir = TempDir::new().unwrap();
    let future = dir.path().join("events.out.tfevents.9999999990.other.1.0");
    std::fs::write(&future, b"").unwrap();
    let w = EventWriter::create(dir.path(), &WriterOptions::default()).unwrap();
    let name = w.path().file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("events.out.tfevents.9999999991."),
        "{name}"
    );
}

#[test]
fn create_in_a_missing_directory_names_it() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    let err = EventWriter::create(&missing, &WriterOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path == &missing),
        "{err:?}"
    );
}

#[test]
fn sync_puts_the_records_in_the_file() {
    let dir = TempDir::new().unwrap();
    let mut w = EventWriter::create(dir.path(), &WriterOptions::default()).unwrap();
    w.add_scalar("a", 2.0, 3, 4.0).unwrap();
    w.sync().unwrap();
    let scalars = tfevents::read_scalars(w.path()).unwrap();
    assert_eq!(scalars.len(), 1);
    assert_eq!(
        (
            scalars[0].tag.as_str(),
            scalars[0].step,
            scalars[0].wall_time,
            scalars[0].value
        ),
        ("a", 3, 4.0, 2.0)
    );
}
