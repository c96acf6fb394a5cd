"""Checks that the real TensorBoard reads a log dir written by crates/tfevents.

Usage: check_tensorboard.py LOGDIR EXPECTED_JSON

Run by crates/tfevents/tests/it/tensorboard_interop.rs, which writes LOGDIR and EXPECTED_JSON
(scalars as [step, value] pairs with values exact as float32, histograms, texts, hparams).
Three readers must agree with the expectation:

1. ``EventAccumulator`` (the legacy Python loader): every scalar with its step and value, and
   every histogram, bucket for bucket.
2. A ``tensorboard --logdir`` server with its default loader (the Rust data server), through its
   HTTP API: scalars, histograms, text and the hparams plugin's experiment and session groups.
3. The same with ``--load_fast=false`` (the Python multiplexer, used where the data server is
   missing).

Prints "tensorboard checks passed" on success; any failure raises.
"""

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from tensorboard.backend.event_processing import event_accumulator

SERVER_START_DEADLINE_S = 90.0
POLL_INTERVAL_S = 0.2


def check_accumulator(logdir, expected):
    """Loads the log dir with EventAccumulator, keeping every point, and compares."""
    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == sorted(expected["scalars"]), tags
    for tag, points in expected["scalars"].items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(step, value) for step, value in points]
        assert got == want, f"EventAccumulator scalars {tag}:\n got {got}\nwant {want}"
        steps = [step for step, _ in got]
        assert steps == sorted(set(steps)), f"{tag}: steps double back: {steps}"
    assert sorted(tags["histograms"]) == sorted(expected["histograms"]), tags
    for tag, histograms in expected["histograms"].items():
        got = acc.Histograms(tag)
        assert [h.step for h in got] == [h["step"] for h in histograms], (tag, got)
        for event, want in zip(got, histograms):
            value = event.histogram_value
            for field in ("min", "max", "num", "sum", "sum_squares"):
                assert getattr(value, field) == want[field], (tag, event.step, field)
            assert list(value.bucket_limit) == want["bucket_limit"], (tag, event.step)
            assert list(value.bucket) == want["bucket"], (tag, event.step)
    print("EventAccumulator: scalars and histograms match")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `tensorboard --logdir` on 127.0.0.1, terminated on exit."""

    def __init__(self, logdir, extra_args):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        args = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
                "--host", "127.0.0.1", "--port", str(self.port), *extra_args]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def retry(self, check):
        """Runs `check` until it passes: the server loads files in the background. Bounded by
        SERVER_START_DEADLINE_S; then the last failure is raised with the server's log."""
        deadline = time.monotonic() + SERVER_START_DEADLINE_S
        tries = 0
        while True:
            tries += 1
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return check(self)
            except (AssertionError, urllib.error.URLError, ConnectionError, KeyError) as e:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"still failing after {tries} tries: {e}\n--- tensorboard log\n{self.output()}"
                    ) from e
                time.sleep(POLL_INTERVAL_S)


def q(value):
    return urllib.parse.quote(value, safe="")


def check_server_scalars(server, expected):
    run = expected["run"]
    runs = server.get("/data/runs")
    assert runs == [run], f"runs {runs}, want [{run!r}]"
    for tag, points in expected["scalars"].items():
        got = server.get(f"/data/plugin/scalars/scalars?run={q(run)}&tag={q(tag)}")
        got = [[step, value] for _wall_time, step, value in got]
        assert got == points, f"server scalars {tag}:\n got {got}\nwant {points}"


def check_server_rest(server, expected):
    run = expected["run"]
    for tag, histograms in expected["histograms"].items():
        got = server.get(f"/data/plugin/histograms/histograms?run={q(run)}&tag={q(tag)}")
        assert [step for _w, step, _b in got] == [h["step"] for h in histograms], (tag, got)
        for (_w, step, buckets), want in zip(got, histograms):
            assert sum(count for _l, _r, count in buckets) == want["num"], (tag, step)

    for tag, texts in expected["texts"].items():
        got = server.get(f"/data/plugin/text/text?run={q(run)}&tag={q(tag)}")
        assert [t["step"] for t in got] == [step for step, _ in texts], (tag, got)
        for item, (_step, text) in zip(got, texts):
            # Markdown is rendered to HTML: compare the words.
            plain = text.replace("**", "")
            html = item["text"].replace("<strong>", "").replace("</strong>", "")
            assert plain in html, (tag, item, text)

    hp = expected["hparams"]
    experiment = server.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    types = {"number": "DATA_TYPE_FLOAT64", "str": "DATA_TYPE_STRING", "bool": "DATA_TYPE_BOOL"}
    want_infos = {
        name: types["bool" if isinstance(v, bool) else "number" if isinstance(v, float) else "str"]
        for name, v in hp["values"].items()
    }
    got_infos = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    assert got_infos == want_infos, (got_infos, want_infos)
    got_metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert got_metrics == hp["metrics"], (got_metrics, hp["metrics"])

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
    assert session["name"] == run, session
    assert session["status"] == hp["status"], session
    last = {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in session["metricValues"]}
    for metric in hp["metrics"]:
        step, value = expected["scalars"][metric][-1]
        assert last.get(metric) == (step, value), (metric, last)


def run_checks(check_accumulator, server_checks, what, done):
    """The judges' shared main: argv is the log dir and the expected JSON; `check_accumulator`
    reads with EventAccumulator (defaults), then each of `server_checks(server, expected)` runs
    against `tensorboard --logdir` with each loader, and `done` is printed when all pass."""
    logdir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    check_accumulator(logdir, expected)
    for extra_args in ([], ["--load_fast=false"]):
        label = " ".join(extra_args) or "default loader"
        with Server(logdir, extra_args) as server:
            for check in server_checks:
                server.retry(lambda s, check=check: check(s, expected))
        print(f"tensorboard server ({label}): {what} match")
    print(done)


def main():
    run_checks(
        check_accumulator,
        [check_server_scalars, check_server_rest],
        "scalars, histograms, text and hparams",
        "tensorboard checks passed",
    )


if __name__ == "__main__":
    main()
