"""The Triton LSE primitives (through the interpreter here) against a materialized float64 reference: values and
gradients w.r.t. the embeddings and the scale, across dtypes, odd shapes and edge cases. Shapes are covered
pairwise, not as a full product, since the interpreter costs ~10 ms per tile iteration."""

import math

import pytest
import torch
import torch.nn.functional as F

from ecgfast.kernels import _tiles
from ecgfast.kernels.cross_lse import cross_lse
from ecgfast.kernels.self_lse import self_lse
from ecgfast.losses import reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# The float64 truth is ecgfast.losses.reference; these materialize the same formulas in the input's dtype, the
# error budget of fp16/bf16 kernels.
def ref_cross_lse(z, scale):
    """Materialized cross-view LSEs in z's dtype, pair order (0, 1), (0, 2), ..., (V-2, V-1)."""
    v = z.shape[1]
    logits = [scale * z[:, a] @ z[:, b].T for a in range(v) for b in range(a + 1, v)]
    return torch.stack([s.logsumexp(1) for s in logits]), torch.stack([s.logsumexp(0) for s in logits])


def ref_self_lse(x, scale):
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return (scale * x @ x.T).masked_fill(eye, -math.inf).logsumexp(1)


def run(fn, x, scale, grads, dtype):
    """Outputs, d/dx and d/dscale of sum(output * grad) with x and a tensor scale cast to dtype."""
    x = x.detach().to(dtype).clone().requires_grad_()
    s = torch.tensor(scale, dtype=torch.float32 if dtype != torch.float64 else dtype, requires_grad=True)
    out = fn(x, s)
    out = out if isinstance(out, tuple) else (out,)
    sum((o.float() * g.to(o.device)).sum() for o, g in zip(out, grads)).backward()
    return [o.detach().double() for o in out], x.grad.double(), s.grad.double()


def err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def check(kernel, ref, x, scale, dtype_name):
    """fp32 within 1e-5 of the largest entry (1e-6 absolute floor); fp16/bf16 within twice the error of the reference computed in
    the same dtype, plus floors of 1e-3 on values and 1e-4 on gradients."""
    dtype = DTYPES[dtype_name]
    x = x.to(dtype).double()  # the kernel and every reference see the same representable inputs
    truth = {ref_cross_lse: reference.cross_lse, ref_self_lse: reference.self_lse}[ref]
    with torch.no_grad():
        shapes = [o.shape for o in (lambda o: o if isinstance(o, tuple) else (o,))(truth(x, scale))]
    grads = [torch.randn(shape, generator=torch.Generator().manual_seed(1)) for shape in shapes]
    out64, dx64, ds64 = run(truth, x, scale, grads, torch.float64)
    out, dx, ds = run(kernel, x, scale, grads, dtype)
    if dtype == torch.float32:
        for got, want in zip(out + [dx, ds], out64 + [dx64, ds64]):
            # Relative to the tensor's largest entry: entries that cancel to ~0 carry fp32 rounding of their terms.
            assert err([got], [want]) <= 1e-5 * want.abs().max().item() + 1e-6
        return
    out_lp, dx_lp, ds_lp = run(ref, x, scale, grads, dtype)
    assert err(out, out64) <= 2 * err(out_lp, out64) + 1e-3
    assert err([dx], [dx64]) <= 2 * err([dx_lp], [dx64]) + 1e-4
    assert err([ds], [ds64]) <= 2 * err([ds_lp], [ds64]) + 1e-4 * max(1.0, ds64.abs().item())


def embeddings(*shape, normalize=True, seed=0):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.normalize(z, dim=-1) if normalize else z


# Pairwise over N {1, 7, 64, 130} x V {2, 4, 16} x d {16, 100, 128, 512} x dtype, with V = 16 and d = 512 only at
# small N, and V = 16 once: its 240 directed pairs cost ~10 ms a tile iteration each in the interpreter.
CROSS_CASES = [
    (1, 2, 16, "fp32"),
    (1, 4, 100, "bf16"),
    (7, 2, 128, "fp16"),
    (7, 4, 512, "fp32"),
    (7, 16, 16, "bf16"),
    (64, 2, 512, "bf16"),
    (64, 4, 16, "fp16"),
    (64, 2, 100, "fp32"),
    (130, 2, 128, "fp32"),
    (130, 2, 16, "bf16"),
    (130, 2, 100, "fp16"),
]


