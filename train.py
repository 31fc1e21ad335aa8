"""Contrastive pretraining of an ECG encoder, then what it buys on labeled tasks when labels are scarce.

    python train.py                                   # the demo: synthetic cohort -> pretrain -> evaluate -> report
    python train.py --seed 1 --vcg-residual           # any setting below as --name value
    ecgfast ingest ../shared/data/cpsc2018 runs/cpsc.zarr --split
    python train.py pretrain --data runs/cpsc.zarr --batch-size 16 --name cpsc
    python train.py embed --data runs/cpsc.zarr --checkpoint runs/cpsc/pretrain.pt --out-features cpsc.npy
    ecgfast ingest ../shared/data/cinc2021 runs/cinc_dx.zarr --labels-from-dx
    python train.py evaluate --data runs/cinc_dx.zarr --tasks dx_426783006 --checkpoint runs/cpsc/pretrain.pt
    python train.py evaluate --data runs/potassium.zarr --tasks "potassium>1" --checkpoint runs/cpsc/pretrain.pt
    python train.py evaluate --data runs/ptbxl.zarr --split folds --tasks super --checkpoint runs/cpsc/pretrain.pt
    python train.py pretrain --data STORE --preset paper
    torchrun --nproc_per_node=8 train.py pretrain --data STORE --preset paper

`pretrain` needs no labels: with tasks labelled in the store, their test patients are held out; without, every record
pretrains; the split holds only patients with a label of the tasks, so every other patient pretrains. A task is a
0/1 label, a label group (one multi-label head, macro AUROC) or a comparison of a float label ("lvef<40"); the
split is random (--seed) or the store's folds (--split folds). `evaluate` and `embed` take the model, width, fs and
window from the checkpoint, which may come from another store; on its own store, a split whose test patients it
pretrained on is refused. Under torchrun --batch-size is the batch of all ranks together. Outputs land in
runs/<name>/ (default name: <preset>-<data>-seed<seed>): config.json, split.json, pretrain.pt, pretrain_log.csv, tb/
(TensorBoard), augmentations.png, results.csv (one row per run), summary.csv, differences.csv, classes.csv (each
class of a task), predictions.csv, results.json (with the provenance), auroc.png and embedding.png. A run folder
made for other data, another preset or seed, and an existing checkpoint, are refused unless --overwrite (or
--resume) says what to do with them. The library does the work: ecgfast.store -> ecgfast.loader (views, augment,
sampling) -> ecgfast.models -> ecgfast.losses, and ecgfast.evaluate for the downstream protocol.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ecgfast.models import MODELS

# ------------------------------------------------------------------------------------------------------ settings


def opt(default, help: str, downstream: str | None = None):
    """A setting with its --help line (the default shown is the demo preset's; other presets' values follow);
    ``downstream`` names the field of ecgfast.evaluate.DownstreamConfig it sets (see downstream_config)."""
    return field(default=default, metadata={"help": help, "downstream": downstream})


@dataclass
class Config:
    # data
    data: str | None = opt(None, "the ECG store to train on (path or fsspec URL); default: the synthetic cohort")
    cache: str = opt("data", "folder where the synthetic cohort is written once and reused")
    patients: int = opt(1000, "synthetic cohort: patients (1-5 ECGs each, 3 on average)")
    seed: int = opt(0, "seeds everything: the synthetic cohort, the split, sampling, augmentation, weights")
    fs: float = opt(50.0, "sampling rate of the views, Hz (with --data: the store's rate; evaluate, embed: the "
                           "checkpoint's)")
    window_s: float = opt(2.5, "length of the views, seconds (evaluate, embed: the checkpoint's)")
    # model
    model: str = opt("dual", "dual: one stream per lead group (V = 2 x copies); single: one per lead (V = 8 x copies)")
    width: float = opt(1 / 32, "channel multiplier of TemporalNet (1 = the paper's 512 features; 1/32 gives 16)")
    dropout: float = opt(0.1, "dropout of the encoder")
    # pretraining
    loss: str = opt("clocs", "contrastive loss")
    temperature: float = opt(0.1, "temperature of the contrastive loss")
    copies: int = opt(2, "augmented copies of each ECG (ntxent: 2)")
    vcg_residual: bool = opt(False, "keep the non-dipolar part of the ECG in the VCG augmentation")
    sampling: str = opt("patient", "patient: P patients x 2 ECGs per batch, so that patient-aware positives meet; "
                                   "uniform: records shuffled one by one (the authors')")
    batch_size: int = opt(128, "pretraining batch, records in all: under torchrun each rank takes --batch-size / "
                               "the number of ranks, and the loss contrasts the whole batch")
    lr: float = opt(1e-3, "Adam learning rate of pretraining")
    adam_eps: float = opt(1e-8, "Adam epsilon of pretraining")
    lr_schedule: str = opt("constant", "pretraining learning rate: constant, or cosine (--lr for --lr-hold-epochs "
                                       "epochs, then a cosine decay to 0 at the last epoch's end, set every step)")
    lr_hold_epochs: int = opt(0, "cosine schedule: epochs at --lr before the decay")
    clip: float = opt(1.0, "gradient norm clip")
    epochs: int = opt(50, "pretraining epochs")
    max_steps: int | None = opt(None, "stop pretraining after this many steps in all (resumable); none: no cap")
    checkpoint_every: int = opt(100, "steps between checkpoints")
    # downstream evaluation (ecgfast.evaluate.DownstreamConfig): every arm trains under one rule, validated every
    # --downstream-eval-every steps, stopped after --downstream-patience validations without a better AUROC or at
    # the --downstream-max-steps budget
    tasks: tuple[str, ...] = opt(("low_lvef", "high_potassium"),
                                 "what to evaluate on, each a label of the store (0/1), a label group (one "
                                 "multi-label head; macro AUROC) or a float label compared with a number when it "
                                 "is evaluated ('lvef<40', 'potassium>=5.5'; < <= > >=); pretrain holds their test "
                                 "patients out")
    split: str = opt("random", "who trains, validates and is scored: random (the labelled patients 60/20/20, "
                               "stratified by the tasks' labels, from --seed) or folds (the store's folds: 1-8 "
                               "train, 9 validate, 10 test; PTB-XL's strat_fold)")
    arms: tuple[str, ...] = opt(("prevalence", "random", "random_probe", "frozen", "finetuned"),
                                "downstream arms to train", "arms")
    fractions: tuple[float, ...] = opt((0.01, 0.05, 0.10, 1.0), "label fractions of the training patients",
                                       "fractions")
    downstream_seeds: int = opt(2, "seeds per arm and fraction, each with its own draw of the labelled patients: "
                                   "--seed, --seed + 1, ... (--preset paper: 42-46)")
    downstream_batch_size: int = opt(64, "downstream batch, records", "batch_size")
    downstream_eval_every: int | None = opt(20, "steps between validations; none: one per epoch", "eval_every")
    downstream_patience: int | None = opt(5, "stop after this many validations without a better val AUROC; none: "
                                             "never", "patience")
    downstream_max_steps: int | None = opt(3000, "step budget of a downstream run; none: no budget", "max_steps")
    downstream_epochs: tuple[int, ...] | None = opt(None, "epoch cap per label fraction (one per --fractions); none: "
                                                          "no cap", "epochs")
    downstream_level: str = opt("record", "score every ECG (record) or one mean score per patient (patient)", "level")
    downstream_workers: int = opt(2, "processes training downstream runs side by side (CPU)", "workers")
    n_boot: int = opt(1000, "bootstrap replicates of the test patients, shared by every arm and seed", "n_boot")
    lr_random: float = opt(1e-3, "learning rate of the randomly initialized arm", "lr_random")
    lr_probe: float = opt(0.02, "learning rate of the linear head of the frozen and random_probe arms", "lr_probe")
    lr_backbone: float = opt(1e-4, "learning rate of the fine-tuned arm's encoder", "lr_backbone")
    lr_head: float = opt(0.02, "learning rate of the fine-tuned arm's head", "lr_head")
    # run
    out: str = opt("runs", "folder of the run folders")
    name: str | None = opt(None, "run folder under --out; default: <preset>-<data>-seed<seed>")
    checkpoint: str | None = opt(None, "evaluate, embed: the pretrained checkpoint (default: the run's pretrain.pt)")
    resume: bool = opt(False, "pretrain: continue the run's checkpoint")
    overwrite: bool = opt(False, "replace what train.py wrote in the run folder (a checkpoint evaluate or embed "
                                 "reads is kept), or embed's --out-features file")
    device: str = opt("auto", "auto (CUDA when there is one), cpu, cuda or cuda:N")
    threads: int | None = opt(None, "augmentation threads; none: every core")
    torch_threads: int | None = opt(1, "PyTorch threads of this process; none: PyTorch's choice (every core). The "
                                       "demo's tiny network computes faster on one thread beside the augmentation's")
    preset: str = opt("demo", "the settings every option starts from (see presets below)")


PRESETS = {  # name: (what it is for, the settings it changes)
    "demo": ("the default: the synthetic cohort at 50 Hz, pretraining and the downstream protocol (five arms, four "
             "label fractions, two seeds) in under 10 minutes on a 2-core CPU", {}),
    "paper": ("Dade et al.: 8 leads at 500 Hz, 5 s windows, two augmented copies, dual stream, CLOCS, uniform "
              "sampling (a GPU's work)",
              dict(fs=500.0, window_s=5.0, width=1.0, dropout=0.5, batch_size=512, lr=1e-4, adam_eps=1e-4, epochs=200,
                   lr_schedule="cosine", lr_hold_epochs=50, sampling="uniform", downstream_batch_size=512,
                   fractions=(0.01, 0.05, 0.10, 0.50, 1.0), downstream_epochs=(70, 50, 30, 20, 20), downstream_seeds=5,
                   downstream_eval_every=None, downstream_max_steps=None, downstream_patience=None,
                   downstream_workers=1, torch_threads=None)),
    "micro": ("seconds, for tests: the same code path at a tiny size",
              dict(patients=60, fs=50.0, window_s=2.0, width=1 / 32, batch_size=16, epochs=1, checkpoint_every=2,
                   sampling="uniform",
                   fractions=(0.1, 1.0), downstream_seeds=1, downstream_eval_every=2, downstream_patience=2,
                   downstream_max_steps=4, downstream_workers=1, n_boot=200, tasks=("low_lvef",))),
}
PAPER_SEEDS = (42, 43, 44, 45, 46)
SYNTH_SECONDS = 10.0  # the synthetic cohort's ECGs
COMMANDS = ("demo", "pretrain", "evaluate", "embed")
LOSSES = ("clocs", "supcon", "ntxent")
SAMPLING = ("uniform", "patient")
SPLITS = ("random", "folds")
LR_SCHEDULES = ("constant", "cosine")
# evaluate and embed read these from the checkpoint; a different value on the command line is refused.
CHECKPOINT_SETTINGS = ("model", "width", "fs", "window_s")
# A resumed pretraining follows the same trajectory only with these unchanged.
RESUME_SETTINGS = ("model", "width", "dropout", "fs", "window_s", "loss", "temperature", "copies", "vcg_residual",
                   "sampling", "batch_size", "lr", "adam_eps", "lr_schedule", "lr_hold_epochs", "clip", "seed",
                   "patients")
# Everything train.py writes in a run folder (--overwrite removes these and nothing else).
RUN_OUTPUTS = ("config.json", "split.json", "pretrain.pt", "pretrain.tmp", "pretrain_log.csv", "tb",
               "augmentations.png", "results.csv", "summary.csv", "differences.csv", "classes.csv", "predictions.csv",
               "results.json", "auroc.png", "embedding.png")

# ------------------------------------------------------------------------------------------------------ the parts


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def show(value) -> str:
    """A setting as it is typed on the command line."""
    if isinstance(value, (tuple, list)):
        return " ".join(map(show, value))
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def data_identity(cfg: Config) -> tuple[str, str]:
    """The data a run is made for: (the tag in default run names, the full identity kept in config.json)."""
    if cfg.data is None:
        return (f"synth-p{cfg.patients}-{cfg.fs:g}hz",
                f"synthetic cohort: {cfg.patients} patients, seed {cfg.seed}, {cfg.fs:g} Hz")
    stem = Path(cfg.data.rstrip("/")).name.removesuffix(".zarr")
    return stem, cfg.data.rstrip("/") if "://" in cfg.data else str(Path(cfg.data).resolve())


def run_dir(cfg: Config) -> Path:
    return Path(cfg.out) / (cfg.name or f"{cfg.preset}-{data_identity(cfg)[0]}-seed{cfg.seed}")


def device_of(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
            torch.device("cpu")
    return torch.device(cfg.device)


def open_data(cfg: Config):
    """The store to train on: ``cfg.data``, or the synthetic cohort at the run's rate (written once, then reused)."""
    from ecgfast.store import ECGStore

    if cfg.data is not None:
        return ECGStore.open(cfg.data)
    path = Path(cfg.cache) / f"synth-p{cfg.patients}-seed{cfg.seed}-{cfg.fs:g}hz.zarr"
    if not (path / "zarr.json").exists():
        from ecgfast.synth import write_cohort

        tmp = path.with_name(path.name + ".partial")
        write_cohort(tmp, cfg.patients, fs=cfg.fs, seconds=SYNTH_SECONDS, leads=12, seed=cfg.seed, overwrite=True)
        tmp.rename(path)  # a cohort interrupted half-way is rebuilt, never reused
    return ECGStore.open(path)


