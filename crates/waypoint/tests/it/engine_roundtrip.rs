//! The save/load engine end to end on real local storage: every dtype, odd shapes and names, split
//! tensors, regions, caller-owned buffers, zero-copy views, the trainer state, and what a
//! third-party reader (the `safetensors` crate) sees in our shard files.

use proptest::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use waypoint::storage::{StoragePath, local_storage};
use waypoint::{
    CheckpointMeta, Checkpointer, Dtype, Error, LoadOptions, RegionSlot, SaveOptions, SinkSlot,
    Tensor, TensorRef,
};

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn byte_len(dtype: Dtype, shape: &[u64]) -> usize {
    dtype.byte_len(shape.iter().product()).unwrap() as usize
}

fn checkpointer(dir: &std::path::Path, options: SaveOptions) -> Checkpointer {
    Checkpointer::new(local_storage(dir).unwrap()).with_options(options)
}

fn path(s: &str) -> StoragePath {
    StoragePath::new(s).unwrap()
}

#[test]
fn every_dtype_and_odd_shapes_round_trip_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path(), SaveOptions::default());
    let mut expected: BTreeMap<String, Tensor> = BTreeMap::new();
    for (i, dtype) in Dtype::ALL.into_iter().enumerate() {
        let shape = if dtype.is_sub_byte() {
            vec![3, 8]
        } else {
            vec![5, 7]
        };
        let data = bytes(i as u64, byte_len(dtype, &shape));
        expected.insert(format!("dtype/{dtype}"), Tensor { dtype, shape, data });
    }
    for (name, dtype, shape) in [
        ("empty.weight", Dtype::F32, vec![0, 4]),
        ("scalar", Dtype::F64, vec![]),
        ("model.layers.0/attn.q_proj.weight", Dtype::BF16, vec![3, 5]),
        ("représentation.權重", Dtype::I16, vec![2]),
    ] {
        let data = bytes(name.len() as u64, byte_len(dtype, &shape));
        expected.insert(name.to_owned(), Tensor { dtype, shape, data });
    }
    let state = serde_json::json!({"lr": 0.001, "rng": [u64::MAX, 1, 2], "data_position": 12345});
    let meta = CheckpointMeta {
        step: 42,
        epoch: 3,
        ..Default::default()
    };
    let report = cp.save(&path("ckpt"), &meta, &expected, &state).unwrap();
    assert_eq!(report.step, 42);
    assert_eq!(report.chunks, expected.len());

    let reader = cp.open(&path("ckpt")).unwrap();
    assert_eq!(
        (
            reader.record().step,
            reader.record().epoch,
            reader.record().world_size
        ),
        (42, 3, 1)
    );
    assert_eq!(reader.user_state::<serde_json::Value>().unwrap(), state);
    assert_eq!(reader.load_all(&LoadOptions::default()).unwrap(), expected);
    for options in [
        LoadOptions {
            verify_checksums: false,
            threads: 1,
        },
        LoadOptions {
            verify_checksums: true,
            threads: 3,
        },
    ] {
        assert_eq!(reader.load_all(&options).unwrap(), expected);
    }

    // The safetensors crate parses every shard and sees the same bytes; data starts on 4 KiB.
    let weights = tmp.path().join("ckpt/weights");
    let mut seen = 0;
    for entry in std::fs::read_dir(&weights).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let file = std::fs::read(&p).unwrap();
            let n = u64::from_le_bytes(file[..8].try_into().unwrap());
            assert_eq!(
                (8 + n) % 4096,
                0,
                "{} data section not 4 KiB aligned",
                p.display()
            );
            let st = safetensors::SafeTensors::deserialize(&file).unwrap();
            for (name, view) in st.tensors() {
                let want = &expected[&name];
                assert_eq!(view.data(), want.data.as_slice(), "{name}");
                assert_eq!(
                    view.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(),
                    want.shape,
                    "{name}"
                );
                let offset = view.data().as_ptr() as usize - file.as_ptr() as usize;
                assert_eq!(
                    offset as u64 % want.dtype.alignment(),
                    0,
                    "{name} misaligned"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, expected.len());
}

