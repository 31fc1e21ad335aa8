"""AUROC, AUPRC and the paired bootstrap over test patients.

Both metrics are computed for many weightings of one set of records at once: a weight w_i counts record i w_i
times, so one pass gives the plain value (weights 1) and every bootstrap replicate (weights = how often each
record's patient was drawn). Sharing one draw of weights between every model scored on the same records is what
makes a bootstrap *paired*: the difference of two models is computed on the same resampled patients in every
replicate, so the test set's luck cancels from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .splits import BOOTSTRAP_STREAM, binary, multi_hot, patient_labels, rng

__all__ = [
    "auroc",
    "auprc",
    "macro_auroc",
    "bootstrap_counts",
    "replicate_metric",
    "bootstrap_auroc_ci",
    "seed_mean_interval",
    "patient_scores",
]


def weighted_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``weights`` (R, N): the weighted Mann-Whitney statistic, ties counted one half.

    NaN where a row lacks a class.
    """
    order = np.argsort(score, kind="stable")
    s, pos = score[order], y[order].astype(bool)
    w = weights[:, order]
    w_pos, w_neg = np.where(pos, w, 0.0), np.where(pos, 0.0, w)
    # Ties form contiguous runs after sorting: per run, the negatives strictly below it and those inside it.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    cum_neg = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w_neg, axis=1)], axis=1)
    below = cum_neg[:, starts]
    within = np.diff(np.concatenate([below, cum_neg[:, -1:]], axis=1), axis=1)
    pos_in_run = np.add.reduceat(w_pos, starts, axis=1)
    total_pos, total_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos_in_run * (below + 0.5 * within)).sum(axis=1) / (total_pos * total_neg)


def weighted_auprc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of each row of ``weights`` (R, N), as scikit-learn defines it (no interpolation).

    AP = sum over the distinct score thresholds, from the highest down, of (recall_k - recall_k-1) x precision_k;
    tied scores enter together. NaN where a row lacks positives.
    """
    order = np.argsort(-score, kind="stable")
    s, pos = score[order], y[order].astype(bool)
    w = weights[:, order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last record of each run of tied scores
    tp = np.cumsum(np.where(pos, w, 0.0), axis=1)[:, ends]
    seen = np.cumsum(w, axis=1)[:, ends]
    total_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / np.where(seen > 0, seen, 1.0), 0.0)
        recall_step = np.diff(np.concatenate([np.zeros_like(total_pos), tp], axis=1), axis=1) / total_pos
    return (recall_step * precision).sum(axis=1)


_METRICS = {"auroc": weighted_auroc, "auprc": weighted_auprc}


def _check_scores(y, score) -> tuple[np.ndarray, np.ndarray]:
    y = binary(y, "y")
    score = np.asarray(score, dtype=np.float64)
    if score.shape != y.shape:
        raise ValueError(f"score has shape {score.shape}, y has {y.shape}")
    if not np.isfinite(score).all():
        raise ValueError("score holds NaN or infinite values")
    if y.min() == y.max():
        raise ValueError(f"AUROC and AUPRC need both classes in y, got only {int(y[0])}")
    return y, score


def auroc(y: Sequence, score: Sequence) -> float:
    """Area under the ROC curve of ``score`` for 0/1 labels ``y``, by ranks, ties counted one half."""
    y, score = _check_scores(y, score)
    return float(weighted_auroc(y, score, np.ones((1, len(y))))[0])


def auprc(y: Sequence, score: Sequence) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn's ``average_precision_score``).

    A score that ranks at random has an expected AUPRC equal to the prevalence of ``y``, not 0.5.
    """
    y, score = _check_scores(y, score)
    return float(weighted_auprc(y, score, np.ones((1, len(y))))[0])


def macro_auroc(y: Sequence, scores: Sequence) -> tuple[float, np.ndarray]:
    """The mean of the per-class AUROCs of scores (N, K) for labels (N, K) (or (N,) and (N,): one class), over the
    classes with both outcomes in ``y``; returns it (NaN if none) and the indices of those classes."""
    y = multi_hot(y, "y")
    scores = np.asarray(scores, dtype=np.float64).reshape(len(y), -1)
    if scores.shape != y.shape:
        raise ValueError(f"scores has shape {scores.shape}, y has {y.shape}")
    evaluated = np.flatnonzero((y == 1).any(axis=0) & (y == 0).any(axis=0))
    if not len(evaluated):
        return float("nan"), evaluated
    return float(np.mean([auroc(y[:, c], scores[:, c]) for c in evaluated])), evaluated


