"""What an evaluation leaves behind: the printed table, the CSV and JSON files, and the provenance of a run.

``write_results`` writes ``results.csv`` (one row per run), ``summary.csv`` (means over seeds with intervals),
``differences.csv`` (paired differences between arms), ``classes.csv`` (each class of each task),
``predictions.csv`` (every validation and test score), ``results.json`` (all of it, with the provenance block) and
``auroc.png``. ``provenance`` gathers what produced the
numbers: the checkpoint and its hash, the store's identity, the split's hash, the code's version and commit, the
command line.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .protocol import ARMS, COMPARISONS, Evaluation
from .splits import PatientSplit, store_identity

__all__ = ["format_table", "write_results", "write_predictions", "provenance", "file_sha256"]

RUN_COLUMNS = ("task", "arm", "fraction", "seed", "val_auroc", "test_auroc", "test_auroc_lo", "test_auroc_hi",
               "test_auprc", "test_auprc_lo", "test_auprc_hi")
DIFF_COLUMNS = ("task", "fraction", "arm_a", "arm_b", "diff_auroc", "diff_lo", "diff_hi")
CLASS_COLUMNS = ("task", "class", "arm", "fraction", "test_auroc", "test_auroc_lo", "test_auroc_hi", "test_auprc",
                 "test_auprc_lo", "test_auprc_hi", "n_test_positives", "n_test")
PREDICTION_COLUMNS = ("task", "class", "arm", "fraction", "seed", "record_id", "patient_id", "split", "label",
                      "score")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _fraction_label(row: Mapping) -> str:
    mark = "*" if row.get("enlarged") else ""
    mark += "=" if row.get("same_as") is not None else ""
    return _percent(row["fraction"]) + mark


def _arms(rows: Sequence[Mapping]) -> list[str]:
    present = {r["arm"] for r in rows}
    return [a for a in ARMS if a in present]


def format_table(evaluation: Evaluation) -> str:
    """The printed summary: test AUROC (AUPRC) per arm, then the paired differences, one line per task x fraction.

    Means over seeds; the differences carry their 95% intervals (bootstrap over test patients, shared by every arm
    and seed, and over seeds if the config resampled them). A task of several classes shows its macro AUROC (mean
    AUPRC), then a table of its classes' AUROCs at its largest fraction, and names the classes it skipped. The
    footer says how many runs stopped at the step budget rather than by early stopping.
    """
    summary, diffs = evaluation.summary, evaluation.differences
    if not summary:
        raise ValueError("the evaluation holds no results")
    arms = _arms(summary)
    cell = {(r["task"], r["fraction"], r["arm"]): r for r in summary}
    keys = list(dict.fromkeys((r["task"], r["fraction"]) for r in sorted(summary, key=lambda r: (r["task"],
                                                                                                  r["fraction"]))))
    head = f"{'task':<16} {'labels':>7} {'patients':>8} {'pos':>4}"
    lines = [head + " " + " ".join(f"{a:>14}" for a in arms), "-" * (len(head) + 15 * len(arms))]
    for task, fraction in keys:
        first = next(cell[(task, fraction, a)] for a in arms if (task, fraction, a) in cell)
        cells = []
        for a in arms:
            r = cell.get((task, fraction, a))
            cells.append(f"{r['test_auroc']:.3f} ({r['test_auprc']:.3f})" if r else "-")
        lines.append(f"{task:<16} {_fraction_label(first):>7} {first['n_train_patients']:>8} "
                     f"{first['n_train_positives']:>4} " + " ".join(f"{c:>14}" for c in cells))
    n_seeds = sorted({r["n_seeds"] for r in summary})
    level = sorted({r.get("level", "record") for r in summary})
    lines.append(f"test AUROC (AUPRC) per {'/'.join(level)}, mean over {'/'.join(map(str, n_seeds))} seeds")
    if diffs:
        pairs = [p for p in COMPARISONS if any((d["arm_a"], d["arm_b"]) == p for d in diffs)]
        names = [f"{a} - {b}" for a, b in pairs]
        width = max(22, *(len(n) for n in names))
        diff = {(d["task"], d["fraction"], d["arm_a"], d["arm_b"]): d for d in diffs}
        lines += ["", f"{'task':<16} {'labels':>7} " + " ".join(f"{n:>{width}}" for n in names),
                  "-" * (25 + (width + 1) * len(names))]
        for task, fraction in keys:
            first = next(cell[(task, fraction, a)] for a in arms if (task, fraction, a) in cell)
            cells = []
            for a, b in pairs:
                d = diff.get((task, fraction, a, b))
                cells.append(f"{d['diff_auroc']:+.3f} [{d['diff_lo']:+.3f}, {d['diff_hi']:+.3f}]" if d else "-")
            lines.append(f"{task:<16} {_fraction_label(first):>7} " + " ".join(f"{c:>{width}}" for c in cells))
        over = " and ".join(sorted({d.get("interval_over", "test patients") for d in diffs}))
        lines.append(f"paired differences of test AUROC, mean over seeds [95% interval: bootstrap over {over}]")
    lines += _class_lines(evaluation, arms)
    if any(r["enlarged"] for r in summary):
        lines.append("* enlarged to the minimum number of positive (and negative) patients")
    if any(r.get("same_as") is not None for r in summary):
        lines.append("= the same patients as a smaller fraction (trained once)")
    runs = evaluation.runs
    trained = [a for a in arms if a != "prevalence"]
    if runs and trained:
        hits = ", ".join(f"{a} {sum(r['stopped_by'] == 'budget' for r in runs if r['arm'] == a)}/"
                         f"{sum(r['arm'] == a for r in runs)}" for a in trained)
        lines.append(f"runs stopped by the step budget rather than by early stopping: {hits}")
    return "\n".join(lines)


def _class_lines(evaluation: Evaluation, arms: Sequence[str]) -> list[str]:
    """For each task of several classes: its classes' test AUROCs at its largest fraction, and what was skipped."""
    lines = []
    for task in sorted({r["task"] for r in evaluation.summary if r.get("n_classes", 1) > 1 or r.get(
            "skipped_classes")}):
        rows = [r for r in evaluation.classes if r["task"] == task]
        fraction = max(r["fraction"] for r in evaluation.summary if r["task"] == task)
        first = next(r for r in evaluation.summary if r["task"] == task)
        cell = {(r["class"], r["arm"]): r for r in rows if r["fraction"] == fraction}
        names = list(dict.fromkeys(r["class"] for r in rows))
        width = max(16, *(len(n) for n in names)) if names else 16
        lines += ["", f"{task}: test AUROC (AUPRC) per class at {_percent(fraction)} of the labels; the rows above "
                      f"are its macro AUROC (mean AUPRC) over these {first['n_classes']} classes",
                  f"{'class':<{width}} {'pos':>5} " + " ".join(f"{a:>14}" for a in arms),
                  "-" * (width + 7 + 15 * len(arms))]
        for name in names:
            some = next(r for (c, _), r in cell.items() if c == name)
            cells = [f"{r['test_auroc']:.3f} ({r['test_auprc']:.3f})" if (r := cell.get((name, a))) else "-"
                     for a in arms]
            lines.append(f"{name:<{width}} {some['n_test_positives']:>5} " + " ".join(f"{c:>14}" for c in cells))
        if first.get("skipped_classes"):
            lines.append(f"skipped (one outcome among the test records): {first['skipped_classes'].replace(';', ', ')}")
    return lines