def make_model(cfg: Config) -> torch.nn.Module:
    return MODELS[cfg.model](width=cfg.width, dropout=cfg.dropout)


def window(cfg: Config) -> int:
    return int(round(cfg.window_s * cfg.fs))


def load_split(cfg: Config, store, path: Path):
    """The patient split of the tasks, kept in the run's split.json; None when there is no task to hold test patients
    out for. It holds the patients with a label of one of the tasks only, so that every other patient pretrains; it
    is drawn at random from --seed or read from the store's folds (--split), and it is bound to the store it was
    drawn on: a split.json of another store is refused."""
    from ecgfast.evaluate import PatientSplit, fold_split, labelled_patient_split, resolve_tasks, store_identity

    file = path / "split.json"
    identity = store_identity(store)
    if file.exists() and not cfg.overwrite:
        split = PatientSplit.from_json(file.read_text())
        split.check_store(identity, source=str(file), fix="choose another --name, or pass --overwrite to start this "
                                                          "run again on this store")
        if split.method != cfg.split:
            raise ValueError(f"--split {cfg.split}: {file} is a {split.method} split: pass --split {split.method}, "
                             f"evaluate in another run (--name), or pass --overwrite to start this one again")
        new = [t for t in cfg.tasks if split.tasks and t not in split.tasks]
        if new:
            raise ValueError(f"--tasks {show(cfg.tasks)}: {file} was drawn for {show(split.tasks)}, so the test "
                             f"patients of {', '.join(new)} were not held out of this run's pretraining: evaluate "
                             f"{', '.join(new)} in another run (--name), or pass --overwrite to start this one again")
        return split
    if not cfg.tasks:
        return None
    labels = {task.name: task.labels for task in resolve_tasks(store, cfg.tasks)}
    if cfg.split == "folds":
        return fold_split(store.patient_ids, store.folds, labels, store=identity)
    return labelled_patient_split(store.patient_ids, labels, seed=cfg.seed, store=identity)


