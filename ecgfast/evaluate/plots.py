"""Figures of a run: test AUROC and the paired differences against the share of labels, the embedding map, and the
augmentation gallery. Each function takes plain arrays (or an ``Evaluation``) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .protocol import ARMS, COMPARISONS, Evaluation

__all__ = ["plot_results", "plot_embedding", "plot_views", "pca_2d"]

# The comparisons' colours, apart from the arms' own (tab:red, tab:orange, tab:blue, tab:green).
DIFF_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, title: str, dpi: int) -> Path:
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)


def _points(rows: Sequence[Mapping]) -> tuple[list[float], list[str], list[Mapping]]:
    """One point per distinct set of training patients: a fraction that equals a smaller one joins its point."""
    rows = sorted(rows, key=lambda r: r["fraction"])
    merged: dict[float, list[float]] = {}
    kept = []
    for r in rows:
        if r.get("same_as") is not None and r["same_as"] in merged:
            merged[r["same_as"]].append(r["fraction"])
        else:
            merged[r["fraction"]] = [r["fraction"]]
            kept.append(r)
    labels = ["=".join(f"{100 * f:g}" for f in merged[r["fraction"]]) + "%" + ("*" if r.get("enlarged") else "")
              for r in kept]
    return [100 * r["fraction"] for r in kept], labels, kept


def plot_results(evaluation: Evaluation, path: str | Path) -> Path:
    """Per task, two panels against the percent of training labels (log axis).

    Top: each arm's mean test AUROC over seeds with its 95% interval. Bottom: the paired differences between arms
    (arm_a - arm_b) with their intervals, and zero. Fractions enlarged to the same patients are one point, labelled
    with every fraction it stands for; * marks an enlarged fraction.
    """
    plt = _pyplot()
    summary, diffs = evaluation.summary, evaluation.differences
    tasks = sorted({r["task"] for r in summary})
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.0 * len(tasks), 6.4), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = dict(zip(ARMS, ("0.6", "tab:red", "tab:orange", "tab:blue", "tab:green")))
    for col, task in enumerate(tasks):
        top, bottom = axes[0][col], axes[1][col]
        ticks, tick_labels = [], []
        for arm in ARMS:
            x, labels, rows = _points([r for r in summary if r["task"] == task and r["arm"] == arm])
            if not rows:
                continue
            ticks, tick_labels = x, labels
            style = dict(ls="--", marker="") if arm == "prevalence" else dict(marker="o")
            top.plot(x, [r["test_auroc"] for r in rows], color=colors[arm], label=arm, **style)
            if arm != "prevalence":
                top.fill_between(x, [r["test_auroc_lo"] for r in rows], [r["test_auroc_hi"] for r in rows],
                                 color=colors[arm], alpha=0.15)
        for k, (arm_a, arm_b) in enumerate(COMPARISONS):
            x, _, rows = _points([d for d in diffs if d["task"] == task and (d["arm_a"], d["arm_b"]) == (arm_a, arm_b)])
            if not rows:
                continue
            shift = 1.0 + 0.04 * (k - 2)  # a small horizontal offset so that the intervals do not overlap
            x = [v * shift for v in x]
            y = np.array([d["diff_auroc"] for d in rows])
            err = np.array([y - [d["diff_lo"] for d in rows], [d["diff_hi"] for d in rows] - y])
            bottom.errorbar(x, y, yerr=err, marker="os^vD"[k], ms=4, capsize=2, lw=1, color=DIFF_COLORS[k],
                            label=f"{arm_a} - {arm_b}")
        bottom.axhline(0.0, color="k", lw=0.8)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        bottom.set_xticks(ticks, tick_labels)
        bottom.minorticks_off()
        top.set_title(task)
        bottom.set_xlabel("training labels (% of the training patients)")
    axes[0][0].set_ylabel("test AUROC (mean over seeds, 95% CI)")
    axes[1][0].set_ylabel("paired difference in AUROC")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if diffs:  # one arm alone has no paired difference to name
        axes[1][-1].legend(fontsize=7, loc="upper right")
    return _save(fig, path, "", dpi=110)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the standardised features (N, F): (N, 2) and their variance shares."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x / np.where(std > 1e-12, std, 1.0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    share = s**2 / max((s**2).sum(), 1e-300)
    return x @ vt[:2].T, share[:2]


def plot_embedding(features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], path: str | Path, *,
                   title: str = "") -> Path:
    """A 2-D map (PCA) of each encoder's features, coloured by each task's label.

    Args:
        features: encoder name (e.g. 'pretrained', 'random') -> (N, F) features of the same N records.
        labels: task -> (N,) labels, 0/1 with NaN where unknown (left grey and small).
        path: the PNG to write.
    One row per encoder, one column per task; positives drawn over negatives.
    """
    plt = _pyplot()
    names, tasks = list(features), list(labels)
    fig, axes = plt.subplots(len(names), len(tasks), figsize=(4.0 * len(tasks), 3.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        xy, share = pca_2d(features[name])
        for j, task in enumerate(tasks):
            ax, y = axes[i][j], np.asarray(labels[task], dtype=np.float64)
            unknown, neg, pos = np.isnan(y), y == 0, y == 1
            if unknown.any():
                ax.scatter(*xy[unknown].T, s=3, c="0.85", label="no label")
            ax.scatter(*xy[neg].T, s=5, c="tab:blue", alpha=0.5, label="negative")
            ax.scatter(*xy[pos].T, s=7, c="tab:red", alpha=0.8, label="positive")
            ax.set_title(f"{name} encoder: {task}", fontsize=10)
            ax.set_xlabel(f"PC 1 ({share[0]:.0%})")
            ax.set_ylabel(f"PC 2 ({share[1]:.0%})")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][-1].legend(fontsize=8, markerscale=2)
    return _save(fig, path, title, dpi=110)


def plot_views(signal: np.ndarray, views: np.ndarray, lead_names: Sequence[str], fs: float, path: str | Path, *,
               title: str = "") -> Path:
    """One ECG window and its augmented views side by side, one row per lead (labelled), a shared millivolt scale.

    Args:
        signal: (L, T) the window before augmentation, millivolts.
        views: (C, L, T) its augmented views, millivolts.
        lead_names: the L leads' names.
        fs: sampling rate (Hz), for the time axis.
    """
    plt = _pyplot()
    signal, views = np.asarray(signal), np.asarray(views)
    if views.ndim != 3 or views.shape[1:] != signal.shape or len(lead_names) != signal.shape[0]:
        raise ValueError(f"views {views.shape} must be (C, L, T) around a signal {signal.shape} with "
                         f"{len(lead_names)} lead names")
    panels = [("original", signal), *((f"view {c + 1}", v) for c, v in enumerate(views))]
    n_leads = signal.shape[0]
    t = np.arange(signal.shape[1]) / fs
    limit = max(1e-3, float(np.abs(np.stack([p for _, p in panels])).max())) * 1.05
    fig, axes = plt.subplots(n_leads, len(panels), figsize=(3.2 * len(panels), 0.9 * n_leads + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    for j, (name, x) in enumerate(panels):
        axes[0][j].set_title(name, fontsize=10)
        for i in range(n_leads):
            ax = axes[i][j]
            ax.plot(t, x[i], lw=0.8, color="k" if j == 0 else "tab:blue")
            ax.set_ylim(-limit, limit)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(lead_names[i], rotation=0, ha="right", va="center", fontsize=9)
        axes[-1][j].set_xlabel("s")
    return _save(fig, path, title, dpi=100)
