"""Checks what the real TensorBoard shows for runs written the way production writes them
(killed, resumed, rewound, rerun, many short runs into one directory).

Usage: check_curves.py LOGDIR EXPECTED_JSON

Run by crates/waypoint/tests/it/tensorboard_sequences.rs and crates/waypoint-train's kill tests.
EXPECTED_JSON is ``{"runs": {RUN: {TAG: [[STEP, VALUE or null], ...]}}}``: RUN is a directory
below LOGDIR, and for each scalar tag the steps the run's final state went through, once each,
in order, with the value the surviving run logged (null: any value), or ``{"within": [STEP,
...]}``: strictly increasing steps among those, any values. The run must show exactly these tags.

Readers, each with its default options:
1. ``EventAccumulator`` (``purge_orphaned_data``: a ``SessionLog`` ``START`` purges every point
   at or after its step, across the run's files);
2. ``tensorboard --logdir LOGDIR`` with its default loader (the Rust data server), through
   ``/data/plugin/scalars/scalars``;
3. the same with ``--load_fast=false`` (the Python multiplexer: its first ``START`` per run
   purges nothing, later ones as 1.).
Each server starts once for all runs; readiness is polled over HTTP. Prints
"curve checks passed" on success; any failure raises.
"""

import math
import os

from tensorboard.backend.event_processing import event_accumulator

from check_tensorboard import q, run_checks


def same(got, want):
    """Steps equal, values equal where the expectation has one; or, for ``{"within": steps}``,
    strictly increasing steps among those (values measured, a step a kill cut short may lack)."""
    if isinstance(want, dict):
        steps = [s for s, _ in got]
        return all(a < b for a, b in zip(steps, steps[1:])) and set(steps) <= set(want["within"])
    if [s for s, _ in got] != [s for s, _ in want]:
        return False
    return all(w is None or (math.isclose(g, w, rel_tol=0, abs_tol=0)) for (_, g), (_, w) in zip(got, want))


def check_accumulator(logdir, expected):
    for run, tags in expected["runs"].items():
        acc = event_accumulator.EventAccumulator(os.path.join(logdir, run))
        acc.Reload()
        got_tags = sorted(acc.Tags()["scalars"])
        assert got_tags == sorted(tags), f"{run}: EventAccumulator tags {got_tags}, want {sorted(tags)}"
        for tag, points in tags.items():
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            want = points if isinstance(points, dict) else [(s, v) for s, v in points]
            assert same(got, want), f"{run} EventAccumulator {tag}:\n got {got}\nwant {want}"
    print(f"EventAccumulator: {len(expected['runs'])} runs match")


def check_server_scalars(server, expected):
    runs = sorted(server.get("/data/runs"))
    assert runs == sorted(expected["runs"]), f"runs {runs}, want {sorted(expected['runs'])}"
    for run, tags in expected["runs"].items():
        listed = server.get(f"/data/plugin/scalars/tags").get(run, {})
        assert sorted(listed) == sorted(tags), f"{run}: server tags {sorted(listed)}, want {sorted(tags)}"
        for tag, points in tags.items():
            got = server.get(f"/data/plugin/scalars/scalars?run={q(run)}&tag={q(tag)}")
            got = [(step, value) for _wall_time, step, value in got]
            want = points if isinstance(points, dict) else [(s, v) for s, v in points]
            assert same(got, want), f"{run} server {tag}:\n got {got}\nwant {want}"


def main():
    run_checks(check_accumulator, [check_server_scalars], "the runs' curves", "curve checks passed")


if __name__ == "__main__":
    main()
