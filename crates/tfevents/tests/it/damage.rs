//! Damaged files: truncated, corrupted, cut short by a failing disk or a killed writer, or
//! arbitrary bytes. The reader returns every complete record before the damage and reports the
//! damage with its byte offset.

use super::*;

#[test]
fn truncation_at_every_byte_of_the_last_record() {
    let bytes = write_to_vec(|w| {
        for step in 0..5 {
            w.add_scalars(step, 10.0, &[("a", step as f32), ("b", 1.5)])
                .unwrap();
        }
    });
    let last = *record_offsets(&bytes).last().unwrap();
    for cut in last..bytes.len() {
        let mut reader = EventReader::new(Cursor::new(&bytes[..cut]), "memory");
        let events: Vec<Event> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(events.len(), 5, "cut at {cut}"); // the file version and steps 0..=3
        assert_eq!(events[4].step, 3);
        assert_eq!(reader.offset(), last as u64, "cut at {cut}");
        assert_eq!(reader.leftover(), (cut - last) as u64, "cut at {cut}");
        assert!(reader.next().is_none(), "stays at the end");
    }
    let mut reader = EventReader::new(Cursor::new(&bytes[..]), "memory");
    assert_eq!(reader.by_ref().count(), 6);
    assert_eq!(
        (reader.offset(), reader.leftover()),
        (bytes.len() as u64, 0)
    );
}

#[test]
fn a_follower_resumes_once_the_record_is_complete() {
    let bytes = write_to_vec(|w| w.add_scalar("a", 1.0, 7, 1.0).unwrap());
    let last = *record_offsets(&bytes).last().unwrap();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("events.out.tfevents.0000000001.h.1.0");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&bytes[..last + 5]).unwrap();
    let mut reader = EventReader::open(&path).unwrap();
    assert_eq!(
        reader.next().unwrap().unwrap().file_version(),
        Some("brain.Event:2")
    );
    assert!(reader.next().is_none());
    assert_eq!(reader.leftover(), 5);
    file.write_all(&bytes[last + 5..]).unwrap();
    let event = reader.next().unwrap().unwrap();
    assert_eq!(event.step, 7);
    assert!(reader.next().is_none());
    assert_eq!(reader.leftover(), 0);
}

#[test]
fn flipped_data_byte_is_a_crc_error_at_the_record_offset() {
    let bytes = write_to_vec(|w| {
        for step in 0..4 {
            w.add_scalar("x", step as f32, step, 1.0).unwrap();
        }
    });
    let offsets = record_offsets(&bytes);
    let bad = offsets[2];
    let mut damaged = bytes.clone();
    damaged[bad + 12 + 3] ^= 0x40;
    let results: Vec<_> = EventReader::new(Cursor::new(&damaged), "run/file").collect();
    assert_eq!(results.len(), 5);
    match &results[2] {
        Err(Error::DataCrc {
            path,
            offset,
            stored,
            computed,
        }) => {
            assert_eq!(path, Path::new("run/file"));
            assert_eq!(*offset, bad as u64);
            assert_ne!(stored, computed);
        }
        other => panic!("{other:?}"),
    }
    let err = results[2].as_ref().unwrap_err();
    assert_eq!(err.offset(), Some(bad as u64));
    assert!(
        err.to_string().contains(&format!("byte offset {bad}")),
        "{err}"
    );
    // The length was intact, so the records after it are still read.
    assert_eq!(results[3].as_ref().unwrap().step, 2);
    assert_eq!(results[4].as_ref().unwrap().step, 3);
}

#[test]
fn flipped_length_byte_is_a_length_crc_error_and_ends_the_file() {
    let bytes = write_to_vec(|w| {
        for step in 0..4 {
            w.add_scalar("x", step as f32, step, 1.0).unwrap();
        }
    });
    let bad = record_offsets(&bytes)[3];
    let mut damaged = bytes.clone();
    damaged[bad + 1] ^= 0x01;
    let results: Vec<_> = EventReader::new(Cursor::new(&damaged), "f").collect();
    assert_eq!(results.len(), 4);
    assert!(
        matches!(results[3], Err(Error::LengthCrc { offset, .. }) if offset == bad as u64),
        "{:?}",
        results[3]
    );
    // Garbage where a header should be: the same error at that offset.
    let mut garbage = bytes[..bad].to_vec();
    garbage.extend_from_slice(b"this is not a record header at all");
    let err = EventReader::new(Cursor::new(&garbage), "f")
        .find_map(Result::err)
        .unwrap();
    assert!(
        matches!(err, Error::LengthCrc { offset, .. } if offset == bad as u64),
        "{err:?}"
    );
}

#[test]
fn data_that_is_not_an_event_is_a_decode_error_at_its_offset() {
    let mut bytes = write_to_vec(|_| {});
    let at = bytes.len();
    tfevents::record::append_record(&[0xff, 0xff, 0xff], &mut bytes);
    let results: Vec<_> = EventReader::new(Cursor::new(&bytes), "f").collect();
    assert!(matches!(results[1], Err(Error::Decode { offset, .. }) if offset == at as u64));
}

/// A writer that fails every write after the first `budget` bytes.
struct FailingDisk {
    written: Vec<u8>,
    budget: usize,
}

