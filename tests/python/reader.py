#!/usr/bin/env python3
"""A standalone reader of waypoint checkpoints (format version 1), written from docs/FORMAT.md alone.

It exists to prove that the format document is enough to read a checkpoint in another language.
Only numpy and the standard library are used.

    read_checkpoint(path) -> (record_dict, {name: (dtype_str, shape_tuple, raw_bytes)})

validates everything the document says a reader should check and reassembles every tensor into
its little-endian, row-major bytes. Any problem raises ValueError naming the file or tensor.

Command line:

    python reader.py <ckpt> [--expect expected.json]

prints a JSON summary; with --expect (the expectations file written by the Rust interop test:
{"tensors": {name: {"dtype", "shape", "hex"}}}) it also compares every tensor and exits 1 on a
difference.
"""

import hashlib
import json
import os
import re
import stat
import struct
import sys

import numpy as np

FORMAT = "waypoint-checkpoint"
NEWEST_VERSION = 1
RECORD_FILE = "metadata.json"
WEIGHTS_DIR = "weights"
SHARD_RE = re.compile(r"^__(0|[1-9][0-9]*)_(0|[1-9][0-9]*)\.safetensors$")
HEADER_ALIGN = 4096
MAX_HEADER_N = 100_000_000
MAX_RECORD_BYTES = 1 << 30
MAX_DIMS = 64
U64_MAX = (1 << 64) - 1
TEMP_MARKER = ".waypoint-tmp-"

DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Unsigned numpy types used to move elements of byte-sized dtypes around (only bytes are copied).
_MOVER = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli): polynomial 0x1EDC6F41, reflected (0x82F63B78), init and xorout 0xFFFFFFFF.
# --------------------------------------------------------------------------------------------
def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _make_table()


