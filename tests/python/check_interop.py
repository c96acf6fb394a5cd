#!/usr/bin/env python3
"""Checks a waypoint checkpoint from Python: with the `safetensors` package and with reader.py.

    python check_interop.py <ckpt> <expected.json>

The expectations file is written by crates/waypoint/tests/it/python_interop.rs:

    {
      "tensors": {name: {"dtype": "F32", "shape": [4, 6], "hex": "<full little-endian bytes>"}},
      "chunks":  {name: [{"offsets": [...], "sizes": [...]}, ...]},      # as handed to the save
      "files":   {"__0_0.safetensors": {name: {"offsets": [...], "sizes": [...]}}}
    }

Checks:
  (a) every shard file opens with safetensors (`deserialize` for the raw bytes of every dtype,
      `safe_open(framework="numpy")` for the dtypes numpy has), holds exactly the expected chunks,
      and each chunk's bytes/values equal the expected box of the global tensor;
  (b) files holding a chunk of a split tensor carry DCP_SHARDING_INFO in `__metadata__`, listing
      every tensor of the file with its saved_offsets, and the global shapes derived from it
      (max of offset + size) are the expected ones (PyTorch's own HuggingFaceStorageReader is run
      on our checkpoints by check_torch_hf.py);
  (c) reader.py's read_checkpoint validates the checkpoint and reassembles every tensor exactly.

Exit status 0 on success; 1 with every problem listed on standard error otherwise.
"""

import json
import os
import sys

import numpy as np
import safetensors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reader  # noqa: E402

# The dtypes safetensors' numpy framework can produce arrays for.
NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "U64": np.uint64,
    "I32": np.int32,
    "U32": np.uint32,
    "I16": np.int16,
    "U16": np.uint16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "C64": np.complex64,
}
MOVER = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, message):
        self.items.append(message)

    def __bool__(self):
        return bool(self.items)


