#!/usr/bin/env bash
# DCP read in Rust (waypoint::dcp::DcpReader, every tensor loaded whole) against torch's own
# dcp.load (FileSystemReader) of the same checkpoint, hot cache, medians of REPEATS runs; then
# `waypoint convert --to waypoint` and `--to dcp` against a plain copy (cp) of the same bytes, with
# the conversions' peak memory.
#
#   [BATCH_MIB=64] scripts/bench_dcp.sh [SIZE_MIB, default 1024] [TENSORS, default 128] [REPEATS, default 5]
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
cargo build --release -q -p waypoint-cli --no-default-features
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
# Conversions against a plain copy of the same bytes, medians of REPEATS, each after a `sync` (so
# one run's writeback does not slow the next). Both conversions check every CRC they read and
# fsync what they write; `cp -r` does neither, so `cp -r` + `sync` is shown too. Peak memory
# (maximum RSS) from /usr/bin/time -v: `convert --to waypoint` streams in batches of
# --batch-mib (BATCH_MIB, default 64) and should stay near twice that plus one chunk.
batch_mib="${BATCH_MIB:-64}"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # run SRC OUT CMD...: seconds, SRC's files read into the page cache first (the engine's
    # save writes around the cache, so a converted checkpoint is cold); the maximum RSS (MiB)
    # goes to $work/rss
    local s e; find "$1" -type f -exec cat {} + > /dev/null; rm -rf "$2"; sync; s=$(date +%s.%N)
    /usr/bin/time -v -o "$work/time.txt" "${@:3}" > /dev/null
    e=$(date +%s.%N)
    awk -F: '/Maximum resident/ {printf "%.0f\n", $2 / 1024}' "$work/time.txt" >> "$work/rss"
    echo "$e - $s" | bc
}
bench() { # bench NAME SRC OUT CMD...: prints "NAME <median s> <max RSS MiB>"
    local name="$1" t=()
    : > "$work/rss"
    for _ in $(seq "$repeats"); do t+=("$(run "${@:2}")"); done
    echo "$name $(printf '%s\n' "${t[@]}" | median) $(sort -g "$work/rss" | tail -1)"
}
bench cp "$work/dcp" "$work/copy" cp -r "$work/dcp" "$work/copy" > "$work/r_cp"
bench cp_sync "$work/dcp" "$work/copy" sh -c "cp -r '$work/dcp' '$work/copy' && sync" > "$work/r_cps"
bench to_waypoint "$work/dcp" "$work/wp" "$target/waypoint" convert "$work/dcp" "$work/wp" --to waypoint --batch-mib "$batch_mib" > "$work/r_wp"
bench to_dcp "$work/wp" "$work/back" "$target/waypoint" convert "$work/wp" "$work/back" --to dcp > "$work/r_dcp"
cat "$work"/r_cp "$work"/r_cps "$work"/r_wp "$work"/r_dcp | awk -v mib="$size_mib" -v batch="$batch_mib" '
    {t[$1] = $2; m[$1] = $3}
    END {
        printf "plain copy (cp -r): %.3f s; cp -r + sync: %.3f s\n", t["cp"], t["cp_sync"]
        printf "convert DCP->waypoint (--batch-mib %d): %.3f s, %.0f MiB/s, %.2fx cp -r, %.2fx cp+sync, peak RSS %d MiB for %d MiB\n", batch, t["to_waypoint"], mib / t["to_waypoint"], t["to_waypoint"] / t["cp"], t["to_waypoint"] / t["cp_sync"], m["to_waypoint"], mib
        printf "convert waypoint->DCP: %.3f s, %.0f MiB/s, %.2fx cp -r, %.2fx cp+sync, peak RSS %d MiB\n", t["to_dcp"], mib / t["to_dcp"], t["to_dcp"] / t["cp"], t["to_dcp"] / t["cp_sync"], m["to_dcp"]
    }'
