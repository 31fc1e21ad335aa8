"""ecgfast.evaluate.metrics against independent references: scikit-learn, SciPy and brute-force resampling."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score

from ecgfast.evaluate import (
    auprc,
    auroc,
    bootstrap_auroc_ci,
    bootstrap_counts,
    patient_scores,
    replicate_metric,
    seed_mean_interval,
)


def scored(n, seed, ties=False, prevalence=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [1, 0]
    score = y * 0.7 + rng.normal(size=n)
    if ties:
        score = np.round(score)  # few distinct values: many ties within and across classes
    return y, score


@pytest.mark.parametrize("n, ties", [(7, False), (300, True), (1001, False)])
def test_auroc_and_auprc_match_scikit_learn_and_mann_whitney(n, ties):
    y, score = scored(n, n, ties)
    u = mannwhitneyu(score[y == 1], score[y == 0]).statistic
    assert auroc(y, score) == pytest.approx(u / (y.sum() * (1 - y).sum()), abs=1e-12)
    assert auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert auprc(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_weighted_replicates_match_scikit_learn_with_sample_weights():
    y, score = scored(200, 1, ties=True)
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 4, size=(5, 200)).astype(float)
    scores = np.stack([score, -score, score + rng.normal(size=200)])
    for metric, reference in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        got = replicate_metric(metric, y, scores, counts)
        assert got.shape == (3, 5)
        for m in range(3):
            for r in range(5):
                want = reference(y, scores[m], sample_weight=counts[r])
                assert got[m, r] == pytest.approx(want, abs=1e-12), (metric, m, r)


def test_metrics_reject_one_class_nan_and_bad_names():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auprc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="metric"):
        replicate_metric("accuracy", [0, 1], np.zeros((1, 2)), np.ones((1, 2)))


def test_bootstrap_counts_resample_patients_with_all_their_records():
    pid = np.repeat([7, 3, 9, 4, 1], [1, 3, 2, 1, 4])
    counts = bootstrap_counts(pid, 400, seed=5)
    assert counts.shape == (400, len(pid))
    for p in np.unique(pid):  # every record of a patient counts as often as the patient was drawn
        cols = counts[:, pid == p]
        assert (cols == cols[:, :1]).all()
    per_patient = np.stack([counts[:, pid == p][:, 0] for p in np.unique(pid)], axis=1)
    assert (per_patient.sum(axis=1) == 5).all()  # as many patients drawn as there are
    assert per_patient.mean() == pytest.approx(1.0, abs=0.05)
    # The draw depends on the set of patients only, so every model scored on them gets the same replicates.
    order = np.random.default_rng(0).permutation(len(pid))
    again = bootstrap_counts(pid[order], 400, seed=5)
    assert np.array_equal(again, counts[:, order])


def brute_force_paired(y, pid, scores_a, scores_b, n_boot, seed, alpha=0.05):
    """Materialise every replicate's resampled records and score them with scikit-learn: (mean, lo, hi) per arm and of
    the difference a - b, each a mean over the seeds (rows of scores_*), every seed on the same resample."""
    counts = bootstrap_counts(pid, n_boot, seed)
    stats = {"a": [], "b": [], "diff": []}
    for row in counts:
        take = np.repeat(np.arange(len(y)), row.astype(int))
        if len(np.unique(y[take])) < 2:
            continue
        a = np.mean([roc_auc_score(y[take], s[take]) for s in scores_a])
        b = np.mean([roc_auc_score(y[take], s[take]) for s in scores_b])
        stats["a"].append(a)
        stats["b"].append(b)
        stats["diff"].append(a - b)
    point = {"a": np.mean([roc_auc_score(y, s) for s in scores_a]),
             "b": np.mean([roc_auc_score(y, s) for s in scores_b])}
    point["diff"] = point["a"] - point["b"]
    return {k: (point[k], *np.quantile(v, [alpha / 2, 1 - alpha / 2])) for k, v in stats.items()}


def test_paired_bootstrap_matches_a_brute_force_resampling():
    rng = np.random.default_rng(3)
    n_patients = 60
    pid = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    y = (rng.random(n_patients) < 0.3).astype(int)[pid]
    signal = y + rng.normal(size=len(y))
    scores_a = np.stack([signal + 0.5 * rng.normal(size=len(y)) for _ in range(2)])  # two seeds of arm a
    scores_b = np.stack([signal + 1.5 * rng.normal(size=len(y)) for _ in range(2)])
    counts = bootstrap_counts(pid, 150, seed=11)
    reps_a = replicate_metric("auroc", y, scores_a, counts)
    reps_b = replicate_metric("auroc", y, scores_b, counts)
    point_a = replicate_metric("auroc", y, scores_a, np.ones((1, len(y))))[:, 0]
    point_b = replicate_metric("auroc", y, scores_b, np.ones((1, len(y))))[:, 0]
    want = brute_force_paired(y, pid, scores_a, scores_b, 150, seed=11)
    assert seed_mean_interval(point_a, reps_a) == pytest.approx(want["a"], abs=1e-12)
    assert seed_mean_interval(point_b, reps_b) == pytest.approx(want["b"], abs=1e-12)
    diff = seed_mean_interval(point_a - point_b, reps_a - reps_b)
    assert diff == pytest.approx(want["diff"], abs=1e-12)
    # Pairing removes the test set's luck shared by both arms: the paired interval is narrower than the one
    # an unpaired comparison (independent resamples for each arm) would give.
    other = replicate_metric("auroc", y, scores_b, bootstrap_counts(pid, 150, seed=12))
    unpaired = np.quantile(reps_a.mean(0) - other.mean(0), [0.025, 0.975])
    assert diff[2] - diff[1] < 0.8 * (unpaired[1] - unpaired[0])
    assert diff[1] > 0  # arm a is the better one by construction


def test_seed_resampling_matches_a_brute_force_mean_over_drawn_seeds():
    rng = np.random.default_rng(4)
    values = rng.random(3)
    reps = rng.random((3, 50))
    seed_counts = rng.multinomial(3, [1 / 3] * 3, size=50).astype(float)
    means = [np.mean(np.repeat(reps[:, r], seed_counts[r].astype(int))) for r in range(50)]
    mean, lo, hi = seed_mean_interval(values, reps, seed_counts)
    assert mean == pytest.approx(values.mean())
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    # Resampling seeds widens the interval when the seeds disagree.
    spread = reps + np.array([[-0.3], [0.0], [0.3]])
    _, lo1, hi1 = seed_mean_interval(values, spread)
    _, lo2, hi2 = seed_mean_interval(values, spread, seed_counts)
    assert hi2 - lo2 > hi1 - lo1


def test_bootstrap_auroc_ci_covers_the_estimate_and_counts_patients_not_ecgs():
    def interval(n_patients, copies=1):
        rng = np.random.default_rng(7)
        y = np.r_[np.ones(n_patients // 4, int), np.zeros(n_patients - n_patients // 4, int)]
        score = y + rng.normal(size=n_patients) * 1.2
        rep = lambda a: np.repeat(a, copies)  # noqa: E731
        lo, hi = bootstrap_auroc_ci(rep(y), rep(score), rep(np.arange(n_patients)), n_boot=500, seed=1)
        return lo, auroc(y, score), hi

    lo, point, hi = interval(80)
    assert lo < point < hi
    lo_big, point_big, hi_big = interval(2000)
    assert lo_big < point_big < hi_big and hi_big - lo_big < 0.5 * (hi - lo)
    # Five identical ECGs per patient carry no more information than one.
    assert interval(80, copies=5) == pytest.approx((lo, point, hi), abs=1e-12)


def test_patient_scores_average_each_patients_ecgs():
    pid = np.array([5, 2, 5, 2, 9])
    y = np.array([0, 0, 1, 0, 0])
    scores = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 0.0, 1.0, -1.0]])
    patients, labels, out = patient_scores(pid, y, scores)
    assert patients.tolist() == [2, 5, 9] and labels.tolist() == [0, 1, 0]
    assert out.tolist() == [[3.0, 2.0, 5.0], [1.0, 0.0, -1.0]]
