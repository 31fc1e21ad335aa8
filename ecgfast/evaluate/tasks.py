"""What a task name asks for: one label, a group of labels (one multi-label head), or a float label thresholded.

``resolve_tasks(store, names)`` turns the names of ``train.py --tasks`` into ``Task`` objects, each with its classes
and their 0/1 labels (NaN where unknown):

============  ===============================================================================================
name          the task
============  ===============================================================================================
``low_lvef``  a label of the store holding 0, 1 or NaN: a binary task (one class)
``super``     a label group of the store (``ECGStore.label_groups``; PTB-XL ingest records ``all``, ``diag``,
              ``sub``, ``super``, ``form``, ``rhythm``): one class per label, a record outside the group's
              evaluation (NaN for all its labels) is left out
``lvef<40``   a label compared with a number (``<``, ``<=``, ``>``, ``>=``) when the task is evaluated, so that
              continuous values (LVEF in %, potassium in mmol/L) need no 0/1 copy in the store; unknown (NaN)
              stays unknown
============  ===============================================================================================

A label's exact name wins over a group of the same name. Whatever the kind, every part of the downstream protocol
treats a task alike: a binary task is a task of one class.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Task", "parse_threshold", "unknown_tasks", "resolve_tasks"]

_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_THRESHOLD = re.compile(r"^\s*(?P<label>[^<>=\s]+)\s*(?P<op><=|>=|<|>)\s*"
                        r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Task:
    """One task: its ``name`` (as asked), the names of its ``classes`` (a binary task: its own name) and
    ``labels``, float32 (N, K) 0/1 with NaN where unknown."""

    name: str
    classes: tuple[str, ...]
    labels: np.ndarray

    @property
    def known(self) -> np.ndarray:
        """(N,) bool: the records that take part in the task (every class known)."""
        return ~np.isnan(self.labels).any(axis=1)


def parse_threshold(name: str) -> tuple[str, str, float] | None:
    """``"lvef<40"`` -> ``("lvef", "<", 40.0)``; None for a name without a comparison."""
    match = _THRESHOLD.match(name)
    if match is None:
        return None
    return match["label"], match["op"], float(match["value"])


def unknown_tasks(names: Sequence[str], labels: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The names that are neither a label, a group, nor a comparison of a label (``labels``: the store's label
    names; ``groups``: its label groups)."""
    labels = set(labels)
    out = []
    for name in names:
        threshold = parse_threshold(name)
        if name not in labels and name not in groups and (threshold is None or threshold[0] not in labels):
            out.append(name)
    return out


def _binary(name: str, values: np.ndarray, source: str) -> np.ndarray:
    known = values[~np.isnan(values)]
    odd = np.setdiff1d(known, (0.0, 1.0))
    if len(odd):
        raise ValueError(f"task {name}: label {source} holds values other than 0 and 1 (e.g. "
                         f"{', '.join(f'{v:g}' for v in odd[:3])}): name a comparison to evaluate it, e.g. "
                         f"'{source}<{np.median(known):g}'")
    return values


def resolve_tasks(store, names: Sequence[str]) -> list[Task]:
    """The tasks ``names`` ask for on ``store`` (an ``ECGStore``: its ``labels``, ``label_groups`` and
    ``record_ids``), or a ValueError naming the task and what is wrong: an unknown name, a plain label holding other
    values than 0 and 1, a group whose labels are known on some records only in part."""
    missing = unknown_tasks(names, store.label_names, store.label_groups)
    if missing:
        raise ValueError(f"no label, label group or comparison of a label named {', '.join(missing)}")
    labels, groups = store.labels, store.label_groups
    tasks = []
    for name in names:
        if name in labels:
            values = _binary(name, np.asarray(labels[name], np.float32), name)[:, None]
            tasks.append(Task(name, (name,), values))
        elif name in groups:
            classes = tuple(groups[name])
            values = np.stack([_binary(name, np.asarray(labels[c], np.float32), c) for c in classes], axis=1)
            unknown = np.isnan(values)
            partial = np.flatnonzero(unknown.any(axis=1) & ~unknown.all(axis=1))
            if len(partial):
                row = partial[0]
                raise ValueError(f"task {name}: record {store.record_ids[row]} (and {len(partial) - 1} more) holds "
                                 f"{', '.join(c for c, u in zip(classes, unknown[row]) if not u)} but not "
                                 f"{', '.join(c for c, u in zip(classes, unknown[row]) if u)}: a record takes part in "
                                 f"a group's task with all of its labels or none")
            tasks.append(Task(name, classes, values))
        else:
            label, op, value = parse_threshold(name)
            x = np.asarray(labels[label], np.float32)
            values = np.where(np.isnan(x), np.nan, _COMPARE[op](x, value)).astype(np.float32)
            tasks.append(Task(name, (name,), values[:, None]))
    return tasks
