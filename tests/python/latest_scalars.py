"""Prints, as JSON, the last point of each scalar series the real TensorBoard shows for a run.

Usage: latest_scalars.py RUN_DIR

Run by crates/waypoint-cli/tests/it/tail.rs to compare `waypoint tail` with TensorBoard.
RUN_DIR is one TensorBoard run (a directory of event files), read by ``EventAccumulator`` with
its default options (``purge_orphaned_data``: a ``SessionLog`` ``START`` purges every point at or
after its step). Prints ``{TAG: {"step": STEP, "value": VALUE}}`` for each tag with a point left.
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    acc = event_accumulator.EventAccumulator(sys.argv[1])
    acc.Reload()
    latest = {}
    for tag in acc.Tags()["scalars"]:
        points = acc.Scalars(tag)
        if points:
            latest[tag] = {"step": points[-1].step, "value": points[-1].value}
    print(json.dumps(latest, sort_keys=True))


if __name__ == "__main__":
    main()
