//! Fuzzes the safe pickle machine (`waypoint::dcp::pickle::parse`) and what reads its output: the
//! typed `.metadata` layer, a tensor archive's `data.pkl` description, and the bounded JSON
//! conversion of BYTE_IO objects. Any input may be refused; none may panic, recurse without bound
//! or allocate more than the input allows. An accepted `.metadata` must satisfy the reader's
//! invariants: chunks inside their tensor's shape, plain file names, an item per chunk.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::dcp::{archive, metadata, pickle};

fuzz_target!(|data: &[u8]| {
    let limits = pickle::Limits {
        max_nodes: 1 << 20,
        ..pickle::Limits::default()
    };
    let Ok(p) = pickle::parse(data, &limits) else {
        return;
    };
    assert!(p.nodes.len() <= data.len(), "more nodes than opcodes");
    let _ = p.to_json();
    let _ = archive::describe(&p);
    if let Ok(meta) = metadata::from_pickle(&p) {
        for (fqn, t) in &meta.tensors {
            for c in &t.chunks {
                for d in 0..t.shape.len() {
                    assert!(c.offsets[d] + c.sizes[d] <= t.shape[d]);
                }
                assert!(meta.item(fqn, Some(&c.offsets)).is_some());
            }
        }
        for item in &meta.items {
            assert!(!item.file.contains('/') && item.file != "..");
        }
    }
});
