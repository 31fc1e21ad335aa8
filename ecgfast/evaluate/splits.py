"""Patient splits and label fractions: who trains, who chooses the epoch, who is scored, and on which store.

A split is drawn over the patients that hold a label of the evaluated tasks only, so every unlabelled patient stays
available to pretraining, and it remembers the store it was drawn on (``store_identity``): patient ids are the
store's dense ids, so a split applied to another store would silently pick other patients.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PatientSplit",
    "LabelFraction",
    "patient_labels",
    "patient_split",
    "labelled_patient_split",
    "nested_fractions",
    "store_identity",
]

# Stream keys: the split, the label fractions and the bootstrap draw from disjoint SeedSequence streams, so that a
# cohort seed equal to a downstream seed does not correlate their permutations.
SPLIT_STREAM, FRACTION_STREAM, BOOTSTRAP_STREAM, ORDER_STREAM = 1, 2, 3, 4


def rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((int(seed), *key)))


def binary(labels, name: str) -> np.ndarray:
    """``labels`` as int8 0/1, or a ValueError naming ``name``."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 labels without missing values")
    return y.astype(np.int8)


def store_identity(store) -> dict:
    """What binds a split to a store: its location, record count and a SHA-256 of its record ids and patient keys.

    The fingerprint changes when records are added, removed or reordered, or when patients are re-keyed, which are
    exactly the changes that make the store's dense patient ids mean other patients.
    """
    digest = hashlib.sha256()
    for column in (store.record_ids, store.patient_keys):
        for value in np.asarray(column).astype(str):
            digest.update(value.encode())
            digest.update(b"\0")
        digest.update(b"\1")
    return {"location": str(store.location), "n_records": len(store), "fingerprint": digest.hexdigest()}


@dataclass(frozen=True)
class PatientSplit:
    """The patients (store patient ids) of the train, validation and test parts.

    ``store`` is the ``store_identity`` of the store the split was drawn on (None for a split of plain arrays) and
    ``tasks`` the tasks whose labels chose its patients.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int | None = None
    tasks: tuple[str, ...] = ()
    store: dict | None = field(default=None, compare=False)

    def records(self, patient_ids: Sequence, part: str) -> np.ndarray:
        """Indices of the records whose patient is in ``part`` ('train', 'val' or 'test')."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        return np.flatnonzero(np.isin(np.asarray(patient_ids), getattr(self, part)))

    @property
    def patients(self) -> np.ndarray:
        """Every patient of the split, sorted."""
        return np.sort(np.concatenate([self.train, self.val, self.test]))

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "tasks": list(self.tasks), "store": self.store,
                           "train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()})

    @classmethod
    def from_json(cls, text: str) -> PatientSplit:
        d = json.loads(text)
        return cls(np.asarray(d["train"]), np.asarray(d["val"]), np.asarray(d["test"]), d.get("seed"),
                   tuple(d.get("tasks", ())), d.get("store"))

    @property
    def sha256(self) -> str:
        """A hash of the three parts (not of the store or seed): two splits with one hash hold the same patients."""
        parts = {name: np.sort(getattr(self, name)).tolist() for name in ("train", "val", "test")}
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def check_store(self, identity: Mapping, source: str = "the split",
                    fix: str = "draw a new split for this store") -> None:
        """Refuse a store other than the one the split was drawn on (``identity`` from ``store_identity``): a
        ValueError naming both stores, then ``fix``."""
        if self.store is None or self.store.get("fingerprint") == identity.get("fingerprint"):
            return
        raise ValueError(
            f"{source} was drawn on the store at {self.store.get('location')} ({self.store.get('n_records')} records, "
            f"fingerprint {str(self.store.get('fingerprint'))[:12]}), not on this one at {identity.get('location')} "
            f"({identity.get('n_records')} records, fingerprint {str(identity.get('fingerprint'))[:12]}): its "
            f"patient ids would name other patients here; {fix}")