def expected_box(tensor, offsets, sizes):
    """The row-major bytes of the box at `offsets` of shape `sizes` of an expected tensor."""
    dtype, shape = tensor["dtype"], tensor["shape"]
    data = tensor["bytes"]
    bits = reader.DTYPE_BITS[dtype]
    if list(sizes) == list(shape):
        return data
    if bits % 8 == 0:
        full = np.frombuffer(data, dtype=MOVER[bits // 8]).reshape(shape)
        return full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].tobytes()
    if list(sizes[1:]) != list(shape[1:]):
        raise ValueError(f"expected box of a {dtype} tensor split on other than the first dimension")
    row_bits = int(np.prod(shape[1:], dtype=np.int64)) * bits if len(shape) > 1 else bits
    start = offsets[0] * row_bits // 8
    n = int(np.prod(sizes, dtype=np.int64)) * bits // 8
    return data[start : start + n]


def check_with_safetensors(ckpt, expect, problems):
    """(a) and (b). Returns {file: parsed safetensors metadata} for reporting."""
    weights = os.path.join(ckpt, "weights")
    on_disk = sorted(f for f in os.listdir(weights) if f.endswith(".safetensors"))
    if on_disk != sorted(expect["files"]):
        problems.add(f"shard files on disk {on_disk} differ from the expected {sorted(expect['files'])}")
    split = {name for name, chunks in expect["chunks"].items() if len(chunks) > 1}
    handed = {
        (name, tuple(c["offsets"]), tuple(c["sizes"])) for name, chunks in expect["chunks"].items() for c in chunks
    }
    found = set()
    derived_shapes = {}  # the global shape DCP_SHARDING_INFO implies: max(offset + size) per dimension

    for fname in on_disk:
        path = os.path.join(weights, fname)
        want = expect["files"].get(fname, {})
        with open(path, "rb") as fh:
            blob = fh.read()

        # Raw bytes of every tensor, whatever its dtype.
        try:
            entries = dict(safetensors.deserialize(blob))
        except Exception as e:  # the package raises SafetensorError and others
            problems.add(f"{fname}: safetensors.deserialize failed: {type(e).__name__}: {e}")
            continue
        if set(entries) != set(want):
            problems.add(f"{fname}: safetensors lists {sorted(entries)}, expected {sorted(want)}")
        for name in sorted(set(entries) & set(want)):
            entry, chunk = entries[name], want[name]
            tensor = expect["tensors"][name]
            found.add((name, tuple(chunk["offsets"]), tuple(chunk["sizes"])))
            if entry["dtype"] != tensor["dtype"]:
                problems.add(f"{fname}: {name!r}: dtype {entry['dtype']}, expected {tensor['dtype']}")
                continue
            if list(entry["shape"]) != list(chunk["sizes"]):
                problems.add(f"{fname}: {name!r}: shape {entry['shape']}, expected the chunk sizes {chunk['sizes']}")
                continue
            if bytes(entry["data"]) != expected_box(tensor, chunk["offsets"], chunk["sizes"]):
                problems.add(f"{fname}: {name!r}: raw bytes of the chunk at {chunk['offsets']} differ from the expected box")

        # Values through the numpy framework, for the dtypes numpy has.
        try:
            with safetensors.safe_open(path, framework="numpy") as f:
                keys = set(f.keys())
                if keys != set(want):
                    problems.add(f"{fname}: safe_open keys {sorted(keys)}, expected {sorted(want)}")
                metadata = f.metadata() or {}
                for name in sorted(keys & set(want)):
                    tensor, chunk = expect["tensors"][name], want[name]
                    np_dtype = NUMPY_DTYPES.get(tensor["dtype"])
                    if np_dtype is None:
                        continue  # compared as raw bytes above
                    arr = f.get_tensor(name)
                    box = expected_box(tensor, chunk["offsets"], chunk["sizes"])
                    exp = np.frombuffer(box, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(chunk["sizes"])
                    if arr.dtype != np.dtype(np_dtype) or list(arr.shape) != list(chunk["sizes"]):
                        problems.add(f"{fname}: {name!r}: numpy gives {arr.dtype}{list(arr.shape)}, expected {np.dtype(np_dtype)}{chunk['sizes']}")
                        continue
                    if not np.array_equal(arr, exp, equal_nan=arr.dtype.kind in "fc") or arr.tobytes() != exp.tobytes():
                        problems.add(f"{fname}: {name!r}: numpy values differ from the expected box at {chunk['offsets']}")
                    if arr.ndim >= 1 and arr.shape[0] > 1:
                        part = f.get_slice(name)[1:2]
                        if part.tobytes() != exp[1:2].tobytes():
                            problems.add(f"{fname}: {name!r}: get_slice(...)[1:2] differs from the expected rows")
        except Exception as e:
            problems.add(f"{fname}: safetensors.safe_open(framework='numpy') failed: {type(e).__name__}: {e}")
            continue

        # (b) DCP_SHARDING_INFO.
        holds_split = sorted(n for n in want if n in split)
        info_text = metadata.get("DCP_SHARDING_INFO")
        if holds_split and info_text is None:
            problems.add(f"{fname}: holds chunks of split tensors {holds_split} but __metadata__ has no DCP_SHARDING_INFO")
        if info_text is not None:
            try:
                info = json.loads(info_text)
            except json.JSONDecodeError as e:
                problems.add(f"{fname}: DCP_SHARDING_INFO is not JSON: {e}")
                continue
            if not isinstance(info, dict) or set(info) != set(entries):
                problems.add(f"{fname}: DCP_SHARDING_INFO lists {sorted(info) if isinstance(info, dict) else info!r}, not every tensor of the file {sorted(entries)}")
                continue
            for name, item in info.items():
                offsets = item.get("saved_offsets") if isinstance(item, dict) else None
                if name in want and offsets != want[name]["offsets"]:
                    problems.add(f"{fname}: {name!r}: saved_offsets {offsets!r}, expected {want[name]['offsets']}")
                    continue
                if not isinstance(offsets, list) or len(offsets) != len(entries[name]["shape"]):
                    problems.add(f"{fname}: {name!r}: saved_offsets {offsets!r} do not match the shape {entries[name]['shape']}")
                    continue
                ends = [o + s for o, s in zip(offsets, entries[name]["shape"])]
                prev = derived_shapes.get(name)
                derived_shapes[name] = ends if prev is None else [max(a, b) for a, b in zip(prev, ends)]

    missing = handed - found
    extra = found - handed
    if missing:
        problems.add(f"chunks handed to the save but found in no shard file: {sorted(missing)}")
    if extra:
        problems.add(f"chunks found in shard files but never handed to the save: {sorted(extra)}")
    for name in sorted(split):
        shape = derived_shapes.get(name)
        if shape != expect["tensors"][name]["shape"]:
            problems.add(f"{name!r}: global shape derived from DCP_SHARDING_INFO is {shape}, expected {expect['tensors'][name]['shape']}")
    return len(on_disk), len(found)


def check_with_reader(ckpt, expect, problems):
    """(c) The standalone reader validates and reassembles every tensor."""
    try:
        _record, tensors = reader.read_checkpoint(ckpt)
    except ValueError as e:
        problems.add(f"reader.py refused the checkpoint: {e}")
        return 0
    for p in reader.compare_with_expectations(tensors, expect):
        problems.add(f"reader.py: {p}")
    return len(tensors)


def main(argv):
    if len(argv) != 2:
        print("usage: check_interop.py <checkpoint dir> <expected.json>", file=sys.stderr)
        return 2
    ckpt, expect_path = argv
    with open(expect_path, encoding="utf-8") as fh:
        expect = json.load(fh)
    for tensor in expect["tensors"].values():
        tensor["bytes"] = bytes.fromhex(tensor["hex"])
    problems = Problems()
    files, chunks = check_with_safetensors(ckpt, expect, problems)
    tensors = check_with_reader(ckpt, expect, problems)
    if problems:
        print(f"interop check FAILED for {ckpt}: {len(problems.items)} problem(s)", file=sys.stderr)
        for p in problems.items:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(
        f"interop OK: {files} shard files, {chunks} chunks read with safetensors {safetensors.__version__} "
        f"(numpy {np.__version__}), {tensors} tensors reassembled by reader.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