def contrastive_loss(cfg: Config, z: torch.Tensor, patient_id: torch.Tensor, gather: bool) -> torch.Tensor:
    from ecgfast.losses import clocs_loss, ntxent_loss, supcon_loss

    opts = dict(temperature=cfg.temperature, gather=gather)
    if cfg.loss == "clocs":
        return clocs_loss(z, patient_id, **opts)
    if cfg.loss == "supcon":
        return supcon_loss(z, patient_id, **opts)
    # ntxent: copy 1 against copy 2 of each stream (or lead), averaged over them
    s = z.shape[1] // cfg.copies
    return sum(ntxent_loss(z[:, [k, s + k]], **opts) for k in range(s)) / s


class Embedder(torch.nn.Module):
    """``model.embed`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def view_spec(cfg: Config):
    from ecgfast.leads import LEADS8
    from ecgfast.views import ViewSpec

    return ViewSpec(leads=LEADS8, fs=cfg.fs, window=window(cfg), copies=cfg.copies)


def make_sampler(cfg: Config, store, split):
    """This rank's batches of every record outside the split's test patients (all records without a split)."""
    from ecgfast.augment import Augment
    from ecgfast.sampling import PatientBatchSampler

    rank, world = rank_and_world()
    exclude = None if split is None else np.isin(store.patient_ids, split.test)
    opts = dict(augment=Augment.paper(keep_residual=cfg.vcg_residual), batch_size=cfg.batch_size // world,
                seed=cfg.seed, rank=rank, world_size=world, mode=cfg.sampling, exclude=exclude)
    try:
        return PatientBatchSampler.from_store(store, view_spec(cfg), **opts)
    except ValueError:
        # Built again keeping a short last batch: its own error, if it has one, is about the data; otherwise the only
        # fault was a batch larger than the records, which train.py names by its option.
        sampler = PatientBatchSampler.from_store(store, view_spec(cfg), **opts, drop_last=False)
        per_rank = f" ({cfg.batch_size // world} on each of {world} ranks)" if world > 1 else ""
        left_out = "".join(f"; {n} {why}" for n, why in ((sampler.n_excluded, "held out as test patients"),
                                                          (sampler.n_short, "shorter than the window"),
                                                          (sampler.n_missing_leads, "missing a lead")) if n)
        raise ValueError(f"--batch-size {cfg.batch_size}{per_rank} is more than the {sampler.n_eligible} records "
                         f"pretraining can use (of {len(store)}{left_out}): pass --batch-size "
                         f"{sampler.n_eligible // world * world} or less") from None


class PretrainLog:
    """What pretraining reports, on rank 0 only: pretrain_log.csv (one row per step), TensorBoard scalars and the
    progress bar. A fresh run starts both logs anew; a resumed one keeps the rows up to its checkpoint's step."""

    COLUMNS = ["step", "epoch", "loss", "ecgs_per_s", "data_wait_s", "compute_s"]

    def __init__(self, path: Path, step: int, total: int, *, resumed: bool, active: bool):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.active = active
        self.bar = tqdm(total=total, initial=step, desc="pretrain", disable=not active, unit="step")
        if not active:
            return
        log_path = path / "pretrain_log.csv"
        rows = list(csv.reader(open(log_path, newline=""))) if resumed and log_path.exists() else []
        self.file = open(log_path, "w", newline="")
        self.csv = csv.writer(self.file)
        self.csv.writerows([self.COLUMNS] + [r for r in rows[1:] if r and int(r[0]) <= step])
        if not resumed:
            shutil.rmtree(path / "tb", ignore_errors=True)
        self.tb = SummaryWriter(path / "tb", purge_step=step)

    def record(self, step: int, epoch: int, loss: torch.Tensor, ecgs: int, wait: float, compute: float) -> None:
        if not self.active:
            return
        loss, seconds = loss.item(), wait + compute
        self.csv.writerow([step, epoch, f"{loss:.5f}", f"{ecgs / seconds:.1f}", f"{wait:.4f}", f"{compute:.4f}"])
        if step % 10 == 0:
            self.file.flush()
        self.tb.add_scalar("pretrain/loss", loss, step)
        self.tb.add_scalar("pretrain/ecgs_per_s", ecgs / seconds, step)
        self.tb.add_scalar("pretrain/data_wait_fraction", wait / seconds, step)
        self.bar.update()
        self.bar.set_postfix(loss=f"{loss:.3f}", ecgs_s=f"{ecgs / seconds:.0f}", wait=f"{wait / seconds:.0%}")

    def close(self) -> None:
        self.bar.close()
        if self.active:
            self.file.close()
            self.tb.close()


