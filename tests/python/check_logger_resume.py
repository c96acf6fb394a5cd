"""Checks that the real TensorBoard shows a resumed run written by waypoint's TensorBoardLogger
without any curve doubling back.

Usage: check_logger_resume.py LOGDIR EXPECTED_JSON

Run by crates/waypoint/tests/loggers.rs (`tensorboard_reads_a_resumed_run`): LOGDIR holds one run (the
directory EXPECTED_JSON's "run" names) written by a first logger (steps 1..40, then killed) and a second one resumed at step 25 (steps
25..60, finalized). EXPECTED_JSON lists, per scalar tag, the [step, value] pairs TensorBoard must
show: the first run's before 25, the second run's from 25 on, steps strictly increasing; and the
hyperparameters with the session's status.

Three readers must agree: ``EventAccumulator``, and ``tensorboard --logdir`` servers with the
default (Rust) loader and with ``--load_fast=false`` (the Python loader), through their HTTP APIs.
Prints "resumed run checks passed" on success; any failure raises.
"""

import os

from tensorboard.backend.event_processing import event_accumulator

from check_tensorboard import check_server_scalars, run_checks


def check_accumulator(logdir, expected):
    run_dir = os.path.join(logdir, expected["run"])
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    for tag, points in expected["scalars"].items():
        got = [[e.step, e.value] for e in acc.Scalars(tag)]
        steps = [step for step, _ in got]
        assert all(a < b for a, b in zip(steps, steps[1:])), f"{tag}: steps double back: {steps}"
        assert got == points, f"EventAccumulator {tag}:\n got {got}\nwant {points}"
    print("EventAccumulator: steps strictly increasing, the resumed run's values from its resume step")


def check_hparams(server, expected):
    hp = expected["hparams"]
    experiment = server.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    got_names = sorted(h["name"] for h in experiment["hparamInfos"])
    assert got_names == sorted(hp["values"]), (got_names, hp["values"])
    got_metrics = sorted(m["name"]["tag"] for m in experiment["metricInfos"])
    for metric in hp["metrics"]:
        assert metric in got_metrics, (metric, got_metrics)
    groups = server.post("/data/plugin/hparams/session_groups", {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 100,
    })
    assert groups["totalSize"] == 1, groups
    group = groups["sessionGroups"][0]
    assert group["hparams"] == hp["values"], (group["hparams"], hp["values"])
    session = group["sessions"][0]
    assert session["status"] == hp["status"], session
    last = {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in session["metricValues"]}
    for metric in hp["metrics"]:
        step, value = expected["scalars"][metric][-1]
        assert last.get(metric) == (step, value), (metric, last)


def main():
    run_checks(
        check_accumulator,
        [check_server_scalars, check_hparams],
        "scalars and hparams",
        "resumed run checks passed",
    )


if __name__ == "__main__":
    main()