def patient_labels(patient_ids: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The unique patients and each one's label: positive if any of its ECGs is.

    "Any" rather than the majority because a finding such as low LVEF marks the patient at risk even if it shows on
    one ECG of several, and it keeps every positive ECG's patient among the positives that stratification spreads.
    """
    pid = np.asarray(patient_ids)
    y = binary(labels, "labels")
    if len(pid) != len(y):
        raise ValueError(f"patient_ids ({len(pid)}) and labels ({len(y)}) differ in length")
    patients, inverse = np.unique(pid, return_inverse=True)
    positive = np.zeros(len(patients), np.int8)
    np.maximum.at(positive, inverse, y)
    return patients, positive


def _check_ratios(ratios) -> np.ndarray:
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (3,) or (ratios <= 0).any() or not math.isclose(ratios.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"ratios must be three positive numbers summing to 1, got {tuple(ratios)}")
    return ratios


def _stratified(patients: np.ndarray, strata: np.ndarray, ratios: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each stratum shuffled and cut at the cumulative ratios: each part holds its share of every stratum."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for stratum in np.unique(strata):
        members = rng(seed, SPLIT_STREAM, int(stratum)).permutation(patients[strata == stratum])
        cuts = np.round(np.cumsum(ratios)[:2] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _check_both_classes(patients, positive, parts, ratios, task: str = "") -> None:
    for name, part in zip(("val", "test"), parts[1:]):
        if len(np.unique(positive[np.isin(patients, part)])) < 2:
            where = f" of task {task!r}" if task else ""
            raise ValueError(f"the {name} part of the split holds only one class{where}: too few patients of the "
                             f"rarer class ({int(positive.sum())} positive of {len(positive)}) for ratios "
                             f"{tuple(ratios)}")


def patient_split(patient_ids: Sequence, labels: Sequence, *, ratios: Sequence[float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> PatientSplit:
    """A patient-level train/validation/test split, stratified by each patient's label (see ``patient_labels``).

    Every ECG of a patient lands in the same part. Within each class the patients are shuffled and cut at the
    cumulative ratios, so each part holds its share of the positives, rounded.
    """
    ratios = _check_ratios(ratios)
    patients, positive = patient_labels(patient_ids, labels)
    parts = _stratified(patients, positive, ratios, seed)
    _check_both_classes(patients, positive, parts, ratios)
    return PatientSplit(*parts, seed)


def labelled_patient_split(patient_ids: Sequence, labels: Mapping[str, Sequence], *,
                           ratios: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                           store: Mapping | None = None) -> PatientSplit:
    """One split for several tasks, drawn over the patients that hold a label of at least one of them.

    Args:
        patient_ids: each record's patient (a store's ``patient_ids``).
        labels: task name -> each record's label, 0/1 with NaN where unknown (a store's ``labels``).
        ratios, seed: as ``patient_split``.
        store: the ``store_identity`` of the store the arrays come from, kept in the split so that it can refuse
            another store.

    A patient is positive for a task if any of its labelled ECGs is. Patients are stratified by the combination of
    their tasks' labels (unknown counting as negative here only), so every part holds its share of each task's
    positives. Patients without any label are in no part: they are left to pretraining.
    """
    if not labels:
        raise ValueError("labels must name at least one task")
    ratios = _check_ratios(ratios)
    pid = np.asarray(patient_ids)
    values = {task: np.asarray(y, dtype=np.float64) for task, y in labels.items()}
    for task, y in values.items():
        if y.shape != pid.shape:
            raise ValueError(f"labels[{task!r}] has shape {y.shape}, patient_ids has {pid.shape}")
        if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
            raise ValueError(f"labels[{task!r}] must hold 0, 1 or NaN")
    known = np.logical_or.reduce([~np.isnan(y) for y in values.values()])
    if not known.any():
        raise ValueError(f"no record holds a label of the tasks {list(values)}")
    patients = np.unique(pid[known])
    inverse = np.searchsorted(patients, pid[known])
    per_task = {}
    for task, y in values.items():
        positive = np.zeros(len(patients), np.int8)
        np.maximum.at(positive, inverse, np.nan_to_num(y[known]).astype(np.int8))
        per_task[task] = positive
    strata = sum(positive.astype(np.int64) << k for k, positive in enumerate(per_task.values()))
    parts = _stratified(patients, strata, ratios, seed)
    for task, positive in per_task.items():
        labelled = np.isin(patients, pid[~np.isnan(values[task])])
        _check_both_classes(patients[labelled], positive[labelled], parts, ratios, task)
    return PatientSplit(*parts, seed, tuple(values), dict(store) if store is not None else None)


@dataclass(frozen=True)
class LabelFraction:
    """The training patients of one label fraction.

    ``enlarged`` when the minimum class count made it larger than the fraction asks; ``same_as`` names the smaller
    fraction whose patients it equals (both enlarged to the same minimum), which is then trained once.
    """

    fraction: float
    patients: np.ndarray
    n_positives: int
    enlarged: bool
    same_as: float | None = None


def nested_fractions(train_patients: Sequence, patient_labels: Sequence,
                     fractions: Sequence[float] = (0.01, 0.05, 0.10, 0.50, 1.0), *, min_positives: int = 5,
                     seed: int = 0) -> list[LabelFraction]:
    """Nested subsets of the training patients: each fraction's patients include every smaller fraction's.

    Args:
        train_patients: the training patients' ids.
        patient_labels: each training patient's 0/1 label, aligned with ``train_patients``.
        fractions: in (0, 1]; any order (returned in the same order).
        min_positives: the least number of patients of each class in a subset. A fraction that holds fewer is
            enlarged to this count and flagged ``enlarged``.
        seed: one shuffle of each class serves every fraction, which is what nests them; each seed draws anew.

    Each class is shuffled once and a fraction takes the first ``round(f x n_class)`` patients of each, so every
    subset keeps the training set's class balance (save for enlargement).
    """
    patients = np.asarray(train_patients)
    y = binary(patient_labels, "patient_labels")
    if len(patients) != len(y):
        raise ValueError(f"train_patients ({len(patients)}) and patient_labels ({len(y)}) differ in length")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad or not len(fractions):
        raise ValueError(f"fractions must be non-empty and in (0, 1], got {tuple(fractions)}")
    by_class = [rng(seed, FRACTION_STREAM, cls).permutation(patients[y == cls]) for cls in (0, 1)]
    for cls, members in enumerate(by_class):
        if len(members) < min_positives:
            raise ValueError(f"the training patients hold {len(members)} of class {cls}, fewer than "
                             f"min_positives={min_positives}")
    out: list[LabelFraction] = []
    seen: dict[tuple[int, int], float] = {}
    for f in sorted(fractions):
        counts = [round(f * len(m)) for m in by_class]
        enlarged = any(c < min_positives for c in counts)
        counts = [max(c, min_positives) for c in counts]
        chosen = np.sort(np.concatenate([m[:c] for m, c in zip(by_class, counts)]))
        same_as = seen.setdefault(tuple(counts), float(f))  # prefixes of one shuffle: equal counts, equal patients
        out.append(LabelFraction(float(f), chosen, counts[1], enlarged, None if same_as == f else same_as))
    return sorted(out, key=lambda lf: list(fractions).index(lf.fraction))