def save_checkpoint(file: Path, cfg: Config, model, opt, loader, step: int, origin: dict) -> None:
    """The pretraining state, written whole or not at all (a temporary file, then a rename). ``origin``: the store it
    pretrains on and the patients held out of it (see check_held_out)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
             "step": step, "data": data_identity(cfg)[1], "config": dataclasses.asdict(cfg), "pretrained_on": origin}
    torch.save(state, file.with_suffix(".tmp"))
    file.with_suffix(".tmp").replace(file)


def learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """The pretraining learning rate of update ``step`` (0-based): --lr, or under --lr-schedule cosine --lr for
    --lr-hold-epochs epochs, then a half cosine that reaches 0 at the end of epoch --epochs (what Dade et al.'s
    schedule meant to do; see the README)."""
    hold, total = cfg.lr_hold_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    if cfg.lr_schedule == "constant" or step < hold:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - hold) / max(total - hold, 1))))


def pretrain(cfg: Config, store, sampler, path: Path, resume: dict | None, split) -> Path:
    """Contrastive pretraining on the sampler's records, from ``resume`` (a checkpoint) if given; returns the
    checkpoint's path. ``split``'s test patients are the ones the sampler holds out (None: nobody)."""
    from ecgfast.augment import Augment
    from ecgfast.evaluate import store_identity
    from ecgfast.loader import ECGLoader

    distributed = torch.distributed.is_initialized()
    rank, world = rank_and_world()
    device = device_of(cfg)
    loader = ECGLoader(store, view_spec(cfg), Augment.paper(keep_residual=cfg.vcg_residual),
                       batch_size=cfg.batch_size // world, sampler=sampler, device=device, threads=cfg.threads,
                       seed=cfg.seed)
    origin = {"store": store_identity(store), "held_out": [] if split is None else split.test.tolist()}

    model = make_model(cfg).to(device)
    model.classifier.requires_grad_(False)  # the downstream head has no part in pretraining (DDP insists)
    embed = Embedder(model)
    if distributed:  # DDP reduces gradients through hooks on forward(), so embed() is wrapped as a forward()
        embed = torch.nn.parallel.DistributedDataParallel(embed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=cfg.adam_eps)
    ckpt_path = path / "pretrain.pt"
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        loader.load_state_dict(resume["loader"])
    step = loader.state_dict()["epoch"] * len(loader) + loader.state_dict()["step"]
    total = cfg.epochs * len(loader) if cfg.max_steps is None else min(cfg.epochs * len(loader), cfg.max_steps)
    log = PretrainLog(path, step, total, resumed=resume is not None, active=rank == 0)
    model.train()
    while step < total:
        tic = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            # Dropout depends on the step alone, so a resumed run follows the uninterrupted run's trajectory.
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = embed(batch["x"])
            loss = contrastive_loss(cfg, z, batch["patient_id"], gather=distributed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            for group in opt.param_groups:  # from the step alone: a resumed run continues the schedule
                group["lr"] = learning_rate(cfg, step, len(loader))
            opt.step()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done = time.perf_counter()
            log.record(step, loader.state_dict()["epoch"], loss, len(batch["index"]) * world, got - tic, done - got)
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step >= total):
                save_checkpoint(ckpt_path, cfg, model, opt, loader, step, origin)
            if step >= total:
                break
            tic = time.perf_counter()
    if rank == 0:
        save_checkpoint(ckpt_path, cfg, model, opt, loader, step, origin)
    log.close()
    return ckpt_path


def center_windows(store, idx: np.ndarray, n: int) -> np.ndarray:
    """The middle ``n`` valid samples of each record (the downstream input), float32 mV (B, 8, n)."""
    from ecgfast.leads import LEADS8

    x = store.read(idx, leads=LEADS8)
    starts = np.clip((np.asarray(store.lengths)[idx] - n) // 2, 0, x.shape[-1] - n)
    return np.stack([x[b, :, s:s + n] for b, s in enumerate(starts)])


def checkpoint_file(cfg: Config, path: Path) -> Path:
    return Path(cfg.checkpoint) if cfg.checkpoint else path / "pretrain.pt"


def checkpoint_settings(cfg: Config, explicit: set[str], file: Path, given: bool):
    """The checkpoint ``file`` (train.py's, or Dade et al.'s released files: an ecgfast.models.Checkpoint) and
    ``cfg`` with its model, width, fs and window; a different value given on the command line is refused, naming
    both. ``given``: the file was named by --checkpoint (else it is the run's own)."""
    from ecgfast.models import load_checkpoint

    if not file.is_file():
        raise ValueError(f"--checkpoint {file}: no such file" if given else
                         f"no pretrained checkpoint at {file}: pass --checkpoint FILE, or run `python train.py "
                         f"pretrain` with the same options first")
    ckpt = load_checkpoint(file)  # a file that does not fit its architecture is a ValueError naming the tensors
    saved = {**ckpt.settings, "model": ckpt.kind, "width": ckpt.width}
    for key in CHECKPOINT_SETTINGS:
        if key in explicit and getattr(cfg, key) != saved[key]:
            what = f"a {saved[key]}-stream network" if key == "model" else f"{flag(key)} {show(saved[key])}"
            raise ValueError(f"{flag(key)} {show(getattr(cfg, key))} conflicts with the checkpoint {file}, which was "
                             f"pretrained as {what}: omit {flag(key)} (evaluate and embed take it from the "
                             f"checkpoint)")
    cfg = dataclasses.replace(cfg, **{key: saved[key] for key in CHECKPOINT_SETTINGS})
    print(f"checkpoint {file} ({ckpt.source}): --model {cfg.model} --width {cfg.width:g} --fs {cfg.fs:g} "
          f"--window-s {cfg.window_s:g}")
    return cfg, ckpt


def check_held_out(cfg: Config, file: Path, source: str, split) -> None:
    """evaluate: no test patient of the split may have pretrained the checkpoint. A train.py checkpoint records the
    store it pretrained on and the patients it held out: on that store every test patient must be one of them. On
    another store (or with Dade et al.'s weights, pretrained on their own data) there is nothing to compare: the
    split is this store's, and its patients count as unseen."""
    saved = torch.load(file, map_location="cpu", weights_only=True) if source == "ecgfast" else {}
    origin = saved.get("pretrained_on")
    if origin is None and source == "ecgfast":
        print(f"{file} does not record which patients pretrained it (it predates that record): the split's test "
              f"patients are not checked against them")
        return
    if origin is None or origin["store"]["fingerprint"] != split.store["fingerprint"]:
        where = origin["store"]["location"] if origin else "Dade et al.'s own data"
        print(f"the checkpoint was pretrained on {where}; the split is drawn on the patients of "
              f"{cfg.data or 'the synthetic cohort'}")
        return
    seen = np.setdiff1d(split.test, origin["held_out"])
    if len(seen):
        then = saved["config"]
        raise ValueError(f"--tasks {show(cfg.tasks)}: {len(seen)} of the {len(split.test)} test patients of this "
                         f"{split.method} split pretrained the checkpoint {file}, which held {len(origin['held_out'])} "
                         f"patients of this store out (--tasks {show(then.get('tasks', ()))} --split "
                         f"{then.get('split', 'random')} --seed {then.get('seed')}): evaluate with those, or pretrain "
                         f"holding these tasks' test patients out")


def downstream_config(cfg: Config):
    """The downstream protocol's settings: every Config field marked ``downstream`` sets the DownstreamConfig field
    it names; the seeds follow --seed (the paper's 42-46 with --preset paper)."""
    from ecgfast.evaluate import DownstreamConfig

    values = {f.metadata["downstream"]: getattr(cfg, f.name) for f in dataclasses.fields(Config)
              if f.metadata.get("downstream")}
    seeds = PAPER_SEEDS[:cfg.downstream_seeds] if cfg.preset == "paper" else \
        tuple(cfg.seed + k for k in range(cfg.downstream_seeds))
    return DownstreamConfig(**values, seeds=seeds, device=str(device_of(cfg)))


def evaluate(cfg: Config, store, split, path: Path, pretrained: dict, checkpoint: Path) -> list[dict]:
    """The downstream protocol for every task: the arms x label fractions x seeds; writes and prints the results,
    the predictions and their provenance, and the embedding map."""
    from ecgfast.evaluate import format_table, provenance, resolve_tasks, run_protocol, write_results

    config = downstream_config(cfg)
    evaluation = None
    tasks = resolve_tasks(store, cfg.tasks)
    for task in tasks:
        known = np.flatnonzero(task.known)
        pid = np.asarray(store.patient_ids)[known]
        # The demo's records fit in memory; a large store is read batch by batch instead.
        windows = center_windows(store, known, window(cfg)) if len(known) <= 50_000 else \
            (lambda idx, known=known: center_windows(store, known[idx], window(cfg)))
        result = run_protocol(task.name, windows, task.labels[known], pid, split, lambda: make_model(cfg),
                              pretrained=pretrained, config=config, record_ids=np.asarray(store.record_ids)[known],
                              classes=task.classes)
        evaluation = result if evaluation is None else evaluation + result
    write_results(evaluation, path, provenance=provenance(checkpoint=checkpoint, store=split.store, split=split,
                                                          config=dataclasses.asdict(cfg)))
    embedding_map(cfg, store, split, path / "embedding.png", pretrained, tasks)
    print(format_table(evaluation))
    print(f"results: {path / 'results.csv'} (per run), summary.csv, differences.csv, classes.csv, predictions.csv, "
          f"results.json; plots: auroc.png, embedding.png")
    return evaluation.runs


@torch.no_grad()
def embedding_map(cfg: Config, store, split, file: Path, pretrained: dict, tasks) -> None:
    """The frozen features of the test patients' ECGs, pretrained beside randomly initialised, in two dimensions
    (PCA) and coloured by each task's label (a task of several classes: by its 4 most frequent among them)."""
    from ecgfast.evaluate import plot_embedding

    test = split.records(store.patient_ids, "test")
    x = torch.from_numpy(center_windows(store, test, window(cfg)))
    features = {}
    for name, state in (("pretrained", pretrained), ("random", None)):
        torch.manual_seed(cfg.seed)
        model = make_model(cfg)
        if state is not None:
            model.load_state_dict(state)
        features[name] = model.eval().features(x).numpy()
    labels = {}
    for task in tasks:
        y = task.labels[test]
        for c in np.argsort(-np.nan_to_num(y).sum(axis=0), kind="stable")[:4]:
            labels[task.classes[c]] = y[:, c]
    plot_embedding(features, labels, file, title=f"{len(test)} test ECGs: frozen features")


def augmentation_gallery(cfg: Config, store, file: Path, record: int = 0, views: int = 3) -> None:
    """One ECG's window and ``views`` augmented views of it as pretraining draws them (the window held in place, so
    that what the augmentation does is what differs)."""
    from ecgfast.augment import Augment, augment_batch
    from ecgfast.evaluate import plot_views

    spec = dataclasses.replace(view_spec(cfg), copies=views)
    raw = store.read_block(record, record + 1, raw=True)
    common = dict(gain_uv=store.gain_uv, store_leads=store.lead_names, seed=cfg.seed, epoch=0, positions=[0])
    lengths = np.asarray(store.lengths)[record:record + 1]
    original = augment_batch(raw, lengths, spec=dataclasses.replace(spec, copies=1), augment=Augment(), **common)
    augment = dataclasses.replace(Augment.paper(keep_residual=cfg.vcg_residual), crop=None)
    augmented = augment_batch(raw, lengths, spec=spec, augment=augment, **common)
    plot_views(original[0, 0], augmented[0], spec.leads, cfg.fs, file,
               title=f"{store.record_ids[record]}: VCG rotation and scaling, then half of each lead zeroed")


@torch.no_grad()
def embed_store(cfg: Config, store, pretrained: dict, out: Path) -> None:
    """Encoder features (512 per record at width 1, from the middle window) of every record of the store, as .npy."""
    from tqdm.auto import tqdm

    model = make_model(cfg)
    model.load_state_dict(pretrained)
    model.eval()
    n, block = len(store), store.chunk_records
    out.parent.mkdir(parents=True, exist_ok=True)
    feats = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, model.n_features))
    for start in tqdm(range(0, n, block), desc="embed", unit="block"):
        idx = np.arange(start, min(start + block, n))
        feats[idx] = model.features(torch.from_numpy(center_windows(store, idx, window(cfg)))).numpy()
    feats.flush()
    out.with_suffix(".record_ids.txt").write_text("\n".join(map(str, store.record_ids)) + "\n")
    print(f"wrote {n} x {model.n_features} features to {out} (rows in the order of {out.stem}.record_ids.txt)")