#[test]
fn split_tensors_reassemble_and_regions_read_across_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(
        tmp.path(),
        SaveOptions {
            block_size: 64,
            ..Default::default()
        },
    );
    // A 6x10 f32 tensor in four boxes: rows 0..3 / 3..6 × columns 0..4 / 4..10.
    let global: Vec<u8> = bytes(7, 6 * 10 * 4);
    let boxes = [
        ([0u64, 0u64], [3u64, 4u64]),
        ([0, 4], [3, 6]),
        ([3, 0], [3, 4]),
        ([3, 4], [3, 6]),
    ];
    let slice = |off: [u64; 2], size: [u64; 2]| -> Vec<u8> {
        (off[0]..off[0] + size[0])
            .flat_map(|r| {
                let start = ((r * 10 + off[1]) * 4) as usize;
                global[start..start + (size[1] * 4) as usize].to_vec()
            })
            .collect()
    };
    let chunks: Vec<Vec<u8>> = boxes.iter().map(|&(o, s)| slice(o, s)).collect();
    let mut tensors: Vec<TensorRef> = boxes
        .iter()
        .zip(&chunks)
        .map(|(&(o, s), data)| {
            TensorRef::chunk(
                "w",
                Dtype::F32,
                vec![6, 10],
                o.to_vec(),
                s.to_vec(),
                data.as_slice(),
            )
        })
        .collect();
    let bias = bytes(9, 40);
    tensors.push(TensorRef::whole(
        "bias",
        Dtype::F32,
        vec![10],
        bias.as_slice(),
    ));
    cp.save(&path("split"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();

    let reader = cp.open(&path("split")).unwrap();
    assert_eq!(reader.record().tensors["w"].chunks.len(), 4);
    assert_eq!(
        reader.record().files.len(),
        4,
        "one chunk of a tensor per file"
    );
    assert_eq!(
        reader
            .load_tensor("w", &LoadOptions::default())
            .unwrap()
            .data,
        global
    );
    for (off, size) in [
        ([1u64, 2u64], [4u64, 5u64]),
        ([0, 0], [6, 10]),
        ([5, 9], [1, 1]),
        ([2, 0], [2, 10]),
        ([0, 3], [6, 2]),
    ] {
        let mut out = vec![0u8; (size[0] * size[1] * 4) as usize];
        reader
            .read_region("w", &off, &size, &mut out, &LoadOptions::default())
            .unwrap();
        assert_eq!(out, slice(off, size), "region {off:?}+{size:?}");
    }
    // Every file with a chunk of the split tensor carries DCP_SHARDING_INFO for all its tensors.
    for name in reader.record().files.keys() {
        let file = std::fs::read(tmp.path().join("split/weights").join(name)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        let info = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("DCP_SHARDING_INFO"))
            .expect("DCP_SHARDING_INFO");
        let info: serde_json::Value = serde_json::from_str(info).unwrap();
        let tensors = meta.tensors();
        for n in tensors.keys() {
            assert!(
                info.get(n.as_str()).is_some(),
                "{name}: {n} missing from DCP_SHARDING_INFO"
            );
        }
    }
}

/// One slot per region `(tensor, first row, rows, first column, columns)` of `[8, 4]` tensors
/// `names`, each into its buffer of `bufs`.
fn slots_of<'a>(
    bufs: &'a mut [Vec<u8>],
    regions: &[(usize, u64, u64, u64, u64)],
    boxes: &'a [([u64; 2], [u64; 2])],
    names: &[&'a str],
    shape: &'a [u64],
) -> Vec<RegionSlot<'a>> {
    (bufs.iter_mut().zip(regions).zip(boxes))
        .map(|((buf, &(t, ..)), (offsets, sizes))| RegionSlot {
            name: names[t],
            dtype: Dtype::U8,
            global_shape: shape,
            offsets,
            shape: sizes,
            data: buf,
        })
        .collect()
}

