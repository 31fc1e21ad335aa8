"""Self-similarity log-sum-exp with self-exclusion (SupCon, NT-Xent) in Triton, without the M x M logit matrix.

``lse[i] = logsumexp_{j != i} scale * <x_i, x_j>``; the diagonal is excluded by an index comparison in the tile.
Forward: one program per row block, 2 M^2 d FLOPs and M^2 exps. Backward: dx = scale (dS + dS^T) x with
dS_ij = g_i softmax_ij; since S is symmetric, row i's share of both terms is sum_j (g_i e^(S_ij - lse_i) +
g_j e^(S_ij - lse_j)) x_j, the cross-view backward with the row and column LSEs both equal to lse. Each program owns
its output rows: no atomics, deterministic. 4 M^2 d FLOPs and M^2 exps (2 M^2 under the running max).
"""

import torch
import triton
import triton.language as tl

from . import _tiles
from ._lse import (BOUND2_LIMIT, backward_scalars, check_inputs, launch_options, operands, row_grad, row_lse,
                   row_tiles, scalars, scale_grad, store_grad)


@triton.jit
def _self_lse_fwd(x, xl, lse, sc, n, d, stride_n, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                  BK: tl.constexpr, SPLIT: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr, zr_lo = row_tiles(x, xl, rows, n, d, stride_n, BD, BK, SPLIT)
    out = row_lse(zr, zr_lo, rows, x, xl, x, xl, n, d, stride_n, tl.load(sc), tl.load(sc + 1) <= BOUND2_LIMIT, True,
                  BN, BD, BK, SPLIT)
    tl.store(lse + rows, out, mask=rows < n)


@triton.jit
def _self_lse_bwd(x, xl, lse, g, dx, dscale, sc, n, d, stride_n, BM: tl.constexpr, BN: tl.constexpr,
                  BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    out_off = tl.program_id(1) * BO
    zr, zr_lo = row_tiles(x, xl, rows, n, d, stride_n, BD, BK, SPLIT)
    acc, partial = row_grad(tl.zeros([BM, BO], tl.float32), tl.zeros([], tl.float32), zr, zr_lo, rows, x, xl, x, xl,
                            lse, lse, g, g, n, d, stride_n, tl.load(sc), tl.load(sc + 1) <= BOUND2_LIMIT, out_off,
                            True, BN, BD, BK, BO, SPLIT)
    store_grad(dx + out_off, dscale + tl.program_id(0), acc, partial, rows, n, d - out_off, stride_n,
               tl.load(sc + 2), tl.load(sc + 3), out_off == 0, BO)


class SelfLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        x = x.contiguous()
        n, d = x.shape
        hi, lo, sigma, split = operands(x)
        sc = scalars(x, scale, sigma)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        tiles = _tiles.choose("fwd", x)
        _self_lse_fwd[(triton.cdiv(n, tiles.BM),)](hi, lo, lse, sc, n, d, x.stride(0),
                                                   **launch_options(x, tiles, split))
        ctx.save_for_backward(hi, lo, lse, sc)
        ctx.scale, ctx.split, ctx.dtype = scale, split, x.dtype
        return lse

    @staticmethod
    def backward(ctx, grad):
        hi, lo, lse, sc = ctx.saved_tensors
        n, d = hi.shape
        sc, alpha = backward_scalars(sc, 2 * grad.abs().amax())  # |dS_ij| <= |g_i| + |g_j|
        dx = torch.empty(hi.shape, dtype=ctx.dtype, device=hi.device)
        tiles = _tiles.choose("bwd", dx)
        options = launch_options(hi, tiles, ctx.split, backward=True)
        grid = (triton.cdiv(n, tiles.BM), options["BD"] // options["BO"])
        dscale = torch.zeros(grid[0], dtype=torch.float32, device=hi.device)  # one float per row block
        _self_lse_bwd[grid](hi, lo, lse, grad.contiguous() * alpha, dx, dscale, sc, n, d, hi.stride(0), **options)
        return dx, scale_grad(ctx.scale, dscale)


def self_lse(x, scale, *, deterministic=False):
    """Log-sum-exp of each row of the self-similarity logits with the diagonal left out, never materialized.

    Args:
        x: (M, d) embeddings, d <= 512, float32, float16 or bfloat16; CUDA, or CPU under TRITON_INTERPRET=1.
        scale: the logit multiplier (1 / temperature): a float, or a 0-dim tensor that gets its gradient when it
            requires one.
        deterministic: accepted for the shared primitive signature; the Triton backward has no atomics, so it is
            always bitwise repeatable.

    Returns:
        lse: float32 (M,), ``logsumexp_{j != i} scale * <x_i, x_j>`` (-inf when M = 1), differentiable w.r.t. x and
        scale.
    """
    check_inputs("x", x, 2)
    return SelfLSE.apply(x, scale)