# ------------------------------------------------------------------------------------------------------ the checks


def check_options(command: str, cfg: Config, args: argparse.Namespace) -> None:
    """Everything that can be said about the options alone, before any data is touched."""
    def need(ok: bool, key: str, what: str):
        if not ok:
            value = getattr(cfg, key)
            raise ValueError(f"{flag(key)}{'' if isinstance(value, bool) else ' ' + show(value)}: {what}")

    for key in ("patients", "batch_size", "epochs", "checkpoint_every", "copies", "downstream_seeds"):
        need(getattr(cfg, key) >= 1, key, "must be 1 or more")
    for key in ("fs", "window_s", "width", "temperature", "lr", "adam_eps", "clip", "lr_random", "lr_probe",
                "lr_backbone", "lr_head"):
        need(getattr(cfg, key) > 0, key, "must be positive")
    for key in ("downstream_batch_size", "downstream_workers", "n_boot"):
        need(getattr(cfg, key) >= 1, key, "must be 1 or more")
    for key in ("max_steps", "downstream_max_steps", "downstream_patience", "downstream_eval_every", "threads",
                "torch_threads"):
        need(getattr(cfg, key) is None or getattr(cfg, key) >= 1, key, "must be 1 or more (or none)")
    need(0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)")
    need(cfg.lr_hold_epochs >= 0, "lr_hold_epochs", "must be 0 or more")
    need(cfg.batch_size >= 2, "batch_size", "contrastive pretraining needs 2 records or more per batch")
    world = int(os.environ.get("WORLD_SIZE", 1))
    need(cfg.batch_size % world == 0, "batch_size", f"is the batch of all {world} ranks together and must divide "
                                                    f"among them: pass a multiple of {world}, e.g. "
                                                    f"{max(world, cfg.batch_size // world * world)}")
    need(cfg.loss != "ntxent" or cfg.copies == 2, "copies", "--loss ntxent contrasts exactly 2 copies: pass --copies 2")
    need(all(0 < f <= 1 for f in cfg.fractions), "fractions", "each must be in (0, 1]")
    if cfg.downstream_epochs is not None:
        need(all(e >= 1 for e in cfg.downstream_epochs), "downstream_epochs", "each must be 1 or more")
        need(len(cfg.downstream_epochs) == len(cfg.fractions), "downstream_epochs",
             f"needs one value per --fractions value ({len(cfg.fractions)} of them: {show(cfg.fractions)})")
    need(cfg.downstream_patience is not None or cfg.downstream_max_steps is not None
         or cfg.downstream_epochs is not None, "downstream_patience",
         "with --downstream-max-steps none and no --downstream-epochs nothing would stop a downstream run")
    from ecgfast.evaluate import ARMS

    unknown = [a for a in cfg.arms if a not in ARMS]
    need(not unknown and len(cfg.arms) > 0, "arms", f"the arms are {', '.join(ARMS)}")
    need(cfg.downstream_level in ("record", "patient"), "downstream_level", "must be record or patient")
    if cfg.device != "auto":
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise ValueError(f"--device {cfg.device}: must be auto, cpu, cuda or cuda:N") from None
        need(device.type in ("cpu", "cuda"), "device", "must be auto, cpu, cuda or cuda:N")
        need(device.type != "cuda" or torch.cuda.is_available(), "device",
             "this machine has no CUDA device: pass --device cpu (or auto)")
    if command in ("demo", "pretrain"):
        need(cfg.checkpoint is None, "checkpoint", f"{command} writes the run's own pretrain.pt; --checkpoint is for "
                                                   f"evaluate and embed")
    else:
        need(not cfg.resume, "resume", "only pretrain (and the demo) resume a checkpoint")
    if command in ("demo", "evaluate"):
        need(len(cfg.tasks) > 0, "tasks", f"{command} needs at least one labelled task")
    need(Path(cfg.out).suffix != ".npy", "out", "is the folder of the run folders; embed writes its features to "
                                                "--out-features FILE.npy")
    if command == "embed" and Path(args.out_features).exists() and not cfg.overwrite:
        raise ValueError(f"--out-features {args.out_features} exists: pass --overwrite to replace it, or another "
                         f"--out-features")


