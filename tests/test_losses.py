"""The losses of ecgfast.losses and their primitives against float64 references, per backend.

``backend`` is a fixture so that tests/test_losses_triton.py reruns every test here on the Triton kernels.
"""

import itertools
import math
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ecgfast import losses
from ecgfast.losses import chunked, reference
from ecgfast.losses import _dispatch, _numerics
from ecgfast.losses._dispatch import primitive

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (N, V, d, patients, dtype, scale requires grad): the values of the issue covered pairwise, not as a full product.
# V = 16 and d = 512 only at small N; at N = 1 every patient layout is the same. N = 1 in bf16 is
# test_single_sample_losses_are_zero's: there the bf16 reference is exact by cancellation, so "twice its error" is 0.
CASES = [
    (1, 2, 16, "distinct", F32, False),
    (1, 4, 100, "distinct", F16, False),
    (1, 16, 512, "distinct", F32, False),
    (7, 4, 100, "repeats", F32, True),
    (7, 16, 512, "one", F32, True),
    (7, 2, 128, "repeats", F16, True),
    (7, 16, 16, "distinct", BF16, False),
    (64, 2, 128, "repeats", F32, True),
    (64, 4, 16, "one", F16, False),
    (64, 2, 100, "distinct", BF16, True),
    (130, 2, 100, "distinct", F32, False),
    (130, 4, 128, "repeats", BF16, True),
    (130, 2, 16, "one", F32, True),
]
LOSSES = ["clocs", "supcon", "ntxent", "clip"]


