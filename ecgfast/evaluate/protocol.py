"""The downstream protocol: five arms trained under one early-stopping rule, scored with a paired bootstrap.

For one task, ``run_protocol`` trains a classifier on 1-100% of the training patients in each arm. A task has K
classes: one for a binary task, several for a label group (the PTB-XL benchmark's ``super``, ``rhythm``...), which
trains one multi-label head (K logits, BCE per class) and is scored by its macro AUROC, the mean of its classes'
AUROCs (classes without both outcomes among the test records are skipped and named). A binary task is the case K = 1
of the same code. The arms:

- ``prevalence``: no model; every record scores the training subset's prevalence (AUROC 0.5; its AUPRC is the test
  prevalence, the chance level of AUPRC);
- ``random``: a fresh encoder, everything trained at ``lr_random``;
- ``random_probe``: the same fresh encoder, frozen; a linear head on its (standardised) features at ``lr_probe``;
- ``frozen``: the pretrained encoder frozen; a linear head on its (standardised) features at ``lr_probe``;
- ``finetuned``: the pretrained encoder trained at ``lr_backbone``, a new head at ``lr_head``.

Every trained arm follows the same rule: validate every ``eval_every`` steps (or every epoch), keep the state with
the best validation (macro) AUROC, stop after ``patience`` validations without improvement or at the ``max_steps``
budget, whichever comes first; each row says which (``stopped_by``). Each seed draws its own nested label
fractions, shared by its arms. Test scores of every run are then scored on one shared set of bootstrap replicates of
the test patients, which gives each run's interval, each arm's mean over seeds with its interval, and the paired
differences between arms (``ecgfast.evaluate.metrics``).

An encoder here is any module with ``features(x)`` ((B, L, T) -> (B, F)), ``n_features``, a ``classifier``
Linear(F -> 1) and ``forward(x) = classifier(features(x))``, as the models of ``ecgfast.models`` are; a task of K
classes replaces the classifier with a fresh Linear(F -> K).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .metrics import bootstrap_counts, macro_auroc, patient_scores, replicate_metric, seed_mean_interval
from .splits import (
    BOOTSTRAP_STREAM,
    ORDER_STREAM,
    LabelFraction,
    PatientSplit,
    multi_hot,
    nested_fractions,
    patient_labels,
    rng,
)

__all__ = ["ARMS", "COMPARISONS", "DownstreamConfig", "Evaluation", "train_downstream", "run_protocol"]

ARMS = ("prevalence", "random", "random_probe", "frozen", "finetuned")
PRETRAINED_ARMS = ("frozen", "finetuned")
PROBE_ARMS = ("random_probe", "frozen")
# (arm_a, arm_b): differences arm_a - arm_b reported when both arms ran.
COMPARISONS = (("finetuned", "random"), ("frozen", "random"), ("finetuned", "frozen"),
               ("frozen", "random_probe"), ("finetuned", "random_probe"))
Windows = np.ndarray | Callable[[np.ndarray], np.ndarray]


@dataclass
class DownstreamConfig:
    """How the arms train and how they are scored.

    Training (every arm alike): Adam with the learning rates below, batches of ``batch_size`` records, BCE weighing
    each class's positives by its negatives / positives. Validation (macro) AUROC every ``eval_every`` steps (None:
    once per epoch);
    the best state is kept; a run stops after ``patience`` validations without improvement (None: never), at
    ``max_steps`` steps (None: no budget), or after ``epochs[i]`` epochs for ``fractions[i]`` (None: no cap; the
    paper's 70/50/30/20/20 with ``patience=None`` is its protocol).

    Scoring: ``level`` 'record' scores every ECG, 'patient' one score per patient (the mean of its ECGs' logits,
    positive if any ECG is). ``n_boot`` bootstrap replicates of the test patients, drawn once from ``boot_seed``
    and shared by every arm and seed: a mean over seeds (or a paired difference of two arms, pooled over seeds) is
    computed on each replicate, and its interval covers the sampling of the test patients given the seeds' models.
    With ``resample_seeds`` each replicate also resamples the seeds, so that the interval covers the training
    randomness too (initialisation, which patients were labelled); with few seeds that part is rough. The spread
    over seeds is reported beside the means (``*_seed_sd``). ``alpha`` 0.05 gives 95% intervals.

    ``workers`` > 1 trains runs in that many processes of one thread each (Linux; small networks on CPU train
    faster so than with threads inside one process). ``min_positives`` is the least number of patients of each
    class in a label fraction.
    """

    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.50, 1.0)
    seeds: tuple[int, ...] = (42, 43, 44, 45, 46)
    arms: tuple[str, ...] = ARMS
    lr_random: float = 1e-3
    lr_probe: float = 0.02
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    batch_size: int = 64
    eval_batch_size: int = 256
    eval_every: int | None = None
    patience: int | None = 10
    max_steps: int | None = 5000
    epochs: tuple[int, ...] | None = None
    min_positives: int = 5
    level: str = "record"
    n_boot: int = 1000
    boot_seed: int = 0
    resample_seeds: bool = False
    alpha: float = 0.05
    workers: int = 1
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        self.fractions, self.seeds, self.arms = tuple(self.fractions), tuple(self.seeds), tuple(self.arms)
        if self.epochs is not None:
            self.epochs = tuple(self.epochs)
            if len(self.epochs) != len(self.fractions):
                raise ValueError(f"epochs {self.epochs} must pair with fractions {self.fractions}")
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or not self.arms:
            raise ValueError(f"unknown arms {unknown}; the arms are {ARMS}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.level not in ("record", "patient"):
            raise ValueError(f"level must be 'record' or 'patient', got {self.level!r}")
        for name in ("eval_every", "patience", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.patience is None and self.max_steps is None and self.epochs is None:
            raise ValueError("nothing would stop training: set patience, max_steps or epochs")
        if self.workers < 1 or self.n_boot < 1 or self.batch_size < 1:
            raise ValueError(f"workers, n_boot and batch_size must be >= 1, got {self.workers}, {self.n_boot}, "
                             f"{self.batch_size}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass
class Evaluation:
    """What ``run_protocol`` returns; ``a + b`` joins two tasks' evaluations.

    ``runs``: one row per task x arm x fraction x seed (results.csv). ``summary``: one row per task x fraction x
    arm, means over seeds with intervals. ``differences``: one row per task x fraction x comparison, the paired
    difference arm_a - arm_b. For a task of several classes these are of the macro AUROC (and the mean AUPRC).
    ``classes``: one row per task x fraction x arm x class, that class's AUROC and AUPRC (classes.csv).
    ``predictions``: columns of every validation and test score (predictions.csv).
    """

    runs: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    differences: list[dict] = field(default_factory=list)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[dict] = field(default_factory=list)

    def __add__(self, other: Evaluation) -> Evaluation:
        keys = list(dict.fromkeys([*self.predictions, *other.predictions]))
        predictions = {k: np.concatenate([d[k] for d in (self.predictions, other.predictions) if k in d])
                       for k in keys}
        return Evaluation(self.runs + other.runs, self.summary + other.summary,
                          self.differences + other.differences, predictions, self.classes + other.classes)


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
    """Logits (n, K) of the records ``idx``, in eval mode."""
    module.eval()
    out = [module(get(idx[i:i + batch_size])).reshape(len(idx[i:i + batch_size]), -1).float().cpu()
           for i in range(0, len(idx), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def _features(model: nn.Module, get: Callable[[np.ndarray], torch.Tensor], idx: np.ndarray, n: int,
              batch_size: int) -> torch.Tensor:
    """Eval-mode features of the records ``idx``, in a (n, F) tensor (zero elsewhere)."""
    model.eval()
    out = torch.zeros(n, model.n_features, device=next(model.parameters()).device)
    for i in range(0, len(idx), batch_size):
        out[idx[i:i + batch_size]] = model.features(get(idx[i:i + batch_size])).float()
    return out


def train_downstream(module: nn.Module, optimizer: torch.optim.Optimizer, get: Callable[[np.ndarray], torch.Tensor],
                     y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, seed: int,
                     config: DownstreamConfig, max_epochs: int | None = None,
                     val_metric: Callable[[np.ndarray], float] | None = None) -> dict:
    """Train ``module`` (inputs -> (B, K) logits) on ``train_idx`` under the config's rule; keep its best state.

    ``get`` maps record indices to a batch of inputs on the device (signals, or cached features for the probes);
    ``y`` holds every record's label, (N,) or (N, K) for K classes. ``val_metric`` maps the validation records'
    scores (n, K) to the number to maximise (default: their macro AUROC, see ``macro_auroc``). Each class's
    positives weigh its negatives / positives in the BCE (1 for a class with a single outcome in training, which a
    task of several classes may have). Returns ``val_auroc`` (the best), ``best_step``, ``steps``, ``epochs_run``
    and ``stopped_by`` ('patience', 'budget' or 'epochs'), and leaves the best state in ``module``.
    """
    y = multi_hot(y, "y")
    y_train = y[train_idx]
    n_pos = y_train.sum(axis=0)
    both = (n_pos > 0) & (n_pos < len(y_train))
    if not both.any():
        raise ValueError(f"the training records hold a single class ({int(n_pos[0])} positive of {len(y_train)})"
                         if y.shape[1] == 1 else "no class has both outcomes among the training records")
    val_metric = val_metric or (lambda s: macro_auroc(y[val_idx], s)[0])
    device = next(module.parameters()).device
    weight = np.where(both, (len(y_train) - n_pos) / np.maximum(n_pos, 1), 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, dtype=torch.float32, device=device))
    labels = torch.as_tensor(y, dtype=torch.float32, device=device)
    per_epoch = math.ceil(len(train_idx) / config.batch_size)
    eval_every = config.eval_every or per_epoch
    best = {"val_auroc": -math.inf, "best_step": 0, "state": copy.deepcopy(module.state_dict())}
    bad = steps = epoch = last_eval = 0
    stopped = None

    def validate() -> str | None:
        nonlocal bad, best, last_eval
        last_eval = steps
        val = val_metric(_predict(module, get, val_idx, config.eval_batch_size))
        module.train()
        if val > best["val_auroc"]:
            best, bad = {"val_auroc": val, "best_step": steps, "state": copy.deepcopy(module.state_dict())}, 0
            return None
        bad += 1
        return "patience" if config.patience is not None and bad >= config.patience else None

    module.train()
    while stopped is None:
        order = rng(seed, ORDER_STREAM, epoch).permutation(train_idx)
        for i in range(0, len(order), config.batch_size):
            batch = np.sort(order[i:i + config.batch_size])  # sorted: a store reads nearby records together
            loss = loss_fn(module(get(batch)).reshape(len(batch), -1), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % eval_every == 0:
                stopped = validate()
            if stopped is None and config.max_steps is not None and steps >= config.max_steps:
                stopped = "budget"
            if stopped:
                break
        epoch += 1
        if stopped is None and max_epochs is not None and epoch >= max_epochs:
            stopped = "epochs"
    if last_eval != steps:
        validate()
    module.load_state_dict(best.pop("state"))
    return {**best, "steps": steps, "epochs_run": round(steps / per_epoch, 2), "stopped_by": stopped}


def _load_pretrained(model: nn.Module, pretrained: Mapping[str, torch.Tensor]) -> None:
    # A pretrained checkpoint's classifier was never trained: each arm keeps the fresh one of its seed.
    encoder = {k: v for k, v in pretrained.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"the pretrained state does not fit the encoder: missing {missing}, unexpected {unexpected}")


@dataclass
class _Task:
    """Everything a run of one task needs; worker processes inherit it at fork."""

    read: Callable[[np.ndarray], np.ndarray]
    y: np.ndarray  # int8 (N, K)
    pid: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    used_idx: np.ndarray
    encoder_factory: Callable[[], nn.Module]
    pretrained: Mapping[str, torch.Tensor] | None
    config: DownstreamConfig
    features: dict = field(default_factory=dict)  # ("frozen", None) or ("random_probe", seed) -> (N, F) tensor

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def get_x(self, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.read(idx), dtype=np.float32), device=self.device)

    def encoder(self, seed: int, pretrained: bool) -> nn.Module:
        torch.manual_seed(seed)  # the random arm and the random probe start from the same encoder
        model = self.encoder_factory()
        if model.classifier.out_features != self.y.shape[1]:  # a head of K classes
            model.classifier = nn.Linear(model.n_features, self.y.shape[1])
        model = model.to(self.device)
        if pretrained:
            _load_pretrained(model, self.pretrained)
        return model

    def probe_features(self, arm: str, seed: int) -> torch.Tensor:
        key = (arm, None if arm == "frozen" else seed)  # eval mode: the frozen features serve every seed
        if key not in self.features:
            model = self.encoder(seed, pretrained=arm == "frozen")
            self.features[key] = _features(model, self.get_x, self.used_idx, len(self.y), self.config.eval_batch_size)
        return self.features[key]

    def val_metric(self) -> Callable[[np.ndarray], float]:
        y_val, pid_val = self.y[self.val_idx], self.pid[self.val_idx]
        if self.config.level == "patient":
            def patient_auroc(scores: np.ndarray) -> float:
                _, labels, per_patient = patient_scores(pid_val, y_val, scores[None])
                return macro_auroc(labels, per_patient[0])[0]

            return patient_auroc
        return lambda s: macro_auroc(y_val, s)[0]


def _fit(task: _Task, arm: str, seed: int, frac: LabelFraction, max_epochs: int | None) -> dict:
    """One run: train ``arm`` on ``frac``'s patients; its fit and the logits of the validation and test records."""
    cfg = task.config
    start = time.perf_counter()
    train_idx = np.flatnonzero(np.isin(task.pid, frac.patients))
    scored = np.concatenate([task.val_idx, task.test_idx])
    if arm == "prevalence":
        # A class without one outcome in training (a task of several classes may have one) scores as if it had half
        # a record of it: a finite logit.
        n = len(train_idx)
        p = np.clip(task.y[train_idx].mean(axis=0), 0.5 / n, 1 - 0.5 / n)
        logits = np.tile(np.log(p / (1 - p)), (len(scored), 1))
        fit = {"val_auroc": 0.5, "best_step": 0, "steps": 0, "epochs_run": 0.0, "stopped_by": ""}
    else:
        if arm in PROBE_ARMS:
            feats = task.probe_features(arm, seed)
            # Standardised on the run's training records: a random encoder's features can be orders of magnitude
            # off unit scale, which a head trained at a fixed learning rate could not make up for.
            mean, std = feats[train_idx].mean(0), feats[train_idx].std(0)
            feats = (feats - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))
            torch.manual_seed(seed)
            module = nn.Linear(feats.shape[1], task.y.shape[1]).to(task.device)
            get = lambda idx: feats[torch.as_tensor(idx, device=task.device)]  # noqa: E731
            optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr_probe)
        else:
            module, get = task.encoder(seed, pretrained=arm == "finetuned"), task.get_x
            if arm == "finetuned":
                head = list(module.classifier.parameters())
                backbone = [p for n, p in module.named_parameters() if not n.startswith("classifier.")]
                optimizer = torch.optim.Adam([{"params": backbone, "lr": cfg.lr_backbone},
                                              {"params": head, "lr": cfg.lr_head}])
            else:
                optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr_random)
        fit = train_downstream(module, optimizer, get, task.y, train_idx, task.val_idx, seed=seed, config=cfg,
                               max_epochs=max_epochs, val_metric=task.val_metric())
        logits = _predict(module, get, scored, cfg.eval_batch_size)
    return {**fit, "n_train_records": len(train_idx), "seconds": round(time.perf_counter() - start, 3),
            "val_scores": logits[:len(task.val_idx)], "test_scores": logits[len(task.val_idx):]}