def crc32c(data, crc=0):
    """CRC-32C of `data` (bytes-like), continuing from a previous `crc` (0 to start)."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _fail(where, message):
    raise ValueError(f"{where}: {message}")


def _no_duplicates(where):
    def hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                _fail(where, f"duplicate JSON key {key!r}")
            obj[key] = value
        return obj

    return hook


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _u64(where, what, v, minimum=0):
    if not _is_int(v) or v < minimum or v > U64_MAX:
        _fail(where, f"{what} must be an integer in {minimum}..=2^64-1, found {v!r}")
    return v


def _u64_list(where, what, v):
    if not isinstance(v, list):
        _fail(where, f"{what} must be a list of integers, found {v!r}")
    for x in v:
        _u64(where, what, x)
    return v


def _product(where, dims):
    n = 1
    for d in dims:
        n *= d
        if n > U64_MAX:
            _fail(where, f"element count of {dims} overflows 64 bits")
    return n


def _byte_len(where, dtype, elements):
    bits = elements * DTYPE_BITS[dtype]
    if bits % 8:
        _fail(where, f"{elements} elements of {dtype} are not a whole number of bytes")
    if bits // 8 > U64_MAX:
        _fail(where, f"byte size of {elements} × {dtype} overflows 64 bits")
    return bits // 8


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _read_exact(fh, where, offset, length):
    fh.seek(offset)
    data = fh.read(length)
    if len(data) != length:
        _fail(where, f"short read: wanted {length} bytes at {offset}, got {len(data)}")
    return data


def _boxes_overlap(a_off, a_size, b_off, b_size):
    """Whether two boxes share at least one element."""
    for ao, asz, bo, bsz in zip(a_off, a_size, b_off, b_size):
        if min(ao + asz, bo + bsz) <= max(ao, bo):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Commit record (section 3)
# --------------------------------------------------------------------------------------------
def _check_record(record, where):
    if not isinstance(record, dict):
        _fail(where, "the commit record is not a JSON object")
    if record.get("format") != FORMAT:
        _fail(where, f"format is {record.get('format')!r}, not {FORMAT!r}: not a waypoint checkpoint")
    version = record.get("format_version")
    if not _is_int(version) or version < 1:
        _fail(where, f"format_version must be an integer >= 1, found {version!r}")
    if version > NEWEST_VERSION:
        _fail(where, f"format_version {version} is newer than the newest this reader knows ({NEWEST_VERSION})")
    if not isinstance(record.get("producer"), str):
        _fail(where, f"producer must be a string, found {record.get('producer')!r}")
    _u64(where, "step", record.get("step"))
    _u64(where, "epoch", record.get("epoch"))
    world_size = _u64(where, "world_size", record.get("world_size"), minimum=1)
    block_size = record.get("block_size")
    if not _is_int(block_size) or not 1 <= block_size <= (1 << 30):
        _fail(where, f"block_size must be an integer in 1..=2^30, found {block_size!r}")
    trainer_state = record.get("trainer_state")
    if not isinstance(trainer_state, dict):
        _fail(where, f"trainer_state must be an object, found {trainer_state!r}")
    if "user" not in trainer_state:
        _fail(where, "trainer_state has no 'user' key")
    if not isinstance(trainer_state.get("waypoint"), dict):
        _fail(where, f"trainer_state.waypoint must be an object, found {trainer_state.get('waypoint')!r}")

    files = record.get("files")
    if not isinstance(files, dict):
        _fail(where, "files must be an object")
    for fname, entry in files.items():
        fwhere = f"{where}: file {fname!r}"
        m = SHARD_RE.match(fname)
        if not m:
            _fail(fwhere, "name is not a shard file name (__<rank>_<i>.safetensors)")
        if not isinstance(entry, dict):
            _fail(fwhere, "entry is not an object")
        rank = _u64(fwhere, "rank", entry.get("rank"))
        if rank != int(m.group(1)):
            _fail(fwhere, f"rank {rank} differs from the rank in the file name")
        if rank >= world_size:
            _fail(fwhere, f"rank {rank} is not below world_size {world_size}")
        size = _u64(fwhere, "size", entry.get("size"))
        header_len = _u64(fwhere, "header_len", entry.get("header_len"))
        if header_len < 8 or header_len % HEADER_ALIGN:
            _fail(fwhere, f"header_len {header_len} is not a positive multiple of {HEADER_ALIGN}")
        if header_len - 8 > MAX_HEADER_N:
            _fail(fwhere, f"header of {header_len - 8} bytes exceeds {MAX_HEADER_N}")
        if header_len > size:
            _fail(fwhere, f"header_len {header_len} exceeds the file size {size}")
        crc = _u64(fwhere, "header_crc32c", entry.get("header_crc32c"))
        if crc > 0xFFFFFFFF:
            _fail(fwhere, f"header_crc32c {crc} is not a 32-bit value")

    tensors = record.get("tensors")
    if not isinstance(tensors, dict):
        _fail(where, "tensors must be an object")
    ranges_by_file = {name: [] for name in files}
    for name, entry in tensors.items():
        twhere = f"{where}: tensor {name!r}"
        if name == "" or "\0" in name or name == "__metadata__":
            _fail(twhere, "invalid tensor name")
        if not isinstance(entry, dict):
            _fail(twhere, "entry is not an object")
        dtype = entry.get("dtype")
        if dtype not in DTYPE_BITS:
            _fail(twhere, f"unknown dtype {dtype!r}")
        shape = _u64_list(twhere, "shape", entry.get("shape"))
        if len(shape) > MAX_DIMS:
            _fail(twhere, f"shape has {len(shape)} dimensions, more than {MAX_DIMS}")
        total = _product(twhere, shape)
        _byte_len(twhere, dtype, total)
        chunks = entry.get("chunks")
        if not isinstance(chunks, list):
            _fail(twhere, "chunks must be a list")
        seen_files = set()
        held = 0
        boxes = []
        for i, chunk in enumerate(chunks):
            cwhere = f"{twhere}: chunk {i}"
            if not isinstance(chunk, dict):
                _fail(cwhere, "is not an object")
            offsets = _u64_list(cwhere, "offsets", chunk.get("offsets"))
            sizes = _u64_list(cwhere, "sizes", chunk.get("sizes"))
            if len(offsets) != len(shape) or len(sizes) != len(shape):
                _fail(cwhere, f"offsets {offsets} / sizes {sizes} do not have one entry per dimension of {shape}")
            for d in range(len(shape)):
                if offsets[d] + sizes[d] > shape[d]:
                    _fail(cwhere, f"box at {offsets} of {sizes} does not fit in {shape}")
            count = _product(cwhere, sizes)
            nbytes = _byte_len(cwhere, dtype, count)
            fname = chunk.get("file")
            if fname not in files:
                _fail(cwhere, f"file {fname!r} is not listed in files")
            if fname in seen_files:
                _fail(cwhere, f"second chunk of the tensor in file {fname!r}")
            seen_files.add(fname)
            fentry = files[fname]
            br = chunk.get("byte_range")
            if not isinstance(br, list) or len(br) != 2:
                _fail(cwhere, f"byte_range must be [start, end], found {br!r}")
            start, end = _u64(cwhere, "byte_range", br[0]), _u64(cwhere, "byte_range", br[1])
            if start < fentry["header_len"] or end > fentry["size"] or start > end:
                _fail(cwhere, f"byte_range {br} is outside [header_len, size) of {fname}")
            if end - start != nbytes:
                _fail(cwhere, f"byte_range {br} holds {end - start} bytes but {sizes} × {dtype} needs {nbytes}")
            blocks = chunk.get("block_crc32c")
            if not isinstance(blocks, list):
                _fail(cwhere, "block_crc32c must be a list")
            for c in blocks:
                if not _is_int(c) or not 0 <= c <= 0xFFFFFFFF:
                    _fail(cwhere, f"block_crc32c holds {c!r}, not a 32-bit integer")
            want_blocks = -(-nbytes // block_size)
            if len(blocks) != want_blocks:
                _fail(cwhere, f"{len(blocks)} block CRCs, expected ceil({nbytes} / {block_size}) = {want_blocks}")
            for j, (o2, s2) in enumerate(boxes):
                if _boxes_overlap(offsets, sizes, o2, s2) and count > 0 and _product(cwhere, s2) > 0:
                    _fail(cwhere, f"overlaps chunk {j}")
            boxes.append((offsets, sizes))
            held += count
            ranges_by_file[fname].append((start, end, name))
        if held != total:
            _fail(twhere, f"chunks hold {held} elements but the shape {shape} has {total}: they do not tile it")

    for fname, ranges in ranges_by_file.items():
        pos = files[fname]["header_len"]
        for start, end, name in sorted(ranges):
            if start != pos:
                _fail(
                    f"{where}: file {fname!r}",
                    f"chunk byte ranges do not tile the data section: tensor {name!r} starts at {start}, expected {pos}",
                )
            pos = end
        if pos != files[fname]["size"]:
            _fail(f"{where}: file {fname!r}", f"chunk byte ranges end at {pos}, but the file size is {files[fname]['size']}")
    return ranges_by_file


# --------------------------------------------------------------------------------------------
# Shard files (section 2)
# --------------------------------------------------------------------------------------------
def parse_safetensors_header(raw, where):
    """Parses the header bytes (at least 8 + N of them) of a safetensors file.

    Returns (N, header_dict) where header_dict maps tensor names to their entries and may hold
    '__metadata__'. Checks that the JSON is followed only by ASCII-space padding."""
    if len(raw) < 8:
        _fail(where, "file shorter than 8 bytes")
    (n,) = struct.unpack_from("<Q", raw, 0)
    if n > MAX_HEADER_N:
        _fail(where, f"header length N = {n} exceeds {MAX_HEADER_N}")
    if len(raw) < 8 + n:
        _fail(where, f"header of {n} bytes is longer than what was read")
    try:
        text = raw[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(where, f"header is not UTF-8: {e}")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates(where))
    try:
        header, end = decoder.raw_decode(text)
    except json.JSONDecodeError as e:
        _fail(where, f"header is not JSON: {e}")
    if text[end:].strip(" ") != "":
        _fail(where, "header JSON is followed by something other than ASCII-space padding")
    if not isinstance(header, dict):
        _fail(where, "header is not a JSON object")
    return n, header


def _check_shard_header(fname, fentry, raw, chunks_here, split_tensors, where):
    """Checks a shard's header bytes against the record. `chunks_here`: {name: (dtype, chunk)}."""
    crc = crc32c(raw)
    if crc != fentry["header_crc32c"]:
        _fail(where, f"header_crc32c mismatch: record says {fentry['header_crc32c']}, bytes give {crc}")
    n, header = parse_safetensors_header(raw, where)
    if 8 + n != fentry["header_len"]:
        _fail(where, f"8 + N = {8 + n} differs from the record's header_len {fentry['header_len']}")
    header_len = fentry["header_len"]
    meta = header.get("__metadata__")
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            _fail(where, "__metadata__ is not an object of string values")
    names = [k for k in header if k != "__metadata__"]
    if set(names) != set(chunks_here):
        _fail(
            where,
            f"header tensors {sorted(names)} differ from the record's chunks in this file {sorted(chunks_here)}",
        )
    spans = []
    for name in names:
        entry = header[name]
        dtype, chunk = chunks_here[name]
        twhere = f"{where}: tensor {name!r}"
        if not isinstance(entry, dict):
            _fail(twhere, "header entry is not an object")
        if entry.get("dtype") != dtype:
            _fail(twhere, f"header dtype {entry.get('dtype')!r} differs from the record's {dtype!r}")
        if entry.get("shape") != chunk["sizes"]:
            _fail(twhere, f"header shape {entry.get('shape')!r} differs from the chunk sizes {chunk['sizes']}")
        start, end = chunk["byte_range"]
        want = [start - header_len, end - header_len]
        if entry.get("data_offsets") != want:
            _fail(twhere, f"header data_offsets {entry.get('data_offsets')!r}, expected {want} from byte_range")
        bits = DTYPE_BITS[dtype]
        align = bits // 8 if bits >= 8 else 1
        if start % align:
            _fail(twhere, f"data starts at file offset {start}, not a multiple of the element size {align}")
        spans.append(tuple(want))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            _fail(where, f"data section not tiled: a tensor starts at {b}, expected {pos}")
        pos = e
    if pos != fentry["size"] - header_len:
        _fail(where, f"data section ends at {pos} but the file has {fentry['size'] - header_len} data bytes")

    needs_info = any(name in split_tensors for name in names)
    info_text = meta.get("DCP_SHARDING_INFO") if meta else None
    if needs_info and info_text is None:
        _fail(where, "holds a chunk of a split tensor but __metadata__ has no DCP_SHARDING_INFO")
    if info_text is not None:
        try:
            info = json.loads(info_text, object_pairs_hook=_no_duplicates(where))
        except json.JSONDecodeError as e:
            _fail(where, f"DCP_SHARDING_INFO is not JSON: {e}")
        if not isinstance(info, dict) or set(info) != set(names):
            _fail(where, f"DCP_SHARDING_INFO lists {sorted(info) if isinstance(info, dict) else info!r}, not every tensor of the file {sorted(names)}")
        for name in names:
            got = info[name].get("saved_offsets") if isinstance(info[name], dict) else None
            if got != chunks_here[name][1]["offsets"]:
                _fail(
                    f"{where}: tensor {name!r}",
                    f"DCP_SHARDING_INFO saved_offsets {got!r} differ from the chunk offsets {chunks_here[name][1]['offsets']}",
                )
    return header


