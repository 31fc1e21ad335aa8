"""train.py end to end at the micro preset (seconds): the demo, an unlabelled store, settings read from the checkpoint,
runs that never overwrite each other, resume, failures that speak, a PTB-XL label group on its folds, thresholds of
float labels, a checkpoint evaluated on another store, and two gloo processes sharing one global batch."""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ecgfast.evaluate import PatientSplit, auroc
from test_ingest_formats import _ptbxl_tree  # the PTB-XL layout's fixture builder, shared with the ingest tests

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
train = importlib.util.module_from_spec(_spec)
sys.modules["train"] = train  # spawned processes unpickle train.main by this name
_spec.loader.exec_module(train)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cohort")


@pytest.fixture(scope="module")
def cpsc(tmp_path_factory, data_dir):
    """The CPSC-2018 records (10-54 s, no labels) as 10 s windows: an unlabelled archive."""
    from ecgfast.ingest import ingest

    dest = tmp_path_factory.mktemp("stores") / "cpsc.zarr"
    ingest(data_dir / "cpsc2018", dest, split=True, workers=1, progress=False)
    return dest


@pytest.fixture(scope="module")
def cinc_dx(tmp_path_factory, data_dir):
    """The CinC-2021 records with one dx_<SNOMED code> label per diagnosis."""
    from ecgfast.ingest import ingest

    dest = tmp_path_factory.mktemp("stores") / "cinc_dx.zarr"
    ingest(data_dir / "cinc2021", dest, labels_from_dx=True, workers=1, progress=False)
    return dest


def micro(tmp_path, cache, *args):
    return [*args, "--preset", "micro", "--out", str(tmp_path), "--cache", str(cache)]


def run(capsys, argv) -> tuple[int, str, str]:
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, argv, *words) -> str:
    """Runs a command that must fail with one line naming ``words``, and returns that line."""
    code, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_micro_demo_writes_every_output(tmp_path, cache, capsys):
    assert train.main(micro(tmp_path, cache)) == 0
    run_dir = tmp_path / "micro-synth-p60-50hz-seed0"  # the default name says the data: the cohort's settings
    for name in ("config.json", "split.json", "pretrain.pt", "pretrain_log.csv", "results.csv", "results.json",
                 "auroc.png"):
        assert (run_dir / name).exists(), name
    rows = list(csv.DictReader(open(run_dir / "results.csv")))
    assert {r["arm"] for r in rows} == {"prevalence", "random", "random_probe", "frozen", "finetuned"}
    assert {float(r["fraction"]) for r in rows} == {0.1, 1.0}
    for r in rows:
        assert 0.0 <= float(r["test_auroc_lo"]) <= float(r["test_auroc"]) <= float(r["test_auroc_hi"]) <= 1.0
    log = list(csv.DictReader(open(run_dir / "pretrain_log.csv")))
    assert len(log) == torch.load(run_dir / "pretrain.pt", weights_only=False)["step"] > 0
    assert all(np.isfinite(float(r["loss"])) for r in log)
    assert "test AUROC" in capsys.readouterr().out

    # The test patients of the split never reach pretraining; every ECG of a patient stays on one side.
    split = PatientSplit.from_json((run_dir / "split.json").read_text())
    assert not set(split.test) & (set(split.train) | set(split.val))

    out = tmp_path / "features.npy"
    assert train.main(micro(tmp_path, cache, "embed", "--out-features", str(out))) == 0
    feats = np.load(out)
    ids = out.with_suffix(".record_ids.txt").read_text().split()
    assert feats.shape == (len(ids), 16) and np.isfinite(feats).all()

    # Run again, the demo refuses the finished checkpoint and changes nothing.
    before = snapshot(run_dir)
    refused(capsys, micro(tmp_path, cache), "pretrain.pt exists", "--resume", "--overwrite")
    assert snapshot(run_dir) == before
    # An embed never replaces a file it did not write without being told.
    refused(capsys, micro(tmp_path, cache, "embed", "--out-features", str(out)), "--out-features", "--overwrite")


