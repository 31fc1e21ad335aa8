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

from ._lse import autotune, check_inputs, launch_args, load_rows, meta, row_grad, row_lse, scale_grad, store_grad


@autotune(backward=False)
@triton.jit
def _self_lse_fwd(x, lse, n, d, stride_n, scale2, shift2, FIXED_SHIFT: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, BD: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr = load_rows(x, rows, n, d, stride_n, BD, CAST_F32)
    out = row_lse(zr, rows, x, n, d, stride_n, scale2, shift2, True, FIXED_SHIFT, BN, BD, CAST_F32, PRECISION)
    tl.store(lse + rows, out, mask=rows < n)


@autotune(backward=True)
@triton.jit
def _self_lse_bwd(x, lse, g, dx, dscale, n, d, stride_n, scale, scale2, shift2, FIXED_SHIFT: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CAST_F32: tl.constexpr,
                  PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    zr = load_rows(x, rows, n, d, stride_n, BD, CAST_F32)
    acc = row_grad(tl.zeros([BM, BD], tl.float32), zr, rows, x, lse, lse, g, g, n, d, stride_n, scale2, shift2, True,
                   FIXED_SHIFT, BN, BD, CAST_F32, PRECISION)
    store_grad(dx, dscale + tl.program_id(0), zr, acc, rows, n, d, stride_n, scale, BD)


class SelfLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        x = x.contiguous()
        n, d = x.shape
        scale_f, scale2, shift2, fixed = launch_args(x, scale)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        grid = lambda m: (triton.cdiv(n, m["BM"]),)
        _self_lse_fwd[grid](x, lse, n, d, x.stride(0), scale2, shift2, FIXED_SHIFT=fixed, **meta(x))
        ctx.save_for_backward(x, lse)
        ctx.scale = scale
        ctx.args = (scale_f, scale2, shift2, fixed)
        return lse

    @staticmethod
    def backward(ctx, grad):
        x, lse = ctx.saved_tensors
        scale_f, scale2, shift2, fixed = ctx.args
        n, d = x.shape
        dx = torch.empty_like(x)
        dscale = torch.zeros(n, dtype=torch.float32, device=x.device)  # one float per program
        grid = lambda m: (triton.cdiv(n, m["BM"]),)
        _self_lse_bwd[grid](x, lse, grad.contiguous(), dx, dscale, n, d, x.stride(0), scale_f, scale2, shift2,
                            FIXED_SHIFT=fixed, **meta(x))
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
