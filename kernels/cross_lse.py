"""Cross-view log-sum-exp (CLOCS, CLIP) in Triton, without the N x N logit matrix.

For every view pair p = (a, b), a < b, in the order (0, 1), (0, 2), ..., (V-2, V-1), with S = scale * z[:, a] @
z[:, b].T: ``row[p, i] = logsumexp_j S_ij`` and ``col[p, j] = logsumexp_i S_ij``.

Each logit is computed once per pass. Forward: one program per (row block of a, pair p) sweeps the column tiles of b;
with bounded logits each tile's exps give the row sums (kept on chip) and the column sums (added to a (P, N) buffer
with fp32 atomics): 2 N^2 d FLOPs and N^2 exps per pair. Unbounded logits need a running max per row and per column,
so a second launch takes the columns as the rows of S^T (it returns at once when the first made them). Backward:
the same grid; each dS tile gives the rows' gradient (kept on chip, added once at the end) and the columns' (added
per tile with atomics to an fp32 (N, V, d) buffer): 6 N^2 d FLOPs and N^2 exps per pair (2 N^2 for unbounded logits).

``deterministic=True`` runs the atomic-free design instead, bitwise repeatable: the forward's second launch always
makes the columns (4 N^2 d, 2 N^2 exps), and the backward's programs own their output rows, one per (row block,
view v) sweeping every other view, so that each logit is computed from both of its sides (8 N^2 d, 2 N^2 exps).
Inputs wider than 128 features, and fp32 under the "highest" matmul precision, take that backward by default too
(``_lse.atomic_backward``).
"""

import torch
import triton
import triton.language as tl

from . import _tiles
from ._lse import (BOUND2_LIMIT, add_rows, backward_options, backward_scalars, check_inputs, factors, launch_options,
                   launch_rows, lse_of, lse_start, operands, out_tiles, row_lse, row_tiles, scalars, scale_grad,
                   store_grad, sweep_grad)


@triton.jit
def _cross_fwd(block0, x, xl, lse, col_sums, sc, pairs, n, d, stride_n, stride_v, P, BM: tl.constexpr,
               BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, ATOMIC: tl.constexpr,
               COLUMNS: tl.constexpr, ROW_EDGE: tl.constexpr):
    """Program (row block, pair p = (a, b)). COLUMNS false: rows of a against b, the row LSEs lse[p] (and with
    ATOMIC and bounded logits the column sums of exp into col_sums[p]); COLUMNS true: rows of b against a, the
    column LSEs lse[P + p] as row LSEs of S^T, unless the first launch made them."""
    p = tl.program_id(1)
    bounded = tl.load(sc + 1) <= BOUND2_LIMIT
    if COLUMNS:
        a = tl.load(pairs + P + p)
        b = tl.load(pairs + p)
        slot = p + P
        if ATOMIC:
            todo = tl.load(sc + 1) > BOUND2_LIMIT
        else:
            todo = True
    else:
        a = tl.load(pairs + p)
        b = tl.load(pairs + P + p)
        slot = p
        todo = True
    if todo:
        rows = (block0 + tl.program_id(0)) * BM + tl.arange(0, BM)
        zr, zr_lo = row_tiles(x + a * stride_v, xl + a * stride_v, rows, n, d, stride_n, BD, BK, SPLIT)
        total, run_max = lse_start(rows, bounded)
        total, run_max = row_lse(total, run_max, zr, zr_lo, rows, x + a * stride_v, xl + a * stride_v,
                                 x + b * stride_v, xl + b * stride_v, col_sums + p.to(tl.int64) * n, n, d, stride_n,
                                 tl.load(sc), bounded, 0, n, ATOMIC and not COLUMNS, ROW_EDGE, False, BN, BD, BK,
                                 SPLIT)
        tl.store(lse + slot.to(tl.int64) * n + rows, lse_of(total, run_max), mask=rows < n)