@pytest.mark.parametrize("n,v,d,dtype", CROSS_CASES)
def test_cross_lse_matches_reference(n, v, d, dtype):
    check(cross_lse, ref_cross_lse, embeddings(n, v, d), 10.0, dtype)


SELF_CASES = [(7, 16, "bf16"), (64, 512, "fp32"), (64, 100, "fp16"), (130, 128, "bf16"), (130, 16, "fp32")]


@pytest.mark.parametrize("m,d,dtype", SELF_CASES)
def test_self_lse_matches_reference(m, d, dtype):
    check(self_lse, ref_self_lse, embeddings(m, d), 10.0, dtype)


def _table_tiles():
    """Each (BM, BN) of the GPU tile table once, with the element size and padded width of an entry that uses it."""
    out = {}
    for (_, _, itemsize, width), choices in sorted(_tiles.TABLE.items()):
        for tiles in choices:
            out.setdefault((tiles.BM, tiles.BN), (tiles, itemsize, width))
    return list(out.values())


TABLE_TILES = _table_tiles()


@pytest.mark.parametrize("k", range(len(TABLE_TILES)), ids=[f"BM{t.BM}-BN{t.BN}-bd{w}" for t, _, w in TABLE_TILES])
def test_every_gpu_tile_shape_matches_reference(k):
    # N = 130 is a multiple of no tile and d = width - 28 no power of two: every edge mask is exercised. The tiles
    # alternate between the two primitives and the two 16-bit types (fp32 where the table entry is fp32's).
    tiles, itemsize, width = TABLE_TILES[k]
    dtype = "fp32" if itemsize == 4 else ("bf16", "fp16")[k % 2]
    with _tiles.forced(fwd=tiles, bwd=tiles):
        if k % 2:
            check(self_lse, ref_self_lse, embeddings(130, width - 28), 10.0, dtype)
        else:
            check(cross_lse, ref_cross_lse, embeddings(130, 2, width - 28), 10.0, dtype)


@pytest.mark.parametrize("kernel,ref,shape,dtype", [(cross_lse, ref_cross_lse, (70, 2, 100), "fp32"),
                                                    (self_lse, ref_self_lse, (70, 200), "bf16")])
def test_feature_chunks_match_reference(kernel, ref, shape, dtype):
    # What a GPU runs for wide inputs (the interpreter takes whole widths by default): the logits' contraction 32
    # features at a time and the backward's row gradient 64 features per program, the last chunks partly padding.
    with _tiles.forced(fwd=_tiles.Tiles(64, 32, 4, 2, BK=32), bwd=_tiles.Tiles(64, 32, 4, 2, BK=32, BO=64)):
        check(kernel, ref, embeddings(*shape), 10.0, dtype)


def test_sixteen_bit_tiles_reach_the_dots_as_they_are(dot_operands):
    # No cast to fp32 on the way: the interpreter's dots see fp16 operands (as a GPU's tensor cores would) for both
    # products of the forward and the backward.
    x = embeddings(40, 2, 32).to(torch.float16).requires_grad_()
    row, col = cross_lse(x, 10.0)
    (row.sum() + col.sum()).backward()
    assert set(dot_operands) == {"fp16"}


def test_fp32_runs_three_fp16_products_under_highest_and_one_under_high(dot_operands):
    x = embeddings(40, 24).float()
    counts = {}
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("highest", "high"):
            torch.set_float32_matmul_precision(precision)
            dot_operands.clear()
            self_lse(x, 10.0)
            assert set(dot_operands) == {"fp16"}
            counts[precision] = dot_operands["fp16"]
    finally:
        torch.set_float32_matmul_precision(before)
    assert counts["highest"] == 3 * counts["high"]