@pytest.fixture(params=["torch"])
def backend(request):
    return request.param


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tensors here are tiny: a second intra-op thread only adds synchronization, which on a loaded machine
    # made these tests 30x slower (OpenMP threads waiting for a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _patient_ids(n, layout, gen):
    if layout == "distinct":
        return torch.randperm(n, generator=gen) + 100
    if layout == "one":
        return torch.full((n,), 3, dtype=torch.int64)
    return torch.randint(0, max(1, n // 3), (n,), generator=gen)


def _embeddings(n, v, d, seed, dtype=F32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, d, generator=gen).to(dtype)


def _call(name, impl, z, patient_id, scale, **options):
    """Run loss `name` of module `impl` (ecgfast.losses or the reference) on z (N, V, d); `scale` is 1/tau."""
    if name == "clip":
        return impl.clip_loss(z[:, 0], z[:, 1], logit_scale=scale, **options)
    temperature = 1 / scale
    if name == "ntxent":
        return impl.ntxent_loss(z[:, :2], temperature=temperature, **options)
    return getattr(impl, f"{name}_loss")(z, patient_id, temperature=temperature, **options)


def _loss_and_grads(name, impl, z, patient_id, scale, scale_grad, scale_dtype, **options):
    """[loss, dL/dz (, dL/dscale)] with z as given (dtype kept) and the scale a tensor of scale_dtype."""
    z = z.detach().clone().requires_grad_()
    s = torch.tensor(scale, dtype=scale_dtype, requires_grad=scale_grad)
    loss = _call(name, impl, z, patient_id, s, **options)
    loss.backward()
    return [loss.detach(), z.grad] + ([s.grad] if scale_grad else [])


def _assert_close_to_reference(name, z, patient_id, scale, scale_grad, **options):
    """The issue's tolerances: fp32 within 1e-5 of each tensor's largest entry (1e-6 absolute floor): an entry
    that sums terms of opposite signs carries the rounding of the terms, not of its own size; fp16 and bf16 within
    twice the error of the reference computed in the same dtype, plus 1e-3 on the loss and 1e-4 on gradients."""
    got = _loss_and_grads(name, losses, z, patient_id, scale, scale_grad, F32, **options)
    exact = _loss_and_grads(name, reference, z.double(), patient_id, scale, scale_grad, torch.float64)
    if z.dtype == F32:
        for g, e in zip(got, exact):
            torch.testing.assert_close(g.double(), e, rtol=0, atol=1e-5 * e.abs().max().item() + 1e-6)
        return
    same_dtype = _loss_and_grads(name, reference, z, patient_id, scale, scale_grad, F32)
    for k, (g, e, r) in enumerate(zip(got, exact, same_dtype)):
        err = (g.double() - e).abs().max().item()
        ref_err = (r.double() - e).abs().max().item()
        floor = 1e-3 if k == 0 else 1e-4
        what = ["loss", "dz", "dscale"][k]
        assert err <= 2 * ref_err + floor, f"{what}: error {err:.3g} against the reference's {ref_err:.3g}"


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n,v,d,layout,dtype,scale_grad", CASES)
def test_loss_matches_float64_reference(backend, name, n, v, d, layout, dtype, scale_grad):
    gen = torch.Generator().manual_seed(n * 1000 + v * 10 + d)
    patient_id = _patient_ids(n, layout, gen)
    z = _embeddings(n, v, d, seed=n + v + d, dtype=dtype)
    _assert_close_to_reference(name, z, patient_id, 10.0, scale_grad, backend=backend)


@pytest.mark.parametrize("name", LOSSES)
def test_small_temperature_bf16_stays_finite_and_accurate(backend, name):
    z = _embeddings(64, 2, 128, seed=1, dtype=BF16)
    patient_id = _patient_ids(64, "repeats", torch.Generator().manual_seed(1))
    loss, dz, dscale = _loss_and_grads(name, losses, z, patient_id, 100.0, True, F32, backend=backend)
    assert torch.isfinite(loss) and torch.isfinite(dz).all() and torch.isfinite(dscale)
    _assert_close_to_reference(name, z, patient_id, 100.0, True, backend=backend)


@pytest.mark.parametrize("name", LOSSES)
def test_identical_embeddings_give_log_n(backend, name):
    # Every logit equals 1/tau, so each cross-entropy is log(number of candidates): N for the cross-view losses,
    # 2N - 1 for the self-similarity ones.
    n = 7
    z = torch.randn(1, 1, 32).expand(n, 4, 32).contiguous()
    loss = _call(name, losses, z, torch.arange(n), 10.0, backend=backend)
    expected = math.log(2 * n - 1) if name == "ntxent" else math.log(n * 4 - 1) if name == "supcon" else math.log(n)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_normalize_matches_autograd_of_the_formula(dtype):
    # The shared normalization (its own backward, which recomputes from x) against autograd through the plain
    # formula in float64, a zero row included: the value and the gradient, at the input dtype's rounding.
    x = torch.randn(6, 3, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[2, 1] = 0.0
    x = x.to(dtype)
    g = torch.randn(6, 3, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = x.clone().requires_grad_()
    _numerics.normalize(ours).backward(g.to(dtype))
    plain = x.double().requires_grad_()
    norm = torch.linalg.vector_norm(plain, dim=-1, keepdim=True)
    value = plain / torch.where(norm < _numerics.ZERO_NORM, 1.0, norm)
    value.backward(g)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(_numerics.normalize(x).double(), value.detach(), rtol=0, atol=tol)
    torch.testing.assert_close(ours.grad.double(), plain.grad, rtol=0, atol=tol * plain.grad.abs().max().item())
    if dtype == torch.float64:  # away from the zero row, where finite differences leave the zero case
        assert torch.autograd.gradcheck(_numerics.normalize, (x[:2].clone().requires_grad_(),))


@pytest.mark.parametrize("name", ["clocs", "clip", "supcon"])
def test_only_the_normalized_embeddings_are_kept_for_the_backward(backend, name):
    # Between forward and backward, a loss keeps one copy of the embeddings beyond the input: the normalized ones,
    # in the input dtype (no fp32 copy for the normalization or the positive terms; the kernels and the chunked
    # path keep only O(N) vectors). The bytes that autograd saves, counted by its hooks. (NT-Xent keeps a second
    # bf16 copy: the views laid out as rows for self_lse.)
    z = F.normalize(torch.randn(64, 2, 128, generator=torch.Generator().manual_seed(5)), dim=-1).to(BF16)
    z.requires_grad_()
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _call(name, losses, z, torch.arange(64) // 2, 10.0, backend=backend)
    input_bytes = z.numel() * z.element_size()
    print(f"{name} ({backend}): saved for the backward {sum(saved.values()) / input_bytes:.2f}x the input's bytes")
    assert sum(saved.values()) <= 2.2 * input_bytes  # the input itself, its normalized copy, O(N) vectors
    assert not [k for k, b in saved.items() if k[1] == torch.float32 and b >= input_bytes]
    loss.backward()


@pytest.mark.parametrize("name", ["clocs", "supcon"])
def test_slices_of_rows_give_the_same_loss_and_gradient(monkeypatch, name):
    # The normalization and the positive terms take z in fp32 slices of rows; slices of 3 rows give what one slice
    # gives.
    z = torch.randn(20, 3, 8, generator=torch.Generator().manual_seed(6))
    patient_id = torch.arange(20) // 3
    results = []
    for rows in (1 << 16, 3):
        monkeypatch.setattr(_numerics, "SLICE_ROWS", rows)
        x = z.clone().requires_grad_()
        loss = getattr(losses, f"{name}_loss")(x, patient_id, backend="torch")
        loss.backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_zero_vectors_get_a_bounded_gradient(backend, name):
    # A zero embedding stays zero under normalize=True and gets the gradient of the normalized row unchanged: as
    # large as the other rows' (F.normalize would scale it by 1e12).
    z = _embeddings(7, 2, 16, seed=2)
    z[0] = 0
    z[3, 1] = 0
    patient_id = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    loss, dz = _loss_and_grads(name, losses, z, patient_id, 10.0, False, F32, backend=backend)
    assert torch.isfinite(loss) and torch.isfinite(dz).all()
    others = dz.clone()
    others[0] = others[3, 1] = 0
    assert 0 < dz[0].abs().max() <= 10 * others.abs().max() and dz[3, 1].abs().max() <= 10 * others.abs().max()
    _assert_close_to_reference(name, z, patient_id, 10.0, False, backend=backend)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_single_sample_losses_are_zero(backend, dtype):
    # One sample of two views, one candidate per row: every cross-entropy is exactly 0 and so is its gradient. In
    # bf16 the primitive's gradient (bf16, like its input) and the positive term's can round one ulp apart: ~1e-3.
    z = _embeddings(1, 2, 512, seed=3, dtype=dtype)
    tol = 1e-6 if dtype == F32 else 1e-3
    for name in LOSSES:
        loss, dz = _loss_and_grads(name, losses, z, torch.tensor([4]), 10.0, False, F32, backend=backend)
        assert abs(loss.item()) < tol and dz.abs().max().item() < tol


# ---------------------------------------------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    "n,v,d,dtype,scale",
    [(1, 2, 16, F32, 10.0), (7, 3, 100, BF16, 10.0), (130, 4, 128, F32, 100.0), (64, 2, 512, F16, 14.0)],
)
def test_cross_lse_matches_float64_reference(backend, n, v, d, dtype, scale):
    z = F.normalize(_embeddings(n, v, d, seed=4), dim=-1).to(dtype).requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    row, col = primitive("cross_lse", backend, z)(z, s)
    assert row.dtype == col.dtype == F32 and row.shape == col.shape == (v * (v - 1) // 2, n)
    gr, gc = torch.randn_like(row), torch.randn_like(col)
    (row * gr + col * gc).sum().backward()
    z64 = z.detach().double().requires_grad_()
    s64 = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    row64, col64 = reference.cross_lse(z64, s64)
    (row64 * gr + col64 * gc).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5 * scale)  # fp32 logits of size `scale` carry about scale x 1e-7 of rounding
    torch.testing.assert_close(row.double(), row64, **tol)
    torch.testing.assert_close(col.double(), col64, **tol)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-2 if dtype != F32 else 1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "m,d,dtype,scale", [(1, 16, F32, 10.0), (7, 100, BF16, 10.0), (130, 128, F32, 100.0), (64, 512, F16, 14.0)]
)
def test_self_lse_matches_float64_reference(backend, m, d, dtype, scale):
    x = F.normalize(_embeddings(m, 1, d, seed=5)[:, 0], dim=-1).to(dtype).requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    lse = primitive("self_lse", backend, x)(x, s)
    assert lse.dtype == F32 and lse.shape == (m,)
    if m == 1:
        assert lse.item() == float("-inf")
        return
    g = torch.randn_like(lse)
    (lse * g).sum().backward()
    x64 = x.detach().double().requires_grad_()
    s64 = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    lse64 = reference.self_lse(x64, s64)
    (lse64 * g).sum().backward()
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-2 if dtype != F32 else 1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("scale", [10.0, 100.0])  # the fixed-shift path and the running-max path
def test_chunked_blocks_agree_with_one_block(scale):
    z = F.normalize(_embeddings(130, 3, 32, seed=6), dim=-1)
    outputs = []
    for chunk in (16, 130):
        zc = z.clone().requires_grad_()
        s = torch.tensor(scale, requires_grad=True)
        row, col = chunked.cross_lse(zc, s, chunk=chunk)
        lse = chunked.self_lse(zc[:, 0], s, chunk=chunk)
        (row.sin().sum() + col.cos().sum() + lse.sin().sum()).backward()
        outputs.append([row, col, lse, zc.grad, s.grad])
    for one, many in zip(*outputs):
        torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------------ the references, by hand


def _dot(u, v):
    return sum(p * q for p, q in zip(u, v))


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(x - top) for x in values))


def _unit(u):
    norm = math.sqrt(_dot(u, u))
    return [x / norm for x in u]


def test_references_match_hand_computation():
    n, tau = 3, 0.5
    pid = [5, 7, 5]
    z = torch.randn(n, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    zs = [[_unit(z[i, k].tolist()) for k in range(2)] for i in range(n)]
    s = [[_dot(zs[i][0], zs[j][1]) / tau for j in range(n)] for i in range(n)]
    r = [_lse(s[i]) for i in range(n)]
    c = [_lse([s[i][j] for i in range(n)]) for j in range(n)]
    upper = [(i, j) for i in range(n) for j in range(n) if i < j and pid[i] == pid[j]]
    lower = [(i, j) for i in range(n) for j in range(n) if i > j and pid[i] == pid[j]]
    clocs = (
        sum(r[i] - s[i][i] for i in range(n)) / n
        + sum(c[j] - s[j][j] for j in range(n)) / n
        + sum(r[i] - s[i][j] for i, j in upper) / len(upper)
        + sum(c[j] - s[i][j] for i, j in lower) / len(lower)
    ) / 4
    pid_t = torch.tensor(pid)
    assert reference.clocs_loss(z, pid_t, temperature=tau).item() == pytest.approx(clocs, rel=1e-12)

    views = [(zs[i][k], pid[i]) for i in range(n) for k in range(2)]
    m = len(views)
    sim = [[_dot(views[p][0], views[q][0]) / tau for q in range(m)] for p in range(m)]
    supcon = 0.0
    for p in range(m):
        lse = _lse([sim[p][q] for q in range(m) if q != p])
        positives = [q for q in range(m) if q != p and views[q][1] == views[p][1]]
        supcon += -sum(sim[p][q] - lse for q in positives) / len(positives)
    assert reference.supcon_loss(z, pid_t, temperature=tau).item() == pytest.approx(supcon / m, rel=1e-12)

    both = [zs[i][0] for i in range(n)] + [zs[i][1] for i in range(n)]
    ntxent = 0.0
    for p in range(2 * n):
        row = [_dot(both[p], both[q]) / tau for q in range(2 * n)]
        ntxent += _lse([row[q] for q in range(2 * n) if q != p]) - row[(p + n) % (2 * n)]
    assert reference.ntxent_loss(z, temperature=tau).item() == pytest.approx(ntxent / (2 * n), rel=1e-12)

    scale = 1 / tau
    clip = sum(r[i] - s[i][i] for i in range(n)) / n / 2 + sum(c[j] - s[j][j] for j in range(n)) / n / 2
    got = reference.clip_loss(z[:, 0], z[:, 1], logit_scale=scale).item()
    assert got == pytest.approx(clip, rel=1e-12)

    z3 = torch.tensor([zs[i][0] for i in range(n)] + [zs[i][1] for i in range(n)], dtype=torch.float64)
    row, col = reference.cross_lse(z3.reshape(2, n, 4).transpose(0, 1), scale)
    assert row[0].tolist() == pytest.approx(r, rel=1e-12) and col[0].tolist() == pytest.approx(c, rel=1e-12)
    lse = reference.self_lse(z3, scale)
    hand = [_lse([_dot(both[p], both[q]) * scale for q in range(2 * n) if q != p]) for p in range(2 * n)]
    assert lse.tolist() == pytest.approx(hand, rel=1e-12)


def test_view_pairs_follow_the_contract_order():
    # Pair p of a V-view batch is the p-th (a, b), a < b, in row-major order: checked on the reference rows.
    z = F.normalize(_embeddings(5, 4, 8, seed=8), dim=-1).double()
    row, _ = reference.cross_lse(z, 3.0)
    for p, (a, b) in enumerate(itertools.combinations(range(4), 2)):
        torch.testing.assert_close(row[p], torch.logsumexp(3.0 * z[:, a] @ z[:, b].T, dim=1))


# ------------------------------------------------------------------------------------------------- the public API


def test_modules_match_functions_and_learn_the_temperature(backend):
    z = _embeddings(7, 2, 16, seed=9)
    pid = torch.tensor([0, 0, 1, 2, 3, 3, 3])
    tau = torch.nn.Parameter(torch.tensor(0.2))
    module = losses.ClocsLoss(tau, backend=backend)
    assert list(module.parameters()) == [tau]
    loss = module(z, pid)
    loss.backward()
    assert loss.item() == pytest.approx(losses.clocs_loss(z, pid, temperature=0.2, backend=backend).item(), rel=1e-6)
    assert tau.grad is not None and tau.grad.item() != 0
    assert losses.SupConLoss(0.2, backend=backend)(z, pid).item() == pytest.approx(
        losses.supcon_loss(z, pid, temperature=0.2, backend=backend).item(), rel=1e-6
    )
    assert losses.NTXentLoss(0.2, normalize=False, backend=backend)(z).item() == pytest.approx(
        losses.ntxent_loss(z, temperature=0.2, normalize=False, backend=backend).item(), rel=1e-6
    )
    assert losses.ClipLoss(backend=backend)(z[:, 0], z[:, 1], 5.0).item() == pytest.approx(
        losses.clip_loss(z[:, 0], z[:, 1], logit_scale=5.0, backend=backend).item(), rel=1e-6
    )


def _bad_call(case):
    z = torch.randn(4, 2, 8)
    pid = torch.arange(4)
    calls = {
        "z 2-d": lambda: losses.clocs_loss(z[:, 0], pid),
        "z float64": lambda: losses.supcon_loss(z.double(), pid),
        "one view": lambda: losses.clocs_loss(z[:, :1], pid),
        "ntxent 3 views": lambda: losses.ntxent_loss(torch.randn(4, 3, 8)),
        "patient_id length": lambda: losses.clocs_loss(z, pid[:3]),
        "patient_id float": lambda: losses.supcon_loss(z, pid.float()),
        "temperature zero": lambda: losses.clocs_loss(z, pid, temperature=0.0),
        "temperature shape": lambda: losses.ntxent_loss(z, temperature=torch.ones(2)),
        "logit_scale negative": lambda: losses.clip_loss(z[:, 0], z[:, 1], logit_scale=-1.0),
        "a b shapes": lambda: losses.clip_loss(z[:, 0], z[:3, 1], logit_scale=1.0),
        "backend": lambda: losses.clocs_loss(z, pid, backend="cuda"),
        "gather without process group": lambda: losses.clocs_loss(z, pid, gather=True),
    }
    return calls[case]


@pytest.mark.parametrize(
    "case,match",
    [
        ("z 2-d", "z must be a tensor of shape"),
        ("z float64", "z must be float32"),
        ("one view", "at least 2 views"),
        ("ntxent 3 views", "exactly 2 views"),
        ("patient_id length", "patient_id must be a 1-d tensor of length N = 4"),
        ("patient_id float", "patient_id must hold integers"),
        ("temperature zero", "temperature must be positive"),
        ("temperature shape", "temperature must be a float or a one-element"),
        ("logit_scale negative", "logit_scale must be positive"),
        ("a b shapes", "a and b must share shape"),
        ("backend", "backend must be one of"),
        ("gather without process group", "initialized torch.distributed"),
    ],
)
def test_bad_input_raises_value_error_naming_it(case, match):
    with pytest.raises(ValueError, match=match):
        _bad_call(case)()


def test_dispatch(monkeypatch):
    cpu = torch.zeros(1)
    assert primitive("cross_lse", "auto", cpu) is chunked.cross_lse
    assert primitive("self_lse", "torch", cpu) is chunked.self_lse
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        primitive("cross_lse", "triton", cpu)


def test_auto_uses_the_kernels_from_sm80_on_and_warns_once_below(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(_dispatch, "_warned", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _dispatch._kernels_suit(gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.warns(UserWarning, match="sm_75; backend='auto' uses the chunked PyTorch path"):
        assert not _dispatch._kernels_suit(gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _dispatch._kernels_suit(gpu)  # one warning per process
    assert not _dispatch._kernels_suit(torch.device("cpu"))


def test_import_needs_only_torch():
    code = (
        "import sys, ecgfast.losses, ecgfast.losses.reference, ecgfast.losses.chunked; "
        "print(sorted({'zarr', 'numcodecs', 'wfdb', 'scipy', 'numba', 'h5py', 'triton'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


EXTRAS_ONLY = ("numba", "zarr", "numcodecs", "scipy", "h5py", "tqdm", "matplotlib", "tensorboard", "wfdb", "pydicom")


def test_the_plain_install_is_enough_for_the_losses_and_kernels():
    # `pip install ecgfast` brings torch, triton and numpy; the losses, the kernels and their self-check import and
    # run with every package of the extras made unimportable.
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dep).group() for dep in project["dependencies"]}
    assert names == {"torch", "triton", "numpy"}
    assert "ecgfast[all]" in project["optional-dependencies"]["dev"]
    code = (
        "import os, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {EXTRAS_ONLY!r}: raise ImportError('extra: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, ecgfast.losses, ecgfast.kernels.cross_lse, ecgfast.kernels.self_lse, ecgfast.kernels.check\n"
        "z = torch.randn(6, 2, 8)\n"
        "backend = 'triton' if os.environ.get('TRITON_INTERPRET') == '1' else 'torch'\n"
        "print(float(ecgfast.losses.clocs_loss(z, torch.arange(6), backend=backend)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