_WORKER_TASK: _Task | None = None  # set before the worker processes fork; they read it, never the parent's copy


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker_fit(args) -> dict:
    return _fit(_WORKER_TASK, *args)


def _run_all(task: _Task, jobs: list[tuple], desc: str) -> list[dict]:
    """Every job's ``_fit``, in worker processes when the config asks for them; results in the jobs' order."""
    from tqdm.auto import tqdm

    global _WORKER_TASK
    cfg = task.config
    bar = tqdm(total=len(jobs), desc=desc, disable=not cfg.progress, leave=False)
    workers = min(cfg.workers, len(jobs))
    if workers <= 1 or not sys.platform.startswith("linux") or task.device.type != "cpu":
        out = []
        for job in jobs:
            out.append(_fit(task, *job))
            bar.update()
        bar.close()
        return out
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _WORKER_TASK = task
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_worker_init) as pool:
            futures = {pool.submit(_worker_fit, job): k for k, job in enumerate(jobs)}
            out: list[dict | None] = [None] * len(jobs)
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                bar.update()
    finally:
        _WORKER_TASK = None
        bar.close()
    return out


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _interval(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return float("nan"), float("nan")
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def run_protocol(task: str, windows: Windows, labels: Sequence, patient_ids: Sequence, split: PatientSplit,
                 encoder_factory: Callable[[], nn.Module], *, pretrained: Mapping[str, torch.Tensor] | None = None,
                 config: DownstreamConfig | None = None, record_ids: Sequence | None = None,
                 classes: Sequence[str] | None = None) -> Evaluation:
    """Run every arm x fraction x seed of one task; score them together.

    Args:
        task: the task's name, copied into the rows.
        windows: the labelled records' input windows, float32 (N, L, T), or a callable mapping record indices to
            them (e.g. ``lambda idx: store.read(idx)``).
        labels: each record's 0/1 label (N,), or its labels of the task's K classes (N, K): one multi-label head.
        patient_ids: each record's patient.
        split: the patient split; each seed draws its label fractions from the split's training patients.
        encoder_factory: returns a fresh encoder (``features``, ``classifier``, ``forward``) on the CPU.
        pretrained: the pretrained encoder's state dict; needed by the ``frozen`` and ``finetuned`` arms.
        config: see DownstreamConfig.
        record_ids: each record's id, for predictions.csv (default: its index).
        classes: the names of the K classes (default: ``(task,)`` for one class, else "0", "1", ...).

    Returns an ``Evaluation``. Its run rows hold ``task``, ``arm``, ``fraction``, ``seed``, ``val_auroc``,
    ``test_auroc`` (``_lo``, ``_hi``), ``test_auprc`` (``_lo``, ``_hi``), ``level``, ``n_train_patients``,
    ``n_train_positives``, ``enlarged``, ``same_as``, ``n_train_records``, ``best_step``, ``steps``,
    ``epochs_run``, ``stopped_by`` and ``seconds``; for several classes the AUROC is the macro AUROC and the AUPRC
    the mean of the classes' AUPRCs, over the classes with both outcomes among the test records (``n_classes`` in
    the summary; the others named in ``skipped_classes``). A fraction whose patients equal a smaller one's (both
    enlarged to ``min_positives``) is trained once and reported under both, ``same_as`` naming the smaller.
    """
    config = config or DownstreamConfig()
    needs = [a for a in config.arms if a in PRETRAINED_ARMS]
    if pretrained is None and needs:
        raise ValueError(f"arms {needs} need a pretrained state dict")
    y = multi_hot(labels, "labels")
    if classes is None:
        classes = (task,) if y.shape[1] == 1 else tuple(str(k) for k in range(y.shape[1]))
    classes = tuple(map(str, classes))
    if len(classes) != y.shape[1]:
        raise ValueError(f"classes names {len(classes)} classes, labels hold {y.shape[1]}")
    pid = np.asarray(patient_ids)
    if len(pid) != len(y):
        raise ValueError(f"patient_ids ({len(pid)}) and labels ({len(y)}) differ in length")
    record_ids = np.arange(len(y)).astype(str) if record_ids is None else np.asarray(record_ids).astype(str)
    if len(record_ids) != len(y):
        raise ValueError(f"record_ids ({len(record_ids)}) and labels ({len(y)}) differ in length")
    in_train = np.isin(pid, split.train)
    train_patients, train_pos = patient_labels(pid[in_train], y[in_train])
    val_idx, test_idx = split.records(pid, "val"), split.records(pid, "test")
    for name, idx in (("validation", val_idx), ("test", test_idx)):
        if not (_both_outcomes(y[idx])).any():
            raise ValueError(f"the {name} records of task {task!r} hold a single class"
                             + ("" if y.shape[1] == 1 else " of each of its classes"))
    used = np.flatnonzero(np.isin(pid, split.patients))
    data = _Task(_as_reader(windows), y, pid, val_idx, test_idx, used, encoder_factory, pretrained, config)
    if "frozen" in config.arms:
        data.probe_features("frozen", 0)  # once, before the workers fork: every run shares it

    fractions = {seed: nested_fractions(train_patients, train_pos, config.fractions,
                                        min_positives=config.min_positives, seed=seed) for seed in config.seeds}
    max_epochs = dict(zip(config.fractions, config.epochs or [None] * len(config.fractions)))
    # The slow runs first, so that parallel workers finish together.
    cost = {"prevalence": 0, "random_probe": 1, "frozen": 1, "random": 3, "finetuned": 2}
    jobs = sorted(((arm, seed, f) for arm in config.arms for seed in config.seeds for f in fractions[seed]
                   if f.same_as is None), key=lambda j: -cost[j[0]] * len(j[2].patients))
    results = dict(zip(((arm, seed, f.fraction) for arm, seed, f in jobs),
                       _run_all(data, [(arm, seed, f, max_epochs[f.fraction]) for arm, seed, f in jobs],
                                f"downstream {task}")))

    runs, val_scores, test_scores = [], [], []
    for arm in config.arms:
        for frac_index, fraction in enumerate(config.fractions):
            for seed in config.seeds:
                f = fractions[seed][frac_index]
                r = results[(arm, seed, f.same_as or f.fraction)]
                runs.append({"task": task, "arm": arm, "fraction": f.fraction, "seed": seed,
                             "val_auroc": r["val_auroc"], "level": config.level,
                             "n_train_patients": len(f.patients), "n_train_positives": f.n_positives,
                             "enlarged": f.enlarged, "same_as": f.same_as, "n_train_records": r["n_train_records"],
                             "best_step": r["best_step"], "steps": r["steps"], "epochs_run": r["epochs_run"],
                             "stopped_by": r["stopped_by"], "seconds": r["seconds"]})
                val_scores.append(r["val_scores"])
                test_scores.append(r["test_scores"])
    test_scores = np.stack(test_scores)
    evaluation = _score(task, classes, runs, test_scores, y[test_idx], pid[test_idx], config)
    evaluation.predictions = _prediction_columns(runs, classes, np.stack(val_scores), test_scores, y, pid,
                                                 record_ids, val_idx, test_idx)
    return evaluation


def _both_outcomes(y: np.ndarray) -> np.ndarray:
    """Which classes (columns of y (n, K)) hold both outcomes."""
    return (y == 1).any(axis=0) & (y == 0).any(axis=0)


def _score(task: str, classes: tuple[str, ...], runs: list[dict], test_scores: np.ndarray, y_test: np.ndarray,
           pid_test: np.ndarray, config: DownstreamConfig) -> Evaluation:
    """Every run's test AUROC and AUPRC on one shared set of bootstrap replicates; seed means; paired differences.

    Per class first (the classes with both outcomes among the test records), then their mean: the macro AUROC, on
    each replicate the mean over the classes that replicate holds both outcomes of. One class: its own values.
    """
    if config.level == "patient":
        pid_test, y_test, test_scores = patient_scores(pid_test, y_test, test_scores)
    counts = bootstrap_counts(pid_test, config.n_boot, config.boot_seed)
    n_seeds = len(config.seeds)
    seed_counts = None
    if config.resample_seeds and n_seeds > 1:
        seed_counts = rng(config.boot_seed, BOOTSTRAP_STREAM, 1).multinomial(
            n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=config.n_boot).astype(np.float64)
    interval_over = "test patients and seeds" if seed_counts is not None else "test patients"
    evaluated = np.flatnonzero(_both_outcomes(y_test))
    skipped = ";".join(classes[c] for c in range(len(classes)) if c not in evaluated)
    ones = np.ones((1, len(y_test)))
    stats, per_class = {}, {}
    for metric in ("auroc", "auprc"):
        point = np.stack([replicate_metric(metric, y_test[:, c], test_scores[:, :, c], ones)[:, 0]
                          for c in evaluated])  # (C, M)
        reps = np.stack([replicate_metric(metric, y_test[:, c], test_scores[:, :, c], counts)
                         for c in evaluated])  # (C, M, R)
        per_class[metric] = (point, reps)
        with warnings.catch_warnings():  # a replicate without both outcomes of any class: NaN, dropped later
            warnings.simplefilter("ignore", RuntimeWarning)
            stats[metric] = (point.mean(axis=0), np.nanmean(reps, axis=0))
        for row, value, rep in zip(runs, *stats[metric]):
            row[f"test_{metric}"] = float(value)
            row[f"test_{metric}_lo"], row[f"test_{metric}_hi"] = _interval(rep, config.alpha)

    def seed_summary(values: np.ndarray, replicates: np.ndarray, metric: str, prefix: str) -> dict:
        mean, lo, hi = seed_mean_interval(values, replicates, seed_counts, alpha=config.alpha)
        return {f"{prefix}{metric}": mean, f"{prefix}{metric}_lo": lo, f"{prefix}{metric}_hi": hi,
                f"{prefix}{metric}_seed_sd": _sd(values)}

    # Rows are arm-major, then fraction, then seed (run_protocol's loops): each (arm, fraction) is n_seeds rows.
    groups = {(r["arm"], r["fraction"]): slice(k, k + n_seeds) for k, r in enumerate(runs) if k % n_seeds == 0}
    summary, class_rows = [], []
    for (arm, fraction), rows in groups.items():
        first = runs[rows.start]
        row = {"task": task, "arm": arm, "fraction": fraction, "n_seeds": n_seeds}
        for metric, (point, reps) in stats.items():
            row.update(seed_summary(point[rows], reps[rows], metric, "test_"))
        row.update({k: first[k] for k in ("level", "n_train_patients", "n_train_positives", "enlarged", "same_as")})
        row.update(n_classes=len(evaluated), skipped_classes=skipped, interval_over=interval_over,
                   budget_hits=sum(r["stopped_by"] == "budget" for r in runs[rows]))
        summary.append(row)
        for j, c in enumerate(evaluated):
            row = {"task": task, "class": classes[c], "arm": arm, "fraction": fraction, "n_seeds": n_seeds,
                   "n_test_positives": int(y_test[:, c].sum()), "n_test": len(y_test)}
            for metric, (point, reps) in per_class.items():
                row.update(seed_summary(point[j, rows], reps[j, rows], metric, "test_"))
            class_rows.append({**row, "level": config.level, "interval_over": interval_over})
    differences = []
    for fraction in config.fractions:
        for arm_a, arm_b in COMPARISONS:
            if (arm_a, fraction) not in groups or (arm_b, fraction) not in groups:
                continue
            a, b = groups[(arm_a, fraction)], groups[(arm_b, fraction)]
            row = {"task": task, "fraction": fraction, "arm_a": arm_a, "arm_b": arm_b}
            for metric, (point, reps) in stats.items():
                mean, lo, hi = seed_mean_interval(point[a] - point[b], reps[a] - reps[b], seed_counts,
                                                  alpha=config.alpha)
                prefix = "diff" if metric == "auroc" else "diff_auprc"
                row.update({f"diff_{metric}": mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi,
                            f"{prefix}_seed_sd": _sd(point[a] - point[b])})
            row.update({"n_seeds": n_seeds, "level": config.level, "enlarged": runs[a.start]["enlarged"],
                        "same_as": runs[a.start]["same_as"], "interval_over": interval_over})
            differences.append(row)
    return Evaluation(runs, summary, differences, classes=class_rows)


def _prediction_columns(runs, classes, val_scores, test_scores, y, pid, record_ids, val_idx, test_idx) -> dict:
    """predictions.csv as columns: one row per run x scored record (validation, then test) x class."""
    idx = np.concatenate([val_idx, test_idx])
    part = np.array(["val"] * len(val_idx) + ["test"] * len(test_idx))
    k = len(classes)
    n = len(idx) * k
    per_run = lambda key: np.repeat(np.array([r[key] for r in runs]), n)  # noqa: E731
    per_record = lambda values: np.tile(np.repeat(values, k), len(runs))  # noqa: E731
    return {"task": per_run("task"), "class": np.tile(np.array(classes), len(idx) * len(runs)),
            "arm": per_run("arm"), "fraction": per_run("fraction"), "seed": per_run("seed"),
            "record_id": per_record(record_ids[idx]), "patient_id": per_record(pid[idx]),
            "split": per_record(part), "label": np.tile(y[idx].reshape(-1), len(runs)),
            "score": np.concatenate([val_scores, test_scores], axis=1).reshape(-1)}