def bootstrap_counts(patient_ids: Sequence, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, N) multiplicities: in each replicate, the patients drawn with replacement, as many as there are.

    A record counts as often as its patient was drawn, so the correlation between one patient's ECGs widens the
    intervals as it should. The draw depends only on the set of patients and the seed: scores of any model on the
    same records get the same replicates.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    patients, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    n = len(patients)
    drawn = rng(seed, BOOTSTRAP_STREAM).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return drawn[:, inverse].astype(np.float64)


def replicate_metric(metric: str, y: Sequence, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``metric`` ('auroc' or 'auprc') of each model's scores (M, N) under each replicate's counts (R, N): (M, R)."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    y = binary(y, "y")
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != len(y) or counts.shape[1] != len(y):
        raise ValueError(f"scores {scores.shape} and counts {counts.shape} must have one column per label ({len(y)})")
    return np.stack([_METRICS[metric](y, s, counts) for s in scores])


def bootstrap_auroc_ci(y: Sequence, score: Sequence, patient_ids: Sequence, *, n_boot: int = 1000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap (1 - alpha) interval of one model's AUROC that resamples patients, not ECGs.

    Replicates that draw a single class are dropped.
    """
    y, score = _check_scores(y, score)
    pid = np.asarray(patient_ids)
    if pid.shape != y.shape:
        raise ValueError(f"patient_ids has shape {pid.shape}, y has {y.shape}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    stats = weighted_auroc(y, score, bootstrap_counts(pid, n_boot, seed))
    lo, hi = np.quantile(stats[np.isfinite(stats)], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def seed_mean_interval(values: Sequence[float], replicates: np.ndarray, seed_counts: np.ndarray | None = None,
                       *, alpha: float = 0.05) -> tuple[float, float, float]:
    """The mean over seeds of a statistic and a percentile (1 - alpha) interval of that mean.

    Args:
        values: the statistic of each seed's model on the test set (S,).
        replicates: the same statistic on each bootstrap replicate of the test patients (S, R); every seed's row
            must come from the same replicates.
        seed_counts: (R, S) how often each seed is drawn in each replicate (seeds resampled with replacement), so
            that the interval also covers the training randomness (initialisation, which patients were labelled);
            None keeps every seed once, and the interval covers the test patients' sampling alone.

    A paired difference passes the per-seed differences of two models (values and replicates alike).
    """
    values = np.asarray(values, dtype=np.float64)
    replicates = np.atleast_2d(np.asarray(replicates, dtype=np.float64))
    if replicates.shape[0] != len(values):
        raise ValueError(f"replicates has {replicates.shape[0]} rows for {len(values)} seeds")
    if seed_counts is None:
        seed_counts = np.ones((replicates.shape[1], len(values)))
    means = np.einsum("rs,sr->r", seed_counts, replicates) / seed_counts.sum(axis=1)
    means = means[np.isfinite(means)]
    if not len(means):
        return float(values.mean()), float("nan"), float("nan")
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)


def patient_scores(patient_ids: Sequence, labels: Sequence, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """One score per patient: the mean of its ECGs' scores (M, N) -> (M, P), or (M, N, K) -> (M, P, K) for labels
    (N, K) of K classes; a patient is positive (for a class) if any ECG is.

    Returns the patients (sorted), their labels and their scores.
    """
    patients, positive = patient_labels(patient_ids, labels)
    inverse = np.searchsorted(patients, np.asarray(patient_ids))
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores.reshape(-1, len(inverse), *positive.shape[1:])  # (M, N) or (M, N, K)
    sums = np.zeros((len(scores), len(patients), *scores.shape[2:]))
    np.add.at(sums.swapaxes(0, 1), inverse, scores.swapaxes(0, 1))
    counts = np.bincount(inverse, minlength=len(patients)).reshape(-1, *([1] * (scores.ndim - 2)))
    return patients, positive, sums / counts
