"""Self-similarity log-sum-exp with self-exclusion (SupCon, NT-Xent) in Triton, without the M x M logit matrix.

``lse[i] = logsumexp_{j != i} scale * <x_i, x_j>``; the diagonal is excluded by an index comparison in the tile.
S is symmetric, so each pair (i, j) is computed once: the program of row block r sweeps the column tiles from its
own block on (the upper triangle of tiles). Forward, bounded logits: a tile's exps give its rows' sums and, beyond
the block's own columns, its columns' sums, both added to an (M,) buffer with fp32 atomics: M^2 d FLOPs and
M^2 / 2 exps. Unbounded logits take every column with a running max (2 M^2 d, M^2 exps). Backward: the gradient of
S_ij and S_ji together is D_ij = e^S_ij (g_i e^-lse_i + g_j e^-lse_j), symmetric, so a tile gives its rows' share
sum_j D_ij x_j (kept on chip, added once) and its columns' sum_i D_ij x_i (added per tile with atomics): 3 M^2 d
FLOPs, M^2 / 2 exps (M^2 unbounded).

``deterministic=True``: every program sweeps all columns and owns its outputs, bitwise repeatable (forward 2 M^2 d,
backward 4 M^2 d, M^2 exps each); the backward of inputs wider than 128 features and of fp32 under the "highest"
matmul precision too (``_lse.atomic_backward``).
"""

import torch
import triton
import triton.language as tl

from . import _tiles
from ._lse import (BOUND2_LIMIT, add_rows, backward_options, backward_scalars, check_inputs, factors, launch_options,
                   launch_rows, lse_of, lse_start, operands, out_tiles, row_lse, row_tiles, scalars, scale_grad,
                   store_grad, sweep_grad)


@triton.jit
def _self_fwd(block0, x, xl, lse, sums, sc, n, d, stride_n, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
              BK: tl.constexpr, SPLIT: tl.constexpr, ATOMIC: tl.constexpr, ROW_EDGE: tl.constexpr):
    """Program per row block: with ATOMIC and bounded logits the upper triangle of tiles (the block's own, then the
    later ones with their column sums), the rows' sums added to ``sums`` too; otherwise every column, the LSE
    written to ``lse``."""
    bounded = tl.load(sc + 1) <= BOUND2_LIMIT
    start = (block0 + tl.program_id(0)) * BM
    rows = start + tl.arange(0, BM)
    scale2 = tl.load(sc)
    zr, zr_lo = row_tiles(x, xl, rows, n, d, stride_n, BD, BK, SPLIT)
    total, run_max = lse_start(rows, bounded)
    if ATOMIC:
        triangle = bounded
    else:
        triangle = bounded & (scale2 != scale2)  # never: NaN is no scale
    if triangle:
        total, run_max = row_lse(total, run_max, zr, zr_lo, rows, x, xl, x, xl, sums, n, d, stride_n, scale2, bounded,
                                 start, start + BM, False, ROW_EDGE, True, BN, BD, BK, SPLIT)
        total, run_max = row_lse(total, run_max, zr, zr_lo, rows, x, xl, x, xl, sums, n, d, stride_n, scale2, bounded,
                                 start + BM, n, True, ROW_EDGE, False, BN, BD, BK, SPLIT)
        tl.atomic_add(sums + rows, total, mask=rows < n, sem="relaxed")
    else:
        total, run_max = row_lse(total, run_max, zr, zr_lo, rows, x, xl, x, xl, sums, n, d, stride_n, scale2, bounded,
                                 0, n, False, ROW_EDGE, True, BN, BD, BK, SPLIT)
        tl.store(lse + rows, lse_of(total, run_max), mask=rows < n)


@triton.jit
def _self_bwd(block0, x, xl, lse, g, f, dxf, dscale, sc, n, d, stride_n, BM: tl.constexpr, BN: tl.constexpr,
              BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr, DSCALE: tl.constexpr,
              ROW_EDGE: tl.constexpr):
    """Program per (row block, feature chunk): one sweep over the upper triangle of tiles, the block's own (each
    pair taken from both of its rows) then the later ones (rows and columns); the gradients go to the fp32 buffer
    dxf with atomics, and with DSCALE the block's share of d loss / d scale to ``dscale``."""
    block = block0 + tl.program_id(0)
    start = block * BM
    out_off = tl.program_id(1) * BO
    rows = start + tl.arange(0, BM)
    scale2 = tl.load(sc)
    bounded = tl.load(sc + 1) <= BOUND2_LIMIT
    zr, zr_lo = row_tiles(x, xl, rows, n, d, stride_n, BD, BK, SPLIT)
    zro, zro_lo = out_tiles(zr, zr_lo, x, xl, rows, n, d, stride_n, out_off, BD, BK, BO, SPLIT)
    acc, share = sweep_grad(tl.zeros([BM, BO], tl.float32), tl.zeros([], tl.float32), zr, zr_lo, zro, zro_lo, rows,
                            x, xl, x, xl, dxf + out_off, lse, lse, g, g, f, f, n, d, stride_n, scale2, bounded,
                            out_off, start, start + BM, False, ROW_EDGE, True, DSCALE, BN, BD, BK, BO, SPLIT)
    acc, share = sweep_grad(acc, share, zr, zr_lo, zro, zro_lo, rows, x, xl, x, xl, dxf + out_off, lse, lse, g, g, f,
                            f, n, d, stride_n, scale2, bounded, out_off, start + BM, n, True, ROW_EDGE, False, DSCALE,
                            BN, BD, BK, BO, SPLIT)
    add_rows(dxf + out_off, acc, rows, n, d - out_off, stride_n, BO)
    if DSCALE:  # every feature chunk computes the same logits: the first one reports them
        tl.store(dscale + block, share * tl.load(sc + 3), mask=out_off == 0)