def test_unlabelled_store_pretrains_and_the_checkpoint_carries_its_settings(tmp_path, cache, cpsc, cinc_dx, capsys):
    # Pretraining needs no labels: every record of the CPSC store pretrains, no split is drawn. The preset's rate
    # (50 Hz) gives way to the store's 500 Hz.
    code, out, _ = run(capsys, micro(tmp_path, cache, "pretrain", "--data", str(cpsc), "--model", "single",
                                     "--width", "1/16", "--window-s", "1.5", "--batch-size", "8", "--max-steps", "2"))
    assert code == 0 and "pretraining on every record" in out
    run_dir = tmp_path / "micro-cpsc-seed0"
    ckpt = torch.load(run_dir / "pretrain.pt", weights_only=False)
    assert ckpt["step"] == 2 and not (run_dir / "split.json").exists()
    assert ckpt["config"]["fs"] == 500.0 and ckpt["config"]["tasks"] == ()
    assert ckpt["loader"]["epoch"] == 1  # 21 windows in batches of 8: two steps are one whole epoch, nobody held out
    ckpt_path = str(run_dir / "pretrain.pt")

    # embed takes model, width, fs and window from the checkpoint (the preset says dual, 1/32, 50 Hz, 2 s).
    features = tmp_path / "cpsc.npy"
    assert train.main(micro(tmp_path, cache, "embed", "--data", str(cpsc), "--checkpoint", ckpt_path,
                            "--out-features", str(features))) == 0
    model = train.make_model(train.Config(model="single", width=1 / 16))
    model.load_state_dict(ckpt["model"])
    model.eval()
    from ecgfast.store import ECGStore

    with ECGStore.open(cpsc) as store:
        expected = model.features(torch.from_numpy(train.center_windows(store, np.arange(3), 750))).detach()
    np.testing.assert_allclose(np.load(features)[:3], expected.numpy(), rtol=1e-5, atol=1e-6)

    # So does evaluate, on a labelled store of the same rate.
    assert train.main(micro(tmp_path, cache, "evaluate", "--data", str(cinc_dx), "--tasks", "dx_426783006",
                            "--checkpoint", ckpt_path, "--fractions", "1", "--downstream-epochs", "1",
                            "--downstream-max-steps", "1")) == 0
    config = json.loads((tmp_path / "micro-cinc_dx-seed0" / "config.json").read_text())
    assert (config["model"], config["width"], config["fs"], config["window_s"]) == ("single", 1 / 16, 500.0, 1.5)
    assert config["command"] == "evaluate" and config["data_id"] == str(Path(cinc_dx).resolve())

    # A value that contradicts the checkpoint is refused, naming both; so is another architecture.
    evaluate = micro(tmp_path, cache, "evaluate", "--data", str(cinc_dx), "--tasks", "dx_426783006",
                     "--checkpoint", ckpt_path)
    refused(capsys, evaluate + ["--model", "dual"], "--model dual", "a single-stream network")
    refused(capsys, evaluate + ["--width", "0.5"], "--width 0.5", "--width 0.0625")
    refused(capsys, evaluate + ["--window-s", "2.5"], "--window-s 2.5", "--window-s 1.5")
    train.open_data(train.Config(**{**train.PRESETS["micro"][1], "cache": str(cache)}))  # the 50 Hz cohort
    cohort = str(cache / "synth-p60-seed0-50hz.zarr")
    refused(capsys, micro(tmp_path, cache, "evaluate", "--data", cohort, "--checkpoint", ckpt_path),
            "pretrained on 500 Hz views", "50 Hz records")
    torch.save(ckpt["model"], tmp_path / "weights.pt")  # a bare state dict says nothing of its settings
    refused(capsys, evaluate + ["--checkpoint", str(tmp_path / "weights.pt")],
            "is not an encoder checkpoint")


