"""Cross-view log-sum-exp (CLOCS, CLIP) in Triton, without the N x N logit matrix.

For every view pair p = (a, b), a < b, in the order (0, 1), (0, 2), ..., (V-2, V-1), with S = scale * z[:, a] @
z[:, b].T: ``row[p, i] = logsumexp_j S_ij`` and ``col[p, j] = logsumexp_i S_ij``.

Forward: one program per (row block, view v) sweeps every other view c: direction (a, b) yields row[p], direction
(b, a) yields col[p] as the row LSEs of S^T. 4 N^2 d FLOPs and 2 N^2 exps per pair. Backward: one program per
(row block, view v) sums over every other view c the gradient sum_j dS_ij z_c[j], rebuilt from the saved LSEs, and
owns its output rows: no atomics, so it is deterministic. 8 N^2 d FLOPs and 2 N^2 exps per pair (4 N^2 under the running max).
Memory beyond inputs and gradients: the (2P, N) LSEs and one float per program.
"""

import torch
import triton
import triton.language as tl

from ._lse import autotune, check_inputs, launch_args, load_rows, meta, row_grad, row_lse, scale_grad, store_grad


@autotune(backward=False)
@triton.jit
def _cross_lse_fwd(x, lse, n, d, stride_n, stride_v, V, P, scale2, shift2, FIXED_SHIFT: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CAST_F32: tl.constexpr,
                   PRECISION: tl.constexpr):
    v = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr = load_rows(x + v * stride_v, rows, n, d, stride_n, BD, CAST_F32)
    for k in range(V - 1):
        c = k + (k >= v).to(tl.int32)
        out = row_lse(zr, rows, x + c * stride_v, n, d, stride_n, scale2, shift2, False, FIXED_SHIFT, BN, BD,
                      CAST_F32, PRECISION)
        tl.store(lse + _directed_pair(v, c, V, P).to(tl.int64) * n + rows, out, mask=rows < n)


@triton.jit
def _directed_pair(v, c, V, P):
    """Row of the (2P, N) LSE buffer for rows of view v against columns of view c: the pair p = (min, max) in the
    order (0, 1), (0, 2), ..., its row LSEs (p) when v < c, its column LSEs (P + p) when v > c."""
    a = tl.minimum(v, c)
    b = tl.maximum(v, c)
    return a * (2 * V - a - 1) // 2 + b - a - 1 + P * (v > c).to(tl.int32)


@autotune(backward=True)
@triton.jit
def _cross_lse_bwd(x, lse, g, dx, dscale, n, d, stride_n, stride_v, V, P, scale, scale2, shift2,
                   FIXED_SHIFT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                   CAST_F32: tl.constexpr, PRECISION: tl.constexpr):
    v = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr = load_rows(x + v * stride_v, rows, n, d, stride_n, BD, CAST_F32)
    acc = tl.zeros([BM, BD], tl.float32)
    for k in range(V - 1):
        c = k + (k >= v).to(tl.int32)
        mine = _directed_pair(v, c, V, P).to(tl.int64) * n
        other = _directed_pair(c, v, V, P).to(tl.int64) * n
        acc = row_grad(acc, zr, rows, x + c * stride_v, lse + mine, lse + other, g + mine, g + other, n, d, stride_n,
                       scale2, shift2, False, FIXED_SHIFT, BN, BD, CAST_F32, PRECISION)
    store_grad(dx + v * stride_v, dscale + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), zr, acc, rows,
               n, d, stride_n, scale, BD)


class CrossLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, scale):
        z = z.contiguous()
        n, num_views, d = z.shape
        num_pairs = num_views * (num_views - 1) // 2
        scale_f, scale2, shift2, fixed = launch_args(z, scale)
        kw = meta(z)
        lse = torch.empty(2 * num_pairs, n, dtype=torch.float32, device=z.device)
        grid = lambda m: (triton.cdiv(n, m["BM"]), num_views)
        _cross_lse_fwd[grid](z, lse, n, d, z.stride(0), z.stride(1), num_views, num_pairs, scale2, shift2,
                             FIXED_SHIFT=fixed, **kw)
        ctx.save_for_backward(z, lse)
        ctx.scale = scale
        ctx.args = (scale_f, scale2, shift2, fixed)
        return lse[:num_pairs].clone(), lse[num_pairs:].clone()

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        z, lse = ctx.saved_tensors
        scale_f, scale2, shift2, fixed = ctx.args
        n, num_views, d = z.shape
        num_pairs = num_views * (num_views - 1) // 2
        g = torch.zeros_like(lse)
        if grad_row is not None:
            g[:num_pairs] = grad_row
        if grad_col is not None:
            g[num_pairs:] = grad_col
        dz = torch.empty_like(z)
        kw = meta(z)
        # One float per program; V * n bounds the count for every row block.
        dscale = torch.zeros(num_views * n, dtype=torch.float32, device=z.device)
        grid = lambda m: (triton.cdiv(n, m["BM"]), num_views)
        _cross_lse_bwd[grid](z, lse, g, dz, dscale, n, d, z.stride(0), z.stride(1), num_views, num_pairs, scale_f,
                             scale2, shift2, FIXED_SHIFT=fixed, **kw)
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
