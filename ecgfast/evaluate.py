"""The downstream evaluation protocol: patient splits, nested label fractions, three training arms, AUROC with intervals.

For one binary task, ``run_protocol`` trains a classifier on 1-100% of the training patients in three arms:

- ``random``: a fresh encoder, everything trained at ``lr_random``;
- ``frozen``: the pretrained encoder frozen, a new linear head trained on its cached features at ``lr_frozen``;
- ``finetuned``: the pretrained encoder trained at ``lr_backbone``, a new head at ``lr_head``.

Each run keeps the epoch with the best validation AUROC and reports the test AUROC of that epoch, with a 95%
interval from a bootstrap over test patients. ``write_results`` saves the rows as CSV, JSON and a plot.

An encoder here is any module with ``features(x)`` ((B, L, T) -> (B, F)), a ``classifier`` Linear(F -> 1) and
``forward(x) = classifier(features(x))``, as the models of ``ecgfast.models`` are.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "PatientSplit",
    "LabelFraction",
    "DownstreamConfig",
    "patient_split",
    "patient_labels",
    "nested_fractions",
    "auroc",
    "bootstrap_auroc_ci",
    "train_downstream",
    "run_protocol",
    "format_table",
    "write_results",
    "ARMS",
]

ARMS = ("random", "frozen", "finetuned")
Windows = np.ndarray | Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class PatientSplit:
    """The patients of the train, validation and test parts of one task (arrays of patient ids)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int | None = None

    def records(self, patient_ids: Sequence, part: str) -> np.ndarray:
        """Indices of the records whose patient is in ``part`` ('train', 'val' or 'test')."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        return np.flatnonzero(np.isin(np.asarray(patient_ids), getattr(self, part)))

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "train": self.train.tolist(), "val": self.val.tolist(),
                           "test": self.test.tolist()})

    @classmethod
    def from_json(cls, text: str) -> PatientSplit:
        d = json.loads(text)
        return cls(np.asarray(d["train"]), np.asarray(d["val"]), np.asarray(d["test"]), d.get("seed"))


def _binary(labels, name: str) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 labels without missing values")
    return y.astype(np.int8)


def patient_labels(patient_ids: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The unique patients and each one's label: positive if any of its ECGs is.

    "Any" rather than the majority because a finding such as low LVEF marks the patient at risk even if it shows on
    one ECG of several, and it keeps every positive ECG's patient among the positives that stratification spreads.
    """
    pid = np.asarray(patient_ids)
    y = _binary(labels, "labels")
    if len(pid) != len(y):
        raise ValueError(f"patient_ids ({len(pid)}) and labels ({len(y)}) differ in length")
    patients, inverse = np.unique(pid, return_inverse=True)
    positive = np.zeros(len(patients), np.int8)
    np.maximum.at(positive, inverse, y)
    return patients, positive


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((seed, *key)))


