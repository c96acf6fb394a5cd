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
    if [ "$status" -eq 0 ]; then
        printf '\n==== [test.sh] all phases passed in %ss ====\n' "$((SECONDS - START_SECONDS))"
    else
        printf '\n==== [test.sh] FAILED (exit status %s) after %ss ====\n' "$status" "$((SECONDS - START_SECONDS))" >&2
    fi
}
trap on_exit EXIT

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
# Hook: local S3 server. A later phase starts an S3-compatible server on 127.0.0.1 here (and
# stops it from the EXIT trap), exporting its endpoint for the object-store tests. Nothing yet.
# ---------------------------------------------------------------------------------------------
start_s3_server() {
    echo "s3 server: not needed yet"
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

banner "debian packages"
ensure_debian_packages
phase_done

banner "python venv"
setup_python_venv
phase_done

banner "s3 server"
start_s3_server
phase_done

banner "cargo test --workspace --all-features --no-fail-fast"
cargo test --workspace --all-features --no-fail-fast "$@"
phase_done
