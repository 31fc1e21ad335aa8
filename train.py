"""Contrastive pretraining of an ECG encoder, then what it buys on labeled tasks when labels are scarce.

    python train.py                                  # the demo: synthetic cohort -> pretrain -> evaluate -> report
    python train.py --vcg-residual --seed 1          # any setting below as --name value
    python train.py pretrain --data STORE --preset paper [--resume]
    python train.py evaluate --data STORE --checkpoint runs/NAME/pretrain.pt
    python train.py embed --data STORE --checkpoint runs/NAME/pretrain.pt --out features.npy
    torchrun --nproc_per_node=G train.py pretrain --data STORE --preset paper   # negatives span the global batch

Everything lands in runs/<name>/: config.json, split.json, pretrain.pt, pretrain_log.csv, tb/ (TensorBoard),
results.csv, results.json and auroc.png. The library does the work: ecgfast.store -> ecgfast.loader (views,
augment, sampling) -> ecgfast.models -> ecgfast.losses, and ecgfast.evaluate for the downstream protocol.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------ settings


@dataclass
class Config:
    # data: None trains on the synthetic cohort, built once and cached under `cache`
    data: str | None = None
    cache: str = "data"
    patients: int = 1000  # synthetic cohort: patients, 1-5 ECGs each (3 on average)
    seed: int = 0  # seeds everything, the synthetic cohort included
    fs: float = 100.0
    window_s: float = 2.5
    # model
    model: str = "dual"  # "dual" (one stream per lead group, V = 2 x copies) or "single" (V = 8 x copies)
    width: float = 1 / 32
    dropout: float = 0.1
    # pretraining
    loss: str = "clocs"  # clocs | supcon | ntxent
    temperature: float = 0.1
    copies: int = 2
    vcg_residual: bool = False  # keep the non-dipolar part of the ECG in the VCG augmentation
    sampling: str = "uniform"  # "uniform" (the authors') or "patient" (P patients x 2 ECGs per batch)
    batch_size: int = 128
    lr: float = 1e-3
    adam_eps: float = 1e-8
    clip: float = 1.0
    epochs: int = 20
    max_steps: int | None = None  # stop pretraining after this many steps in all (a resumable stop)
    checkpoint_every: int = 100  # steps
    # downstream evaluation
    tasks: tuple[str, ...] = ("low_lvef", "high_potassium")
    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.50, 1.0)
    downstream_epochs: tuple[int, ...] = (40, 30, 20, 12, 8)
    downstream_seeds: int = 3
    downstream_max_steps: int | None = 50
    downstream_patience: int | None = 4
    lr_random: float = 1e-3
    lr_frozen: float = 0.02
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    # run
    out: str = "runs"
    name: str | None = None  # default: <preset>-seed<seed>
    checkpoint: str | None = None  # evaluate/embed: the pretrained checkpoint (default: the run's pretrain.pt)
    resume: bool = False
    device: str = "auto"
    threads: int | None = None  # augmentation threads (default: every core)
    preset: str = "demo"


PRESETS = {
    # Small enough for a 2-core CPU in minutes; the same code path as the paper's preset.
    "demo": {},
    # Dade et al.: 8 leads at 500 Hz, 5 s windows, two augmented copies, dual stream, CLOCS, uniform sampling.
    "paper": dict(fs=500.0, window_s=5.0, width=1.0, dropout=0.5, batch_size=512, lr=1e-4, adam_eps=1e-4, epochs=200,
                  sampling="uniform", downstream_epochs=(70, 50, 30, 20, 20), downstream_seeds=5,
                  downstream_max_steps=None, downstream_patience=None),
    # Seconds, for the tests.
    "micro": dict(patients=60, fs=50.0, window_s=2.0, width=1 / 32, batch_size=16, epochs=1, checkpoint_every=2,
                  fractions=(0.1, 1.0), downstream_epochs=(2, 2), downstream_seeds=1, downstream_max_steps=4,
                  tasks=("low_lvef",)),
}
PAPER_SEEDS = (42, 43, 44, 45, 46)

# ------------------------------------------------------------------------------------------------------ the parts


def run_dir(cfg: Config) -> Path:
    path = Path(cfg.out) / (cfg.name or f"{cfg.preset}-seed{cfg.seed}")
    path.mkdir(parents=True, exist_ok=True)
    return path


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
        write_cohort(tmp, cfg.patients, fs=cfg.fs, seconds=10.0, leads=12, seed=cfg.seed, overwrite=True)
        tmp.rename(path)  # a cohort interrupted half-way is rebuilt, never reused
    return ECGStore.open(path)


def make_model(cfg: Config) -> torch.nn.Module:
    from ecgfast.models import DualStreamTemporalNet, SingleStreamTemporalNet

    cls = {"dual": DualStreamTemporalNet, "single": SingleStreamTemporalNet}[cfg.model]
    return cls(width=cfg.width, dropout=cfg.dropout)


def window(cfg: Config) -> int:
    return int(round(cfg.window_s * cfg.fs))


def load_split(cfg: Config, store, path: Path):
    """One patient-level split for every task, stratified by their labels together, saved beside the run."""
    from ecgfast.evaluate import PatientSplit, patient_split

    file = path / "split.json"
    if file.exists():
        return PatientSplit.from_json(file.read_text())
    missing = [t for t in cfg.tasks if t not in store.labels]
    if missing:
        raise ValueError(f"tasks {missing} have no labels in the store (it has {sorted(store.labels)})")
    # Stratify on the combination of the tasks' labels (unknown counts as negative here only).
    strata = sum((np.nan_to_num(store.labels[t]) > 0.5).astype(int) << k for k, t in enumerate(cfg.tasks))
    split = patient_split(store.patient_ids, strata > 0, seed=cfg.seed)
    file.write_text(split.to_json())
    return split


def contrastive_loss(cfg: Config, z: torch.Tensor, patient_id: torch.Tensor, gather: bool) -> torch.Tensor:
    from ecgfast.losses import clocs_loss, ntxent_loss, supcon_loss

    opts = dict(temperature=cfg.temperature, gather=gather)
    if cfg.loss == "clocs":
        return clocs_loss(z, patient_id, **opts)
    if cfg.loss == "supcon":
        return supcon_loss(z, patient_id, **opts)
    if cfg.loss == "ntxent":  # copy 1 against copy 2 of each stream (or lead), averaged over them
        s = z.shape[1] // cfg.copies
        return sum(ntxent_loss(z[:, [k, s + k]], **opts) for k in range(s)) / s
    raise ValueError(f"--loss must be clocs, supcon or ntxent, got {cfg.loss!r}")


class Embedder(torch.nn.Module):
    """``model.embed`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def pretrain(cfg: Config, store, split, path: Path) -> Path:
    """Contrastive pretraining on every patient outside the downstream test split; returns the checkpoint."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from ecgfast.augment import Augment
    from ecgfast.leads import LEADS8
    from ecgfast.loader import ECGLoader
    from ecgfast.sampling import PatientBatchSampler
    from ecgfast.views import ViewSpec

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    device = device_of(cfg)
    spec = ViewSpec(leads=LEADS8, fs=cfg.fs, window=window(cfg), copies=cfg.copies)
    augment = Augment.paper(keep_residual=cfg.vcg_residual)
    sampler = PatientBatchSampler.from_store(
        store, spec, augment=augment, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world,
        mode=cfg.sampling, exclude=np.isin(store.patient_ids, split.test))
    loader = ECGLoader(store, spec, augment, batch_size=cfg.batch_size, sampler=sampler, device=device,
                       threads=cfg.threads, seed=cfg.seed)

    model = make_model(cfg).to(device)
    model.classifier.requires_grad_(False)  # the downstream head has no part in pretraining (DDP insists)
    embed = Embedder(model)
    if distributed:  # DDP reduces gradients through hooks on forward(), so embed() is wrapped as a forward()
        embed = torch.nn.parallel.DistributedDataParallel(embed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=cfg.adam_eps)
    ckpt_path = path / "pretrain.pt"
    if cfg.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
    step = loader.state_dict()["epoch"] * len(loader) + loader.state_dict()["step"]
    total = cfg.epochs * len(loader) if cfg.max_steps is None else min(cfg.epochs * len(loader), cfg.max_steps)

    def save():
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                     "step": step, "config": dataclasses.asdict(cfg)}
            torch.save(state, ckpt_path.with_suffix(".tmp"))
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)  # never a half-written checkpoint

    log_file = open(path / "pretrain_log.csv", "a", newline="") if rank == 0 else None
    log = csv.writer(log_file) if log_file else None
    if log_file and log_file.tell() == 0:
        log.writerow(["step", "epoch", "loss", "ecgs_per_s", "data_wait_s", "compute_s"])
    tb = SummaryWriter(path / "tb") if rank == 0 else None
    bar = tqdm(total=total, initial=step, desc="pretrain", disable=rank != 0, unit="step")
    model.train()
    while step < total:
        tic = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            # Dropout depends on the step alone, so a resumed run follows the uninterrupted run's trajectory.
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = embed(batch["x"])
            loss = contrastive_loss(cfg, z.float(), batch["patient_id"], gather=distributed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done = time.perf_counter()
            wait, compute = got - tic, done - got
            if rank == 0:
                rate = len(batch["index"]) * world / (done - tic)
                log.writerow([step, loader.state_dict()["epoch"], f"{loss.item():.5f}", f"{rate:.1f}",
                              f"{wait:.4f}", f"{compute:.4f}"])
                if step % 10 == 0:
                    log_file.flush()
                tb.add_scalar("pretrain/loss", loss.item(), step)
                tb.add_scalar("pretrain/ecgs_per_s", rate, step)
                tb.add_scalar("pretrain/data_wait_fraction", wait / (done - tic), step)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", ecgs_s=f"{rate:.0f}", wait=f"{wait / (done - tic):.0%}")
            if step % cfg.checkpoint_every == 0 or step >= total:
                save()
            if step >= total:
                break
            tic = time.perf_counter()
    save()
    bar.close()
    if rank == 0:
        log_file.close()
        tb.close()
    return ckpt_path


def center_windows(store, idx: np.ndarray, n: int) -> np.ndarray:
    """The middle ``n`` valid samples of each record (the downstream input), float32 mV (B, 8, n)."""
    from ecgfast.leads import LEADS8

    x = store.read(idx, leads=LEADS8)
    starts = np.clip((np.asarray(store.lengths)[idx] - n) // 2, 0, x.shape[-1] - n)
    return np.stack([x[b, :, s:s + n] for b, s in enumerate(starts)])


def load_encoder(cfg: Config, path: Path) -> dict:
    file = Path(cfg.checkpoint) if cfg.checkpoint else path / "pretrain.pt"
    if not file.exists():
        raise ValueError(f"no pretrained checkpoint at {file}: run `python train.py pretrain` first or pass "
                         f"--checkpoint")
    return torch.load(file, map_location="cpu", weights_only=False)["model"]


def evaluate(cfg: Config, store, split, path: Path) -> list[dict]:
    """The downstream protocol for every task: three arms x label fractions x seeds; writes and prints results."""
    from ecgfast.evaluate import DownstreamConfig, format_table, run_protocol, write_results

    pretrained = load_encoder(cfg, path)
    seeds = PAPER_SEEDS if cfg.preset == "paper" else tuple(cfg.seed + k for k in range(cfg.downstream_seeds))
    dcfg = DownstreamConfig(fractions=cfg.fractions, epochs=cfg.downstream_epochs, seeds=seeds,
                            lr_random=cfg.lr_random, lr_probe=cfg.lr_frozen, lr_backbone=cfg.lr_backbone,
                            lr_head=cfg.lr_head, patience=cfg.downstream_patience,
                            max_steps=cfg.downstream_max_steps, device=str(device_of(cfg)))
    evaluation = None
    for task in cfg.tasks:
        y = np.asarray(store.labels[task])
        known = np.flatnonzero(~np.isnan(y))
        pid = np.asarray(store.patient_ids)[known]
        # The demo's records fit in memory; a large store is read batch by batch instead.
        windows = center_windows(store, known, window(cfg)) if len(known) <= 50_000 else \
            (lambda idx, known=known: center_windows(store, known[idx], window(cfg)))
        result = run_protocol(task, windows, y[known], pid, split, lambda: make_model(cfg), pretrained=pretrained,
                              config=dcfg)
        evaluation = result if evaluation is None else evaluation + result
    write_results(evaluation, path)
    print(format_table(evaluation))
    print(f"results: {path / 'results.csv'}, plot: {path / 'auroc.png'}")
    return evaluation.runs


@torch.no_grad()
def embed_store(cfg: Config, store, path: Path, out: str) -> None:
    """Encoder features (512 per record, from the middle window) of every record of the store, as .npy."""
    from tqdm.auto import tqdm

    model = make_model(cfg)
    model.load_state_dict(load_encoder(cfg, path))
    model.eval()
    n, block = len(store), store.chunk_records
    feats = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, model.n_features))
    for start in tqdm(range(0, n, block), desc="embed", unit="block"):
        idx = np.arange(start, min(start + block, n))
        feats[idx] = model.features(torch.from_numpy(center_windows(store, idx, window(cfg)))).numpy()
    feats.flush()
    Path(out).with_suffix(".record_ids.txt").write_text("\n".join(map(str, store.record_ids)) + "\n")
    print(f"wrote {n} x {model.n_features} features to {out} (rows in the order of {Path(out).stem}.record_ids.txt)")


# ------------------------------------------------------------------------------------------------------ command line


def parse_args(argv=None) -> tuple[str, Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="demo", choices=("demo", "pretrain", "evaluate", "embed"))
    parser.add_argument("--out-features", dest="out_features", default="features.npy",
                        help="embed: where to write the features")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        # The value type from the annotation: int for `int | None`, str for `tuple[str, ...]`.
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=kind, default=None, nargs="+" if isinstance(f.default, tuple) else None)
    args = parser.parse_args(argv)
    preset = args.preset or "demo"
    if preset not in PRESETS:
        parser.error(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = Config(**{**PRESETS[preset], "preset": preset})
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return args.command, cfg, args


def main(argv=None) -> None:
    command, cfg, args = parse_args(argv)
    # Denormal floats appear in the small demo networks' activations and gradients and slow a CPU step up to 20x.
    torch.set_flush_denormal(True)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    torch.manual_seed(cfg.seed)
    path = run_dir(cfg)
    if rank0:
        (path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if torch.distributed.is_initialized():  # rank 0 builds the synthetic cohort once; the others open it after
        store = open_data(cfg) if rank0 else None
        torch.distributed.barrier()
        if store is None:
            store = open_data(cfg)
    else:
        store = open_data(cfg)
    split = load_split(cfg, store, path) if rank0 else None
    if torch.distributed.is_initialized():
        holder = [split]
        torch.distributed.broadcast_object_list(holder, src=0)
        split = holder[0]
    if command in ("demo", "pretrain"):
        pretrain(cfg, store, split, path)
    if rank0 and command in ("demo", "evaluate"):
        evaluate(cfg, store, split, path)
    if rank0 and command == "embed":
        embed_store(cfg, store, path, args.out_features)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