def patient_split(patient_ids: Sequence, labels: Sequence, *, ratios: Sequence[float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> PatientSplit:
    """A patient-level train/validation/test split, stratified by each patient's label (see ``patient_labels``).

    Every ECG of a patient lands in the same part. Within each class the patients are shuffled and cut at the
    cumulative ratios, so each part holds its share of the positives, rounded.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (3,) or (ratios <= 0).any() or not math.isclose(ratios.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"ratios must be three positive numbers summing to 1, got {tuple(ratios)}")
    patients, positive = patient_labels(patient_ids, labels)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in (0, 1):
        members = _rng(seed, cls).permutation(patients[positive == cls])
        cuts = np.round(np.cumsum(ratios)[:2] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    for name, part in (("val", val), ("test", test)):
        if len(np.unique(positive[np.isin(patients, part)])) < 2:
            raise ValueError(f"the {name} part of the split holds only one class: too few patients of the rarer "
                             f"class ({int(positive.sum())} positive of {len(positive)}) for ratios {tuple(ratios)}")
    return PatientSplit(train, val, test, seed)


@dataclass(frozen=True)
class LabelFraction:
    """The training patients of one label fraction; ``enlarged`` when the minimum class count made it larger."""

    fraction: float
    patients: np.ndarray
    n_positives: int
    enlarged: bool


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
        seed: one shuffle of each class serves every fraction, which is what nests them.

    Each class is shuffled once and a fraction takes the first ``round(f x n_class)`` patients of each, so every
    subset keeps the training set's class balance (save for enlargement).
    """
    patients = np.asarray(train_patients)
    y = _binary(patient_labels, "patient_labels")
    if len(patients) != len(y):
        raise ValueError(f"train_patients ({len(patients)}) and patient_labels ({len(y)}) differ in length")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad or not fractions:
        raise ValueError(f"fractions must be non-empty and in (0, 1], got {tuple(fractions)}")
    by_class = [_rng(seed, cls).permutation(patients[y == cls]) for cls in (0, 1)]
    for cls, members in enumerate(by_class):
        if len(members) < min_positives:
            raise ValueError(f"the training patients hold {len(members)} of class {cls}, fewer than "
                             f"min_positives={min_positives}")
    out = []
    for f in fractions:
        counts = [round(f * len(m)) for m in by_class]
        enlarged = any(c < min_positives for c in counts)
        counts = [max(c, min_positives) for c in counts]
        chosen = np.sort(np.concatenate([m[:c] for m, c in zip(by_class, counts)]))
        out.append(LabelFraction(float(f), chosen, counts[1], enlarged))
    return out


# ----------------------------------------------------------------------------------------------------------- AUROC


def _weighted_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``weights`` (R, N): the weighted Mann-Whitney statistic, ties counted one half.

    A weight w_i counts record i w_i times, so one pass serves the plain AUROC (weights 1) and every bootstrap
    replicate (weights = how often each record was drawn). NaN where a row lacks a class.
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


def _check_scores(y, score) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(y, "y")
    score = np.asarray(score, dtype=np.float64)
    if score.shape != y.shape:
        raise ValueError(f"score has shape {score.shape}, y has {y.shape}")
    if not np.isfinite(score).all():
        raise ValueError("score holds NaN or infinite values")
    if y.min() == y.max():
        raise ValueError(f"AUROC needs both classes in y, got only {int(y[0])}")
    return y, score


def auroc(y: Sequence, score: Sequence) -> float:
    """Area under the ROC curve of ``score`` for 0/1 labels ``y``, by ranks, ties counted one half."""
    y, score = _check_scores(y, score)
    return float(_weighted_auroc(y, score, np.ones((1, len(y))))[0])


def bootstrap_auroc_ci(y: Sequence, score: Sequence, patient_ids: Sequence, *, n_boot: int = 1000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap (1 - alpha) interval of the AUROC that resamples patients, not ECGs.

    Each replicate draws as many patients as there are, with replacement, and counts every ECG of a drawn patient
    as often as the patient was drawn, so the correlation between one patient's ECGs widens the interval as it
    should. Replicates that draw a single class are dropped.
    """
    y, score = _check_scores(y, score)
    pid = np.asarray(patient_ids)
    if pid.shape != y.shape:
        raise ValueError(f"patient_ids has shape {pid.shape}, y has {y.shape}")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n_boot >= 1 and alpha in (0, 1), got n_boot={n_boot}, alpha={alpha}")
    _, inverse = np.unique(pid, return_inverse=True)
    n_patients = inverse.max() + 1
    drawn = _rng(seed).multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    stats = _weighted_auroc(y, score, drawn[:, inverse].astype(np.float64))
    stats = stats[np.isfinite(stats)]
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# -------------------------------------------------------------------------------------------------------- training


@dataclass
class DownstreamConfig:
    """How the arms train; the defaults are the paper's (Dade et al.) save for the CPU caps, which are off.

    ``epochs`` pairs with ``fractions``. ``patience`` stops a run after that many epochs without a better
    validation AUROC; ``max_steps`` caps the optimizer steps of one run (None: no cap). ``min_positives`` is the
    least number of patients of each class in a fraction.
    """

    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.50, 1.0)
    epochs: tuple[int, ...] = (70, 50, 30, 20, 20)
    seeds: tuple[int, ...] = (42, 43, 44, 45, 46)
    arms: tuple[str, ...] = ARMS
    lr_random: float = 1e-3
    lr_frozen: float = 0.02
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    batch_size: int = 64
    eval_batch_size: int = 256
    patience: int | None = None
    max_steps: int | None = None
    min_positives: int = 5
    n_boot: int = 1000
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        if len(self.epochs) != len(self.fractions):
            raise ValueError(f"epochs {self.epochs} must pair with fractions {self.fractions}")
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}; the arms are {ARMS}")


def _as_reader(x: Windows) -> Callable[[np.ndarray], np.ndarray]:
    if callable(x):
        return x
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"the input windows must be (records, leads, time), got shape {x.shape}")
    return lambda idx: x[idx]


@torch.no_grad()
def _predict(module: nn.Module, get: Callable[[np.ndarray], torch.Tensor], idx: np.ndarray,
             batch_size: int) -> np.ndarray:
    module.eval()
    out = [module(get(idx[i:i + batch_size])).reshape(-1).float().cpu() for i in range(0, len(idx), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def _features(model: nn.Module, get: Callable[[np.ndarray], torch.Tensor], idx: np.ndarray,
              batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(get(idx[i:i + batch_size])) for i in range(0, len(idx), batch_size)])


def train_downstream(module: nn.Module, optimizer: torch.optim.Optimizer, get: Callable[[np.ndarray], torch.Tensor],
                     y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, epochs: int, seed: int,
                     config: DownstreamConfig) -> dict:
    """Train ``module`` (inputs -> (B, 1) logits) on ``train_idx`` and keep the state of its best validation epoch.

    ``get`` maps record indices to a batch of inputs on the device (signals, or cached features for the frozen
    arm); ``y`` holds every record's label. BCE weighs the positive class by negatives / positives of the training
    records. Stops early after ``config.patience`` epochs without improvement and at ``config.max_steps`` steps.
    Returns ``best_epoch``, ``val_auroc``, ``epochs_run`` and ``steps``, and leaves the best state in ``module``.
    """
    y_train = y[train_idx]
    n_pos = int(y_train.sum())
    if n_pos == 0 or n_pos == len(y_train):
        raise ValueError(f"the training records hold a single class ({n_pos} positive of {len(y_train)})")
    device = next(module.parameters()).device
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y_train) - n_pos) / n_pos, device=device))
    labels = torch.as_tensor(y, dtype=torch.float32, device=device)
    best = {"val_auroc": -math.inf, "best_epoch": -1, "state": None}
    steps = epoch = 0
    for epoch in range(epochs):
        module.train()
        order = _rng(seed, epoch).permutation(train_idx)
        for i in range(0, len(order), config.batch_size):
            batch = np.sort(order[i:i + config.batch_size])  # sorted: a store reads nearby records together
            loss = loss_fn(module(get(batch)).reshape(-1), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                break
        val = auroc(y[val_idx], _predict(module, get, val_idx, config.eval_batch_size))
        if val > best["val_auroc"]:
            best = {"val_auroc": val, "best_epoch": epoch, "state": copy.deepcopy(module.state_dict())}
        elif config.patience is not None and epoch - best["best_epoch"] >= config.patience:
            break
        if config.max_steps is not None and steps >= config.max_steps:
            break
    module.load_state_dict(best.pop("state"))
    return {**best, "epochs_run": epoch + 1, "steps": steps}


def _load_pretrained(model: nn.Module, pretrained: Mapping[str, torch.Tensor]) -> None:
    # A pretrained checkpoint's classifier was never trained: each arm keeps the fresh one of its seed.
    encoder = {k: v for k, v in pretrained.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"the pretrained state does not fit the encoder: missing {missing}, unexpected {unexpected}")


def run_protocol(task: str, windows: Windows, labels: Sequence, patient_ids: Sequence, split: PatientSplit,
                 encoder_factory: Callable[[], nn.Module], *, pretrained: Mapping[str, torch.Tensor] | None = None,
                 config: DownstreamConfig | None = None) -> list[dict]:
    """Run every arm x fraction x seed of one task and return one row per run.

    Args:
        task: the task's name, copied into the rows.
        windows: the labeled records' input windows, float32 (N, L, T), or a callable mapping record indices to
            them (e.g. ``lambda idx: store.read(idx)``).
        labels: each record's 0/1 label.
        patient_ids: each record's patient.
        split: the patient split (``patient_split``); fractions are drawn from its training patients.
        encoder_factory: returns a fresh encoder (``features``, ``classifier``, ``forward``) on the CPU.
        pretrained: the pretrained encoder's state dict; without it only the ``random`` arm can run.
        config: see DownstreamConfig.

    Rows hold ``task``, ``arm``, ``fraction``, ``seed``, ``val_auroc``, ``test_auroc``, ``test_auroc_lo``,
    ``test_auroc_hi``, ``n_train_patients``, ``n_train_positives``, ``enlarged``, ``n_train_records``,
    ``best_epoch``, ``epochs_run``, ``steps`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    config = config or DownstreamConfig()
    pretrained_arms = [a for a in config.arms if a != "random"]
    if pretrained is None and pretrained_arms:
        raise ValueError(f"arms {pretrained_arms} need a pretrained state dict")
    read = _as_reader(windows)
    y = _binary(labels, "labels")
    pid = np.asarray(patient_ids)
    if len(pid) != len(y):
        raise ValueError(f"patient_ids ({len(pid)}) and labels ({len(y)}) differ in length")
    device = torch.device(config.device)
    get_x = lambda idx: torch.as_tensor(np.asarray(read(idx), dtype=np.float32), device=device)  # noqa: E731
    in_train = np.isin(pid, split.train)
    train_patients, train_pos = patient_labels(pid[in_train], y[in_train])
    fractions = nested_fractions(train_patients, train_pos, config.fractions, min_positives=config.min_positives,
                                 seed=split.seed or 0)
    val_idx, test_idx = split.records(pid, "val"), split.records(pid, "test")

    cached = None
    if "frozen" in config.arms:
        # The frozen encoder runs in eval mode, so its features are the same for every fraction and seed.
        encoder = encoder_factory().to(device)
        _load_pretrained(encoder, pretrained)
        used = np.flatnonzero(np.isin(pid, np.concatenate([split.train, split.val, split.test])))
        cached = torch.zeros(len(y), encoder.n_features, device=device)
        cached[used] = _features(encoder, get_x, used, config.eval_batch_size)
        del encoder

    rows = []
    runs = [(arm, i, seed) for arm in config.arms for i in range(len(fractions)) for seed in config.seeds]
    bar = tqdm(runs, desc=f"downstream {task}", disable=not config.progress, leave=False)
    for arm, i, seed in bar:
        frac, epochs = fractions[i], config.epochs[i]
        train_idx = np.flatnonzero(np.isin(pid, frac.patients))
        start = time.perf_counter()
        torch.manual_seed(seed)  # the initial weights and dropout masks of this run
        if arm == "frozen":
            module = nn.Linear(cached.shape[1], 1).to(device)
            get = lambda idx: cached[torch.as_tensor(idx, device=device)]  # noqa: E731
            optimizer = torch.optim.Adam(module.parameters(), lr=config.lr_frozen)
        elif arm == "finetuned":
            model = encoder_factory().to(device)
            _load_pretrained(model, pretrained)
            module, get = model, get_x
            head = list(model.classifier.parameters())
            backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
            optimizer = torch.optim.Adam([{"params": backbone, "lr": config.lr_backbone},
                                          {"params": head, "lr": config.lr_head}])
        else:
            model = encoder_factory().to(device)
            module, get = model, get_x
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr_random)
        fit = train_downstream(module, optimizer, get, y, train_idx, val_idx, epochs=epochs, seed=seed,
                               config=config)
        score = _predict(module, get, test_idx, config.eval_batch_size)
        lo, hi = bootstrap_auroc_ci(y[test_idx], score, pid[test_idx], n_boot=config.n_boot, seed=seed)
        rows.append({
            "task": task, "arm": arm, "fraction": frac.fraction, "seed": seed,
            "val_auroc": fit["val_auroc"], "test_auroc": auroc(y[test_idx], score),
            "test_auroc_lo": lo, "test_auroc_hi": hi,
            "n_train_patients": len(frac.patients), "n_train_positives": frac.n_positives,
            "enlarged": frac.enlarged, "n_train_records": len(train_idx),
            "best_epoch": fit["best_epoch"], "epochs_run": fit["epochs_run"], "steps": fit["steps"],
            "seconds": round(time.perf_counter() - start, 3),
        })
        bar.set_postfix(arm=arm, fraction=frac.fraction, test_auroc=f"{rows[-1]['test_auroc']:.3f}")
    return rows


# --------------------------------------------------------------------------------------------------------- reports


def _mean_over_seeds(rows: Sequence[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["arm"], float(r["fraction"])), []).append(r)
    return {
        key: {
            "test_auroc": float(np.mean([r["test_auroc"] for r in g])),
            "test_auroc_lo": float(np.mean([r["test_auroc_lo"] for r in g])),
            "test_auroc_hi": float(np.mean([r["test_auroc_hi"] for r in g])),
            "enlarged": any(r["enlarged"] for r in g),
            "n_train_patients": g[0]["n_train_patients"],
            "n_train_positives": g[0]["n_train_positives"],
            "n_seeds": len(g),
        }
        for key, g in groups.items()
    }


def format_table(rows: Sequence[dict]) -> str:
    """Test AUROC, mean over seeds, one line per task x fraction and one column per arm."""
    means = _mean_over_seeds(rows)
    arms = [a for a in ARMS if any(k[1] == a for k in means)]
    keys = sorted({(k[0], k[2]) for k in means})
    header = f"{'task':<16} {'fraction':>8} {'patients':>8} {'pos':>5} " + " ".join(f"{a:>10}" for a in arms)
    lines = [header, "-" * len(header)]
    any_enlarged = False
    for task, frac in keys:
        cells = [means.get((task, a, frac)) for a in arms]
        first = next(c for c in cells if c is not None)
        mark = "*" if first["enlarged"] else " "
        any_enlarged |= first["enlarged"]
        lines.append(
            f"{task:<16} {frac:>7.0%}{mark} {first['n_train_patients']:>8} {first['n_train_positives']:>5} "
            + " ".join(f"{c['test_auroc']:>10.3f}" if c else f"{'-':>10}" for c in cells)
        )
    n_seeds = sorted({m["n_seeds"] for m in means.values()})
    lines.append(f"test AUROC, mean over {'/'.join(map(str, n_seeds))} seeds")
    if any_enlarged:
        lines.append("* enlarged to the minimum number of positive (and negative) patients")
    return "\n".join(lines)


def write_results(rows: Sequence[dict], run_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``auroc.png`` into ``run_dir``; return their paths.

    The plot has one panel per task: test AUROC against the label fraction (log axis), one line per arm with the
    mean over seeds, and a band between the seeds' mean interval bounds.
    """
    if not rows:
        raise ValueError("no result rows to write")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": run_dir / "results.csv", "json": run_dir / "results.json", "png": run_dir / "auroc.png"}
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps(list(rows), indent=1, default=_json_default))
    _plot(rows, paths["png"])
    return paths


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = _mean_over_seeds(rows)
    tasks = sorted({k[0] for k in means})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for arm in ARMS:
            pts = sorted((k[2], m) for k, m in means.items() if k[0] == task and k[1] == arm)
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1]["test_auroc"] for p in pts], marker="o", label=arm)
            ax.fill_between(x, [p[1]["test_auroc_lo"] for p in pts], [p[1]["test_auroc_hi"] for p in pts],
                            alpha=0.2)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("label fraction")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test AUROC")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
