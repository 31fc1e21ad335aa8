"""Cross-view log-sum-exp (CLOCS, CLIP) in Triton, without the N x N logit matrix.

For every view pair p = (a, b), a < b, in the order (0, 1), (0, 2), ..., (V-2, V-1), with S = scale * z[:, a] @
z[:, b].T: ``row[p, i] = logsumexp_j S_ij`` and ``col[p, j] = logsumexp_i S_ij``.

Forward: one program per (row block, view v) sweeps every other view c: direction (a, b) yields row[p], direction
(b, a) yields col[p] as the row LSEs of S^T. 4 N^2 d FLOPs and 2 N^2 exps per pair. Backward: one program per
(row block, view v) sums over every other view c the gradient sum_j dS_ij z_c[j], rebuilt from the saved LSEs, and
owns its output rows: no atomics, so it is deterministic. 8 N^2 d FLOPs and 2 N^2 exps per pair (4 N^2 under the
running max). Memory beyond inputs and gradients: the (2P, N) LSEs and one float per program.
"""

import torch
import triton
import triton.language as tl

from . import _tiles
from ._lse import (BOUND2_LIMIT, backward_scalars, check_inputs, launch_options, operands, row_grad, row_lse,
                   row_tiles, scalars, scale_grad, store_grad)


@triton.jit
def _cross_lse_fwd(x, xl, lse, sc, n, d, stride_n, stride_v, V, P, BM: tl.constexpr, BN: tl.constexpr,
                   BD: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    scale2 = tl.load(sc)
    bounded = tl.load(sc + 1) <= BOUND2_LIMIT
    v = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr, zr_lo = row_tiles(x + v * stride_v, xl + v * stride_v, rows, n, d, stride_n, BD, BK, SPLIT)
    for k in range(V - 1):
        c = k + (k >= v).to(tl.int32)
        out = row_lse(zr, zr_lo, rows, x + v * stride_v, xl + v * stride_v, x + c * stride_v, xl + c * stride_v, n, d,
                      stride_n, scale2, bounded, False, BN, BD, BK, SPLIT)
        tl.store(lse + _directed_pair(v, c, V, P).to(tl.int64) * n + rows, out, mask=rows < n)


@triton.jit
def _directed_pair(v, c, V, P):
    """Row of the (2P, N) LSE buffer for rows of view v against columns of view c: the pair p = (min, max) in the
    order (0, 1), (0, 2), ..., its row LSEs (p) when v < c, its column LSEs (P + p) when v > c."""
    a = tl.minimum(v, c)
    b = tl.maximum(v, c)
    return a * (2 * V - a - 1) // 2 + b - a - 1 + P * (v > c).to(tl.int32)


@triton.jit
def _cross_lse_bwd(x, xl, lse, g, dx, dscale, sc, n, d, stride_n, stride_v, V, P, BM: tl.constexpr,
                   BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr):
    scale2 = tl.load(sc)
    bounded = tl.load(sc + 1) <= BOUND2_LIMIT
    v = tl.program_id(1)
    out_off = tl.program_id(2) * BO
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr, zr_lo = row_tiles(x + v * stride_v, xl + v * stride_v, rows, n, d, stride_n, BD, BK, SPLIT)
    acc = tl.zeros([BM, BO], tl.float32)
    partial = tl.zeros([], tl.float32)
    for k in range(V - 1):
        c = k + (k >= v).to(tl.int32)
        mine = _directed_pair(v, c, V, P).to(tl.int64) * n
        other = _directed_pair(c, v, V, P).to(tl.int64) * n
        acc, partial = row_grad(acc, partial, zr, zr_lo, rows, x + v * stride_v, xl + v * stride_v, x + c * stride_v,
                                xl + c * stride_v, lse + mine, lse + other, g + mine, g + other, n, d, stride_n,
                                scale2, bounded, out_off, False, BN, BD, BK, BO, SPLIT)
    store_grad(dx + v * stride_v + out_off, dscale + v * tl.num_programs(0) + tl.program_id(0), acc, partial, rows, n,
               d - out_off, stride_n, tl.load(sc + 2), tl.load(sc + 3), out_off == 0, BO)


class CrossLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, scale):
        z = z.contiguous()
        n, num_views, d = z.shape
        num_pairs = num_views * (num_views - 1) // 2
        hi, lo, sigma, split = operands(z)
        sc = scalars(z, scale, sigma)
        lse = torch.empty(2 * num_pairs, n, dtype=torch.float32, device=z.device)
        tiles = _tiles.choose("fwd", z)
        _cross_lse_fwd[(triton.cdiv(n, tiles.BM), num_views)](hi, lo, lse, sc, n, d, z.stride(0), z.stride(1),
                                                              num_views, num_pairs, **launch_options(z, tiles, split))
        ctx.save_for_backward(hi, lo, lse, sc)
        ctx.scale, ctx.split, ctx.dtype = scale, split, z.dtype
        return lse[:num_pairs].clone(), lse[num_pairs:].clone()

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        hi, lo, lse, sc = ctx.saved_tensors
        n, num_views, d = hi.shape
        num_pairs = num_views * (num_views - 1) // 2
        g = torch.zeros_like(lse)
        if grad_row is not None:
            g[:num_pairs] = grad_row
        if grad_col is not None:
            g[num_pairs:] = grad_col
        # |dS_ij| <= |g_row_i| + |g_col_j|.
        sc, alpha = backward_scalars(sc, g[:num_pairs].abs().amax() + g[num_pairs:].abs().amax())
        g *= alpha
        dz = torch.empty(hi.shape, dtype=ctx.dtype, device=hi.device)
        tiles = _tiles.choose("bwd", dz)
        options = launch_options(hi, tiles, ctx.split, backward=True)
        grid = (triton.cdiv(n, tiles.BM), num_views, options["BD"] // options["BO"])
        dscale = torch.zeros(grid[0] * num_views, dtype=torch.float32, device=hi.device)  # one float per row block
        _cross_lse_bwd[grid](hi, lo, lse, g, dz, dscale, sc, n, d, hi.stride(0), hi.stride(1), num_views, num_pairs,
                             **options)
        return dz, scale_grad(ctx.scale, dscale)


def cross_lse(z, scale, *, deterministic=False):
    """Row and column log-sum-exps of every cross-view logit matrix, never materialized.

    Args:
        z: (N, V, d) embeddings, V >= 2, d <= 512, float32, float16 or bfloat16 (normalized already if the loss
            normalizes); CUDA, or CPU under TRITON_INTERPRET=1.
        scale: the logit multiplier (1 / temperature, or CLIP's logit_scale): a float, or a 0-dim tensor that gets
            its gradient when it requires one.
        deterministic: accepted for the shared primitive signature; the Triton backward has no atomics, so it is
            always bitwise repeatable.

    Returns:
        (row, col), two float32 tensors of shape (V (V - 1) / 2, N), differentiable w.r.t. z and scale.
    """
    check_inputs("z", z, 3)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 views (shape (N, V, d)), got V = {z.shape[1]}")
    return CrossLSE.apply(z, scale)