/// A rank's regions of several tensors, each across several chunks, in one `load_regions` call
/// (planned together, read on one pool); a call with one bad slot is refused before any byte is
/// read, so the earlier slots' buffers are untouched.
#[test]
fn load_regions_reads_many_regions_at_once_and_checks_them_all_first() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(
        tmp.path(),
        SaveOptions {
            block_size: 64,
            ..Default::default()
        },
    );
    // Two 8x4 u8 tensors, each saved in row chunks of 3, 3 and 2 rows.
    let globals = [bytes(3, 32), bytes(4, 32)];
    let names = ["a", "b"];
    let mut tensors = Vec::new();
    for (name, global) in names.iter().zip(&globals) {
        for (first, rows) in [(0u64, 3u64), (3, 3), (6, 2)] {
            let data = &global[(first * 4) as usize..((first + rows) * 4) as usize];
            let (offsets, sizes) = (vec![first, 0], vec![rows, 4]);
            tensors.push(TensorRef::chunk(
                *name,
                Dtype::U8,
                vec![8, 4],
                offsets,
                sizes,
                data,
            ));
        }
    }
    cp.save(&path("regions"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();
    let reader = cp.open(&path("regions")).unwrap();
    // (tensor, first row, rows, first column, columns)
    let regions: [(usize, u64, u64, u64, u64); 4] = [
        (0, 2, 5, 0, 4),
        (1, 0, 8, 1, 2),
        (0, 7, 1, 3, 1),
        (1, 5, 2, 0, 4),
    ];
    let expected = |&(t, r, n, c, m): &(usize, u64, u64, u64, u64)| -> Vec<u8> {
        (r..r + n)
            .flat_map(|row| globals[t][(row * 4 + c) as usize..(row * 4 + c + m) as usize].to_vec())
            .collect()
    };
    let shape = [8u64, 4];
    let boxes: Vec<([u64; 2], [u64; 2])> = regions
        .iter()
        .map(|&(_, r, n, c, m)| ([r, c], [n, m]))
        .collect();
    let mut bufs: Vec<Vec<u8>> = regions
        .iter()
        .map(|&(_, _, n, _, m)| vec![0; (n * m) as usize])
        .collect();
    let mut slots = slots_of(&mut bufs, &regions, &boxes, &names, &shape);
    reader
        .load_regions(&mut slots, &LoadOptions::default())
        .unwrap();
    drop(slots);
    for (buf, region) in bufs.iter().zip(&regions) {
        assert_eq!(*buf, expected(region), "region {region:?}");
    }

    // The last slot's buffer is one byte short: refused, and nothing was read into the others.
    let mut bufs: Vec<Vec<u8>> = regions
        .iter()
        .map(|&(_, _, n, _, m)| vec![0; (n * m) as usize])
        .collect();
    bufs[3].pop();
    let mut slots = slots_of(&mut bufs, &regions, &boxes, &names, &shape);
    let err = reader
        .load_regions(&mut slots, &LoadOptions::default())
        .unwrap_err();
    drop(slots);
    assert!(err.to_string().contains("buffer has 7 bytes"), "{err}");
    assert!(
        bufs.iter().all(|b| b.iter().all(|&x| x == 0)),
        "a buffer was written"
    );
}

#[test]
fn a_region_reads_and_verifies_only_the_blocks_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(
        tmp.path(),
        SaveOptions {
            block_size: 4096,
            ..Default::default()
        },
    );
    let data = bytes(3, 64 * 1024);
    let tensors = vec![TensorRef::whole(
        "big",
        Dtype::U8,
        vec![64, 1024],
        data.as_slice(),
    )];
    cp.save(&path("c"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();
    let reader = cp.open(&path("c")).unwrap();
    let chunk = reader.record().tensors["big"].chunks[0].clone();
    // Damage one byte in the last block (rows 60..64).
    let file = tmp.path().join("c/weights").join(&chunk.file);
    let mut raw = std::fs::read(&file).unwrap();
    let damaged = chunk.byte_range[0] as usize + 62 * 1024 + 5;
    raw[damaged] ^= 0x10;
    std::fs::write(&file, &raw).unwrap();
    let reader = cp.open(&path("c")).unwrap();

    let mut rows = vec![0u8; 4 * 1024];
    reader
        .read_region(
            "big",
            &[8, 0],
            &[4, 1024],
            &mut rows,
            &LoadOptions::default(),
        )
        .unwrap();
    assert_eq!(rows, data[8 * 1024..12 * 1024]);
    let err = reader
        .read_region(
            "big",
            &[61, 0],
            &[2, 1024],
            &mut vec![0u8; 2048],
            &LoadOptions::default(),
        )
        .unwrap_err();
    match &err {
        Error::Checksum {
            path,
            what,
            start,
            end,
            ..
        } => {
            assert!(path.ends_with(&chunk.file), "{err}");
            assert!(what.contains("big"), "{err}");
            assert!((*start..*end).contains(&(damaged as u64)), "{err}");
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    // The explicit opt-out reads the damaged bytes as they are.
    let loose = LoadOptions {
        verify_checksums: false,
        ..Default::default()
    };
    let all = reader.load_tensor("big", &loose).unwrap();
    assert_eq!(
        all.data[damaged - chunk.byte_range[0] as usize],
        data[62 * 1024 + 5] ^ 0x10
    );
}

#[test]
fn loads_in_place_into_caller_buffers_and_checks_what_they_expect() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path(), SaveOptions::default());
    let a = bytes(1, 4 * 1000);
    let b = bytes(2, 2 * 16);
    let tensors = vec![
        TensorRef::whole("a", Dtype::F32, vec![1000], a.as_slice()),
        TensorRef::whole("b", Dtype::BF16, vec![4, 4], b.as_slice()),
    ];
    cp.save(&path("c"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();
    let reader = cp.open(&path("c")).unwrap();

    let mut buf_a = vec![0u8; a.len()];
    let shape_a = [1000u64];
    let mut slots = vec![SinkSlot {
        name: "a",
        dtype: Dtype::F32,
        shape: &shape_a,
        data: &mut buf_a,
    }];
    reader
        .load_into(&mut slots, &LoadOptions::default())
        .unwrap();
    assert_eq!(buf_a, a);

    let mut wrong = vec![0u8; 32];
    let shape_b = [4u64, 4];
    let mut slots = vec![SinkSlot {
        name: "b",
        dtype: Dtype::F16,
        shape: &shape_b,
        data: &mut wrong,
    }];
    let err = reader
        .load_into(&mut slots, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"b\"") && err.contains("BF16"), "{err}");
    let mut slots = vec![SinkSlot {
        name: "nope",
        dtype: Dtype::F16,
        shape: &shape_b,
        data: &mut wrong,
    }];
    let err = reader
        .load_into(&mut slots, &LoadOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor { ref tensor, .. } if tensor == "nope"),
        "{err}"
    );
}

#[test]
fn views_are_zero_copy_on_local_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path(), SaveOptions::default());
    let a = bytes(1, 3 << 20);
    let tensors = vec![TensorRef::whole(
        "a",
        Dtype::U8,
        vec![3 << 20],
        a.as_slice(),
    )];
    cp.save(&path("c"), &CheckpointMeta::at_step(1), &tensors, &())
        .unwrap();
    let reader = cp.open(&path("c")).unwrap();
    let view = reader.view("a", &LoadOptions::default()).unwrap();
    assert!(
        matches!(view, Cow::Borrowed(_)),
        "expected a borrowed (mapped) view"
    );
    assert_eq!(&*view, a.as_slice());
}

