"""The PTB-XL layout's metadata: what the PTB-XL benchmark (Strodthoff et al. 2021, helme/ecg_ptbxl_benchmarking)
evaluates, from ``ptbxl_database.csv`` and ``scp_statements.csv`` at the source root.

The WFDB reader (``ecgfast.ingest.wfdb``) recognises the layout, reads the index and its records; this module turns
the index's rows into age, sex, the ``strat_fold`` and the labels of the benchmark's six tasks, one group each:

========  ==================  =============================================================================
group     labels              a record's classes, from the codes of its ``scp_codes`` (whatever the likelihood)
========  ==================  =============================================================================
all       ``scp_<code>``      every code
diag      ``diag_<code>``     the codes that are diagnostic statements (``diagnostic`` 1 in scp_statements)
sub       ``sub_<subclass>``  their ``diagnostic_subclass``
super     ``super_<class>``   their ``diagnostic_class`` (NORM, MI, STTC, CD, HYP)
form      ``form_<code>``     the codes that are form statements (``form`` 1)
rhythm    ``rhythm_<code>``   the codes that are rhythm statements (``rhythm`` 1)
========  ==================  =============================================================================

A group's labels are the classes that occur in the index. A record holds 1 for its classes of a group and 0 for
the group's other labels; a record without any class of a group holds NaN for every label of that group, because
the benchmark leaves such a record out of that task (its ``select_data`` keeps the records with at least one label
of the task). In a name, a code's characters other than letters, digits, ``_``, ``.`` and ``-`` become ``_``
(``LAO/LAE`` -> ``scp_LAO_LAE``): a label is a Zarr array, and ``/`` would nest it.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from pathlib import Path

import numpy as np

from ecgfast.ingest.record import age_years

DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
COLUMNS = ("age", "sex", "strat_fold", "scp_codes")  # the index's columns this module reads, beside the patient
# group -> its labels' prefix
GROUPS = {"all": "scp", "diag": "diag", "sub": "sub", "super": "super", "form": "form", "rhythm": "rhythm"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def label_name(group: str, cls: str) -> str:
    """The label of class ``cls`` of ``group``: ``label_name("sub", "LAFB/LPFB") == "sub_LAFB_LPFB"``."""
    return f"{GROUPS[group]}_{_UNSAFE.sub('_', cls)}"


def demographics(row: dict) -> tuple[float, int]:
    """(age in years, sex as the store codes it) of an index row; PTB-XL codes sex as 0 male, 1 female."""
    age = age_years(row.get("age", ""))
    sex = {"0": 1, "1": 0}.get((row.get("sex") or "").strip().removesuffix(".0"), -1)
    return age, sex


def read_statements(path) -> dict[str, dict[str, str]]:
    """scp_statements.csv: code (its first, unnamed column) -> row."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        wanted = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"}
        if not wanted <= set(header):
            raise ValueError(f"{path} needs the columns {', '.join(sorted(wanted - set(header)))}")
        return {row[0].strip(): dict(zip(header, row)) for row in reader if row and row[0].strip()}


def _is_one(value) -> bool:
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False


def classes(codes, statements: dict[str, dict[str, str]] | None) -> dict[str, set[str]]:
    """A record's classes in each group, from its SCP codes; without a statement table, ``all`` only. A code the
    table does not list counts for ``all`` alone (as in the benchmark)."""
    out = {"all": set(codes)}
    if statements is None:
        return out
    listed = {c: statements[c] for c in codes if c in statements}
    diagnostic = {c: s for c, s in listed.items() if _is_one(s.get("diagnostic"))}
    out["diag"] = set(diagnostic)
    for group, column in (("sub", "diagnostic_subclass"), ("super", "diagnostic_class")):
        out[group] = {s.get(column, "").strip() for s in diagnostic.values()} - {""}
    for group in ("form", "rhythm"):
        out[group] = {c for c, s in listed.items() if _is_one(s.get(group))}
    return out


def _codes(path, item: str, text: str) -> list[str]:
    try:
        value = ast.literal_eval(text.strip() or "{}")
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{path}, record {item}: scp_codes {text!r} is not a dictionary of code -> likelihood")
    return [str(code).strip() for code in value]


def _fold(path, item: str, text: str) -> int:
    try:
        value = float(text) if text.strip() else math.nan
    except ValueError:
        value = math.inf
    if math.isnan(value):
        return -1
    if not (value.is_integer() and 0 <= value <= 127):
        raise ValueError(f"{path}, record {item}: strat_fold {text!r} is not a fold number (an integer 0-127)")
    return int(value)


def metadata(root, rows: dict[str, dict[str, str]], items: list[str]) -> dict:
    """Per item (a ``filename_hr`` of the index): ``fold`` (int8, -1 unknown) when the index has ``strat_fold``;
    ``labels`` and ``label_groups`` when it has ``scp_codes`` (the groups other than ``all`` need
    ``scp_statements.csv``). A malformed value is a ValueError naming the record."""
    path, out = Path(root) / DATABASE, {}
    columns = set(next(iter(rows.values()), {}))
    if "strat_fold" in columns:
        out["fold"] = np.array([_fold(path, it, rows[it]["strat_fold"]) for it in items], np.int8)
    if "scp_codes" not in columns:
        return out
    statements = read_statements(Path(root) / STATEMENTS) if (Path(root) / STATEMENTS).is_file() else None
    per_item = [classes(_codes(path, it, rows[it]["scp_codes"]), statements) for it in items]
    labels, groups = {}, {}
    for group in per_item[0] if per_item else ():
        found = sorted(set().union(*(p[group] for p in per_item)))
        names = [label_name(group, c) for c in found]
        if len(set(names)) < len(found):
            raise ValueError(f"{path}: two {group} classes give one label name (characters other than letters, "
                             f"digits, _ . - become _)")
        if not names:  # no record has a class of this group: no task to evaluate
            continue
        column = {c: k for k, c in enumerate(found)}
        y = np.zeros((len(items), len(found)), np.float32)
        for i, p in enumerate(per_item):
            y[i, [column[c] for c in p[group]]] = 1
            if not p[group]:
                y[i] = np.nan
        labels.update(zip(names, y.T.copy()))
        groups[group] = sorted(names)
    out["labels"], out["label_groups"] = labels, groups
    return out