@triton.jit
def _cross_bwd(block0, x, xl, lse, g, f, dzf, dscale, sc, pairs, n, d, stride_n, stride_v, P, BM: tl.constexpr,
               BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr,
               DSCALE: tl.constexpr, ROW_EDGE: tl.constexpr):
    """Program (row block, pair p = (a, b), feature chunk): one sweep over the column tiles of b; the rows' gradient
    and the columns' both go to the fp32 buffer dzf with atomics, and with DSCALE the block's share of d loss /
    d scale to ``dscale``."""
    block = block0 + tl.program_id(0)
    p = tl.program_id(1)
    out_off = tl.program_id(2) * BO
    a = tl.load(pairs + p)
    b = tl.load(pairs + P + p)
    rows = block * BM + tl.arange(0, BM)
    ra, rla, cb, clb = x + a * stride_v, xl + a * stride_v, x + b * stride_v, xl + b * stride_v
    zr, zr_lo = row_tiles(ra, rla, rows, n, d, stride_n, BD, BK, SPLIT)
    zro, zro_lo = out_tiles(zr, zr_lo, ra, rla, rows, n, d, stride_n, out_off, BD, BK, BO, SPLIT)
    mine, other = p.to(tl.int64) * n, (p + P).to(tl.int64) * n
    acc, share = sweep_grad(tl.zeros([BM, BO], tl.float32), tl.zeros([], tl.float32), zr, zr_lo, zro, zro_lo, rows,
                            ra, rla, cb, clb, dzf + b * stride_v + out_off, lse + mine, lse + other, g + mine,
                            g + other, f + mine, f + other, n, d, stride_n, tl.load(sc),
                            tl.load(sc + 1) <= BOUND2_LIMIT, out_off, 0, n, True, ROW_EDGE, False, DSCALE, BN, BD, BK,
                            BO, SPLIT)
    add_rows(dzf + a * stride_v + out_off, acc, rows, n, d - out_off, stride_n, BO)
    if DSCALE:  # every feature chunk computes the same logits: the first one reports them
        tl.store(dscale + p * tl.cdiv(n, BM) + block, share * tl.load(sc + 3), mask=out_off == 0)


@triton.jit
def _directed_pair(v, c, V, P):
    """Row of the (2P, N) LSE buffer for rows of view v against columns of view c: the pair p = (min, max) in the
    order (0, 1), (0, 2), ..., its row LSEs (p) when v < c, its column LSEs (P + p) when v > c."""
    a = tl.minimum(v, c)
    b = tl.maximum(v, c)
    return a * (2 * V - a - 1) // 2 + b - a - 1 + P * (v > c).to(tl.int32)


@triton.jit
def _cross_bwd_owned(block0, x, xl, lse, g, f, dx, dscale, sc, n, d, stride_n, stride_v, V, P, BM: tl.constexpr,
                     BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr,
                     DSCALE: tl.constexpr, ROW_EDGE: tl.constexpr):
    """Program (row block, view v, feature chunk) of the atomic-free backward: sums dS z_c over every other view c
    and writes its rows' gradient."""
    block = block0 + tl.program_id(0)
    v = tl.program_id(1)
    out_off = tl.program_id(2) * BO
    rows = block * BM + tl.arange(0, BM)
    rv, rlv = x + v * stride_v, xl + v * stride_v
    zr, zr_lo = row_tiles(rv, rlv, rows, n, d, stride_n, BD, BK, SPLIT)
    acc = tl.zeros([BM, BO], tl.float32)
    share = tl.zeros([], tl.float32)
    for k in range(V - 1):
        c = k + (k >= v).to(tl.int32)
        mine = _directed_pair(v, c, V, P).to(tl.int64) * n
        other = _directed_pair(c, v, V, P).to(tl.int64) * n
        acc, share = sweep_grad(acc, share, zr, zr_lo, zr, zr_lo, rows, rv, rlv, x + c * stride_v, xl + c * stride_v,
                                dx, lse + mine, lse + other, g + mine, g + other, f + mine, f + other, n, d, stride_n,
                                tl.load(sc), tl.load(sc + 1) <= BOUND2_LIMIT, out_off, 0, n, False, ROW_EDGE, False,
                                DSCALE, BN, BD, BK, BO, SPLIT)
    store_grad(dx + v * stride_v + out_off, acc, rows, n, d - out_off, stride_n, tl.load(sc + 2), BO)
    if DSCALE:  # each logit counted from both of its sides: half; the first feature chunk reports it
        tl.store(dscale + v * tl.cdiv(n, BM) + block, share * 0.5 * tl.load(sc + 3), mask=out_off == 0)


def _pairs(num_views, device):
    """(2P,) int32: the first views of the pairs (0, 1), (0, 2), ..., then their second views."""
    a, b = torch.triu_indices(num_views, num_views, 1, device=device)
    return torch.cat([a, b]).to(torch.int32)


class CrossLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, scale, deterministic):
        z = z.contiguous()
        n, num_views, d = z.shape
        num_pairs = num_views * (num_views - 1) // 2
        hi, lo, sigma, split = operands(z)
        sc = scalars(z, scale, sigma)
        pairs = _pairs(num_views, z.device)
        lse = torch.empty(2 * num_pairs, n, dtype=torch.float32, device=z.device)
        col_sums = torch.zeros(num_pairs if not deterministic else 0, n, dtype=torch.float32, device=z.device)
        tiles = _tiles.choose("fwd", z)
        for columns in (False, True):
            launch_rows(_cross_fwd, n, tiles.BM, (num_pairs,), hi, lo, lse, col_sums, sc, pairs, n, d, z.stride(0),
                        z.stride(1), num_pairs, ATOMIC=not deterministic, COLUMNS=columns,
                        **launch_options(z, tiles, split))
        if not deterministic:  # bounded logits: the columns' LSEs are the logs of the sums
            lse[num_pairs:] = torch.where(sc[1] <= BOUND2_LIMIT.value, col_sums.log(), lse[num_pairs:])
        ctx.save_for_backward(hi, lo, lse, sc, pairs)
        ctx.scale, ctx.split, ctx.dtype, ctx.deterministic = scale, split, z.dtype, deterministic
        return lse[:num_pairs].clone(), lse[num_pairs:].clone()

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        hi, lo, lse, sc, pairs = ctx.saved_tensors
        n, num_views, d = hi.shape
        num_pairs = num_views * (num_views - 1) // 2
        g = torch.zeros_like(lse)
        if grad_row is not None:
            g[:num_pairs] = grad_row
        if grad_col is not None:
            g[num_pairs:] = grad_col
        # |dS_ij| <= |g_row_i| + |g_col_j|.
        sc, alpha = backward_scalars(sc, g[:num_pairs].abs().amax() + g[num_pairs:].abs().amax())
        lse, g, f = factors(lse, g, alpha)
        tiles = _tiles.choose("bwd", hi)
        atomic, options, chunks = backward_options(hi, tiles, ctx.split, ctx.deterministic, ctx.scale)
        blocks = triton.cdiv(n, tiles.BM)
        if not atomic:
            dz = torch.empty(hi.shape, dtype=ctx.dtype, device=hi.device)
            dscale = torch.zeros(blocks * num_views, dtype=torch.float32, device=hi.device)
            launch_rows(_cross_bwd_owned, n, tiles.BM, (num_views, chunks), hi, lo, lse, g, f, dz, dscale, sc, n, d,
                        hi.stride(0), hi.stride(1), num_views, num_pairs, **options)
        else:
            dzf = torch.zeros(hi.shape, dtype=torch.float32, device=hi.device)
            dscale = torch.zeros(blocks * num_pairs, dtype=torch.float32, device=hi.device)
            launch_rows(_cross_bwd, n, tiles.BM, (num_pairs, chunks), hi, lo, lse, g, f, dzf, dscale, sc, pairs, n, d,
                        hi.stride(0), hi.stride(1), num_pairs, **options)
            dz = dzf.mul_(sc[2]).to(ctx.dtype)  # in place: no second fp32 (N, V, d) tensor
        return dz, scale_grad(ctx.scale, dscale), None


def cross_lse(z, scale, *, deterministic=False):
    """Row and column log-sum-exps of every cross-view logit matrix, never materialized.

    Args:
        z: (N, V, d) embeddings, V >= 2, d <= 512, float32, float16 or bfloat16 (normalized already if the loss
            normalizes); CUDA, or CPU under TRITON_INTERPRET=1.
        scale: the logit multiplier (1 / temperature, or CLIP's logit_scale): a float, or a 0-dim tensor that gets
            its gradient when it requires one.
        deterministic: the atomic-free design, bitwise repeatable, at 4/3 of the default's work (see the module).

    Returns:
        (row, col), two float32 tensors of shape (V (V - 1) / 2, N), differentiable w.r.t. z and scale.
    """
    check_inputs("z", z, 3)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 views (shape (N, V, d)), got V = {z.shape[1]}")
    return CrossLSE.apply(z, scale, bool(deterministic))
