"""ecgfast.evaluate: tasks, splits (random and by folds), label fractions, the protocol's arms and rule for binary
and multi-label tasks, its files, provenance and figures.

The statistics themselves are tested against scikit-learn and brute-force resampling in test_evaluate_metrics.py.
"""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from ecgfast.evaluate import (
    ARMS,
    DownstreamConfig,
    PatientSplit,
    auroc,
    fold_split,
    format_table,
    labelled_patient_split,
    nested_fractions,
    patient_labels,
    patient_scores,
    patient_split,
    plot_embedding,
    plot_views,
    provenance,
    resolve_tasks,
    run_protocol,
    train_downstream,
    write_results,
)
from ecgfast.models import DualStreamTemporalNet, SingleStreamTemporalNet
from test_losses import one_thread  # noqa: F401  (an autouse fixture: tiny networks train faster on one thread)


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
    for name in ("train", "val", "test"):  # every record follows its patient
        assert set(pid[split.records(pid, name)].tolist()) == set(getattr(split, name).tolist())
    assert np.array_equal(patient_split(pid, labels, seed=3).test, split.test)
    assert not np.array_equal(patient_split(pid, labels, seed=4).test, split.test)


def test_patient_split_rejects_bad_arguments():
    pid, labels = cohort(40)
    with pytest.raises(ValueError, match="ratios"):
        patient_split(pid, labels, ratios=(0.5, 0.2, 0.2), seed=0)
    with pytest.raises(ValueError, match="labels"):
        patient_split(pid, np.where(labels, 2, 0), seed=0)
    with pytest.raises(ValueError, match="one class"):
        patient_split(np.arange(20), np.r_[1, np.zeros(19, int)], seed=0)


