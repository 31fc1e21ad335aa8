import argparse
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecgfast.leads import LEADS8
from ecgfast.models import (
    DEFAULT_GROUPS,
    DualStreamTemporalNet,
    ProjectionHead,
    SingleStreamTemporalNet,
    TemporalNet,
    load_checkpoint,
    load_pretrained,
    save_authors_checkpoint,
    train_flops,
)

BLOCKS = ((32, 64), (64, 128), (128, 256), (256, 256))


def paper_counts(time_after_pool: int) -> tuple[int, int]:
    """(parameters, forward multiply-adds per lead) of the width-1.0 TemporalNet, from the issue's description."""
    params = 32 * 7 + 32 + 2 * 32  # stem conv with bias, BN
    macs_per_t = 0
    for k in (3, 7):
        for ci, co in BLOCKS:
            params += ci * ci * k + 2 * ci + ci * co * k + 2 * co
            macs_per_t += ci * ci * k + ci * co * k
            if ci != co:
                params += ci * co + 2 * co
                macs_per_t += ci * co
    params += 512 * 512 * 3 + 512 + 2 * 512  # head conv with bias, BN
    macs_per_t += 512 * 512 * 3
    return params, macs_per_t * time_after_pool + 32 * 7 * 4 * time_after_pool


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_count():
    net = TemporalNet(width=1.0)
    assert n_params(net) == 2_836_672 == paper_counts(1)[0]
    assert net.n_features == 512
    assert n_params(ProjectionHead(512)) == 512 * 256 + 256 + 256 * 128 + 128


