"""The loss tests of test_losses.py again, on the Triton kernels (through the interpreter when there is no GPU).

The interpreter costs about 10 ms per tile iteration, so the float64 comparison runs on a pairwise subset of the
cases that still covers every dtype, V in {2, 4, 16}, d in {16, 100, 128, 512}, each patient layout and the
temperature's gradient; the primitives' full matrix is tests/test_kernels.py's.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ecgfast import losses
from ecgfast.kernels import check as kernels_check
from ecgfast.losses import reference
from test_losses import (  # noqa: F401  (one_thread is an autouse fixture: imported to apply here too)
    CASES,
    LOSSES,
    one_thread,
    test_identical_embeddings_give_log_n,
    test_modules_match_functions_and_learn_the_temperature,
    test_only_the_normalized_embeddings_are_kept_for_the_backward,
    test_single_sample_losses_are_zero,
    test_small_temperature_bf16_stays_finite_and_accurate,
    test_zero_vectors_get_a_bounded_gradient,
)
from test_losses import test_loss_matches_float64_reference as _loss_matches_reference

# Rows of test_losses.CASES: the V = 16 and d = 512 cases only at N = 1, where the interpreter is quick.
TRITON_CASES = [CASES[i] for i in (2, 3, 5, 8, 9, 11, 12)]


@pytest.fixture
def backend():
    return "triton"


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n,v,d,layout,dtype,scale_grad", TRITON_CASES)
def test_loss_matches_float64_reference(backend, name, n, v, d, layout, dtype, scale_grad):
    _loss_matches_reference(backend, name, n, v, d, layout, dtype, scale_grad)


def _unit_fp16(n, v, d, seed):
    z = F.normalize(torch.randn(n, v, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)
    return z.to(torch.float16)


@pytest.mark.parametrize("name", ["clocs", "clip"])
def test_fp16_gradients_of_tiny_upstream_gradients(name, dot_operands):
    # The regime of N = 65,536 without loss scaling, at N = 512: the loss times 3e-3 makes each dS ~1e-8, below
    # fp16's normal range. Relative to the largest entry, the Triton gradients stay within 1e-2 of float64 on the
    # same fp16 inputs, and the dots run on fp16 operands.
    z = _unit_fp16(512, 2, 32, seed=10)
    patient_id = torch.arange(512) // 2
    grads = []
    for impl, dtype, options in ((losses, torch.float16, dict(backend="triton")), (reference, torch.float64, {})):
        x = z.to(dtype).detach().requires_grad_()
        loss = (impl.clocs_loss(x, patient_id, temperature=0.1, **options) if name == "clocs" else
                impl.clip_loss(x[:, 0], x[:, 1], logit_scale=10.0, **options))
        (loss * 3e-3).backward()
        grads.append(x.grad.double())
    got, want = grads
    error = float((got - want).abs().max() / want.abs().max())
    print(f"{name}: fp16 gradient error relative to the largest float64 entry {error:.2e}")  # BENCHMARKS.md, -s
    assert error <= 1e-2
    assert set(dot_operands) == {"fp16"}


def test_losses_never_wait_for_the_device(monkeypatch):
    # Forward and backward of every loss on the Triton backend, with a temperature tensor that gets its gradient:
    # no call from ecgfast's own code reads a tensor on the host (the interpreter's own copies are not ours).
    ours = (str(Path(losses.__file__).parent), str(Path(kernels_check.__file__).parent))

    def guarded(owner, name):
        original = getattr(owner, name)

        def method(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours):
                raise AssertionError(f"{name} called from {caller}:{sys._getframe(1).f_lineno}")
            return original(*args, **kwargs)

        return method

    z = torch.randn(20, 2, 24, generator=torch.Generator().manual_seed(11)).requires_grad_()
    tau = torch.tensor(0.1, requires_grad=True)
    patient_id = torch.arange(20) // 3
    calls = [lambda: losses.clocs_loss(z, patient_id, temperature=tau, backend="triton"),
             lambda: losses.supcon_loss(z, patient_id, temperature=tau, backend="triton"),
             lambda: losses.ntxent_loss(z, temperature=tau, backend="triton"),
             lambda: losses.clip_loss(z[:, 0], z[:, 1], logit_scale=1 / tau, backend="triton")]
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                     "unique", "masked_select"):
            m.setattr(torch.Tensor, name, guarded(torch.Tensor, name))
        for name in ("unique", "nonzero", "masked_select", "unique_consecutive"):  # output sizes the host must learn
            m.setattr(torch, name, guarded(torch, name))
        for call in calls:
            call().backward()
    assert z.grad.isfinite().all() and tau.grad.isfinite()


def test_self_check_passes_under_the_interpreter(capsys):
    assert kernels_check.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "all 16 checks passed" in out and "bfloat16" in out


@pytest.mark.parametrize("deterministic", [False, True])
def test_clocs_work_per_view_pair(kernel_work, deterministic):
    # Counted through the interpreter in the fixed-shift case (normalized, tau = 0.1): N = 256, V = 2, d = 64, bf16
    # (one product per tile; fp32 under "highest" takes three). The default path computes each logit once per pass;
    # deterministic=True recomputes them from both sides (the atomic-free design).
    n, d = 256, 64
    z = F.normalize(torch.randn(n, 2, d, generator=torch.Generator().manual_seed(12)), dim=-1).to(torch.bfloat16)
    z.requires_grad_()
    loss = losses.clocs_loss(z, torch.arange(n) // 2, backend="triton", deterministic=deterministic)
    forward = dict(kernel_work)
    kernel_work.clear()
    loss.backward()
    backward = dict(kernel_work)
    unit = n * n * d
    print(f"deterministic={deterministic}: forward {forward['flops'] / unit:.3f} N^2 d, backward "
          f"{backward['flops'] / unit:.3f} N^2 d, exps {(forward['exps'] + backward['exps']) / (n * n):.3f} N^2")
    if deterministic:
        assert forward["flops"] == 4 * unit and backward["flops"] == 8 * unit
        return
    assert forward["flops"] <= 2.1 * unit and backward["flops"] <= 6.1 * unit
    assert forward["exps"] + backward["exps"] <= 2.1 * n * n