def test_runs_never_overwrite_each_other(tmp_path, cache, cinc_dx, capsys):
    pretrain = micro(tmp_path, cache, "pretrain", "--max-steps", "2")
    assert train.main(pretrain) == 0
    run_dir = tmp_path / "micro-synth-p60-50hz-seed0"
    before = snapshot(run_dir)

    # A second pretrain refuses the checkpoint; a failing command leaves config.json as it was.
    refused(capsys, pretrain, "pretrain.pt exists (step 2)", "--resume", "--overwrite")
    refused(capsys, micro(tmp_path, cache, "evaluate", "--tasks", "nosuch"), "--tasks", "nosuch", "low_lvef")
    # Another store, preset or seed in this folder is refused, naming both; and nothing in it changes.
    other = ["--name", run_dir.name, "--checkpoint", str(run_dir / "pretrain.pt")]
    refused(capsys, micro(tmp_path, cache, "evaluate", "--data", str(cinc_dx), "--tasks", "dx_426783006", *other),
            str(run_dir), "synthetic cohort", str(Path(cinc_dx).resolve()), "--overwrite")
    refused(capsys, micro(tmp_path, cache, "pretrain", "--seed", "1", "--patients", "60", "--name", run_dir.name),
            "--seed 0", "--seed 1")
    assert snapshot(run_dir) == before

    # evaluate --overwrite takes the folder over for another preset, but keeps the checkpoint it evaluates.
    assert train.main(["evaluate", *other, "--preset", "demo", "--out", str(tmp_path), "--cache", str(cache),
                       "--patients", "60", "--tasks", "low_lvef", "--fractions", "1", "--downstream-epochs", "1",
                       "--downstream-seeds", "1", "--downstream-max-steps", "1", "--overwrite"]) == 0
    after = snapshot(run_dir)
    assert after["pretrain.pt"] == before["pretrain.pt"] and after["pretrain_log.csv"] == before["pretrain_log.csv"]
    assert json.loads(after["config.json"])["preset"] == "demo" and "results.csv" in after

    # --overwrite starts again: one run in the log, a new TensorBoard folder.
    assert train.main(pretrain + ["--max-steps", "3", "--overwrite"]) == 0
    log = list(csv.DictReader(open(run_dir / "pretrain_log.csv")))
    assert [int(r["step"]) for r in log] == [1, 2, 3]
    assert len(list((run_dir / "tb").iterdir())) == 1
    assert json.loads((run_dir / "config.json").read_text())["preset"] == "micro"


def test_resume_continues_the_same_trajectory(tmp_path, cache, capsys):
    # under a cosine schedule (held for no epoch), whose rate a resumed run takes from the step
    cosine = ("--lr-schedule", "cosine", "--epochs", "3")
    assert train.main(micro(tmp_path, cache, "pretrain", "--name", "straight", "--max-steps", "4", *cosine)) == 0
    assert train.main(micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "2", *cosine)) == 0
    # Steps after the last checkpoint (a run killed at step 3) are logged again by the resumed run, once.
    with open(tmp_path / "resumed" / "pretrain_log.csv", "a") as f:
        f.write("3,0,9.99,1,0,0\n")
    refused(capsys, micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "4", "--resume",
                          "--lr", "0.5", *cosine), "--lr 0.5", "0.001")
    refused(capsys, micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "4", "--resume",
                          "--lr-schedule", "cosine", "--epochs", "4"), "--epochs 4", "its 3")
    assert train.main(micro(tmp_path, cache, "pretrain", "--name", "resumed", "--max-steps", "4", "--resume",
                            *cosine)) == 0
    a = torch.load(tmp_path / "straight" / "pretrain.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "pretrain.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    cfg = train.Config(**a["config"])
    split = PatientSplit.from_json((tmp_path / "straight" / "split.json").read_text())
    per_epoch = len(train.make_sampler(cfg, train.open_data(cfg), split))
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(train.learning_rate(cfg, 3, per_epoch))
    assert train.learning_rate(cfg, 3, per_epoch) < cfg.lr
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    log = list(csv.DictReader(open(tmp_path / "resumed" / "pretrain_log.csv")))
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4] and "9.99" not in {r["loss"] for r in log}


