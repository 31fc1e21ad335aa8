"""Named fault-injection points, so that tests kill or interrupt an ingest at an exact step instead of a moment.

``ECGFAST_FAULT=<point>[@<hit>]:<action>`` in the environment makes the ``hit``-th (default first) pass through
``fault("<point>")`` do ``action``: ``kill`` (SIGKILL to this process, as ``kill -9``) or ``sigint`` (SIGINT to
this process's group, as Ctrl-C in a terminal: worker processes get it too). Without the variable a point costs
a dictionary lookup. The points:

- ``ingest.marked``: a shard and its done marker are written.
- ``ingest.columns``: the final write-out has written the report, provenance and every per-record column, but the
  store has not grown to take the new records in.
- ``ingest.grown``: the store holds the new records; the run's state is not removed yet.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter = Counter()


def fault(point: str) -> None:
    spec = os.environ.get("ECGFAST_FAULT")
    if not spec:
        return
    where, _, action = spec.rpartition(":")
    name, _, hit = where.partition("@")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] != int(hit or 1):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigint":
        os.killpg(os.getpgrp(), signal.SIGINT)  # Python raises KeyboardInterrupt here, in the main thread
    else:
        raise ValueError(f"ECGFAST_FAULT={spec!r}: the action must be kill or sigint")