def mostly_unlabelled(seed=0):
    """600 patients of which 150 have labels: 'a' on all of them, 'b' on 100; the rest only pretrain."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(600), rng.integers(1, 4, 600))
    a = np.full(len(pid), np.nan)
    b = np.full(len(pid), np.nan)
    labelled = pid < 150
    a[labelled] = rng.random(labelled.sum()) < 0.3
    b[pid < 100] = rng.random((pid < 100).sum()) < 0.4
    return pid, {"a": a, "b": b}


def test_labelled_split_holds_only_labelled_patients_stratified_for_every_task():
    pid, labels = mostly_unlabelled()
    identity = {"location": "x.zarr", "n_records": len(pid), "fingerprint": "f" * 64}
    split = labelled_patient_split(pid, labels, seed=2, store=identity)
    assert set(split.patients.tolist()) == set(range(150))  # no unlabelled patient is held out of pretraining
    assert len(np.unique(split.patients)) == len(split.patients)
    for task, y in labels.items():
        known = ~np.isnan(y)
        patients, positive = patient_labels(pid[known], y[known])
        for part, ratio in zip((split.train, split.val, split.test), (0.6, 0.2, 0.2)):
            n_pos = np.isin(part, patients[positive == 1]).sum()
            assert abs(n_pos - ratio * positive.sum()) <= 2.5, (task, ratio)  # strata of combinations, rounded
    back = PatientSplit.from_json(split.to_json())
    assert back.tasks == ("a", "b") and back.store == identity and back.sha256 == split.sha256
    back.check_store(identity)
    with pytest.raises(ValueError, match="drawn on the store at x.zarr"):
        back.check_store({**identity, "location": "y.zarr", "fingerprint": "0" * 64})
    with pytest.raises(ValueError, match="no record holds a label"):
        labelled_patient_split(pid, {"a": np.full(len(pid), np.nan)})

    # A label group of 12 classes: its combinations are mostly unique, and the lone ones are pooled and cut at the
    # ratios (one lone patient per stratum would always land in train).
    rng = np.random.default_rng(0)
    group = (rng.random((len(pid), 12)) < 0.2).astype(float)
    group[pid >= 400] = np.nan  # outside the group's evaluation
    split = labelled_patient_split(pid, {"grp": group}, seed=1)
    assert set(split.patients.tolist()) == set(range(400))
    assert abs(len(split.test) - 80) <= 6 and abs(len(split.val) - 80) <= 6


def test_nested_fractions_nest_per_seed_and_merge_equal_enlarged_fractions():
    rng = np.random.default_rng(0)
    patients = np.arange(500)
    y = (rng.random(500) < 0.1).astype(int)
    fracs = nested_fractions(patients, y, (0.01, 0.05, 0.10, 0.50, 1.0), min_positives=5, seed=2)
    sets = [set(f.patients.tolist()) for f in fracs]
    assert all(a <= b for a, b in zip(sets, sets[1:]))
    assert sets[-1] == set(patients.tolist())
    positives = [int(y[f.patients].sum()) for f in fracs]
    assert positives == [f.n_positives for f in fracs] and min(positives) >= 5
    assert [f.enlarged for f in fracs] == [True, True, False, False, False]  # 1% and 5% of ~50 positives
    assert abs(len(fracs[3].patients) - 250) <= 1 and abs(positives[3] - y.sum() / 2) <= 1
    # another seed draws other patients in the same numbers
    other = nested_fractions(patients, y, (0.01, 0.05, 0.10, 0.50, 1.0), min_positives=5, seed=3)
    assert [len(f.patients) for f in other] == [len(f.patients) for f in fracs]
    assert not np.array_equal(other[2].patients, fracs[2].patients)
    # 1% and 2% of 200 both enlarge to 5 + 5 patients: the same patients, trained once
    few = nested_fractions(np.arange(200), np.r_[np.ones(40, int), np.zeros(160, int)], (0.02, 0.01, 1.0))
    assert few[0].same_as == 0.01 and few[1].same_as is None and np.array_equal(few[0].patients, few[1].patients)


def test_nested_fractions_of_several_classes_nest_and_keep_each_class_represented():
    rng = np.random.default_rng(1)
    y = (rng.random((400, 4)) < [0.4, 0.1, 0.02, 0.005]).astype(int)  # the last class: 2 patients or so
    fracs = nested_fractions(np.arange(400), y, (0.01, 0.1, 0.5, 1.0), min_positives=3, seed=4)
    sets = [set(f.patients.tolist()) for f in fracs]
    assert all(a <= b for a, b in zip(sets, sets[1:])) and sets[-1] == set(range(400))
    for f in fracs:
        chosen = y[f.patients]
        # every outcome of every class holds min_positives patients, or all the training patients have
        assert (chosen.sum(axis=0) >= np.minimum(3, y.sum(axis=0))).all()
        assert ((1 - chosen).sum(axis=0) >= np.minimum(3, (1 - y).sum(axis=0))).all()
        assert f.n_positives == chosen.sum(axis=0).min()
    assert fracs[0].enlarged and not fracs[-1].enlarged
    assert abs(len(fracs[2].patients) - 200) <= 12  # half, plus the few each class needs
    # one class given as (P, 1) is the binary task itself
    binary = (rng.random(300) < 0.2).astype(int)
    one = nested_fractions(np.arange(300), binary[:, None], (0.05, 1.0), seed=2)
    assert all(np.array_equal(a.patients, b.patients) and a.n_positives == b.n_positives
               for a, b in zip(one, nested_fractions(np.arange(300), binary, (0.05, 1.0), seed=2)))


def test_fold_split_follows_the_folds_over_labelled_patients():
    # patients 0-39, two ECGs each, patient p in fold p % 10 + 1; patients 30-34 unlabelled, 35-39 without a fold
    pid = np.repeat(np.arange(40), 2)
    folds = np.where(pid >= 35, -1, pid % 10 + 1)
    y = np.repeat(np.tile([[1, 0], [0, 1], [1, 1], [0, 0]], (10, 1)), 2, axis=0).astype(float)  # one per patient
    y[(pid >= 30) & (pid < 35)] = np.nan
    split = fold_split(pid, folds, {"grp": y, "one": y[:, 1]}, store={"fingerprint": "f"})
    assert split.method == "folds" and split.seed is None and split.tasks == ("grp", "one")
    labelled = np.r_[0:30]
    assert split.test.tolist() == [p for p in labelled if p % 10 == 9]
    assert split.val.tolist() == [p for p in labelled if p % 10 == 8]
    assert split.train.tolist() == [p for p in labelled if p % 10 < 8]
    back = PatientSplit.from_json(split.to_json())
    assert back.method == "folds" and back.sha256 == split.sha256
    # PTB-XL's strat_fold keeps patients together; folds that do not are refused, naming a patient
    with pytest.raises(ValueError, match="patient 3 has records in folds"):
        fold_split(pid, np.where(np.arange(80) == 7, 10, folds), {"one": y[:, 1]})
    with pytest.raises(ValueError, match="disjoint"):
        fold_split(pid, folds, {"one": y[:, 1]}, val=(8, 9))
    with pytest.raises(ValueError, match="test part of the split holds only one class"):
        fold_split(pid, folds, {"one": np.where(folds == 10, 0.0, y[:, 1])})


def test_tasks_are_labels_groups_or_thresholds_of_a_store(tmp_path):
    from ecgfast.store import ECGStore

    n = 6
    lvef = np.array([30.0, 40.0, 55.0, np.nan, 39.9, 70.0])
    labels = {"af": np.array([0, 1, np.nan, 0, 1, 0.0]), "lvef": lvef,
              "sub_A": np.array([1, 0, np.nan, 0, 1, 0.0]), "sub_B": np.array([0, 0, np.nan, 1, 1, 0.0]),
              "x": np.array([0, 1, 0, np.nan, 1, 0.0])}
    with ECGStore.create(tmp_path / "s.zarr", ["I"], 100.0, 10) as store:
        store.append(np.zeros((n, 1, 10), np.float32), lengths=[10] * n, record_ids=[f"r{k}" for k in range(n)],
                     patient_keys=[f"p{k}" for k in range(n)], labels=labels)
        store.add_label_groups({"sub": ["sub_A", "sub_B"]})
    store = ECGStore.open(tmp_path / "s.zarr")
    af, sub, low, high = resolve_tasks(store, ["af", "sub", "lvef<40", "lvef >= 55"])
    assert af.classes == ("af",) and np.array_equal(af.labels[:, 0], labels["af"], equal_nan=True)
    assert sub.classes == ("sub_A", "sub_B") and sub.known.tolist() == [True, True, False, True, True, True]
    np.testing.assert_array_equal(low.labels[:, 0], [1, 0, 0, np.nan, 1, 0])  # unknown stays unknown
    np.testing.assert_array_equal(high.labels[:, 0], [0, 0, 1, np.nan, 0, 1])
    assert high.name == "lvef >= 55" and high.classes == ("lvef >= 55",)
    with pytest.raises(ValueError, match="label lvef holds values other than 0 and 1.*'lvef<"):
        resolve_tasks(store, ["lvef"])
    with pytest.raises(ValueError, match="no label, label group or comparison of a label named nosuch, y<1"):
        resolve_tasks(store, ["nosuch", "af", "y<1"])
    with ECGStore.open(tmp_path / "s.zarr", mode="r+") as writable:
        writable.add_label_groups({"mixed": ["af", "x"]})
    with pytest.raises(ValueError, match=r"record r2 \(and 1 more\) holds x but not af"):
        resolve_tasks(ECGStore.open(tmp_path / "s.zarr"), ["mixed"])


def test_nested_fractions_rejects_too_few_positives():
    with pytest.raises(ValueError, match="min_positives"):
        nested_fractions(np.arange(30), np.r_[np.ones(3, int), np.zeros(27, int)], min_positives=5)
    with pytest.raises(ValueError, match="fractions"):
        nested_fractions(np.arange(30), np.r_[np.ones(10, int), np.zeros(20, int)], (0.0, 1.0))


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


def test_train_downstream_keeps_the_best_state_and_says_why_it_stopped():
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    train, val = split.records(pid, "train"), split.records(pid, "val")
    get = lambda idx: torch.from_numpy(x[idx])  # noqa: E731
    torch.manual_seed(0)
    model = tiny_encoder()
    config = DownstreamConfig(batch_size=16, eval_every=3, patience=2, max_steps=24, progress=False)
    fit = train_downstream(model, torch.optim.Adam(model.parameters(), lr=1e-3), get, y, train, val, seed=0,
                           config=config)
    model.eval()
    with torch.no_grad():
        assert auroc(y[val], model(get(val)).squeeze(1).numpy()) == pytest.approx(fit["val_auroc"], abs=1e-6)
    assert fit["stopped_by"] in ("patience", "budget") and fit["steps"] <= 24 and fit["best_step"] % 3 == 0
    if fit["stopped_by"] == "patience":
        assert fit["steps"] == fit["best_step"] + 2 * 3  # two validations without improvement
    budget = train_downstream(model, torch.optim.Adam(model.parameters(), lr=1e-3), get, y, train, val, seed=0,
                              config=DownstreamConfig(batch_size=16, patience=None, max_steps=5, progress=False))
    assert budget["stopped_by"] == "budget" and budget["steps"] == 5
    capped = train_downstream(model, torch.optim.Adam(model.parameters(), lr=1e-3), get, y, train, val, seed=0,
                              config=DownstreamConfig(batch_size=16, patience=None, max_steps=100, progress=False),
                              max_epochs=2)
    assert capped["stopped_by"] == "epochs" and capped["steps"] == 2 * int(np.ceil(len(train) / 16))


@pytest.fixture(scope="module")
def protocol_run():
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    config = DownstreamConfig(fractions=(0.2, 1.0), seeds=(0, 1), batch_size=16, eval_every=3, patience=2,
                              max_steps=30, min_positives=2, n_boot=200, progress=False)
    torch.manual_seed(5)
    pretrained = tiny_encoder().state_dict()
    evaluation = run_protocol("sine", lambda idx: x[idx], y, pid, split, tiny_encoder, pretrained=pretrained,
                              config=config, record_ids=[f"r{k}" for k in range(len(y))])
    return evaluation, (x, y, pid, split, config)


def test_run_protocol_runs_every_arm_fraction_and_seed_and_learns_a_separable_task(protocol_run):
    evaluation, (x, y, pid, split, config) = protocol_run
    runs = evaluation.runs
    assert {(r["arm"], r["fraction"], r["seed"]) for r in runs} == {
        (a, f, s) for a in ARMS for f in (0.2, 1.0) for s in (0, 1)}
    assert len(runs) == len(ARMS) * 2 * 2
    by = lambda arm, frac: [r for r in runs if r["arm"] == arm and r["fraction"] == frac]  # noqa: E731
    assert np.mean([r["test_auroc"] for r in by("random", 1.0)]) > 0.9
    for r in by("prevalence", 1.0):
        assert r["test_auroc"] == 0.5 and r["steps"] == 0
        assert r["test_auprc"] == pytest.approx(y[split.records(pid, "test")].mean())  # AUPRC's chance level
    for r in runs:
        assert r["test_auroc_lo"] <= r["test_auroc"] <= r["test_auroc_hi"]
        assert r["test_auprc_lo"] <= r["test_auprc"] <= r["test_auprc_hi"]
        assert r["stopped_by"] in ("", "patience", "budget")
    # each seed draws its own subset at 20%, shared by that seed's arms
    subsets = {(r["seed"], r["arm"]): r["n_train_records"] for r in by("random", 0.2) + by("frozen", 0.2)}
    assert subsets[(0, "random")] == subsets[(0, "frozen")]

    # Summary rows are the means over seeds of the run rows; the difference rows the means of the seeds' paired
    # differences, with intervals around them.
    for s in evaluation.summary:
        rows = by(s["arm"], s["fraction"])
        assert s["test_auroc"] == pytest.approx(np.mean([r["test_auroc"] for r in rows]))
        assert s["test_auprc"] == pytest.approx(np.mean([r["test_auprc"] for r in rows]))
        assert s["n_seeds"] == 2
    for d in evaluation.differences:
        a, b = by(d["arm_a"], d["fraction"]), by(d["arm_b"], d["fraction"])
        want = np.mean([ra["test_auroc"] - rb["test_auroc"] for ra, rb in zip(a, b)])
        assert d["diff_auroc"] == pytest.approx(want)
        assert d["diff_lo"] <= d["diff_auroc"] + 1e-12 and d["diff_auroc"] <= d["diff_hi"] + 1e-12
    pairs = {(d["arm_a"], d["arm_b"]) for d in evaluation.differences}
    assert {("finetuned", "random"), ("frozen", "random"), ("finetuned", "frozen"), ("frozen", "random_probe"),
            ("finetuned", "random_probe")} == pairs


def test_predictions_recompute_every_reported_auroc(protocol_run, tmp_path):
    evaluation, (x, y, pid, split, config) = protocol_run
    paths = write_results(evaluation, tmp_path / "run", provenance=provenance(argv=["train.py", "evaluate"]))
    with open(paths["predictions"]) as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["task", "class", "arm", "fraction", "seed", "record_id", "patient_id", "split",
                              "label", "score"]
    assert {p["class"] for p in preds} == {"sine"}  # a binary task is its own one class
    n_scored = len(split.records(pid, "val")) + len(split.records(pid, "test"))
    assert len(preds) == len(evaluation.runs) * n_scored
    with open(paths["results"]) as f:
        results = list(csv.DictReader(f))
    for row in results:
        mine = [p for p in preds if (p["arm"], p["fraction"], p["seed"]) == (row["arm"], row["fraction"], row["seed"])]
        test = [p for p in mine if p["split"] == "test"]
        got = auroc([int(p["label"]) for p in test], [float(p["score"]) for p in test])
        assert got == pytest.approx(float(row["test_auroc"]), abs=1e-4), row["arm"]
        assert all(p["record_id"].startswith("r") for p in mine)
    with open(paths["differences"]) as f:
        assert next(csv.reader(f))[:7] == ["task", "fraction", "arm_a", "arm_b", "diff_auroc", "diff_lo", "diff_hi"]
    saved = json.loads(paths["json"].read_text())
    assert saved["provenance"]["command"] == "train.py evaluate" and len(saved["runs"]) == len(results)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = format_table(evaluation)
    assert "finetuned - random" in table and "random_probe" in table and "step budget" in table


def test_a_label_group_trains_one_head_and_reports_macro_and_per_class_auroc(tmp_path):
    x, y0, pid = sine_task(n_patients=60)
    split = patient_split(pid, y0, seed=0)
    test = np.isin(pid, split.test)
    rng = np.random.default_rng(3)
    y = np.stack([y0, (rng.random(len(y0)) < 0.4).astype(int), np.where(test, 0, rng.random(len(y0)) < 0.3)], 1)
    config = DownstreamConfig(fractions=(0.5, 1.0), seeds=(0, 1), arms=("prevalence", "random_probe", "finetuned"),
                              batch_size=16, eval_every=2, patience=2, max_steps=6, min_positives=2, n_boot=100,
                              progress=False)
    torch.manual_seed(5)
    evaluation = run_protocol("grp", x, y, pid, split, tiny_encoder, pretrained=tiny_encoder().state_dict(),
                              config=config, classes=("c0", "c1", "c2"))
    preds = {k: np.asarray(v) for k, v in evaluation.predictions.items()}
    assert len(preds["score"]) == len(evaluation.runs) * 3 * (len(split.records(pid, "val")) + test.sum())

    def class_auroc(run, name):
        rows = ((preds["arm"] == run["arm"]) & (preds["fraction"] == run["fraction"]) & (preds["seed"] == run["seed"])
                & (preds["split"] == "test") & (preds["class"] == name))
        return auroc(preds["label"][rows], preds["score"][rows])

    # c2 has no positive among the test records: skipped, named; the macro AUROC is the mean of c0's and c1's
    for run in evaluation.runs:
        assert run["test_auroc"] == pytest.approx((class_auroc(run, "c0") + class_auroc(run, "c1")) / 2)
    assert {(r["n_classes"], r["skipped_classes"]) for r in evaluation.summary} == {(2, "c2")}
    assert {r["class"] for r in evaluation.classes} == {"c0", "c1"}
    for row in evaluation.classes:
        runs = [r for r in evaluation.runs if (r["arm"], r["fraction"]) == (row["arm"], row["fraction"])]
        assert row["test_auroc"] == pytest.approx(np.mean([class_auroc(r, row["class"]) for r in runs]))
        assert row["test_auroc_lo"] <= row["test_auroc"] <= row["test_auroc_hi"]
        assert row["n_test_positives"] == y[test][:, int(row["class"][1])].sum()
    # the paired differences are of the macro AUROC, seed by seed
    for d in evaluation.differences:
        a = [r["test_auroc"] for r in evaluation.runs if (r["arm"], r["fraction"]) == (d["arm_a"], d["fraction"])]
        b = [r["test_auroc"] for r in evaluation.runs if (r["arm"], r["fraction"]) == (d["arm_b"], d["fraction"])]
        assert d["diff_auroc"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert {(d["arm_a"], d["arm_b"]) for d in evaluation.differences} == {("finetuned", "random_probe")}
    # the head of the multi-label arms has one logit per class; the prevalence arm scores each class's prevalence
    prevalence = (preds["arm"] == "prevalence") & (preds["fraction"] == 1.0) & (preds["seed"] == 0)
    train_y = y[np.isin(pid, split.train)].mean(axis=0)
    for k, name in enumerate(("c0", "c1", "c2")):
        logit = preds["score"][prevalence & (preds["class"] == name)]
        assert np.allclose(logit, np.log(train_y[k] / (1 - train_y[k])))
    paths = write_results(evaluation, tmp_path, plot=False)
    with open(paths["classes"]) as f:
        assert len(list(csv.DictReader(f))) == len(evaluation.classes)
    table = format_table(evaluation)
    assert "grp: test AUROC (AUPRC) per class at 100%" in table and "skipped" in table and "c2" in table

    # A binary task is the one-class case of the same code: labels (N,) and (N, 1) give the same numbers.
    one = dict(fractions=(1.0,), seeds=(0,), arms=("random_probe",), eval_every=2, patience=2, max_steps=6,
               min_positives=2, n_boot=20, progress=False)
    flat = run_protocol("c0", x, y0, pid, split, tiny_encoder, config=DownstreamConfig(**one))
    column = run_protocol("c0", x, y0[:, None], pid, split, tiny_encoder, config=DownstreamConfig(**one))
    np.testing.assert_array_equal(flat.predictions["score"], column.predictions["score"])
    assert flat.runs[0]["test_auroc"] == column.runs[0]["test_auroc"] == flat.classes[0]["test_auroc"]


def test_patient_level_scoring_scores_one_mean_per_patient():
    x, y, pid = sine_task(n_patients=36, ecgs=3)
    y = y.copy()
    y[::3] = 0  # a positive patient with a negative ECG is still a positive patient
    split = patient_split(pid, y, seed=1)
    config = DownstreamConfig(fractions=(1.0,), seeds=(0,), arms=("random_probe",), eval_every=2, patience=2,
                              max_steps=20, level="patient", min_positives=2, n_boot=50, progress=False)
    evaluation = run_protocol("sine", x, y, pid, split, tiny_encoder, config=config)
    preds = evaluation.predictions
    test = preds["split"] == "test"
    _, labels, scores = patient_scores(preds["patient_id"][test], preds["label"][test], preds["score"][test])
    assert evaluation.runs[0]["level"] == "patient"
    assert evaluation.runs[0]["test_auroc"] == pytest.approx(auroc(labels, scores[0]))


def test_worker_processes_give_the_results_of_one_process():
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    config = dict(fractions=(0.5, 1.0), seeds=(0, 1), arms=("random_probe", "frozen"), eval_every=2, patience=2,
                  max_steps=30, min_positives=2, n_boot=20, progress=False)
    pretrained = tiny_encoder().state_dict()
    one = run_protocol("sine", x, y, pid, split, tiny_encoder, pretrained=pretrained,
                       config=DownstreamConfig(**config))
    two = run_protocol("sine", x, y, pid, split, tiny_encoder, pretrained=pretrained,
                       config=DownstreamConfig(**config, workers=2))
    np.testing.assert_allclose(two.predictions["score"], one.predictions["score"], rtol=1e-4, atol=1e-5)
    assert [r["steps"] for r in two.runs] == [r["steps"] for r in one.runs]


def test_run_protocol_refuses_missing_or_mismatched_pretrained_states():
    x, y, pid = sine_task()
    split = patient_split(pid, y, seed=0)
    with pytest.raises(ValueError, match="pretrained"):
        run_protocol("sine", x, y, pid, split, tiny_encoder, config=DownstreamConfig(progress=False))
    with pytest.raises(ValueError, match="does not fit"):
        run_protocol("sine", x, y, pid, split, tiny_encoder,
                     pretrained=SingleStreamTemporalNet(width=1 / 16).state_dict(),
                     config=DownstreamConfig(arms=("frozen",), progress=False))
    with pytest.raises(ValueError, match="unknown arms"):
        DownstreamConfig(arms=("linear",))
    with pytest.raises(ValueError, match="nothing would stop"):
        DownstreamConfig(patience=None, max_steps=None)


def test_provenance_names_checkpoint_store_split_and_code(tmp_path):
    checkpoint = tmp_path / "pretrain.pt"
    checkpoint.write_bytes(b"weights")
    pid, labels = mostly_unlabelled()
    identity = {"location": "s.zarr", "n_records": len(pid), "fingerprint": "a" * 64}
    split = labelled_patient_split(pid, labels, store=identity)
    block = provenance(checkpoint=checkpoint, store=identity, split=split, argv=["train.py", "--seed", "1"],
                       config={"seed": 1})
    assert block["checkpoint"] == {"path": str(checkpoint), "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert block["store"] == identity and block["split"]["sha256"] == split.sha256
    assert block["command"] == "train.py --seed 1" and block["config"] == {"seed": 1}
    assert block["ecgfast_version"] and "git_commit" in block


def test_embedding_map_and_gallery_are_written(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"pretrained": rng.normal(size=(60, 16)), "random": rng.normal(size=(60, 16))}
    labels = {"a": (rng.random(60) < 0.3).astype(float), "b": np.where(rng.random(60) < 0.5, np.nan, 1.0)}
    out = plot_embedding(feats, labels, tmp_path / "embedding.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    signal = rng.normal(size=(8, 100))
    views = plot_views(signal, np.stack([signal, -signal]), ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"], 100.0,
                       tmp_path / "views.png")
    assert views.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="views"):
        plot_views(signal, signal, ["I"] * 8, 100.0, tmp_path / "bad.png")