impl Write for FailingDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.budget.saturating_sub(self.written.len());
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = room.min(buf.len());
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_is_returned_and_the_writer_stops() {
    let disk = FailingDisk {
        written: Vec::new(),
        budget: 100,
    };
    let mut w = EventWriter::new(disk, "full-disk", 1.0).unwrap();
    let mut first_error = None;
    for step in 0..10 {
        if let Err(e) = w.add_scalar("loss", 1.0, step, 1.0) {
            first_error = Some((step, e));
            break;
        }
    }
    let (step, err) = first_error.expect("the disk fills up");
    assert!(
        matches!(&err, Error::Io { path, source } if path == Path::new("full-disk") && source.kind() == io::ErrorKind::StorageFull),
        "{err:?}"
    );
    assert!(matches!(
        w.add_scalar("loss", 1.0, step + 1, 1.0),
        Err(Error::WriterFailed { .. })
    ));
    assert!(matches!(w.flush(), Err(Error::WriterFailed { .. })));
}

#[test]
fn a_partial_write_leaves_complete_records_readable() {
    let full = write_to_vec(|w| {
        for step in 0..20 {
            w.add_scalar("loss", step as f32, step, 1.0).unwrap();
        }
    });
    for budget in (0..full.len()).step_by(7) {
        let disk = FailingDisk {
            written: Vec::new(),
            budget,
        };
        let Ok(mut w) = EventWriter::new(disk, "d", 1.0) else {
            continue;
        };
        for step in 0..20 {
            if w.add_scalar("loss", step as f32, step, 1.0).is_err() {
                break;
            }
        }
        let _ = w.flush();
        // What reached the disk is a prefix of the full file, readable up to its last record.
        let bytes = &w.get_ref().written;
        assert_eq!(&bytes[..], &full[..budget.min(full.len())]);
        let events = read_all(bytes);
        for (i, e) in events.iter().skip(1).enumerate() {
            assert_eq!(e.step, i as i64);
        }
    }
}

const CHILD_DIR: &str = "TFEVENTS_TEST_KILLED_WRITER_DIR";

/// Not a test of its own: the body of the child process of `a_killed_writer_leaves_...`.
#[test]
#[ignore = "the child process of a_killed_writer_leaves_…, run by it with --ignored --exact"]
fn killed_writer_child() {
    let dir = std::env::var_os(CHILD_DIR)
        .expect("run by a_killed_writer_leaves_…, which sets TFEVENTS_TEST_KILLED_WRITER_DIR");
    let mut w = EventWriter::create(&dir, &WriterOptions::default()).unwrap();
    // Bounded: the parent kills it long before this ends. After a few buffers have reached the
    // file it says so once on stdout, and the parent kills it while it keeps writing.
    let mut told = false;
    for step in 0..50_000_000i64 {
        w.add_scalars(step, 1.0, &[("loss", step as f32), ("lr", 0.5)])
            .unwrap();
        if !told && step == 100_000 {
            println!("written");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            told = true;
        }
    }
}

#[test]
fn a_killed_writer_leaves_a_file_readable_up_to_its_last_complete_record() {
    let dir = TempDir::new().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "--ignored",
            "damage::killed_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the child has written a few buffers' worth, then kill it mid-run.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("written"))),
        "the child ended without writing"
    );
    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(size > 0, "the child wrote nothing");
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut reader = EventReader::open(&path).unwrap();
    let events: Vec<Event> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    assert!(events.len() > 1000, "{} events", events.len());
    for (i, e) in events.iter().skip(1).enumerate() {
        assert_eq!(e.step, i as i64);
    }
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(reader.offset() + reader.leftover(), file_len);
}

proptest! {
    /// The reader never panics on arbitrary bytes, and accounts for every byte it read.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut reader = EventReader::new(Cursor::new(&bytes), "fuzz");
        for _ in reader.by_ref().take(1000) {}
        prop_assert!(reader.offset() + reader.leftover() <= bytes.len() as u64);
    }

    /// A valid file with one byte changed: every record before the damaged one comes back
    /// intact, and the damage is reported once, at the damaged record's offset.
    #[test]
    fn one_damaged_byte_is_contained(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let bytes = write_to_vec(|w| {
            for step in 0..6 {
                w.add_scalars(step, 2.0, &[("loss", step as f32), ("lr", 0.5)]).unwrap();
            }
        });
        let offsets = record_offsets(&bytes);
        let at = at.index(bytes.len());
        let damaged_record = offsets.iter().rposition(|&o| o <= at).unwrap();
        let mut damaged = bytes.clone();
        damaged[at] ^= xor;
        let results: Vec<_> = EventReader::new(Cursor::new(&damaged), "f").collect();
        for (i, result) in results.iter().enumerate().take(damaged_record) {
            let event = result.as_ref().unwrap();
            prop_assert_eq!(event.step, if i == 0 { 0 } else { i as i64 - 1 });
        }
        // CRC-32C catches every burst of up to 32 bits: exactly one error, at the damaged record.
        let errors = results.iter().filter(|r| r.is_err()).count();
        prop_assert_eq!(errors, 1, "{:?}", results);
        let offset = results[damaged_record].as_ref().unwrap_err().offset();
        prop_assert_eq!(offset, Some(offsets[damaged_record] as u64));
    }
}