# --------------------------------------------------------------------------------------------
# Reassembly
# --------------------------------------------------------------------------------------------
def _place_chunk(out, dtype, shape, chunk, data, where):
    """Copies the chunk's row-major `data` into the tensor buffer `out` (bytearray)."""
    offsets, sizes = chunk["offsets"], chunk["sizes"]
    if len(data) == 0:
        return
    bits = DTYPE_BITS[dtype]
    if list(sizes) == list(shape):
        out[:] = data
        return
    if bits % 8 == 0:
        mover = _MOVER[bits // 8]
        dst = np.frombuffer(out, dtype=mover).reshape(shape)
        src = np.frombuffer(data, dtype=mover).reshape(sizes)
        dst[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] = src
        return
    # Sub-byte dtypes: only chunks split on the first dimension (contiguous byte ranges).
    if list(sizes[1:]) != list(shape[1:]):
        _fail(where, f"this reader supports {dtype} chunks split on the first dimension only, found {sizes} at {offsets} of {shape}")
    row_bits = _product(where, shape[1:]) * bits
    start_bits = offsets[0] * row_bits
    if start_bits % 8:
        _fail(where, f"chunk of {dtype} at {offsets} does not start on a byte boundary")
    start = start_bits // 8
    out[start : start + len(data)] = data


def read_checkpoint(path):
    """Reads and validates the checkpoint directory `path`.

    Returns (record_dict, {name: (dtype_str, shape_tuple, raw_bytes)})."""
    path = os.fspath(path)
    where = f"checkpoint {path}"
    st = _lstat(path)
    if st is None or not stat.S_ISDIR(st.st_mode):
        _fail(where, "is not a directory")
    # Nothing inside a checkpoint is a symbolic link.
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for entry in dirnames + filenames:
            p = os.path.join(dirpath, entry)
            if os.path.islink(p):
                _fail(p, "symbolic link inside the checkpoint")
    weights = os.path.join(path, WEIGHTS_DIR)
    st = _lstat(weights)
    if st is None or not stat.S_ISDIR(st.st_mode):
        _fail(weights, "missing or not a directory: not a checkpoint")
    record_path = os.path.join(weights, RECORD_FILE)
    st = _lstat(record_path)
    if st is None or not stat.S_ISREG(st.st_mode):
        _fail(record_path, "missing or not a regular file: not a checkpoint")
    if st.st_size > MAX_RECORD_BYTES:
        _fail(record_path, f"{st.st_size} bytes exceeds the 1 GiB limit")

    # 1. The commit record and its invariants.
    with open(record_path, "rb") as fh:
        raw = fh.read()
    try:
        record = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates(record_path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(record_path, f"not UTF-8 JSON: {e}")
    _check_record(record, record_path)
    files = record["files"]
    tensors = record["tensors"]
    block_size = record["block_size"]

    # 2. The directory listing: exactly the listed files, with their sizes, plus the record.
    listing = sorted(os.listdir(weights))
    for entry in listing:
        if entry != RECORD_FILE and entry not in files:
            _fail(os.path.join(weights, entry), "unexpected file in weights/ (not listed in the commit record)")
    for fname, fentry in files.items():
        p = os.path.join(weights, fname)
        st = _lstat(p)
        if st is None:
            _fail(p, "listed in the commit record but missing")
        if not stat.S_ISREG(st.st_mode):
            _fail(p, "not a regular file")
        if st.st_size != fentry["size"]:
            _fail(p, f"size {st.st_size} differs from the record's {fentry['size']}")

    # 3. Shard headers.
    split_tensors = {name for name, t in tensors.items() if len(t["chunks"]) > 1}
    chunks_by_file = {fname: {} for fname in files}
    for name, t in tensors.items():
        for chunk in t["chunks"]:
            chunks_by_file[chunk["file"]][name] = (t["dtype"], chunk)
    for fname, fentry in files.items():
        p = os.path.join(weights, fname)
        with open(p, "rb") as fh:
            head = _read_exact(fh, p, 0, fentry["header_len"])
        _check_shard_header(fname, fentry, head, chunks_by_file[fname], split_tensors, p)

    # 4. Tensors: read each chunk, verify its blocks, copy its box into place.
    out = {}
    handles = {}
    try:
        for name, t in tensors.items():
            dtype, shape = t["dtype"], t["shape"]
            twhere = f"{where}: tensor {name!r}"
            nbytes = _byte_len(twhere, dtype, _product(twhere, shape))
            buf = bytearray(nbytes)
            for i, chunk in enumerate(t["chunks"]):
                fname = chunk["file"]
                p = os.path.join(weights, fname)
                cwhere = f"{p}: tensor {name!r} chunk {i}"
                fh = handles.get(fname)
                if fh is None:
                    fh = handles[fname] = open(p, "rb")
                start, end = chunk["byte_range"]
                data = _read_exact(fh, cwhere, start, end - start)
                for j, want in enumerate(chunk["block_crc32c"]):
                    got = crc32c(data[j * block_size : (j + 1) * block_size])
                    if got != want:
                        _fail(cwhere, f"block {j} CRC-32C mismatch: record says {want}, bytes give {got}")
                _place_chunk(buf, dtype, shape, chunk, data, cwhere)
            out[name] = (dtype, tuple(shape), bytes(buf))
    finally:
        for fh in handles.values():
            fh.close()
    return record, out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def compare_with_expectations(tensors, expect):
    """Problems (list of strings) between reassembled `tensors` and an expectations dict."""
    problems = []
    want = expect["tensors"]
    if set(want) != set(tensors):
        problems.append(f"tensor names differ: missing {sorted(set(want) - set(tensors))}, extra {sorted(set(tensors) - set(want))}")
    for name in sorted(set(want) & set(tensors)):
        dtype, shape, data = tensors[name]
        w = want[name]
        if dtype != w["dtype"]:
            problems.append(f"tensor {name!r}: dtype {dtype}, expected {w['dtype']}")
        if list(shape) != list(w["shape"]):
            problems.append(f"tensor {name!r}: shape {list(shape)}, expected {w['shape']}")
        expected = bytes.fromhex(w["hex"])
        if data != expected:
            first = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), min(len(data), len(expected)))
            problems.append(f"tensor {name!r}: bytes differ (lengths {len(data)} / {len(expected)}, first difference at byte {first})")
    return problems


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description="Read and validate a waypoint checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("--expect", help="expectations JSON written by the Rust interop test")
    args = parser.parse_args(argv)
    try:
        record, tensors = read_checkpoint(args.checkpoint)
    except ValueError as e:
        print(f"invalid checkpoint: {e}", file=sys.stderr)
        return 1
    summary = {
        "format_version": record["format_version"],
        "producer": record["producer"],
        "step": record["step"],
        "epoch": record["epoch"],
        "world_size": record["world_size"],
        "block_size": record["block_size"],
        "files": sorted(record["files"]),
        "tensors": {
            name: {
                "dtype": dtype,
                "shape": list(shape),
                "chunks": len(record["tensors"][name]["chunks"]),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for name, (dtype, shape, data) in sorted(tensors.items())
        },
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if args.expect:
        with open(args.expect, encoding="utf-8") as fh:
            expect = json.load(fh)
        problems = compare_with_expectations(tensors, expect)
        if problems:
            for p in problems:
                print(f"MISMATCH: {p}", file=sys.stderr)
            return 1
        print(f"all {len(tensors)} tensors match {args.expect}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