def test_paper_train_flops_match_the_hand_count():
    # 8 leads, 5 s at 500 Hz: forward + backward ~ 3 x forward (the first conv's input gradient is never computed)
    flops = train_flops(SingleStreamTemporalNet(width=1.0), (1, 1, 8, 2500))
    fwd = 2 * 8 * paper_counts(2500 // 4)[1]
    assert flops == pytest.approx(3 * fwd, rel=0.01)
    assert flops == pytest.approx(85e9, rel=0.01)


@pytest.mark.parametrize("width, n_features", [(1 / 16, 32), (0.25, 128), (1.0, 512)])
def test_temporalnet_shapes(width, n_features):
    net = TemporalNet(width=width)
    out = net(torch.randn(3, 2, 40))
    assert out.shape == (3, 2, n_features) and net.n_features == n_features


@pytest.mark.parametrize("model_cls, views_per_copy", [(DualStreamTemporalNet, 2), (SingleStreamTemporalNet, 8)])
def test_embed_and_features_shapes(model_cls, views_per_copy):
    model = model_cls(width=1 / 16)
    x = torch.randn(5, 3, 8, 50)  # odd batch, three copies, a window not a multiple of 4
    z = model.embed(x)
    assert z.shape == (5, 3 * views_per_copy, 128)
    assert model.n_views(3) == 3 * views_per_copy
    assert model.features(x[:, 0]).shape == (5, model.n_features)
    assert model(x[:, 0]).shape == (5, 1)


@pytest.mark.parametrize("model_cls", [DualStreamTemporalNet, SingleStreamTemporalNet])
def test_views_are_copy_major(model_cls):
    torch.manual_seed(0)
    model = model_cls(width=1 / 16).eval()  # eval: BatchNorm statistics must not mix the copies
    x = torch.randn(4, 3, 8, 48)
    z = model.embed(x)
    s = model.n_views(1)
    for c in range(3):
        torch.testing.assert_close(z[:, c * s:(c + 1) * s], model.embed(x[:, c:c + 1]), rtol=1e-5, atol=1e-5)


def test_dual_stream_views_against_a_reference():
    torch.manual_seed(1)
    model = DualStreamTemporalNet(width=1 / 16).eval()
    x = torch.randn(3, 2, 8, 48)
    z = model.embed(x)
    for s, (group, net, proj) in enumerate(zip(DEFAULT_GROUPS, model.streams, model.projections)):
        idx = [LEADS8.index(name) for name in group]
        for c in range(2):
            per_lead = proj(net(x[:, c, idx]))  # each lead's projection, then the average
            torch.testing.assert_close(z[:, c * 2 + s], per_lead.mean(dim=1), rtol=1e-5, atol=1e-5)
    feats = torch.stack([net(x[:, 0, [LEADS8.index(n) for n in g]]).mean(1)
                         for g, net in zip(DEFAULT_GROUPS, model.streams)]).mean(0)
    torch.testing.assert_close(model.features(x[:, 0]), feats)


def test_a_stream_sees_only_its_leads():
    model = DualStreamTemporalNet(width=1 / 16).eval()
    x = torch.randn(2, 1, 8, 48)
    y = x.clone()
    y[:, :, LEADS8.index("V2")] += 1.0  # V2 is in the second group only
    zx, zy = model.embed(x), model.embed(y)
    torch.testing.assert_close(zx[:, 0], zy[:, 0])
    assert not torch.allclose(zx[:, 1], zy[:, 1])


def test_single_stream_views_are_per_lead():
    model = SingleStreamTemporalNet(width=1 / 16).eval()
    x = torch.randn(2, 2, 8, 48)
    z = model.embed(x)
    ref = model.projection(model.backbone(x[:, 1]))
    torch.testing.assert_close(z[:, 8:16], ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(2)
    model = DualStreamTemporalNet(width=1 / 16)
    x = torch.randn(6, 2, 8, 64)
    ref = model.eval().embed(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.embed(x)
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), ref, rtol=0.05, atol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.embed(x).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.streams.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_input_names_the_problem():
    model = DualStreamTemporalNet(width=1 / 16)
    with pytest.raises(ValueError, match="8 leads"):
        model.embed(torch.randn(2, 1, 12, 40))
    with pytest.raises(ValueError, match="4-D"):
        model.embed(torch.randn(2, 8, 40))
    with pytest.raises(ValueError, match="aVR"):
        DualStreamTemporalNet(groups=(("I", "aVR"), ("V1",)))
    with pytest.raises(ValueError, match="width"):
        TemporalNet(width=0)


def test_gpu_train_script_runs_its_cpu_configuration(tmp_path, monkeypatch):
    import json
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--steps", "1", "--warmup", "0", "--batch", "2",
                                     "--width", "0.0625", "--samples", "250", "--no-compile", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("gpu_train_*.json")]
    expected = train_flops(DualStreamTemporalNet(width=result["width"]),
                           (result["batch"], 2, 8, result["samples"]))
    assert result["model_gflop_per_step"] == pytest.approx(expected / 1e9)
    assert result["ecgs_per_s"] > 0 and np.isfinite(result["loss"])


# ---------------------------------------------------------------------------------------------------------------------
# The released weights of Dade et al. (github.com/Deekshith-Dade/ecg-contrastive). Their layout and forward, written
# down here from their published architecture (models.py, parameters.py, main.py): ECG_TemporalNet1D has
# firstLayer = Conv1d(1, 32, 7, bias) + BN + ReLU + MaxPool(4); residualBlocks_time1 / _time2 = four residual blocks
# with kernel 3 / 7 (conv1 ci->ci, batchNorm1, ReLU, conv2 ci->co, batchNorm2, dropout, + resampleInput (1x1 conv
# + BN where ci != co), ReLU; convs without bias); their outputs concatenated (time1 first) into integrationBlock =
# Conv1d(512, 512, 3, bias) + BN + dropout + ReLU + global average pool; finalLayer = Linear(512, 256) ->
# Linear(256, 128) in pretraining. ModelGroup feeds leads [0, 1, 6, 7] to model_g1 and [2, 3, 4, 5] to model_g2 and
# averages each group's per-lead outputs.

THEIR_GROUPS = ([0, 1, 6, 7], [2, 3, 4, 5])  # indices into I, II, V1-V6


def their_network(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random float32 weights under the authors' names, BatchNorm statistics included."""
    w = {}

    def conv(name, co, ci, k, bias):
        w[name + "weight"] = torch.randn(co, ci, k, generator=gen) / (ci * k) ** 0.5
        if bias:
            w[name + "bias"] = 0.1 * torch.randn(co, generator=gen)

    def bn(name, c):
        w[name + "weight"] = 1 + 0.2 * torch.randn(c, generator=gen)
        w[name + "bias"] = 0.1 * torch.randn(c, generator=gen)
        w[name + "running_mean"] = 0.2 * torch.randn(c, generator=gen)
        w[name + "running_var"] = 0.5 + torch.rand(c, generator=gen)
        w[name + "num_batches_tracked"] = torch.tensor(1000)

    conv("firstLayer.0.", 32, 1, 7, True)
    bn("firstLayer.1.", 32)
    for b, k in ((1, 3), (2, 7)):
        for i, (ci, co) in enumerate(BLOCKS):
            p = f"residualBlocks_time{b}.{i}."
            conv(p + "conv1.", ci, ci, k, False)
            conv(p + "conv2.", co, ci, k, False)
            bn(p + "batchNorm1.", ci)
            bn(p + "batchNorm2.", co)
            if ci != co:
                conv(p + "resampleInput.0.", co, ci, 1, False)
                bn(p + "resampleInput.1.", co)
    conv("integrationBlock.0.", 512, 512, 3, True)
    bn("integrationBlock.1.", 512)
    for i, (fi, fo) in enumerate(((512, 256), (256, 128))):
        w[f"finalLayer.{i}.weight"] = torch.randn(fo, fi, generator=gen) / fi ** 0.5
        w[f"finalLayer.{i}.bias"] = 0.1 * torch.randn(fo, generator=gen)
    return w


def their_forward(w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode float64 forward of one network: leads (N, T) -> (integration output (N, 512), projection (N, 128))."""
    w = {k: v.double() for k, v in w.items()}

    def bn(h, p):
        return F.batch_norm(h, w[p + "running_mean"], w[p + "running_var"], w[p + "weight"], w[p + "bias"],
                            training=False, eps=1e-5)

    h = F.conv1d(x.double()[:, None], w["firstLayer.0.weight"], w["firstLayer.0.bias"], padding=3)
    h = F.max_pool1d(F.relu(bn(h, "firstLayer.1.")), 4)
    branches = []
    for b, k in ((1, 3), (2, 7)):
        g = h
        for i in range(4):
            p = f"residualBlocks_time{b}.{i}."
            skip = bn(F.conv1d(g, w[p + "resampleInput.0.weight"]), p + "resampleInput.1.") \
                if p + "resampleInput.0.weight" in w else g
            f = F.relu(bn(F.conv1d(g, w[p + "conv1.weight"], padding=k // 2), p + "batchNorm1."))
            g = F.relu(bn(F.conv1d(f, w[p + "conv2.weight"], padding=k // 2), p + "batchNorm2.") + skip)
        branches.append(g)
    h = F.conv1d(torch.cat(branches, 1), w["integrationBlock.0.weight"], w["integrationBlock.0.bias"], padding=1)
    h = F.relu(bn(h, "integrationBlock.1.")).mean(dim=-1)
    z = F.linear(F.linear(h, w["finalLayer.0.weight"], w["finalLayer.0.bias"]), w["finalLayer.1.weight"],
                 w["finalLayer.1.bias"])
    return h, z


@pytest.fixture(scope="module")
def their_weights():
    gen = torch.Generator().manual_seed(15)
    return their_network(gen), their_network(gen)


def single_file(w):
    return {"state_dict": {"module." + k: v for k, v in w.items()}, "epoch": 200}  # saved from DataParallel


def groups_file(w1, w2):
    return {"state_dict": {"model_g1": dict(w1), "model_g2": dict(w2)}}


def their_lead_outputs(w, x):
    """x (B, L, T) -> per-lead (B, L, 512) and (B, L, 128), float64."""
    b, n, t = x.shape
    h, z = their_forward(w, x.reshape(b * n, t))
    return h.reshape(b, n, -1), z.reshape(b, n, -1)


def test_authors_single_network_file_loads_strictly_and_gives_their_outputs(tmp_path, their_weights):
    w = their_weights[0]
    path = tmp_path / "temporalnet.pth.tar"
    torch.save(single_file(w), path)
    ckpt = load_checkpoint(path)
    assert (ckpt.kind, ckpt.width, ckpt.source) == ("single", 1.0, "authors-single")
    assert ckpt.settings == {"model": "single", "width": 1.0, "dropout": 0.5, "fs": 500.0, "window_s": 5.0}
    # every tensor of the file lands in the model, and the model has no tensor but the classifier left unfilled
    model = load_pretrained(path)
    fingerprints = lambda ts: sorted((tuple(t.shape), t.double().sum().item(), t.double().square().sum().item())  # noqa
                                     for t in ts)
    own = [v for k, v in model.state_dict().items() if not k.startswith("classifier.")]
    assert fingerprints(own) == fingerprints(w.values())
    assert type(model) is SingleStreamTemporalNet and not model.training
    # float64 throughout (a float64 forward at width 1.0 is slow on a CPU: a short window keeps it to a second)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h, z = their_lead_outputs(w, x)
    with torch.no_grad():
        model.double()
        torch.testing.assert_close(model.features(x), h.mean(dim=1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.embed(x[:, None]), z, rtol=1e-10, atol=1e-12)


def test_authors_lead_groups_file_loads_strictly_and_gives_their_outputs(tmp_path, their_weights):
    w1, w2 = their_weights
    w2 = {k: v for k, v in w2.items() if not k.endswith("num_batches_tracked")}  # older PyTorch saved none
    path = tmp_path / "lead_groupings_temporalnet.pth.tar"
    torch.save(groups_file(w1, w2), path)
    model = load_pretrained(path)
    assert type(model) is DualStreamTemporalNet and not model.training and model.n_features == 512
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = [their_lead_outputs(w, x[:, idx]) for w, idx in zip((w1, w2), THEIR_GROUPS)]
    with torch.no_grad():
        model.double()
        features = torch.stack([h.mean(dim=1) for h, _ in outs]).mean(dim=0)
        torch.testing.assert_close(model.features(x), features, rtol=1e-10, atol=1e-12)
        projections = torch.stack([z.mean(dim=1) for _, z in outs], dim=1)  # (B, 2, 128), g1 then g2
        torch.testing.assert_close(model.embed(x[:, None]), projections, rtol=1e-10, atol=1e-12)


def test_authors_layout_round_trips(tmp_path, their_weights):
    w1, w2 = their_weights
    for name, contents in (("single.tar", single_file(w1)), ("groups.tar", groups_file(w1, w2))):
        torch.save(contents, tmp_path / name)
        save_authors_checkpoint(load_pretrained(tmp_path / name), tmp_path / ("again-" + name))
        again = torch.load(tmp_path / ("again-" + name), weights_only=True)["state_dict"]
        original = contents["state_dict"]
        parts = [(again, original)] if "module.firstLayer.0.weight" in original else \
            [(again[k], original[k]) for k in ("model_g1", "model_g2")]
        for a, o in parts:
            assert a.keys() == o.keys()
            assert all(torch.equal(a[k], o[k]) for k in o)
    with pytest.raises(ValueError, match="width 1.0"):
        save_authors_checkpoint(DualStreamTemporalNet(width=1 / 16), tmp_path / "narrow.tar")


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


# Files that do not fit: what each holds (from the two networks' weights) and what the error must say after the path
MISFITS = {
    "missing": (lambda w1, w2: single_file(_drop(w1, "integrationBlock.1.running_var")),
                r"state_dict .*missing \[integrationBlock\.1\.running_var\]"),
    "extra": (lambda w1, w2: single_file({**w1, "finalLayer.2.weight": torch.zeros(1, 128)}),
              r"unexpected \[finalLayer\.2\.weight\]"),
    "classification layer": (
        lambda w1, w2: single_file({**_drop(_drop(w1, "finalLayer.1.weight"), "finalLayer.1.bias"),
                                    "finalLayer.0.weight": torch.zeros(1, 512)}),
        r"missing \[finalLayer\.1\.weight, finalLayer\.1\.bias\]; wrong shapes \[finalLayer\.0\.weight \(1, 512\) "
        r"instead of \(256, 512\)\]"),
    "shape": (lambda w1, w2: groups_file(w1, {**w2, "residualBlocks_time2.0.conv1.weight": torch.zeros(32, 32, 3)}),
              r"state_dict\['model_g2'\] .*wrong shapes \[residualBlocks_time2\.0\.conv1\.weight \(32, 32, 3\) "
              r"instead of \(32, 32, 7\)\]"),
    "one group": (lambda w1, w2: {"state_dict": {"model_g1": w1}}, r"missing \['model_g2'\]"),
    "top-level extra": (lambda w1, w2: {"state_dict": {**groups_file(w1, w2)["state_dict"],
                                                       "finalLayer.0.weight": torch.zeros(1, 512)}},
                        r"unexpected \['finalLayer\.0\.weight'\]"),
    "not a checkpoint": (lambda w1, w2: {"weights": w1}, r"not an encoder checkpoint.*\['weights'\]"),
    "pickled object": (lambda w1, w2: {**single_file(w1), "args": argparse.Namespace(arch="TemporalNet")},
                       r"weights_only=True"),
}


@pytest.mark.parametrize("case", MISFITS)
def test_authors_files_that_do_not_fit_name_the_file_and_the_problem(tmp_path, their_weights, case):
    contents, message = MISFITS[case]
    path = tmp_path / "weights.pth.tar"
    torch.save(contents(*their_weights), path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_pretrained(path)


def test_ecgfast_checkpoint_reads_with_its_settings(tmp_path):
    model = DualStreamTemporalNet(width=1 / 16, dropout=0.1).eval()
    config = {"model": "dual", "width": 1 / 16, "dropout": 0.1, "fs": 100.0, "tasks": ("low_lvef",)}
    optimizer = torch.optim.Adam(model.parameters(), eps=1e-4)  # train.py saves its state: it must read weights_only
    model(torch.randn(2, 8, 40)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loader": {"epoch": 1, "step": 0},
             "step": 3, "config": config}
    torch.save(state, tmp_path / "pretrain.pt")
    ckpt = load_checkpoint(tmp_path / "pretrain.pt")
    assert (ckpt.kind, ckpt.width, ckpt.dropout, ckpt.source, ckpt.settings) == ("dual", 1 / 16, 0.1, "ecgfast", config)
    x = torch.randn(2, 8, 40)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build().features(x), model.features(x), rtol=0, atol=0)
    torch.save({"model": model.state_dict(), "config": {**config, "width": 1 / 32}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: model \(a dual-stream TemporalNet at width 0.03125\) does not "
                                         r"fit: .*wrong shapes \[classifier\.weight \(1, 32\) instead of \(1, 16\)"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no checkpoint file at"):
        load_checkpoint(tmp_path / "absent.pt")