#[test]
fn sixteen_thousand_small_tensors_and_several_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(
        tmp.path(),
        SaveOptions {
            max_shard_bytes: 1 << 20,
            ..Default::default()
        },
    );
    let data: Vec<Vec<u8>> = (0..16_384)
        .map(|i| bytes(i, 4 * (1 + (i as usize % 37))))
        .collect();
    let tensors: Vec<TensorRef> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            TensorRef::whole(
                format!("layer.{i}.w"),
                Dtype::F32,
                vec![d.len() as u64 / 4],
                d.as_slice(),
            )
        })
        .collect();
    let report = cp
        .save(&path("many"), &CheckpointMeta::at_step(9), &tensors, &())
        .unwrap();
    assert!(report.files >= 2, "{report:?}");
    assert!(
        report.buffer_bytes <= 8 << 20,
        "gather buffers are bounded: {report:?}"
    );
    let loaded = cp
        .open(&path("many"))
        .unwrap()
        .load_all(&LoadOptions::default())
        .unwrap();
    assert_eq!(loaded.len(), 16_384);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(&loaded[&format!("layer.{i}.w")].data, d);
    }
}

#[test]
fn saving_over_an_existing_checkpoint_is_refused_and_leaves_it_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path(), SaveOptions::default());
    let one = bytes(1, 64);
    let two = bytes(2, 64);
    cp.save(
        &path("c"),
        &CheckpointMeta::at_step(1),
        &vec![TensorRef::whole("x", Dtype::U8, vec![64], one.as_slice())],
        &(),
    )
    .unwrap();
    let err = cp
        .save(
            &path("c"),
            &CheckpointMeta::at_step(2),
            &vec![TensorRef::whole("x", Dtype::U8, vec![64], two.as_slice())],
            &(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let reader = cp.open(&path("c")).unwrap();
    assert_eq!(reader.record().step, 1);
    assert_eq!(
        reader
            .load_tensor("x", &LoadOptions::default())
            .unwrap()
            .data,
        one
    );
}

#[test]
fn invalid_tensors_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = checkpointer(tmp.path(), SaveOptions::default());
    let d = bytes(1, 16);
    let cases: Vec<(Vec<TensorRef>, &str)> = vec![
        (
            vec![TensorRef::whole(
                "__metadata__",
                Dtype::U8,
                vec![16],
                d.as_slice(),
            )],
            "reserved",
        ),
        (
            vec![TensorRef::whole("short", Dtype::F32, vec![5], d.as_slice())],
            "needs 20",
        ),
        (
            vec![TensorRef::whole("f4", Dtype::F4, vec![3], &d[..2])],
            "no valid byte size",
        ),
        (
            vec![TensorRef::chunk(
                "gap",
                Dtype::U8,
                vec![32],
                vec![0],
                vec![16],
                d.as_slice(),
            )],
            "cover 16 of 32",
        ),
        (
            vec![
                TensorRef::chunk("dup", Dtype::U8, vec![24], vec![0], vec![16], d.as_slice()),
                TensorRef::chunk("dup", Dtype::U8, vec![24], vec![8], vec![16], d.as_slice()),
            ],
            "overlaps",
        ),
        (
            vec![TensorRef::chunk(
                "out",
                Dtype::U8,
                vec![8],
                vec![4],
                vec![16],
                d.as_slice(),
            )],
            "does not fit",
        ),
    ];
    for (tensors, fragment) in cases {
        let err = cp
            .save(&path("bad"), &CheckpointMeta::at_step(1), &tensors, &())
            .unwrap_err()
            .to_string();
        assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing may be left behind: {err}"
        );
    }
}

