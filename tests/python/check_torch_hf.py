#!/usr/bin/env python3
"""Loads a waypoint checkpoint with PyTorch's own HuggingFaceStorageReader and compares every value.

    python check_torch_hf.py <ckpt> <expected.json> [--ranks N]

The expectations file is written by crates/waypoint/tests/it/torch_interop.rs:

    {"tensors": {name: {"dtype": "F32", "shape": [4, 6], "hex": "<full little-endian bytes>"}}}

Checks, with torch.distributed.checkpoint exactly as a PyTorch user calls it on <ckpt>/weights:
  (a) HuggingFaceStorageReader.read_metadata() lists exactly the expected tensors, each with the
      expected global shape (derived from DCP_SHARDING_INFO for split tensors) and dtype;
  (b) dcp.load() into a state dict of tensors of those shapes and dtypes fills every tensor with
      exactly the expected bytes (compared bit for bit, so NaNs and float8 count too); done twice,
      into buffers pre-filled with 0x00 and then 0xA5, so that an element the load skipped cannot
      match by luck.
  (c) with --ranks N: N processes (gloo, CPU) load it again with dcp.load into DTensors sharded
      by rows (Shard(0) over a 1-D device mesh; 0-d and 1-row tensors replicated), as a
      data-parallel PyTorch job resuming from it would: each rank's local shard must equal the
      rows of the expected tensor torch assigns to it (so partial reads of our chunks, through
      the reader's get_slice, are checked too).

Exit status 0 on success; 1 with every problem listed on standard error otherwise.
"""

import json
import os
import sys

try:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
except ImportError as e:
    sys.exit(
        f"{sys.executable} has no usable torch ({e}): run scripts/test.sh, whose venv pins torch "
        "(tests/python/requirements.txt), or point WAYPOINT_PYTHON at such a venv"
    )

# safetensors' dtype names and the torch dtypes HuggingFaceStorageReader maps them to.
TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "C64": torch.complex64,
}


def raw(tensor):
    """The tensor's bytes, row-major little-endian, whatever its dtype."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def first_difference(got, want, itemsize):
    for i in range(0, min(len(got), len(want)), itemsize):
        if got[i : i + itemsize] != want[i : i + itemsize]:
            return i // itemsize
    return None


def load(weights, expect, fill):
    """dcp.load into fresh tensors filled with `fill` (bytes); returns the state dict."""
    state = {}
    for name, t in expect.items():
        tensor = torch.empty(t["shape"], dtype=TORCH_DTYPES[t["dtype"]])
        if tensor.numel():
            tensor.view(-1).view(torch.uint8).fill_(fill)
        state[name] = tensor
    dcp.load(state, storage_reader=HuggingFaceStorageReader(weights), no_dist=True)
    return state


def rows_of(n, world, rank):
    """The rows torch's Shard(0) gives `rank` of `world` (torch.chunk's split): [start, end)."""
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per)


def sharded_rank(rank, world, port, weights, expect, failures):
    """One rank of the --ranks load: DTensors sharded by rows, each local shard compared."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        state, sharded = {}, {}
        for name, t in expect.items():
            full = torch.zeros(t["shape"], dtype=TORCH_DTYPES[t["dtype"]])
            shard = len(t["shape"]) >= 1 and t["shape"][0] >= world
            state[name] = distribute_tensor(full, mesh, [Shard(0) if shard else Replicate()])
            sharded[name] = shard
            local = state[name].to_local()
            if local.numel():
                local.view(-1).view(torch.uint8).fill_(0xA5)
        dcp.load(state, storage_reader=HuggingFaceStorageReader(weights))
        problems = []
        for name, t in sorted(expect.items()):
            local = state[name].to_local()
            data = bytes.fromhex(t["hex"])
            if sharded[name]:
                start, end = rows_of(t["shape"][0], world, rank)
                row = len(data) // t["shape"][0]
                want, what = data[start * row : end * row], f"rows {start}..{end}"
                if local.shape[0] != end - start:
                    problems.append(f"rank {rank}: {name!r}: local shard of {local.shape[0]} rows, expected {what}")
                    continue
            else:
                want, what = data, "replicated"
            if raw(local) != want:
                problems.append(f"rank {rank}: {name!r} ({what}): the loaded shard differs from the saved bytes")
        failures.put(problems)
    finally:
        dist.destroy_process_group()


def load_sharded(weights, expect, world):
    """(c): `world` processes load the checkpoint as row-sharded DTensors; their problems."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    procs = [
        ctx.Process(target=sharded_rank, args=(r, world, port, weights, expect, failures)) for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    problems = [f"rank process {i} exited with {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0]
    while not failures.empty():
        problems.extend(failures.get())
    return problems


def main(argv):
    world = 0
    if len(argv) == 4 and argv[2] == "--ranks":
        world = int(argv[3])
        argv = argv[:2]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ckpt, expect_path = argv
    with open(expect_path, encoding="utf-8") as fh:
        expect = json.load(fh)["tensors"]
    weights = os.path.join(ckpt, "weights")
    problems = []

    # (a) What the reader derives from the files alone.
    metadata = HuggingFaceStorageReader(weights).read_metadata().state_dict_metadata
    if sorted(metadata) != sorted(expect):
        problems.append(f"the reader lists {sorted(metadata)}, expected {sorted(expect)}")
    for name in sorted(set(metadata) & set(expect)):
        meta, want = metadata[name], expect[name]
        if list(meta.size) != want["shape"]:
            problems.append(f"{name!r}: the reader derives the shape {list(meta.size)}, expected {want['shape']}")
        if meta.properties.dtype != TORCH_DTYPES[want["dtype"]]:
            problems.append(f"{name!r}: the reader says {meta.properties.dtype}, expected {want['dtype']}")

    # (b), (c) dcp.load twice, into buffers pre-filled with two different bytes: every element
    # must be overwritten with the checkpoint's value both times.
    if not problems:
        for fill in (0x00, 0xA5):
            try:
                state = load(weights, expect, fill)
            except Exception as e:  # the reader's own errors, whatever their type
                problems.append(f"dcp.load failed: {type(e).__name__}: {e}")
                break
            for name, want in sorted(expect.items()):
                got = raw(state[name])
                data = bytes.fromhex(want["hex"])
                if got != data:
                    at = first_difference(got, data, state[name].element_size())
                    problems.append(
                        f"{name!r} ({want['dtype']}{want['shape']}): dcp.load gives other bytes "
                        f"(first differing element: {at}; {len(got)} bytes against {len(data)})"
                    )
            if problems:
                break  # the second fill would report the same
    if not problems and world:
        problems.extend(load_sharded(weights, expect, world))

    if problems:
        print(f"torch HuggingFaceStorageReader check FAILED for {ckpt}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    elements = sum(torch.Size(t["shape"]).numel() for t in expect.values())
    files = sorted(f for f in os.listdir(weights) if f.endswith(".safetensors"))
    print(
        f"torch HF reader OK: {len(expect)} tensors ({elements} elements) from {len(files)} shard files "
        f"loaded by dcp.load with HuggingFaceStorageReader (torch {torch.__version__})"
        + (f", and as row-sharded DTensors by {world} gloo ranks" if world else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