@pytest.mark.parametrize("kernel,ref,shape", [(cross_lse, ref_cross_lse, (70, 3, 20)), (self_lse, ref_self_lse, (70, 20))])
def test_unnormalized_inputs_take_the_running_max(kernel, ref, shape):
    # |logits| bound = scale * max |x|^2 ~ 60 > 40: the online running max path.
    check(kernel, ref, embeddings(*shape, normalize=False), 1.5, "fp32")


@pytest.mark.parametrize("kernel,ref,shape", [(cross_lse, ref_cross_lse, (40, 2, 64)), (self_lse, ref_self_lse, (40, 64))])
def test_tau_0_01_bf16_is_finite_and_accurate(kernel, ref, shape):
    x = embeddings(*shape)
    out, dx, ds = run(kernel, x, 100.0, [torch.ones(1, 40)] * 2, torch.bfloat16)
    assert all(o.isfinite().all() for o in out) and dx.isfinite().all() and ds.isfinite()
    check(kernel, ref, x, 100.0, "bf16")


def test_identical_rows():
    z = embeddings(1, 2, 32).expand(50, 2, 32)
    check(cross_lse, ref_cross_lse, z, 10.0, "fp32")
    check(self_lse, ref_self_lse, z[:, 0], 10.0, "fp32")


def test_zero_vectors_give_log_n_and_zero_gradients():
    z = torch.zeros(9, 2, 24, requires_grad=True)
    row, col = cross_lse(z, 10.0)
    (row.sum() + col.sum()).backward()
    torch.testing.assert_close(row, torch.full((1, 9), math.log(9)))
    torch.testing.assert_close(col, torch.full((1, 9), math.log(9)))
    assert torch.equal(z.grad, torch.zeros_like(z))
    x = torch.zeros(9, 24, requires_grad=True)
    self_lse(x, 10.0).sum().backward()
    torch.testing.assert_close(self_lse(x, 10.0), torch.full((9,), math.log(8)))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_single_row_self_lse_is_minus_inf_with_zero_gradient():
    x = embeddings(1, 16).float().requires_grad_()
    lse = self_lse(x, 10.0)
    assert lse.shape == (1,) and lse.item() == -math.inf
    lse.backward(torch.ones(1))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_float_scale_equals_tensor_scale_and_gets_no_gradient():
    z = embeddings(20, 2, 16).float().requires_grad_()
    scale = torch.tensor(7.0)
    row, col = cross_lse(z, 7.0)
    row_t, col_t = cross_lse(z, scale)
    assert torch.equal(row, row_t) and torch.equal(col, col_t)
    (row_t.sum() + col_t.sum()).backward()
    assert z.grad is not None and scale.grad is None


@pytest.mark.parametrize("kernel,shape", [(cross_lse, (70, 2, 48)), (self_lse, (70, 48))])
def test_deterministic_backward_is_bitwise_repeatable(kernel, shape):
    x = embeddings(*shape)
    first = run(kernel, x, 10.0, [torch.ones(1, 70)] * 2, torch.bfloat16)
    again = run(lambda a, s: kernel(a, s, deterministic=True), x, 10.0, [torch.ones(1, 70)] * 2, torch.bfloat16)
    for a, b in zip(first[0] + list(first[1:]), again[0] + list(again[1:])):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kernel,x,match",
    [
        (cross_lse, torch.zeros(4, 1, 8), "at least 2 views"),
        (cross_lse, torch.zeros(4, 8), "z must be a tensor with 3 dimensions"),
        (cross_lse, torch.zeros(4, 2, 513), "513 features"),
        (self_lse, torch.zeros(4, 8, dtype=torch.int64), "float32, float16 or bfloat16"),
        (self_lse, torch.zeros(0, 8), "x has no rows"),
    ],
)
def test_bad_input_names_the_argument(kernel, x, match):
    with pytest.raises(ValueError, match=match):
        kernel(x, 10.0)