/// name, dtype, shape, bytes, number of row chunks
type Owned = (String, Dtype, Vec<u64>, Vec<u8>, usize);

fn dtype_strategy() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random dtypes, shapes, names and row chunkings: what is loaded equals what was saved, and
    /// random regions equal the corresponding slice.
    #[test]
    fn random_states_round_trip(
        specs in proptest::collection::vec(
            (dtype_strategy(), proptest::collection::vec(0u64..6, 0..4), 1usize..4, "[a-z./é]{1,12}"),
            1..6,
        ),
        block in prop_oneof![Just(7u64), Just(64), Just(1 << 20)],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let cp = checkpointer(tmp.path(), SaveOptions { block_size: block, max_shard_bytes: 256, ..Default::default() });
        let mut owned: Vec<Owned> = Vec::new();
        for (i, (dtype, mut shape, parts, name)) in specs.into_iter().enumerate() {
            if dtype.is_sub_byte() {
                if shape.is_empty() {
                    shape.push(2);
                }
                shape.push(8); // keep every row a whole number of bytes
            }
            let data = bytes(i as u64, byte_len(dtype, &shape));
            owned.push((format!("{i}:{name}"), dtype, shape, data, parts));
        }
        let mut refs = Vec::new();
        for (name, dtype, shape, data, parts) in &owned {
            let rows = shape.first().copied().unwrap_or(1);
            let parts = if shape.is_empty() || rows == 0 { 1 } else { (*parts as u64).min(rows) };
            if parts <= 1 {
                refs.push(TensorRef::whole(name.as_str(), *dtype, shape.clone(), data.as_slice()));
                continue;
            }
            let row_bytes = data.len() as u64 / rows;
            let mut start = 0;
            for p in 0..parts {
                let end = rows * (p + 1) / parts;
                let mut off = vec![0; shape.len()];
                off[0] = start;
                let mut size = shape.clone();
                size[0] = end - start;
                let slice = &data[(start * row_bytes) as usize..(end * row_bytes) as usize];
                refs.push(TensorRef::chunk(name.as_str(), *dtype, shape.clone(), off, size, slice));
                start = end;
            }
        }
        cp.save(&path("p"), &CheckpointMeta::at_step(1), &refs, &()).unwrap();
        let reader = cp.open(&path("p")).unwrap();
        prop_assert!(reader.verify().is_empty());
        let loaded = reader.load_all(&LoadOptions::default()).unwrap();
        for (name, dtype, shape, data, _) in &owned {
            prop_assert_eq!(&loaded[name].data, data);
            prop_assert_eq!(loaded[name].dtype, *dtype);
            prop_assert_eq!(&loaded[name].shape, shape);
            if !shape.is_empty() && shape[0] >= 2 {
                let rows = shape[0];
                let row_bytes = data.len() as u64 / rows;
                let mut size = shape.clone();
                size[0] = rows - 1;
                let mut off = vec![0; shape.len()];
                off[0] = 1;
                let mut out = vec![0u8; (row_bytes * (rows - 1)) as usize];
                reader.read_region(name, &off, &size, &mut out, &LoadOptions::default()).unwrap();
                prop_assert_eq!(&out[..], &data[row_bytes as usize..]);
            }
        }
    }
}