@triton.jit
def _self_bwd_owned(block0, x, xl, lse, g, f, dx, dscale, sc, n, d, stride_n, BM: tl.constexpr, BN: tl.constexpr,
                    BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr,
                    DSCALE: tl.constexpr, ROW_EDGE: tl.constexpr):
    """Program per (row block, feature chunk) of the atomic-free backward: every column, its rows' gradient
    written."""
    block = block0 + tl.program_id(0)
    rows = block * BM + tl.arange(0, BM)
    out_off = tl.program_id(1) * BO
    zr, zr_lo = row_tiles(x, xl, rows, n, d, stride_n, BD, BK, SPLIT)
    acc, share = sweep_grad(tl.zeros([BM, BO], tl.float32), tl.zeros([], tl.float32), zr, zr_lo, zr, zr_lo, rows,
                            x, xl, x, xl, dx, lse, lse, g, g, f, f, n, d, stride_n, tl.load(sc),
                            tl.load(sc + 1) <= BOUND2_LIMIT, out_off, 0, n, False, ROW_EDGE, True, DSCALE, BN, BD, BK,
                            BO, SPLIT)
    store_grad(dx + out_off, acc, rows, n, d - out_off, stride_n, tl.load(sc + 2), BO)
    if DSCALE:  # each pair counted from both of its rows (halved in the sweep); the first feature chunk reports it
        tl.store(dscale + block, share * tl.load(sc + 3), mask=out_off == 0)


class SelfLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, deterministic):
        x = x.contiguous()
        n, d = x.shape
        hi, lo, sigma, split = operands(x)
        sc = scalars(x, scale, sigma)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        sums = torch.zeros(0 if deterministic else n, dtype=torch.float32, device=x.device)  # the atomics' target
        tiles = _tiles.choose("fwd", x)
        launch_rows(_self_fwd, n, tiles.BM, (), hi, lo, lse, sums, sc, n, d, x.stride(0), ATOMIC=not deterministic,
                    **launch_options(x, tiles, split))
        if not deterministic:  # bounded logits: the LSEs are the logs of the sums
            lse = torch.where(sc[1] <= BOUND2_LIMIT.value, sums.log(), lse)
        ctx.save_for_backward(hi, lo, lse, sc)
        ctx.scale, ctx.split, ctx.dtype, ctx.deterministic = scale, split, x.dtype, deterministic
        return lse

    @staticmethod
    def backward(ctx, grad):
        hi, lo, lse, sc = ctx.saved_tensors
        n, d = hi.shape
        sc, alpha = backward_scalars(sc, 2 * grad.abs().amax())  # |dS_ij| <= |g_i| + |g_j|
        lse, g, f = factors(lse, grad.contiguous(), alpha)  # D_ij = e^S_ij (f_i + f_j)
        tiles = _tiles.choose("bwd", hi)
        atomic, options, chunks = backward_options(hi, tiles, ctx.split, ctx.deterministic, ctx.scale)
        dscale = torch.zeros(triton.cdiv(n, tiles.BM), dtype=torch.float32, device=hi.device)
        if not atomic:
            dx = torch.empty(hi.shape, dtype=ctx.dtype, device=hi.device)
            launch_rows(_self_bwd_owned, n, tiles.BM, (chunks,), hi, lo, lse, g, f, dx, dscale, sc, n, d,
                        hi.stride(0), **options)
        else:
            dxf = torch.zeros(hi.shape, dtype=torch.float32, device=hi.device)
            launch_rows(_self_bwd, n, tiles.BM, (chunks,), hi, lo, lse, g, f, dxf, dscale, sc, n, d, hi.stride(0),
                        **options)
            dx = dxf.mul_(sc[2]).to(ctx.dtype)  # in place: no second fp32 (M, d) tensor
        return dx, scale_grad(ctx.scale, dscale), None


def self_lse(x, scale, *, deterministic=False):
    """Log-sum-exp of each row of the self-similarity logits with the diagonal left out, never materialized.

    Args:
        x: (M, d) embeddings, d <= 512, float32, float16 or bfloat16; CUDA, or CPU under TRITON_INTERPRET=1.
        scale: the logit multiplier (1 / temperature): a float, or a 0-dim tensor that gets its gradient when it
            requires one.
        deterministic: the atomic-free design, bitwise repeatable, at twice the default's work (see the module).

    Returns:
        lse: float32 (M,), ``logsumexp_{j != i} scale * <x_i, x_j>`` (-inf when M = 1), differentiable w.r.t. x and
        scale.
    """
    check_inputs("x", x, 2)
    return SelfLSE.apply(x, scale, bool(deterministic))