@pytest.mark.parametrize("args, words", [
    (["--tasks", "nosuch"], ["--tasks", "nosuch", "high_potassium, low_lvef"]),
    (["--fractions", "0.5", "1", "--downstream-epochs", "3"], ["--downstream-epochs", "one value per --fractions"]),
    (["--device", "cuda:0"], ["--device", "no CUDA"]),
    (["--batch-size", "1"], ["--batch-size 1"]),
    (["--loss", "ntxent", "--copies", "3"], ["--copies 3", "--copies 2"]),
    (["evaluate"], ["no pretrained checkpoint", "--checkpoint"]),
    (["evaluate", "--resume"], ["--resume"]),
    (["pretrain", "--checkpoint", "x.pt"], ["--checkpoint", "evaluate and embed"]),
    (["embed", "--out", "features.npy"], ["--out features.npy", "--out-features"]),
    (["pretrain", "--data", "nosuch.zarr"], ["nosuch.zarr"]),
    (["pretrain", "--data", "CPSC", "--batch-size", "64"], ["--batch-size 64", "21 records", "--batch-size 21"]),
    (["pretrain", "--data", "CPSC", "--fs", "100"], ["--fs 100", "500 Hz"]),
    (["pretrain", "--data", "CPSC", "--window-s", "60"], ["--window-s 60", "longest record"]),
    (["evaluate", "--data", "CPSC", "--tasks", "af", "--checkpoint", "CKPT"], ["--tasks", "af", "none"]),
])
def test_failures_name_the_option(tmp_path, cpsc, capsys, args, words):
    if torch.cuda.is_available() and "--device" in args:
        pytest.skip("this machine has CUDA")
    ckpt = tmp_path / "fake.pt"
    torch.save({"model": train.make_model(train.Config(fs=500.0)).state_dict(), "step": 0,
                "config": vars(train.Config(fs=500.0))}, ckpt)
    args = [str(cpsc) if a == "CPSC" else str(ckpt) if a == "CKPT" else a for a in args]
    cache = tmp_path / "cache"
    refused(capsys, ["--out", str(tmp_path / "runs"), "--cache", str(cache), *args], *words)
    assert not cache.exists()  # refused before any data was made


def test_option_errors_and_unexpected_ones(tmp_path, capsys, monkeypatch):
    for bad in (["--loss", "foo"], ["--model", "foo"], ["--preset", "big"], ["--width", "1/0"]):
        with pytest.raises(SystemExit) as exc:
            train.main(bad)
        assert exc.value.code == 2
        assert "invalid" in capsys.readouterr().err

    def broken(cfg):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "open_data", broken)
    argv = ["pretrain", "--out", str(tmp_path)]
    code, _, err = run(capsys, argv)
    assert code == 1 and err.strip() == "train.py pretrain: error: RuntimeError: disk on fire (--debug shows the " \
                                        "traceback)"
    with pytest.raises(RuntimeError, match="disk on fire"):
        train.main(argv + ["--debug"])