def check_data(command: str, cfg: Config, explicit: set[str], store) -> Config:
    """The options against the data (``store``, or None for the synthetic cohort, which is checked before it is made):
    its rate, the records' lengths, the labels. Returns the settings to use."""
    from ecgfast import synth
    from ecgfast.evaluate import resolve_tasks, unknown_tasks

    where = cfg.data or "the synthetic cohort"
    fs = cfg.fs if store is None else float(store.fs)
    longest = round(SYNTH_SECONDS * fs) if store is None else int(np.max(store.lengths, initial=0))
    labels = sorted(synth.LABELS) if store is None else store.label_names
    groups = {} if store is None else store.label_groups
    if fs != cfg.fs:
        if command in ("evaluate", "embed"):
            raise ValueError(f"the checkpoint was pretrained on {cfg.fs:g} Hz views but {where} holds {fs:g} Hz "
                             f"records: use a store at {cfg.fs:g} Hz (ecgfast ingest --fs {cfg.fs:g}) or a checkpoint "
                             f"pretrained at {fs:g} Hz")
        if "fs" in explicit:
            raise ValueError(f"--fs {cfg.fs:g}: {where} holds {fs:g} Hz records: omit --fs (the views take the "
                             f"store's rate) or ingest the records again with `ecgfast ingest --fs {cfg.fs:g}`")
        if cfg.preset != "demo":
            print(f"--preset {cfg.preset} is for {cfg.fs:g} Hz; {where} holds {fs:g} Hz records, and the views take "
                  f"the store's rate")
        cfg = dataclasses.replace(cfg, fs=fs)
    if window(cfg) > longest:
        fix = "pass a shorter --window-s" if command in ("demo", "pretrain") else \
            "use a checkpoint pretrained on shorter windows"
        raise ValueError(f"--window-s {cfg.window_s:g} needs {window(cfg)} samples at {cfg.fs:g} Hz but the longest "
                         f"record of {where} has {longest} ({longest / cfg.fs:g} s): {fix}")
    missing = unknown_tasks(cfg.tasks, labels, groups) if command != "embed" else []
    if missing and (command != "pretrain" or "tasks" in explicit):
        listed = ", ".join(labels[:12]) + (f" and {len(labels) - 12} more (`ecgfast info` lists them)"
                                           if len(labels) > 12 else "")
        listed += f"; its label groups: {', '.join(groups)}" if groups else ""
        fix = "pretrain needs no labels: pass --tasks without a name to pretrain on every record" \
            if command == "pretrain" else "pass --tasks with labels or groups it has (or a comparison of a label)"
        raise ValueError(f"--tasks {show(cfg.tasks)}: {where} has no label {', '.join(missing)} (its labels: "
                         f"{listed or 'none'}); {fix}")
    if missing:  # pretrain with the preset's tasks on a store that lacks them (none left: see run())
        cfg = dataclasses.replace(cfg, tasks=tuple(t for t in cfg.tasks if t not in missing))
        if cfg.tasks:
            print(f"{where} has no label {', '.join(missing)}: only the test patients of {show(cfg.tasks)} are held "
                  f"out of pretraining")
    if store is not None and cfg.tasks and command != "embed":
        try:
            resolve_tasks(store, cfg.tasks)
        except ValueError as err:
            raise ValueError(f"--tasks {show(cfg.tasks)}: {err}") from None
    if cfg.split == "folds" and cfg.tasks and command != "embed" and (store is None or (store.folds < 0).all()):
        raise ValueError(f"--split folds: {where} holds no folds (PTB-XL's ingest stores its strat_fold): pass "
                         f"--split random")
    return cfg