def _write_csv(path: Path, rows: Sequence[Mapping], first: Sequence[str]) -> None:
    columns = list(dict.fromkeys([*first, *(k for r in rows for k in r)]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_predictions(predictions: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """predictions.csv: task, class, arm, fraction, seed, record_id, patient_id, split, label, score (the logit),
    one row per run x scored record x class of the task."""
    path = Path(path)
    columns = [np.asarray(predictions[c]) for c in PREDICTION_COLUMNS]
    n = len(columns[0])
    with open(path, "w", newline="") as f:
        f.write(",".join(PREDICTION_COLUMNS) + "\n")
        for start in range(0, n, 65536):  # in blocks: a large store's predictions need not fit as one text
            block = [c[start:start + 65536] for c in columns]
            block[-1] = np.char.mod("%.6g", block[-1].astype(np.float64))
            f.writelines(",".join(map(str, row)) + "\n" for row in zip(*block))
    return path


def write_results(evaluation: Evaluation, run_dir: str | Path, *, provenance: Mapping | None = None,
                  plot: bool = True) -> dict[str, Path]:
    """Write the evaluation's files into ``run_dir``; return their paths by name.

    ``results.csv`` (one row per task x arm x fraction x seed), ``summary.csv`` (per task x fraction x arm, means
    over seeds with 95% intervals), ``differences.csv`` (``task, fraction, arm_a, arm_b, diff_auroc, diff_lo,
    diff_hi`` and the same for AUPRC), ``classes.csv`` (per task x class x arm x fraction: the class's AUROC and
    AUPRC, means over seeds with 95% intervals), ``predictions.csv``, ``results.json`` (``provenance``, ``runs``,
    ``summary``, ``differences``, ``classes``) and, with ``plot``, ``auroc.png``
    (``ecgfast.evaluate.plots.plot_results``).
    """
    if not evaluation.runs:
        raise ValueError("no result rows to write")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: run_dir / f"{name}.csv" for name in ("results", "summary", "differences", "classes",
                                                           "predictions")}
    _write_csv(paths["results"], evaluation.runs, RUN_COLUMNS)
    _write_csv(paths["summary"], evaluation.summary, ())
    _write_csv(paths["differences"], evaluation.differences, DIFF_COLUMNS)
    _write_csv(paths["classes"], evaluation.classes, CLASS_COLUMNS)
    write_predictions(evaluation.predictions, paths["predictions"])
    paths["json"] = run_dir / "results.json"
    paths["json"].write_text(json.dumps({"provenance": dict(provenance or {}), "runs": evaluation.runs,
                                         "summary": evaluation.summary, "differences": evaluation.differences,
                                         "classes": evaluation.classes}, indent=1, default=_json_default))
    if plot:
        from .plots import plot_results

        paths["png"] = plot_results(evaluation, run_dir / "auroc.png")
    return paths


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(*, checkpoint: str | Path | None = None, store=None, split: PatientSplit | None = None,
               argv: Sequence[str] | None = None, config: Mapping | None = None) -> dict:
    """The provenance block of results.json: what produced an evaluation, enough to recompute it.

    Args:
        checkpoint: the pretrained checkpoint's path (hashed with SHA-256).
        store: an ``ECGStore`` (its ``store_identity``) or an identity mapping already computed.
        split: the patient split (its hash, seed, tasks and part sizes).
        argv: the command line (default: ``sys.argv``).
        config: the settings of the run, copied as given.

    The code is named by the ecgfast version and, in a git checkout, the commit and whether the tree had
    uncommitted changes.
    """
    from ecgfast import __version__

    import torch

    block: dict = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "command": shlex.join(sys.argv if argv is None else argv),
                   "ecgfast_version": __version__, "git_commit": _git("rev-parse", "HEAD")}
    status = _git("status", "--porcelain", "--untracked-files=no")
    block["git_dirty"] = None if status is None else bool(status)
    block.update(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__)
    if checkpoint is not None:
        block["checkpoint"] = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    if store is not None:
        block["store"] = dict(store) if isinstance(store, Mapping) else store_identity(store)
    if split is not None:
        block["split"] = {"sha256": split.sha256, "method": split.method, "seed": split.seed,
                          "tasks": list(split.tasks),
                          "patients": {p: len(getattr(split, p)) for p in ("train", "val", "test")}}
    if config is not None:
        block["config"] = dict(config)
    return block
