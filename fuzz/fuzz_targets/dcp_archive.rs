//! Fuzzes the `torch.save` archive reader (`waypoint::dcp::zip::read_index` and
//! `waypoint::dcp::archive::{read_tensor, read_object}`): a `.distcp` item sliced out of its file.
//! Any input may be refused; none may panic or read outside the slice. An accepted tensor's bytes
//! must be exactly its shape's size; every accepted entry must lie inside the slice.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::dcp::{archive, zip};

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = zip::read_index(data) {
        for entry in &index.entries {
            assert!(entry.start + entry.len <= data.len());
            let _ = index.read(data, entry);
        }
    }
    if let Ok((t, bytes)) = archive::read_tensor(data) {
        let numel = waypoint::format::element_count(&t.shape).expect("checked by the reader");
        assert_eq!(t.dtype.byte_len(numel), Some(bytes.len() as u64));
    }
    let _ = archive::read_object(data);
});