def test_command_line_exit_status_and_help(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--loss", "foo"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2 and "--loss: invalid choice: 'foo' (choose from" in done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()

    help_text = train.make_parser().format_help()
    for f in train.dataclasses.fields(train.Config):
        option = train.flag(f.name)
        entry = help_text.split(f"  {option}", 1)[1].split("\n  --", 1)[0]
        assert "default" in entry, option
    for name in train.PRESETS:
        assert f"\n  {name} " in help_text
    assert "--out-features" in help_text and "--debug" in help_text


def archive(path: Path, seed: int) -> Path:
    """A store in which most patients have no label: 80 patients, of whom every low_lvef-positive one and as many
    negatives carry labels (about a quarter); the others are unlabelled, as in an archive of ECGs with few echoes."""
    from ecgfast.store import ECGStore
    from ecgfast.synth import make_cohort

    c = make_cohort(80, fs=50.0, seconds=3.0, leads=12, seed=seed)
    keys = np.unique(c.patient_keys)
    sick = np.unique(c.patient_keys[c.labels["low_lvef"] == 1])
    labelled = np.concatenate([sick, np.setdiff1d(keys, sick)[:len(sick)]])
    keep = np.isin(c.patient_keys, labelled)
    with ECGStore.create(path, c.lead_names, c.fs, c.signals.shape[2], chunk_records=64, overwrite=True) as store:
        store.append(c.signals, lengths=c.lengths, record_ids=c.record_ids, patient_keys=c.patient_keys,
                     labels={k: np.where(keep, v, np.nan) for k, v in c.labels.items()})
    return path


def test_the_split_holds_only_labelled_patients_and_every_other_one_pretrains(tmp_path, cache, capsys):
    from ecgfast.store import ECGStore

    data = archive(tmp_path / "archive.zarr", seed=0)
    argv = micro(tmp_path, cache, "pretrain", "--data", str(data), "--tasks", "low_lvef", "--name", "a",
                 "--max-steps", "2")
    assert train.main(argv) == 0
    split = PatientSplit.from_json((tmp_path / "a" / "split.json").read_text())
    with ECGStore.open(data) as store:
        pid, y = np.asarray(store.patient_ids), np.asarray(store.labels["low_lvef"])
        labelled = np.unique(pid[~np.isnan(y)])
        assert len(labelled) < 0.4 * len(np.unique(pid))  # most patients have no label
        assert np.array_equal(split.patients, labelled)  # the split holds the labelled patients, and only them
        cfg = train.Config(**{**train.PRESETS["micro"][1], "data": str(data), "tasks": ("low_lvef",)})
        sampler = train.make_sampler(cfg, store, split)
        # Pretraining sees every record but those of the test patients: the unlabelled ones, train and validation.
        assert np.array_equal(sampler.eligible, ~np.isin(pid, split.test))
        assert split.store["fingerprint"] == train_identity(store)

    # The same folder on another store at the same path: its split names other patients, and is refused.
    archive(data, seed=1)
    refused(capsys, micro(tmp_path, cache, "evaluate", "--data", str(data), "--tasks", "low_lvef", "--name", "a"),
            "split.json was drawn on the store at", "fingerprint", "--name")
    assert PatientSplit.from_json((tmp_path / "a" / "split.json").read_text()).sha256 == split.sha256


# A PTB-XL layout of 40 patients, 4 per fold, 1-2 ECGs each, whose codes cycle through the super classes; no ECG of
# fold 10 (test) has LAO/LAE, so that HYP lacks positives there and is skipped.
PTBXL_CODES = ("{'NORM': 100.0, 'SR': 0.0}", "{'IMI': 35.0, 'LAFB': 100.0}", "{'NDT': 100.0, 'AFIB': 0.0}",
               "{'LAO/LAE': 50.0, '1AVB': 100.0}", "{'NORM': 80.0}", "{'1AVB': 100.0, 'PVC': 0.0}")


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    """That layout built by the ingest tests' fixture builder, ingested at the micro preset's 50 Hz (2 s records)."""
    from ecgfast.ingest import ingest

    rows = []
    for patient in range(40):
        fold = patient % 10 + 1
        for k in range(1 + patient % 2):
            codes = PTBXL_CODES[(patient + k) % len(PTBXL_CODES)]
            rows.append((len(rows) + 1, f"{1000 + patient}.0", "60", str(patient % 2),
                         PTBXL_CODES[0] if fold == 10 and "LAO" in codes else codes, str(fold)))
    root = _ptbxl_tree(tmp_path_factory.mktemp("ptbxl") / "ptbxl", rows)
    dest = root.parent / "ptbxl.zarr"
    ingest(root, dest, fs=50, seconds=2, workers=1, progress=False)
    return dest


def test_a_label_group_on_the_folds_of_another_store_reports_macro_and_per_class_auroc(tmp_path, cache, ptbxl,
                                                                                       capsys):
    from ecgfast.store import ECGStore

    # A checkpoint pretrained on the synthetic cohort, evaluated on the PTB-XL store: its settings come from the
    # checkpoint, the run folder and the split belong to the PTB-XL store.
    assert train.main(micro(tmp_path, cache, "pretrain", "--name", "synth", "--max-steps", "2")) == 0
    checkpoint = tmp_path / "synth" / "pretrain.pt"
    code, out, _ = run(capsys, micro(tmp_path, cache, "evaluate", "--data", str(ptbxl), "--split", "folds",
                                     "--tasks", "super", "--checkpoint", str(checkpoint)))
    assert code == 0 and "pretrained on" in out
    run_dir = tmp_path / "micro-ptbxl-seed0"
    assert json.loads((run_dir / "config.json").read_text())["data_id"] == str(ptbxl.resolve())
    store = ECGStore.open(ptbxl)
    pid, folds = np.asarray(store.patient_ids), np.asarray(store.folds)
    split = PatientSplit.from_json((run_dir / "split.json").read_text())
    assert split.method == "folds" and split.tasks == ("super",)
    assert split.store["fingerprint"] == train_identity(store)
    for part, chosen in (("train", folds <= 8), ("val", folds == 9), ("test", folds == 10)):
        assert np.array_equal(getattr(split, part), np.unique(pid[chosen])), part

    # One multi-label head per arm: the macro AUROC in results.csv and summary.csv, each class in classes.csv
    summary = list(csv.DictReader(open(run_dir / "summary.csv")))
    classes = list(csv.DictReader(open(run_dir / "classes.csv")))
    assert {(r["n_classes"], r["skipped_classes"]) for r in summary} == {("4", "super_HYP")}
    assert {r["class"] for r in classes} == {"super_CD", "super_MI", "super_NORM", "super_STTC"}
    assert max(int(r["n_train_patients"]) for r in summary) == len(np.unique(pid[folds <= 8]))
    preds = list(csv.DictReader(open(run_dir / "predictions.csv")))
    for row in summary:  # one seed: the macro AUROC is the mean of the classes' AUROCs
        mine = [c for c in classes if (c["arm"], c["fraction"]) == (row["arm"], row["fraction"])]
        assert len(mine) == 4
        assert float(row["test_auroc"]) == pytest.approx(np.mean([float(c["test_auroc"]) for c in mine]), abs=1e-9)
        for c in mine:  # and each class's AUROC is that of its predictions
            test = [p for p in preds if (p["arm"], p["fraction"], p["class"], p["split"]) ==
                    (row["arm"], row["fraction"], c["class"], "test")]
            assert float(c["test_auroc"]) == pytest.approx(
                auroc([float(p["label"]) for p in test], [float(p["score"]) for p in test]), abs=1e-4)
    differences = list(csv.DictReader(open(run_dir / "differences.csv")))
    assert {(d["arm_a"], d["arm_b"]) for d in differences} >= {("finetuned", "random"), ("frozen", "random")}
    assert "super: test AUROC (AUPRC) per class" in out and "super_STTC" in out
    assert "skipped (one outcome among the test records): super_HYP" in out
    saved = json.loads((run_dir / "results.json").read_text())["provenance"]
    assert saved["checkpoint"]["path"] == str(checkpoint) and saved["split"]["method"] == "folds"

    # The synthetic cohort has no folds; a split of one kind is not reused as the other.
    refused(capsys, micro(tmp_path, cache, "evaluate", "--split", "folds", "--checkpoint", str(checkpoint),
                          "--name", "x"), "--split folds", "no folds")
    refused(capsys, micro(tmp_path, cache, "evaluate", "--data", str(ptbxl), "--tasks", "super",
                          "--checkpoint", str(checkpoint)), "--split random", "split.json is a folds split")


def potassium_store(path: Path) -> Path:
    """A synthetic store with the float potassium (a z-score; unknown on a fifth of the ECGs) and the 0/1 low_lvef."""
    from ecgfast.store import ECGStore
    from ecgfast.synth import make_cohort

    c = make_cohort(60, fs=50.0, seconds=3.0, leads=12, seed=3)
    potassium = np.where(np.arange(len(c.record_ids)) % 5 == 0, np.nan, c.traits["potassium"])
    with ECGStore.create(path, c.lead_names, c.fs, c.signals.shape[2], chunk_records=64, overwrite=True) as store:
        store.append(c.signals, lengths=c.lengths, record_ids=c.record_ids, patient_keys=c.patient_keys,
                     labels={"potassium": potassium, "low_lvef": c.labels["low_lvef"]})
    return path


def test_float_labels_are_thresholded_and_test_patients_never_pretrained_the_checkpoint(tmp_path, cache, capsys):
    from ecgfast.store import ECGStore

    data = str(potassium_store(tmp_path / "k.zarr"))
    refused(capsys, micro(tmp_path, cache, "pretrain", "--data", data, "--tasks", "potassium"),
            "--tasks potassium", "values other than 0 and 1", "'potassium<")
    task = "potassium>0.8"
    assert train.main(micro(tmp_path, cache, "pretrain", "--data", data, "--tasks", task, "--name", "k",
                            "--max-steps", "2")) == 0
    store = ECGStore.open(data)
    pid, k = np.asarray(store.patient_ids), np.asarray(store.labels["potassium"])
    split = PatientSplit.from_json((tmp_path / "k" / "split.json").read_text())
    assert split.tasks == (task,) and np.array_equal(split.patients, np.unique(pid[~np.isnan(k)]))
    assert train.main(micro(tmp_path, cache, "evaluate", "--data", data, "--tasks", task, "--name", "k",
                            "--fractions", "1", "--arms", "prevalence", "frozen")) == 0
    preds = list(csv.DictReader(open(tmp_path / "k" / "predictions.csv")))
    index = {rid: i for i, rid in enumerate(store.record_ids.tolist())}
    scored = {p["record_id"]: float(p["label"]) for p in preds}
    assert scored and all(label == float(k[index[rid]] > 0.8) for rid, label in scored.items())
    assert not any(np.isnan(k[index[rid]]) for rid in scored)  # unknown stays unknown: never scored

    # The checkpoint pretrained on this store's patients but the test patients of its split: another task's split
    # here would score patients it saw, and is refused; the same split in another run folder is not.
    refused(capsys, micro(tmp_path, cache, "evaluate", "--data", data, "--tasks", "low_lvef", "--name", "other",
                          "--checkpoint", str(tmp_path / "k" / "pretrain.pt")),
            "test patients", "pretrained the checkpoint", f"--tasks {task} --split random --seed 0")
    assert train.main(micro(tmp_path, cache, "evaluate", "--data", data, "--tasks", task, "--name", "again",
                            "--checkpoint", str(tmp_path / "k" / "pretrain.pt"), "--fractions", "1", "--arms",
                            "frozen")) == 0


def test_batch_size_is_the_global_batch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    refused(capsys, ["pretrain", "--batch-size", "16", "--out", str(tmp_path)], "--batch-size 16", "3 ranks",
            "multiple of 3")
    paper = train.PRESETS["paper"][1]
    assert paper["batch_size"] == 512 and paper["downstream_batch_size"] == 512 and paper["sampling"] == "uniform"
    cfg = train.Config(lr=1.0, epochs=10, lr_schedule="cosine", lr_hold_epochs=2)
    rates = [train.learning_rate(cfg, step, 4) for step in range(40)]
    assert rates[:8] == [1.0] * 8 and rates[8 + 16] == pytest.approx(0.5) and 0 < rates[-1] < 0.01
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def train_identity(store) -> str:
    from ecgfast.evaluate import store_identity

    return store_identity(store)["fingerprint"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert train.main(argv) == 0


def test_two_gloo_processes_pretrain_together(tmp_path, cache):
    # Build the cohort here first so that the two ranks only open it.
    train.open_data(train.Config(**{**train.PRESETS["micro"][1], "cache": str(cache)}))
    argv = micro(tmp_path, cache, "pretrain", "--name", "ddp")  # one epoch
    mp.start_processes(_rank, args=(2, _free_port(), argv), nprocs=2, join=True, start_method="spawn")
    ckpt = torch.load(tmp_path / "ddp" / "pretrain.pt", weights_only=False)
    # --batch-size 16 is the batch of both ranks together (8 each): an epoch takes the steps of one process's 16
    cfg = train.Config(**ckpt["config"])
    split = PatientSplit.from_json((tmp_path / "ddp" / "split.json").read_text())
    assert ckpt["step"] == len(train.make_sampler(cfg, train.open_data(cfg), split)) > 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