def check_run_folder(command: str, cfg: Config, path: Path, data_id: str) -> None:
    """A run folder holds one run: refuse one made for other data, another preset or seed, and an existing
    checkpoint, unless --overwrite (or --resume) says what to do with them."""
    if command == "embed" or not path.exists():
        return
    ours = {"data_id": data_id, "preset": cfg.preset, "seed": cfg.seed}
    config = path / "config.json"
    theirs = json.loads(config.read_text()) if config.exists() else None
    if not cfg.overwrite:
        if theirs is None and any((path / name).exists() for name in RUN_OUTPUTS):
            raise ValueError(f"{path} holds the outputs of another run (and no config.json): choose another --name, "
                             f"or pass --overwrite to replace them")
        if theirs is not None and {k: theirs.get(k) for k in ours} != ours:
            raise ValueError(f"{path} is the run folder of {theirs.get('data_id') or 'another store'} (--preset "
                             f"{theirs.get('preset')}, --seed {theirs.get('seed')}), not of {data_id} (--preset "
                             f"{cfg.preset}, --seed {cfg.seed}): choose another --name, or pass --overwrite to "
                             f"replace that run")
    if command in ("demo", "pretrain") and (path / "pretrain.pt").exists() and not (cfg.resume or cfg.overwrite):
        try:
            step = f" (step {torch.load(path / 'pretrain.pt', map_location='cpu', weights_only=True)['step']})"
        except Exception:  # the refusal, not the file's state, is the news
            step = ""
        then = "; the demo goes on to evaluate a finished one" if command == "demo" else ""
        raise ValueError(f"{path / 'pretrain.pt'} exists{step}: pass --resume to continue it{then}, or --overwrite "
                         f"to start again")


def check_resume(cfg: Config, path: Path, data_id: str) -> dict | None:
    """The checkpoint that --resume continues (None: a fresh start), once its settings agree with ours."""
    file = path / "pretrain.pt"
    if not cfg.resume or cfg.overwrite or not file.exists():
        if cfg.resume and not cfg.overwrite:
            print(f"--resume: no checkpoint at {file} yet, starting from step 0")
        return None
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if ckpt.get("data", data_id) != data_id:
        raise ValueError(f"--resume: {file} was pretrained on {ckpt['data']}, not {data_id}: choose another "
                         f"--name, or pass --overwrite to start again")
    # --epochs only ends a constant-rate run (so a finished one can be continued), but sets a cosine schedule.
    settings = RESUME_SETTINGS + (("epochs",) if cfg.lr_schedule == "cosine" else ())
    changed = [k for k in settings if getattr(cfg, k) != ckpt["config"].get(k, getattr(cfg, k))]
    if changed:
        raise ValueError("--resume continues the run with its own settings, but "
                         + ", ".join(f"{flag(k)} {show(getattr(cfg, k))} differs from its {show(ckpt['config'][k])}"
                                     for k in changed)
                         + f" ({file}): drop them, or pass --overwrite to start again")
    return ckpt


def start_run(command: str, cfg: Config, path: Path, data_id: str, split, keep: set[str]) -> None:
    """The command starts for real: the folder cleared if --overwrite (all but ``keep``), then config.json and the
    split written."""
    if cfg.overwrite and path.exists():
        for name in set(RUN_OUTPUTS) - keep:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"command": command, "data_id": data_id,
                                                  **dataclasses.asdict(cfg)}, indent=1))
    if split is not None:
        (path / "split.json").write_text(split.to_json())


