import numpy as np
import pytest
import torch

from ecgfast.leads import LEADS8
from ecgfast.models import (
    DEFAULT_GROUPS,
    DualStreamTemporalNet,
    ProjectionHead,
    SingleStreamTemporalNet,
    TemporalNet,
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
