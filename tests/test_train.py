"""train.py end to end at the micro preset (seconds): pretrain, evaluate, embed, resume, and two gloo processes."""

import csv
import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
train = importlib.util.module_from_spec(_spec)
sys.modules["train"] = train  # spawned processes unpickle train.main by this name
_spec.loader.exec_module(train)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cohort")


def micro(tmp_path, cache, *args):
    return [*args, "--preset", "micro", "--out", str(tmp_path), "--cache", str(cache)]


def test_micro_demo_writes_every_output(tmp_path, cache, capsys):
    train.main(micro(tmp_path, cache))
    run = tmp_path / "micro-seed0"
    for name in ("config.json", "split.json", "pretrain.pt", "pretrain_log.csv", "results.csv", "results.json",
                 "auroc.png"):
        assert (run / name).exists(), name
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert {r["arm"] for r in rows} == {"prevalence", "random", "random_probe", "frozen", "finetuned"}
    assert {float(r["fraction"]) for r in rows} == {0.1, 1.0}
    for r in rows:
        assert 0.0 <= float(r["test_auroc_lo"]) <= float(r["test_auroc"]) <= float(r["test_auroc_hi"]) <= 1.0
    log = list(csv.DictReader(open(run / "pretrain_log.csv")))
    assert len(log) == torch.load(run / "pretrain.pt", weights_only=False)["step"] > 0
    assert all(np.isfinite(float(r["loss"])) for r in log)
    assert "test AUROC" in capsys.readouterr().out

    # The test patients of the split never reach pretraining; every ECG of a patient stays on one side.
    split = train.load_split(train.Config(**train.PRESETS["micro"]), None, run)
    assert not set(split.test) & (set(split.train) | set(split.val))

    out = tmp_path / "features.npy"
    train.main(micro(tmp_path, cache, "embed", "--out-features", str(out)))
    feats = np.load(out)
    ids = out.with_suffix(".record_ids.txt").read_text().split()
    assert feats.shape[0] == len(ids) and np.isfinite(feats).all()


def test_resume_continues_the_same_trajectory(tmp_path, cache):
    train.main(micro(tmp_path, cache, "pretrain", "--name", "straight", "--max-steps", "4"))
    train.main(micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "2"))
    train.main(micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "4", "--resume"))
    a = torch.load(tmp_path / "straight" / "pretrain.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "pretrain.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train.main(argv)


def test_two_gloo_processes_pretrain_together(tmp_path, cache):
    # Build the cohort here first so that the two ranks only open it.
    train.open_data(train.Config(**{**train.PRESETS["micro"], "cache": str(cache)}))
    argv = micro(tmp_path, cache, "pretrain", "--name", "ddp", "--max-steps", "2")
    mp.start_processes(_rank, args=(2, _free_port(), argv), nprocs=2, join=True, start_method="spawn")
    ckpt = torch.load(tmp_path / "ddp" / "pretrain.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
