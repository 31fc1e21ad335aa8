"""Patient splits and label fractions: who trains, who chooses the epoch, who is scored, and on which store.

A split is drawn over the patients that hold a label of the evaluated tasks only, so every unlabelled patient stays
available to pretraining, and it remembers the store it was drawn on (``store_identity``): patient ids are the
store's dense ids, so a split applied to another store would silently pick other patients. It is drawn at random
(``labelled_patient_split``, stratified by the tasks' labels) or read from the store's folds (``fold_split``: the
PTB-XL benchmark's ``strat_fold``, 1-8 train, 9 validation, 10 test).

Labels are a task's 0/1 outcomes: (N,) for a binary task, (N, K) for a task of K classes (a label group, one
multi-label head); a binary task is the case K = 1 of every function here.
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
    "fold_split",
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


def multi_hot(labels, name: str) -> np.ndarray:
    """``labels`` (N,) or (N, K) as int8 (N, K) 0/1, or a ValueError naming ``name``."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a (N,) or (N, K) array of 0/1 labels without missing values")
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

    ``store`` is the ``store_identity`` of the store the split was drawn on (None for a split of plain arrays),
    ``tasks`` the tasks whose labels chose its patients and ``method`` how: ``"random"`` (drawn from ``seed``) or
    ``"folds"`` (the store's folds).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int | None = None
    tasks: tuple[str, ...] = ()
    store: dict | None = field(default=None, compare=False)
    method: str = "random"

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
        return json.dumps({"method": self.method, "seed": self.seed, "tasks": list(self.tasks), "store": self.store,
                           "train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()})

    @classmethod
    def from_json(cls, text: str) -> PatientSplit:
        d = json.loads(text)
        return cls(np.asarray(d["train"]), np.asarray(d["val"]), np.asarray(d["test"]), d.get("seed"),
                   tuple(d.get("tasks", ())), d.get("store"), d.get("method", "random"))

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
    """The unique patients and each one's label ((P,) for labels (N,), (P, K) for (N, K)): positive if any of its
    ECGs is.

    "Any" rather than the majority because a finding such as low LVEF marks the patient at risk even if it shows on
    one ECG of several, and it keeps every positive ECG's patient among the positives that stratification spreads.
    """
    pid = np.asarray(patient_ids)
    y = multi_hot(labels, "labels")
    if len(pid) != len(y):
        raise ValueError(f"patient_ids ({len(pid)}) and labels ({len(y)}) differ in length")
    patients, inverse = np.unique(pid, return_inverse=True)
    positive = np.zeros((len(patients), y.shape[1]), np.int8)
    np.maximum.at(positive, inverse, y)
    return patients, positive[:, 0] if np.ndim(labels) == 1 else positive


def _check_ratios(ratios) -> np.ndarray:
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (3,) or (ratios <= 0).any() or not math.isclose(ratios.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"ratios must be three positive numbers summing to 1, got {tuple(ratios)}")
    return ratios


# A stratum of fewer patients cannot be cut at the ratios (a single patient always lands in train): two or more such
# strata are pooled into one, which is cut at the ratios as a whole.
MIN_STRATUM = 5


def _strata(columns: np.ndarray) -> np.ndarray:
    """Each patient's stratum, the combination of its 0/1 columns (P, C), as the integer sum of column k << k (a
    Python int: a label group may have more than 63 classes)."""
    rows, inverse = np.unique(columns, axis=0, return_inverse=True)
    keys = np.array([sum(int(b) << k for k, b in enumerate(row)) for row in rows], dtype=object)
    return keys[inverse.reshape(-1)]


def _stratified(patients: np.ndarray, strata: np.ndarray, ratios: np.ndarray, seed: int,
                pooled: int) -> list[np.ndarray]:
    """Each stratum shuffled and cut at the cumulative ratios: each part holds its share of every stratum. Strata
    smaller than MIN_STRATUM are pooled (if there are two or more) into the stratum ``pooled``."""
    keys, counts = np.unique(strata, return_counts=True)
    small = {k for k, c in zip(keys.tolist(), counts) if c < MIN_STRATUM}
    if len(small) >= 2:
        strata = np.array([pooled if k in small else k for k in strata.tolist()], dtype=object)
    parts: list[list[np.ndarray]] = [[], [], []]
    for stratum in np.unique(strata):
        members = rng(seed, SPLIT_STREAM, int(stratum)).permutation(patients[strata == stratum])
        cuts = np.round(np.cumsum(ratios)[:2] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _check_both_classes(patients, positive, parts, ratios, task: str = "", how: str = "") -> None:
    """Refuse a validation or test part in which no class (column of ``positive`` (P,) or (P, K)) has both
    outcomes."""
    positive = positive.reshape(len(positive), -1)
    for name, part in zip(("val", "test"), parts[1:]):
        inside = positive[np.isin(patients, part)]
        if not ((inside == 1).any(axis=0) & (inside == 0).any(axis=0)).any():
            where = f" of task {task!r}" if task else ""
            rarer = int(positive.sum()) if positive.shape[1] == 1 else f"{positive.sum(axis=0).tolist()}"
            how = how or f"for ratios {tuple(ratios)}"
            raise ValueError(f"the {name} part of the split holds only one class{where}: too few patients of the "
                             f"rarer class ({rarer} positive of {len(positive)}) {how}")


def patient_split(patient_ids: Sequence, labels: Sequence, *, ratios: Sequence[float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> PatientSplit:
    """A patient-level train/validation/test split, stratified by each patient's label (see ``patient_labels``).

    Every ECG of a patient lands in the same part. Within each class the patients are shuffled and cut at the
    cumulative ratios, so each part holds its share of the positives, rounded.
    """
    ratios = _check_ratios(ratios)
    patients, positive = patient_labels(patient_ids, binary(labels, "labels"))
    parts = _stratified(patients, positive.astype(object), ratios, seed, pooled=2)
    _check_both_classes(patients, positive, parts, ratios)
    return PatientSplit(*parts, seed)


def _task_labels(patient_ids: Sequence, labels: Mapping[str, Sequence]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``patient_ids`` as an array and each task's labels as float64 (N, K), checked: 0, 1 or NaN."""
    if not labels:
        raise ValueError("labels must name at least one task")
    pid = np.asarray(patient_ids)
    values = {}
    for task, y in labels.items():
        y = np.asarray(y, dtype=np.float64)
        if y.ndim not in (1, 2) or len(y) != len(pid):
            raise ValueError(f"labels[{task!r}] has shape {y.shape}, patient_ids has {pid.shape}")
        if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
            raise ValueError(f"labels[{task!r}] must hold 0, 1 or NaN")
        values[task] = y.reshape(len(y), -1)
    return pid, values


def _labelled_patients(pid: np.ndarray, values: Mapping[str, np.ndarray]):
    """The patients with a label of a task, their records' mask, and per task (P, K) its positives (any ECG) and the
    patients labelled for it."""
    known = np.logical_or.reduce([~np.isnan(y).all(axis=1) for y in values.values()])
    if not known.any():
        raise ValueError(f"no record holds a label of the tasks {list(values)}")
    patients = np.unique(pid[known])
    inverse = np.searchsorted(patients, pid[known])
    per_task = {}
    for task, y in values.items():
        positive = np.zeros((len(patients), y.shape[1]), np.int8)
        np.maximum.at(positive, inverse, np.nan_to_num(y[known]).astype(np.int8))
        per_task[task] = (positive, np.isin(patients, pid[~np.isnan(y).all(axis=1)]))
    return patients, known, per_task


def labelled_patient_split(patient_ids: Sequence, labels: Mapping[str, Sequence], *,
                           ratios: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                           store: Mapping | None = None) -> PatientSplit:
    """One split for several tasks, drawn over the patients that hold a label of at least one of them.

    Args:
        patient_ids: each record's patient (a store's ``patient_ids``).
        labels: task name -> each record's label, 0/1 with NaN where unknown (a store's ``labels``); (N, K) for a
            task of K classes, a record outside the task holding NaN for every class.
        ratios, seed: as ``patient_split``.
        store: the ``store_identity`` of the store the arrays come from, kept in the split so that it can refuse
            another store.

    A patient is positive for a class if any of its labelled ECGs is. Patients are stratified by the combination of
    their classes (unknown counting as negative here only), so every part holds its share of each class's
    positives; combinations held by fewer than ``MIN_STRATUM`` patients are pooled. Patients without any label are
    in no part: they are left to pretraining. The validation and test parts must hold both outcomes (of some class,
    for a task of several).
    """
    ratios = _check_ratios(ratios)
    pid, values = _task_labels(patient_ids, labels)
    patients, _, per_task = _labelled_patients(pid, values)
    columns = np.concatenate([positive for positive, _ in per_task.values()], axis=1)
    parts = _stratified(patients, _strata(columns), ratios, seed, pooled=1 << columns.shape[1])
    for task, (positive, labelled) in per_task.items():
        _check_both_classes(patients[labelled], positive[labelled], parts, ratios, task)
    return PatientSplit(*parts, seed, tuple(values), dict(store) if store is not None else None)


def fold_split(patient_ids: Sequence, folds: Sequence, labels: Mapping[str, Sequence], *,
               train: Sequence[int] = range(1, 9), val: Sequence[int] = (9,), test: Sequence[int] = (10,),
               store: Mapping | None = None) -> PatientSplit:
    """The split a store's folds define, over the patients that hold a label of at least one of the tasks.

    Args:
        patient_ids: each record's patient.
        folds: each record's fold (a store's ``folds``; -1 none). The defaults are the PTB-XL benchmark's use of
            ``strat_fold``: folds 1-8 train, 9 validates (chooses the epoch), 10 is scored.
        labels, store: as ``labelled_patient_split``.
        train, val, test: the folds of each part, disjoint.

    A patient's part is the part of its records' folds; a patient with records in two parts is a ValueError (folds
    that are not patient-disjoint would score patients the model trained on). A labelled patient none of whose
    records has a fold of a part is in no part (left to pretraining). The validation and test parts must hold both
    outcomes (of some class, for a task of several).
    """
    groups = [set(map(int, g)) for g in (train, val, test)]
    if any(a & b for a, b in ((groups[0], groups[1]), (groups[0], groups[2]), (groups[1], groups[2]))):
        raise ValueError(f"the train, val and test folds must be disjoint, got {[sorted(g) for g in groups]}")
    pid, values = _task_labels(patient_ids, labels)
    folds = np.asarray(folds)
    if folds.shape != pid.shape:
        raise ValueError(f"folds has shape {folds.shape}, patient_ids has {pid.shape}")
    patients, _, per_task = _labelled_patients(pid, values)
    part_of_record = np.full(len(pid), -1)
    for k, group in enumerate(groups):
        part_of_record[np.isin(folds, list(group))] = k
    inside = np.isin(pid, patients) & (part_of_record >= 0)
    assigned = np.full(len(patients), -1)
    index = np.searchsorted(patients, pid[inside])
    np.maximum.at(assigned, index, part_of_record[inside])
    lowest = np.full(len(patients), 3)
    np.minimum.at(lowest, index, part_of_record[inside])
    mixed = np.flatnonzero((assigned >= 0) & (lowest != assigned))
    if len(mixed):
        p = patients[mixed[0]]
        found = sorted(set(folds[(pid == p) & (part_of_record >= 0)].tolist()))
        raise ValueError(f"patient {p} has records in folds {found}, which belong to different parts of the split "
                         f"({len(mixed)} such patients): the folds must keep each patient's records together")
    parts = [np.sort(patients[assigned == k]) for k in range(3)]
    for task, (positive, labelled) in per_task.items():
        _check_both_classes(patients[labelled], positive[labelled], parts, None, task,
                            how=f"in folds {sorted(groups[1])} and {sorted(groups[2])}")
    return PatientSplit(*parts, None, tuple(values), dict(store) if store is not None else None, method="folds")


@dataclass(frozen=True)
class LabelFraction:
    """The training patients of one label fraction.

    ``n_positives``: its positive patients (for a task of several classes, those of its rarest class).
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
        patient_labels: each training patient's 0/1 label (P,), or its labels of a task of K classes (P, K),
            aligned with ``train_patients``.
        fractions: in (0, 1]; any order (returned in the same order).
        min_positives: the least number of patients of each outcome (of each class) in a subset. A fraction that
            holds fewer is enlarged to this count and flagged ``enlarged``. A binary task whose training patients
            hold fewer of a class is a ValueError; a class of a task of several keeps those it has.
        seed: one shuffle serves every fraction, which is what nests them; each seed draws anew.

    A binary task's patients are drawn per class: each class is shuffled once and a fraction takes the first
    ``round(f x n_class)`` patients of each, so every subset keeps the training set's class balance. A task of
    several classes has too many combinations of them to stratify by: its patients are shuffled once and a fraction
    takes the first ``round(f x n)``. Then, for every class and outcome, the first ``min_positives`` patients of the
    shuffle with that outcome join the subset (they are fixed, so the subsets stay nested).
    """
    patients = np.asarray(train_patients)
    y = multi_hot(patient_labels, "patient_labels")
    if len(patients) != len(y):
        raise ValueError(f"train_patients ({len(patients)}) and patient_labels ({len(y)}) differ in length")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad or not len(fractions):
        raise ValueError(f"fractions must be non-empty and in (0, 1], got {tuple(fractions)}")
    binary_task = y.shape[1] == 1
    if binary_task:
        for cls in (0, 1):
            n = int((y[:, 0] == cls).sum())
            if n < min_positives:
                raise ValueError(f"the training patients hold {n} of class {cls}, fewer than "
                                 f"min_positives={min_positives}")
    strata = y[:, 0] if binary_task else np.zeros(len(y), np.int8)
    rank = np.zeros(len(y), np.int64)  # each patient's place in its stratum's shuffle
    sizes = {}
    for stratum in np.unique(strata):
        members = rng(seed, FRACTION_STREAM, int(stratum)).permutation(np.flatnonzero(strata == stratum))
        rank[members] = np.arange(len(members))
        sizes[int(stratum)] = len(members)
    required = np.zeros(len(y), bool)  # the first min_positives of each class's each outcome
    for c in range(y.shape[1]):
        for outcome in (0, 1):
            candidates = np.flatnonzero(y[:, c] == outcome)
            required[candidates[np.argsort(rank[candidates], kind="stable")][:min_positives]] = True
    out: list[LabelFraction] = []
    seen: dict[int, float] = {}
    for f in sorted(fractions):
        limit = np.zeros(len(y), np.int64)
        for stratum, n in sizes.items():
            limit[strata == stratum] = round(f * n)
        drawn = rank < limit
        chosen = drawn | required
        same_as = seen.setdefault(int(chosen.sum()), float(f))  # nested: equal sizes, equal patients
        out.append(LabelFraction(float(f), np.sort(patients[chosen]), int(y[chosen].sum(axis=0).min()),
                                 bool((chosen & ~drawn).any()), None if same_as == f else same_as))
    return sorted(out, key=lambda lf: list(fractions).index(lf.fraction))
