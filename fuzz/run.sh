#!/usr/bin/env bash
# Runs one fuzz target for a bounded time, growing a scratch corpus (fuzz/corpus-work/<target>,
# git-ignored) from the checked-in seeds (fuzz/corpus/<target>, never written to).
#
#   fuzz/run.sh <commit_record|safetensors_header|dcp_pickle|dcp_archive> [seconds, default 240] [extra libFuzzer flags...]
#
# Uses the nightly toolchain when rustup has one; otherwise stable with RUSTC_BOOTSTRAP=1 (which
# lets stable rustc accept cargo-fuzz's -Z sanitizer flags). Needs `cargo install cargo-fuzz --locked`.
# See docs/FUZZING.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
target="${1:?usage: fuzz/run.sh <commit_record|safetensors_header|dcp_pickle|dcp_archive> [seconds] [libFuzzer flags...]}"
seconds="${2:-240}"
shift $(( $# >= 2 ? 2 : 1 ))

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo +stable)
fi

mkdir -p "corpus-work/$target"
# The first corpus directory receives new inputs; the seeds directory is only read.
exec "${cargo[@]}" fuzz run "$target" "corpus-work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "$@"
