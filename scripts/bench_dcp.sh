#!/usr/bin/env bash
# DCP read in Rust (waypoint::dcp::DcpReader, every tensor loaded whole) against torch's own
# dcp.load (FileSystemReader) of the same checkpoint, hot cache, medians of REPEATS runs; then
# `waypoint convert --to waypoint` and `--to dcp` against a plain copy (cp) of the same bytes.
#
#   scripts/bench_dcp.sh [SIZE_MIB, default 1024] [TENSORS, default 128] [REPEATS, default 5]
#
# Needs torch in the interpreter WAYPOINT_PYTHON names (the test venv). Figures: docs/DCP.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size_mib="${1:-1024}"
tensors="${2:-128}"
repeats="${3:-5}"
python="${WAYPOINT_PYTHON:-$(ls -d "${WAYPOINT_CACHE:-$HOME/.cache/waypoint}"/venv-*/bin/python | head -1)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" - "$work/dcp" "$size_mib" "$tensors" <<'PY'
import sys, torch, torch.distributed.checkpoint as dcp
d, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = mib * (1 << 20) // 4 // n
g = torch.Generator().manual_seed(0)
sd = {f"layer{i}.weight": torch.randn(per, generator=g) for i in range(n)}
dcp.save(sd, checkpoint_id=d, no_dist=True)
PY
cargo build --release -q -p waypoint --example dcp_read
cargo build --release -q -p waypoint-cli
target="${CARGO_TARGET_DIR:-target}/release"
cat "$work"/dcp/* > /dev/null
echo "checkpoint: ${size_mib} MiB in ${tensors} f32 tensors, $(nproc) cores"
rust="$("$target/examples/dcp_read" "$work/dcp" "$repeats")"
nocrc="$("$target/examples/dcp_read" "$work/dcp" "$repeats" --no-crc)"
torch="$(PYTHONWARNINGS=ignore "$python" tests/python/dcp_torch.py bench "$work/dcp" "$repeats")"
echo "rust (CRC-32 checked): $rust"
echo "rust (no CRC-32):      $nocrc"
echo "torch dcp.load:        $torch"
for r in "$rust" "$nocrc"; do
"$python" -c "import json,sys; r=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print(f'DCP read (crc32 {r[\"crc32_checked\"]}): waypoint {r[\"rust_load_s\"]:.3f} s, torch dcp.load {t[\"torch_load_s\"]:.3f} s: {t[\"torch_load_s\"]/r[\"rust_load_s\"]:.1f}x')" "$r" "$torch"
done
timed() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
t_cp=$(timed cp -r "$work/dcp" "$work/copy")
t_to_wp=$(timed "$target/waypoint" convert "$work/dcp" "$work/wp" --to waypoint)
t_to_dcp=$(timed "$target/waypoint" convert "$work/wp" "$work/back" --to dcp)
echo "plain copy ${t_cp} s; convert DCP->waypoint ${t_to_wp} s; waypoint->DCP ${t_to_dcp} s"
