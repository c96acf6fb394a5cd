"""torch's side of the DCP interop tests (crates/waypoint/tests/it/dcp.rs) and benchmark.

    dcp_torch.py save  DIR MANIFEST   one process: dcp.save of every dtype, strided views, objects
    dcp_torch.py save2 DIR MANIFEST   two ranks on gloo, DTensor Shard(0)/Shard(1)/Replicate
    dcp_torch.py load  DIR MANIFEST   dcp.load (FileSystemReader) into a state dict shaped as
                                      MANIFEST says; exit 1 unless every tensor's bytes and every
                                      object equal MANIFEST's
    dcp_torch.py hf    DIR MANIFEST PREFIX   safetensors.torch reads the Hugging Face export in DIR
                                      (model.safetensors, or the index and its shards); exit 1
                                      unless it holds exactly MANIFEST's tensors under PREFIX,
                                      the prefix removed, bit for bit
    dcp_torch.py bench DIR REPEATS    time dcp.load of DIR into a matching state dict, hot cache

MANIFEST (JSON) maps fqn -> {"dtype", "shape", "hex"} for tensors, {"object": value} for objects.
"""
import json
import os
import sys
import time

import torch
import torch.distributed.checkpoint as dcp


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def state():
    g = torch.Generator().manual_seed(7)
    sd = {}
    sd["model.f32"] = torch.randn(16, 8, generator=g)
    sd["model.f64"] = torch.randn(3, 5, generator=g, dtype=torch.float64)
    sd["model.bf16"] = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    sd["model.f16"] = torch.randn(7, generator=g).to(torch.float16)
    sd["model.f8"] = torch.randn(2, 9, generator=g).to(torch.float8_e4m3fn)
    sd["model.f8e5"] = torch.randn(5, generator=g).to(torch.float8_e5m2)
    sd["model.i64"] = torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4)
    sd["model.i32"] = torch.arange(10, dtype=torch.int32)
    sd["model.i8"] = torch.arange(-4, 4, dtype=torch.int8)
    sd["model.u8"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["model.u16"] = torch.arange(0, 65535, 9000, dtype=torch.int32).to(torch.uint16)
    sd["model.bool"] = torch.tensor([True, False, True])
    sd["model.c64"] = torch.randn(3, generator=g, dtype=torch.complex64)
    # A transposed view (stride (1, 3)) and a slice with a storage offset.
    sd["model.int16_t"] = torch.arange(12, dtype=torch.int16).reshape(4, 3).t()
    base = torch.arange(40, dtype=torch.float32)
    sd["model.offset"] = base[5:15]
    sd["model.empty"] = torch.zeros(0, 3)
    sd["model.scalar"] = torch.tensor(3.5)
    sd["model.big"] = torch.randn(300, 257, generator=g)
    objects = {
        "step": 1234,
        "name": "hello",
        "nothing": None,
        "ratio": 0.25,
        "pair": (1, "two"),
        "list": [1, 2, [3, 4]],
        "nested": {"a": {"b": [True, False]}, "c": 1.5},
    }
    return sd, objects


def manifest(sd, objects):
    out = {}
    for k, t in sd.items():
        out[k] = {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "hex": tensor_bytes(t).hex(),
        }
    for k, v in flatten("", objects):
        out[k] = {"object": v}
    return out


def flatten(prefix, value):
    """DCP's flatten_state_dict: nested dicts become dotted names."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(f"{prefix}.{k}" if prefix else k, v)
    else:
        yield prefix, value


def save(directory, manifest_path):
    sd, objects = state()
    dcp.save({**sd, **objects}, checkpoint_id=directory, no_dist=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest(sd, objects), f)


def _rank(rank, directory):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    full = global_tensors()
    sd = {
        "w_row": distribute_tensor(full["w_row"], mesh, [Shard(0)]),
        "w_col": distribute_tensor(full["w_col"], mesh, [Shard(1)]),
        "w_rep": distribute_tensor(full["w_rep"], mesh, [Replicate()]),
        "bias": full["bias"],
        "step": 42,
    }
    dcp.save(sd, checkpoint_id=directory)
    torch.distributed.destroy_process_group()


def global_tensors():
    g = torch.Generator().manual_seed(11)
    return {
        "w_row": torch.randn(8, 6, generator=g),
        "w_col": torch.randn(4, 10, generator=g).to(torch.bfloat16),
        "w_rep": torch.arange(6, dtype=torch.int64),
        "bias": torch.randn(5, generator=g, dtype=torch.float64),
    }


def save2(directory, manifest_path):
    import torch.multiprocessing as mp

    os.environ["MASTER_PORT"] = os.environ.get("MASTER_PORT", "29517")
    mp.spawn(_rank, args=(directory,), nprocs=2, join=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest(global_tensors(), {"step": 42}), f)


def template(entries):
    sd = {}
    for k, e in entries.items():
        if "object" in e:
            sd[k] = None
        else:
            sd[k] = torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]))
    return sd


def load(directory, manifest_path):
    with open(manifest_path) as f:
        entries = json.load(f)
    sd = template(entries)
    dcp.load(sd, checkpoint_id=directory, no_dist=True)
    bad = []
    for k, e in entries.items():
        if "object" in e:
            if json.loads(json.dumps(sd[k])) != e["object"]:
                bad.append(f"{k}: object {sd[k]!r} != {e['object']!r}")
        elif tensor_bytes(sd[k]).hex() != e["hex"]:
            bad.append(f"{k}: bytes differ")
    for b in bad:
        print(b)
    print("OK" if not bad else f"{len(bad)} differ")
    return 1 if bad else 0


def hf(directory, manifest_path, prefix):
    from safetensors.torch import load_file

    with open(manifest_path) as f:
        entries = json.load(f)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    got = {}
    for name in files:
        got.update(load_file(os.path.join(directory, name)))
    want = {
        k[len(prefix):]: e for k, e in entries.items() if "hex" in e and k.startswith(prefix)
    }
    bad = sorted(set(got) ^ set(want))
    for k in set(got) & set(want):
        if tensor_bytes(got[k]).hex() != want[k]["hex"] or list(got[k].shape) != want[k]["shape"]:
            bad.append(k)
    print(f"{len(files)} files; " + ("OK" if not bad else f"differ: {bad}"))
    return 1 if bad else 0


def bench(directory, repeats):
    reader = dcp.FileSystemReader(directory)
    meta = reader.read_metadata()
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    sd = {
        k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
        for k, m in meta.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        dcp.load(sd, checkpoint_id=directory, no_dist=True)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"torch_load_s": sorted(times)[len(times) // 2], "times": times}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd = sys.argv[1]
    if cmd == "save":
        save(sys.argv[2], sys.argv[3])
    elif cmd == "save2":
        save2(sys.argv[2], sys.argv[3])
    elif cmd == "load":
        sys.exit(load(sys.argv[2], sys.argv[3]))
    elif cmd == "hf":
        sys.exit(hf(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif cmd == "bench":
        bench(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
