import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from ecgfast.evaluate import (
    DownstreamConfig,
    PatientSplit,
    auroc,
    bootstrap_auroc_ci,
    format_table,
    nested_fractions,
    patient_labels,
    patient_split,
    run_protocol,
    train_downstream,
    write_results,
)
from ecgfast.models import DualStreamTemporalNet, SingleStreamTemporalNet


def cohort(n_patients=200, prevalence=0.2, seed=0):
    """Patients with 1-4 ECGs each; a positive patient's ECGs are positive or negative at random (any rule)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_patients)
    pid = np.repeat(np.arange(1000, 1000 + n_patients), counts)
    sick = rng.random(n_patients) < prevalence
    labels = np.repeat(sick, counts) & (rng.random(len(pid)) < 0.7)
    return pid, labels.astype(int)


def test_patient_labels_any_positive_ecg_makes_a_positive_patient():
    patients, y = patient_labels(["a", "a", "b", "b", "c"], [0, 1, 0, 0, 1])
    assert patients.tolist() == ["a", "b", "c"] and y.tolist() == [1, 0, 1]


def test_patient_split_is_disjoint_stratified_and_reproducible():
    pid, labels = cohort()
    split = patient_split(pid, labels, ratios=(0.6, 0.2, 0.2), seed=3)
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    patients, positive = patient_labels(pid, labels)
    assert set().union(*parts) == set(patients.tolist())
    for part, ratio in zip((split.train, split.val, split.test), (0.6, 0.2, 0.2)):
        for cls in (0, 1):
            n_cls = (positive == cls).sum()
            assert abs(np.isin(part, patients[positive == cls]).sum() - ratio * n_cls) <= 1
    # every record follows its patient
    for name in ("train", "val", "test"):
        assert set(pid[split.records(pid, name)].tolist()) == set(getattr(split, name).tolist())
    again = patient_split(pid, labels, seed=3)
    assert np.array_equal(again.test, split.test)
    assert not np.array_equal(patient_split(pid, labels, seed=4).test, split.test)


def test_patient_split_json_round_trip():
    pid, labels = cohort(60, 0.3)
    split = patient_split(pid.astype(str), labels, seed=1)
    back = PatientSplit.from_json(split.to_json())
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(back, name), getattr(split, name))
    assert back.seed == 1


def test_patient_split_rejects_bad_arguments():
    pid, labels = cohort(40)
    with pytest.raises(ValueError, match="ratios"):
        patient_split(pid, labels, ratios=(0.5, 0.2, 0.2), seed=0)
    with pytest.raises(ValueError, match="labels"):
        patient_split(pid, np.where(labels, 2, 0), seed=0)
    with pytest.raises(ValueError, match="one class"):
        patient_split(np.arange(20), np.r_[1, np.zeros(19, int)], seed=0)


def test_nested_fractions_nest_and_hold_the_minimum_positives():
    rng = np.random.default_rng(0)
    patients = np.arange(500)
    y = (rng.random(500) < 0.1).astype(int)
    fracs = nested_fractions(patients, y, (0.01, 0.05, 0.10, 0.50, 1.0), min_positives=5, seed=2)
    sets = [set(f.patients.tolist()) for f in fracs]
    assert all(a <= b for a, b in zip(sets, sets[1:]))
    assert sets[-1] == set(patients.tolist())
    positives = [int(y[f.patients].sum()) for f in fracs]
    assert positives == [f.n_positives for f in fracs]
    assert min(positives) >= 5
    assert [f.enlarged for f in fracs] == [True, True, False, False, False]  # 1% and 5% of ~50 positives
    # an unenlarged fraction keeps its share of each class
    assert abs(len(fracs[3].patients) - 250) <= 1 and abs(positives[3] - y.sum() / 2) <= 1
    assert not fracs[2].enlarged and abs(len(fracs[2].patients) - 50) <= 1


def test_nested_fractions_rejects_too_few_positives():
    with pytest.raises(ValueError, match="min_positives"):
        nested_fractions(np.arange(30), np.r_[np.ones(3, int), np.zeros(27, int)], min_positives=5)
    with pytest.raises(ValueError, match="fractions"):
        nested_fractions(np.arange(30), np.r_[np.ones(10, int), np.zeros(20, int)], (0.0, 1.0))


@pytest.mark.parametrize("n, ties", [(7, False), (300, True), (1001, False)])
def test_auroc_matches_mann_whitney(n, ties):
    rng = np.random.default_rng(n)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    score = y * 0.7 + rng.normal(size=n)
    if ties:
        score = np.round(score)  # few distinct values: many ties within and across classes
    u = mannwhitneyu(score[y], score[~y]).statistic
    assert auroc(y.astype(int), score) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)


def test_auroc_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_patients():
    def interval(n_patients, copies=1):
        rng = np.random.default_rng(7)
        y = np.r_[np.ones(n_patients // 4, int), np.zeros(n_patients - n_patients // 4, int)]
        score = y + rng.normal(size=n_patients) * 1.2
        pid = np.arange(n_patients)
        rep = lambda a: np.repeat(a, copies)  # noqa: E731
        lo, hi = bootstrap_auroc_ci(rep(y), rep(score), rep(pid), n_boot=500, seed=1)
        return lo, auroc(y, score), hi

    lo, point, hi = interval(80)
    assert lo < point < hi
    lo_big, point_big, hi_big = interval(2000)
    assert lo_big < point_big < hi_big
    assert hi_big - lo_big < 0.5 * (hi - lo)
    # Resampling patients: five identical ECGs per patient carry no more information than one.
    assert interval(80, copies=5) == pytest.approx((lo, point, hi), abs=1e-12)


def sine_task(n_patients=48, ecgs=2, leads=8, t=96, seed=0):
    """Noisy multi-lead sines whose frequency is the label: easy for any encoder to separate."""
    rng = np.random.default_rng(seed)
    label = np.r_[np.ones(n_patients // 3, int), np.zeros(n_patients - n_patients // 3, int)]
    pid = np.repeat(np.arange(n_patients), ecgs)
    y = np.repeat(label, ecgs)
    cycles = np.where(y == 1, 9.0, 3.0)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (len(y), leads, 1))
    time = np.arange(t)[None, None, :] / t
    x = np.sin(2 * np.pi * cycles * time + phase) + 0.3 * rng.normal(size=(len(y), leads, t))
    return x.astype(np.float32), y, pid


def tiny_encoder():
    return DualStreamTemporalNet(width=1 / 16, dropout=0.1)


def test_train_downstream_keeps_the_best_validation_epoch():
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    model = tiny_encoder()
    get = lambda idx: torch.from_numpy(x[idx])  # noqa: E731
    config = DownstreamConfig(batch_size=16, progress=False)
    fit = train_downstream(model, torch.optim.Adam(model.parameters(), lr=1e-3), get, y,
                           split.records(pid, "train"), split.records(pid, "val"), epochs=4, seed=0, config=config)
    model.eval()
    with torch.no_grad():
        val = split.records(pid, "val")
        assert auroc(y[val], model(get(val)).squeeze(1).numpy()) == pytest.approx(fit["val_auroc"], abs=1e-6)
    assert 0 <= fit["best_epoch"] < fit["epochs_run"] <= 4 and fit["steps"] > 0


def test_run_protocol_learns_a_separable_task_and_writes_results(tmp_path):
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    config = DownstreamConfig(fractions=(0.2, 1.0), epochs=(3, 8), seeds=(0, 1), batch_size=16, patience=2,
                              min_positives=2, n_boot=100, progress=False)
    pretrained = tiny_encoder().state_dict()
    rows = run_protocol("sine", lambda idx: x[idx], y, pid, split, tiny_encoder, pretrained=pretrained,
                        config=config)
    assert len(rows) == 3 * 2 * 2
    assert {(r["arm"], r["fraction"], r["seed"]) for r in rows} == {
        (a, f, s) for a in ("random", "frozen", "finetuned") for f in (0.2, 1.0) for s in (0, 1)}
    full_random = [r["test_auroc"] for r in rows if r["arm"] == "random" and r["fraction"] == 1.0]
    assert np.mean(full_random) > 0.9
    for r in rows:
        assert 0.0 <= r["test_auroc_lo"] <= r["test_auroc_hi"] <= 1.0
        assert r["n_train_positives"] >= 2 and r["n_train_patients"] <= len(split.train)

    paths = write_results(rows, tmp_path / "run")
    with open(paths["csv"]) as f:
        header = next(csv.reader(f))
    assert {"task", "arm", "fraction", "seed", "val_auroc", "test_auroc", "test_auroc_lo", "test_auroc_hi",
            "n_train_patients", "n_train_positives", "enlarged"} <= set(header)
    assert len(json.loads(paths["json"].read_text())) == len(rows)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_protocol_needs_a_pretrained_state_for_the_pretrained_arms():
    x, y, pid = sine_task()
    with pytest.raises(ValueError, match="pretrained"):
        run_protocol("sine", x, y, pid, patient_split(pid, y, seed=0), tiny_encoder,
                     config=DownstreamConfig(progress=False))


def test_format_table_means_over_seeds_and_flags_enlarged_fractions():
    rows = [
        {"task": "t", "arm": arm, "fraction": frac, "seed": seed, "test_auroc": auc + 0.02 * seed,
         "test_auroc_lo": auc - 0.1, "test_auroc_hi": auc + 0.1, "n_train_patients": n, "n_train_positives": 5,
         "enlarged": frac < 0.1}
        for arm, auc in (("random", 0.6), ("frozen", 0.7))
        for frac, n in ((0.01, 20), (1.0, 400))
        for seed in (0, 1)
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert "random" in lines[0] and "frozen" in lines[0] and "finetuned" not in lines[0]
    row_1pct = next(line for line in lines if "1%*" in line)
    assert "0.610" in row_1pct and "0.710" in row_1pct
    assert "enlarged" in lines[-1]


def test_a_pretrained_state_of_another_architecture_is_refused():
    x, y, pid = sine_task()
    with pytest.raises(ValueError, match="does not fit"):
        run_protocol("sine", x, y, pid, patient_split(pid, y, seed=0), tiny_encoder,
                     pretrained=SingleStreamTemporalNet(width=1 / 16).state_dict(),
                     config=DownstreamConfig(arms=("frozen",), progress=False))
