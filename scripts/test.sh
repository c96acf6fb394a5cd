#!/usr/bin/env bash
# The one command that installs what the tests need and runs the whole suite.
#
#   scripts/test.sh [extra cargo test arguments...]
#
# Idempotent and quick when everything is already installed: the Python virtual environment lives
# OUTSIDE the clone, in ${WAYPOINT_CACHE:-$HOME/.cache/waypoint}/venv-<hash of requirements.txt>,
# and a stamp file makes a rerun skip pip entirely. CI runs it through .ci/run (as root, CI=true,
# no standard input).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START_SECONDS=$SECONDS
PHASE_START=$SECONDS

banner() {
    PHASE_START=$SECONDS
    printf '\n==== [test.sh] %s ====\n' "$*"
}

phase_done() {
    printf '==== [test.sh] done in %ss ====\n' "$((SECONDS - PHASE_START))"
}

on_exit() {
    local status=$?
    stop_s3_server
    stop_azurite
    if [ "$status" -eq 0 ]; then
        printf '\n==== [test.sh] all phases passed in %ss ====\n' "$((SECONDS - START_SECONDS))"
    else
        printf '\n==== [test.sh] FAILED (exit status %s) after %ss ====\n' "$status" "$((SECONDS - START_SECONDS))" >&2
    fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------------------------
# The main job builds on a machine with Rust only (issue 20). `cargo run --bin waypoint-train`
# resolves features over the default members (Cargo.toml's default-members), so none of them may
# pull in mpi-sys, which needs a system MPI: only crates/mpi-harness turns on `waypoint/mpi`, and
# it is built by `cargo test --workspace` below. Cheap: cargo tree reads the lock file only.
# ---------------------------------------------------------------------------------------------
check_main_job_has_no_mpi() {
    local graph
    graph="$(cargo tree -e normal,build --prefix none --format '{p}')"
    if grep -q '^mpi-sys ' <<<"$graph"; then
        echo "error: the main job's build graph contains mpi-sys, so \`cargo run --bin waypoint-train\`" >&2
        echo "needs a system MPI. What pulls it in:" >&2
        cargo tree -i mpi-sys -e normal,build >&2 || true
        echo "Keep crates/mpi-harness (and anything enabling waypoint/mpi) out of default-members in Cargo.toml." >&2
        return 1
    fi
    echo "main job build graph: no mpi-sys"
    # Nor burn (issue 21): minutes of build on 2 cores that the main job must not pay.
    if grep -q '^burn ' <<<"$graph"; then
        echo "error: the main job's build graph contains burn. What pulls it in:" >&2
        cargo tree -i burn -e normal,build >&2 || true
        echo "Keep crates/waypoint-burn out of default-members in Cargo.toml." >&2
        return 1
    fi
    echo "main job build graph: no burn"
    # Nor the fault injector: with waypoint/fault-injection a stray WAYPOINT_FAILPOINT in a user's
    # job could abort its saves (issue 16). Only the tests turn it on (--all-features below).
    if cargo tree -e normal,build,features --prefix none --format '{p}' -i waypoint 2>/dev/null \
        | grep -q 'feature "fault-injection"'; then
        echo "error: the main job's build enables waypoint's fault-injection feature; keep it" >&2
        echo "out of default features (only the crash tests and harnesses may turn it on)." >&2
        cargo tree -e features -i waypoint >&2 || true
        return 1
    fi
    echo "main job build graph: no fault injection"
}

# ---------------------------------------------------------------------------------------------
# Hook: Debian packages. A later phase adds the packages the tests need here; each one must be
# installed only when missing (check with `dpkg-query -W -f='${Status}' PKG` first, then
# `apt-get update` once and `DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends`).
#   openmpi-bin, libopenmpi-dev: the `mpi` feature (rsmpi finds Open MPI through `mpicc -show`)
#     and mpirun for crates/mpi-harness's tests; libclang-dev: rsmpi's bindgen. See docs/MPI.md.
# ---------------------------------------------------------------------------------------------
ensure_debian_packages() {
    local wanted=(openmpi-bin libopenmpi-dev libclang-dev)
    local missing=()
    local pkg
    for pkg in "${wanted[@]+"${wanted[@]}"}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "debian packages: nothing to install"
        return 0
    fi
    echo "debian packages: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------------------------
# Hook: local S3 server. s3s-fs (a real S3 protocol server over a directory) is installed once
# into the cache OUTSIDE the clone, started on 127.0.0.1 at a free port with the test bucket
# `waypoint-test`, and stopped from the EXIT trap. Exports its endpoint for the object-store tests
# (WAYPOINT_TEST_S3_ENDPOINT, WAYPOINT_TEST_S3S_FS for tests that run their own instance) and the
# standard AWS_* variables, so that `s3://waypoint-test/...` works in the binaries under test.
# ---------------------------------------------------------------------------------------------
S3S_FS_VERSION=0.14.1
S3_SERVER_PID=""
S3_SERVER_DATA=""

start_s3_server() {
    local cache="${WAYPOINT_CACHE:-${HOME:?neither WAYPOINT_CACHE nor HOME is set}/.cache/waypoint}"
    local root="$cache/tools/s3s-fs-$S3S_FS_VERSION"
    local bin="$root/bin/s3s-fs"
    if [ -x "$bin" ]; then
        echo "s3 server: reusing $bin"
    else
        echo "s3 server: installing s3s-fs $S3S_FS_VERSION into $root (once; a few minutes)"
        cargo install "s3s-fs@$S3S_FS_VERSION" --locked --features binary --root "$root"
    fi
    S3_SERVER_DATA="$(mktemp -d "${TMPDIR:-/tmp}/waypoint-s3s-fs.XXXXXX")"
    mkdir -p "$S3_SERVER_DATA/data/waypoint-test"
    local port
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$bin" --host 127.0.0.1 --port "$port" --access-key waypoint-test \
        --secret-key waypoint-test-secret "$S3_SERVER_DATA/data" >"$S3_SERVER_DATA/server.log" 2>&1 &
    S3_SERVER_PID=$!
    local tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$S3_SERVER_PID" 2>/dev/null || [ "$tries" -ge 300 ]; then
            echo "s3 server: s3s-fs did not come up on 127.0.0.1:$port" >&2
            cat "$S3_SERVER_DATA/server.log" >&2
            return 1
        fi
        tries=$((tries + 1))
        sleep 0.1
    done
    export WAYPOINT_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
    export WAYPOINT_TEST_S3S_FS="$bin"
    # Its data directory: a bucket is a directory there, and each test makes its own (s3s-fs lists
    # by walking the whole bucket and fails when another test's deletion races the walk).
    export WAYPOINT_TEST_S3_DATA="$S3_SERVER_DATA/data"
    export AWS_ENDPOINT_URL="$WAYPOINT_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=waypoint-test AWS_SECRET_ACCESS_KEY=waypoint-test-secret
    echo "s3 server: s3s-fs (pid $S3_SERVER_PID) at $WAYPOINT_TEST_S3_ENDPOINT, bucket waypoint-test"
}

stop_s3_server() {
    if [ -n "$S3_SERVER_PID" ]; then
        kill "$S3_SERVER_PID" 2>/dev/null || true
        wait "$S3_SERVER_PID" 2>/dev/null || true
        S3_SERVER_PID=""
    fi
    if [ -n "$S3_SERVER_DATA" ]; then
        rm -rf "$S3_SERVER_DATA"
        S3_SERVER_DATA=""
    fi
}

# ---------------------------------------------------------------------------------------------
# Hook: local Azure Blob server. Azurite (Microsoft's Azure Storage emulator, npm) is installed
# once with `npm ci` from tests/azurite/package-lock.json (every dependency pinned) into the cache
# OUTSIDE the clone, started on 127.0.0.1 at a free port with the container `waypoint-test`
# (tests/azurite/create_container.py: object_store creates none), and stopped from the EXIT trap.
# Exports WAYPOINT_TEST_AZURITE_URL (its blob endpoint), WAYPOINT_TEST_AZURITE (the launcher, for
# tests that run their own instance), and the variables object_store's Azure builder reads for
# `az://waypoint-test/...` in the binaries under test. --disableTelemetry: Azurite would otherwise
# send usage data to Microsoft (this machine reaches the package registries only). GCS has no
# such hook: no emulator serves object_store's XML API (docs/OBJECT_STORAGE.md), so the gs://
# tests are #[ignore]d.
# ---------------------------------------------------------------------------------------------
AZURITE_PID=""
AZURITE_DATA=""

start_azurite() {
    local cache="${WAYPOINT_CACHE:-${HOME:?neither WAYPOINT_CACHE nor HOME is set}/.cache/waypoint}"
    local lock="$ROOT/tests/azurite/package-lock.json"
    local root="$cache/tools/azurite-$(cat "$ROOT/tests/azurite/package.json" "$lock" | sha256sum | cut -c1-12)"
    local bin="$root/node_modules/.bin/azurite-blob"
    if [ -x "$bin" ] && [ -f "$root/.waypoint-installed" ]; then
        echo "azurite: reusing $bin"
    else
        command -v npm >/dev/null || { echo "azurite: npm (Node.js) is needed to install Azurite" >&2; return 1; }
        echo "azurite: installing $(grep -o '"azurite": "[^"]*"' "$ROOT/tests/azurite/package.json") into $root (once; under a minute)"
        rm -rf "$root"
        mkdir -p "$root"
        cp "$ROOT/tests/azurite/package.json" "$lock" "$root/"
        (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$root/.waypoint-installed"
    fi
    AZURITE_DATA="$(mktemp -d "${TMPDIR:-/tmp}/waypoint-azurite.XXXXXX")"
    local port
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$AZURITE_DATA/data" \
        --skipApiVersionCheck --silent --disableTelemetry >"$AZURITE_DATA/server.log" 2>&1 &
    AZURITE_PID=$!
    local tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$AZURITE_PID" 2>/dev/null || [ "$tries" -ge 600 ]; then
            echo "azurite: did not come up on 127.0.0.1:$port" >&2
            cat "$AZURITE_DATA/server.log" >&2
            return 1
        fi
        tries=$((tries + 1))
        sleep 0.1
    done
    python3 "$ROOT/tests/azurite/create_container.py" "http://127.0.0.1:$port" waypoint-test
    export WAYPOINT_TEST_AZURITE_URL="http://127.0.0.1:$port"
    export WAYPOINT_TEST_AZURITE="$bin"
    export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL="$WAYPOINT_TEST_AZURITE_URL"
    echo "azurite: pid $AZURITE_PID at $WAYPOINT_TEST_AZURITE_URL, container waypoint-test"
}

stop_azurite() {
    if [ -n "$AZURITE_PID" ]; then
        kill "$AZURITE_PID" 2>/dev/null || true
        wait "$AZURITE_PID" 2>/dev/null || true
        AZURITE_PID=""
    fi
    if [ -n "$AZURITE_DATA" ]; then
        rm -rf "$AZURITE_DATA"
        AZURITE_DATA=""
    fi
}

# ---------------------------------------------------------------------------------------------
# Python virtual environment for the interop tests (tests/python/).
# ---------------------------------------------------------------------------------------------
setup_python_venv() {
    local requirements="$ROOT/tests/python/requirements.txt"
    local cache="${WAYPOINT_CACHE:-${HOME:?neither WAYPOINT_CACHE nor HOME is set}/.cache/waypoint}"
    local hash
    hash="$(sha256sum "$requirements" | cut -c1-12)"
    local venv="$cache/venv-$hash"
    local stamp="$venv/.waypoint-requirements-installed"

    if [ -f "$stamp" ] && [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null; then
        echo "python venv: reusing $venv"
    else
        mkdir -p "$cache"
        if [ -e "$venv" ] && ! "$venv/bin/python" -c '' 2>/dev/null; then
            echo "python venv: $venv is broken, recreating it"
            rm -rf "$venv"
        fi
        if [ ! -x "$venv/bin/python" ]; then
            echo "python venv: creating $venv with $(python3 --version 2>&1)"
            python3 -m venv "$venv"
        fi
        echo "python venv: installing $(tr '\n' ' ' <"$requirements")"
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements"
        # Written only after pip succeeded, so an interrupted install is retried next time.
        cp "$requirements" "$stamp"
        # Environments of older requirements are superseded: remove them, so that exactly one
        # venv-* is found by tests run without WAYPOINT_PYTHON (crates/test-python).
        local old
        for old in "$cache"/venv-*; do
            if [ "$old" != "$venv" ] && [ -d "$old" ]; then
                echo "python venv: removing the superseded $old"
                rm -rf "$old"
            fi
        done
    fi
    export WAYPOINT_PYTHON="$venv/bin/python"
    echo "WAYPOINT_PYTHON=$WAYPOINT_PYTHON"
}

banner "main job builds without MPI"
check_main_job_has_no_mpi
phase_done

banner "debian packages"
ensure_debian_packages
phase_done

banner "python venv"
setup_python_venv
phase_done

banner "s3 server"
start_s3_server
phase_done

banner "azure server (azurite)"
start_azurite
phase_done

# Compiled dependencies are a cache like the venv: kept outside the clone, so that a fresh clone
# on the same machine recompiles only waypoint's own crates (candle, the object-store clients and
# the MPI bindings take most of a cold build). Set CARGO_TARGET_DIR to choose another place.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${WAYPOINT_CACHE:-$HOME/.cache/waypoint}/target}"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# Property tests (the hunter, the parsers, the engine round trip) draw their cases from a fixed
# seed under CI, so that a run is repeatable and never flaky; outside CI each run draws new cases
# (a failure is kept in the test's *.proptest-regressions file and replayed first). Set
# PROPTEST_RNG_SEED to replay a run, WAYPOINT_HUNT_CASES to hunt longer (docs/TESTING.md).
if [ -n "${CI:-}" ]; then
    export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261205}"
    echo "PROPTEST_RNG_SEED=$PROPTEST_RNG_SEED (fixed under CI)"
fi

banner "cargo test --workspace --all-features --no-fail-fast"
cargo test --workspace --all-features --no-fail-fast "$@"
phase_done