# ------------------------------------------------------------------------------------------------------ command line


def _value(kind, optional: bool):
    """The command-line parser of one setting: "1/32" for a float, "none" for an optional value."""
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if kind is float and "/" in text:
            num, den = (float(part) for part in text.split("/", 1))
            if den == 0:
                raise ValueError(text)
            return num / den
        return kind(text)

    parse.__name__ = kind.__name__ + (" or none" if optional else "")  # argparse names it in "invalid ... value"
    return parse


def make_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:<7}{text}" for name, (text, _) in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets (--preset; each option's help shows a preset's value where it differs):\n{presets}")
    parser.add_argument("command", nargs="?", default="demo", choices=COMMANDS,
                        help="demo: pretrain, then evaluate (default); pretrain; evaluate a checkpoint; embed: "
                             "features of every record")
    parser.add_argument("--out-features", default="features.npy",
                        help="embed: the .npy file of features (default: features.npy)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    hints = typing.get_type_hints(Config)
    choices = {"model": tuple(MODELS), "loss": LOSSES, "sampling": SAMPLING, "preset": tuple(PRESETS), "split": SPLITS,
               "lr_schedule": LR_SCHEDULES}
    for f in dataclasses.fields(Config):
        # The value type from the annotation: int for `int | None`, str for `tuple[str, ...]`, int for
        # `tuple[int, ...] | None`.
        args = typing.get_args(hints[f.name])
        kind = next((a for a in args if a is not type(None)), hints[f.name])
        many = isinstance(f.default, tuple) or typing.get_origin(kind) is tuple
        kind = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        others = "".join(f"; {name}: {show(over[f.name])}" for name, (_, over) in PRESETS.items()
                         if f.name in over and over[f.name] != f.default)
        default = ("on" if f.default else "off") if kind is bool else show(f.default)
        text = f.metadata["help"] + ("" if "default:" in f.metadata["help"] else f" (default: {default}{others})")
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif many:
            parser.add_argument(flag(f.name), type=_value(kind, type(None) in args), default=None, help=text,
                                nargs="*" if f.name == "tasks" else "+")
        else:
            parser.add_argument(flag(f.name), type=_value(kind, type(None) in args), default=None, help=text,
                                choices=choices.get(f.name))
    return parser


def parse_args(argv=None) -> tuple[str, Config, argparse.Namespace, set[str]]:
    """The command, its settings (the preset's, then the options given) and the names of the options given."""
    args = make_parser().parse_args(argv)
    preset = args.preset or "demo"
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    cfg = Config(**{**PRESETS[preset][1], "preset": preset})
    # A list option is a tuple; `--downstream-epochs none` is None.
    given = {k: (None if v == [None] else tuple(v)) if isinstance(v, list) else v for k, v in given.items()}
    cfg = dataclasses.replace(cfg, **given)
    return args.command, cfg, args, set(given)


def run(command: str, cfg: Config, args: argparse.Namespace, explicit: set[str]) -> None:
    check_options(command, cfg, args)
    # Denormal floats appear in the small demo networks' activations and gradients and slow a CPU step up to 20x.
    torch.set_flush_denormal(True)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank0 = rank_and_world()[0] == 0
    torch.manual_seed(cfg.seed)
    pretrained = checkpoint = None
    if command in ("evaluate", "embed"):
        checkpoint = checkpoint_file(cfg, run_dir(cfg))
        cfg, ckpt = checkpoint_settings(cfg, explicit, checkpoint, given=cfg.checkpoint is not None)
        pretrained = ckpt.state_dict
    path = run_dir(cfg)  # after the checkpoint's settings: the synthetic cohort's name holds its rate
    data_id = data_identity(cfg)[1]
    if command != "embed":
        check_run_folder(command, cfg, path, data_id)
    # A store is opened to be checked; the synthetic cohort is checked before it is made.
    store = open_data(cfg) if cfg.data is not None else None
    cfg = check_data(command, cfg, explicit, store)
    if store is None and torch.distributed.is_initialized():  # rank 0 builds the cohort once; the others open it
        store = open_data(cfg) if rank0 else None
        torch.distributed.barrier()
    if store is None:
        store = open_data(cfg)
    if command == "embed":
        embed_store(cfg, store, pretrained, Path(args.out_features))
        return
    resume = check_resume(cfg, path, data_id) if command in ("demo", "pretrain") else None
    split = load_split(cfg, store, path) if rank0 else None
    if torch.distributed.is_initialized():
        holder = [split]
        torch.distributed.broadcast_object_list(holder, src=0)
        split = holder[0]
    if command == "evaluate":
        check_held_out(cfg, checkpoint, ckpt.source, split)
    sampler = make_sampler(cfg, store, split) if command in ("demo", "pretrain") else None
    own_checkpoint = command == "evaluate" and checkpoint_file(cfg, path).resolve() == (path / "pretrain.pt").resolve()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank has checked everything before rank 0 changes the run folder
    if rank0:
        start_run(command, cfg, path, data_id, split, keep={"pretrain.pt", "pretrain_log.csv", "tb"}
                  if own_checkpoint else set())
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if command in ("demo", "pretrain"):
        if split is None:
            print(f"pretraining on every record of {cfg.data or 'the synthetic cohort'} (no task labels, so no test "
                  f"patients are held out)")
        if rank0:
            augmentation_gallery(cfg, store, path / "augmentations.png")
        checkpoint = pretrain(cfg, store, sampler, path, resume, split)
        pretrained = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"] if rank0 else None
    if rank0 and command in ("demo", "evaluate"):
        evaluate(cfg, store, split, path, pretrained, checkpoint)


def main(argv=None) -> int:
    """The command line; returns the exit status: 0, 2 for a refused option or input, 1 for anything else."""
    command, cfg, args, explicit = parse_args(argv)
    try:
        run(command, cfg, args, explicit)
    except KeyboardInterrupt:
        print(f"train.py {command}: interrupted" + (" (run it again with --resume to continue)"
                                                    if command in ("demo", "pretrain") else ""), file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        known = isinstance(err, ValueError)
        print(f"train.py {command}: error: {err if known else f'{type(err).__name__}: {err}'}"
              + ("" if known else " (--debug shows the traceback)"), file=sys.stderr)
        return 2 if known else 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
