"""The log-sum-exp tile machinery that ``cross_lse`` and ``self_lse`` share: input checks, the scalars a launch
reads from device memory, the tile sizes, and the ``@triton.jit`` loops (a row block's LSE, a row block's gradient).

Both loops sweep a block of BM rows against all column tiles of BN rows, so a logit tile (BM x BN) only ever lives
on chip. Logits are kept in base 2 (``scale2 = scale * log2(e)``) so that every exponential is one ``exp2``.

Bounded logits. When ``|S_ij| <= bound <= FIXED_SHIFT_LIMIT`` (normalized inputs give ``bound = scale``), exp(S)
needs no running max at all: one exp per logit. The bound comes from the largest row norm, computed on the device;
the kernels read it and branch at run time, so a launch never waits for the GPU. Otherwise the online running max
is used. In the backward, exp(S - lse_i) = exp(S) * exp(-lse_i): one exp per logit and the factor per row.

fp16 gradients. dS = g x softmax is cast to the operand dtype for the second product; the softmax of a negative at
N = 65,536 (~1e-10 times g) lies below fp16's range. The backward therefore scales g by a power of two ``alpha``
that brings max |dS| <= |g_row| + |g_col| near 2^15, the top of fp16's range, and divides it out of the fp32
accumulator: exact in every dtype.

fp32 inputs run on 16-bit tensor cores too. The input, scaled by a power of two ``sigma`` into [-1, 1], is split
into fp16 pieces, hi = fp16(x sigma) and lo = fp16(x sigma - hi) (subnormal where small: its error stays below
2^-25, relative to the largest entry). Under torch's "highest" float32 matmul precision (the default) every product
takes three fp16 products into one accumulator, hi lo + lo hi + hi hi, a 22-bit significand like TF32x3; under
"high" and "medium" one, hi hi, TF32's 11 bits. The split happens once per call in memory, not per tile in
registers, and 16-bit operands need no transposes, so the fp32 kernels are the 16-bit ones with more products.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ecgfast.losses._numerics import DTYPES, FIXED_SHIFT_LIMIT

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))
BOUND2_LIMIT = tl.constexpr(FIXED_SHIFT_LIMIT * math.log2(math.e))
MAX_D = 512
# The top of the scaled |dS|: fp16's largest finite value is 65,504.
DS_TARGET = 2.0**15


class Tiles(NamedTuple):
    """One launch configuration: rows per program (BM), columns per tile (BN), warps and pipeline stages; and,
    when given, the features per contraction step (BK) and per backward program (BO), which otherwise follow from
    the width and the products per tile (``contraction_chunk``, ``output_chunk``)."""

    BM: int
    BN: int
    warps: int
    stages: int
    BK: int | None = None
    BO: int | None = None

    def __str__(self):
        chunks = "".join(f" {k}={v}" for k, v in (("BK", self.BK), ("BO", self.BO)) if v)
        return f"BM={self.BM} BN={self.BN} warps={self.warps} stages={self.stages}{chunks}"


def check_inputs(name, x, ndim):
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor with {ndim} dimensions, got {shape}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not 1 <= x.shape[-1] <= MAX_D:
        raise ValueError(f"{name} has {x.shape[-1]} features; the Triton kernels take 1 to {MAX_D}")
    if x.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"{name} is on {x.device}: the Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before "
            "ecgfast.kernels is imported to run them on the CPU through the interpreter"
        )


def operands(x):
    """(hi, lo, sigma, split): what the kernels read for the input x. 16-bit inputs as they are (lo = hi, unread).
    fp32: x sigma split into fp16 pieces, sigma = 2^-ceil(log2 max |x|) on the device; split = 3 products per tile
    under the "highest" float32 matmul precision, else 1 (lo = hi, unread)."""
    one = torch.ones((), dtype=torch.float32, device=x.device)
    if x.dtype != torch.float32:
        return x, x, one, 1
    x = x.detach()
    sigma = torch.exp2(-torch.ceil(torch.log2(x.abs().amax().clamp_min(2.0**-100))))
    scaled = x * sigma
    hi = scaled.to(torch.float16)
    if torch.get_float32_matmul_precision() != "highest":
        return hi, hi, sigma, 1
    lo = (scaled - hi.float()).to(torch.float16)
    return hi, lo, sigma, 3


def scalars(x, scale, sigma):
    """The launch's scalars as a float32 device tensor: (scale2, bound2, out, part), the scale of the kernels' dot
    products in base 2, the bound on |logits| in base 2 (from the largest row norm of x), and the factors of the
    backward's row gradients and d loss / d scale, before ``backward_scalars`` divides them by alpha. Device ops
    only: no host sync, so the launch can be captured in a CUDA graph."""
    if isinstance(scale, torch.Tensor):
        s = scale.detach().reshape(()).to(device=x.device, dtype=torch.float32)
    else:
        s = torch.full((), float(scale), dtype=torch.float32, device=x.device)
    sq = torch.linalg.vector_norm(x.detach(), dim=-1, dtype=torch.float32).amax().square()  # no fp32 copy of x
    log2e = LOG2E.value
    return torch.stack([s * log2e / sigma**2, s.abs() * sq * log2e, s / sigma, 1 / sigma**2])


def backward_scalars(saved, g_bound):
    """(scalars, alpha): the forward's scalars with the two factors divided by alpha, a power of two that brings
    ``g_bound`` (a bound on |dS|, a device tensor) to about 2^15."""
    alpha = torch.exp2(torch.floor(torch.log2(DS_TARGET / g_bound.clamp_min(2.0**-100)))).clamp(2.0**-100, 2.0**100)
    return torch.stack([saved[0], saved[1], saved[2] / alpha, saved[3] / alpha]), alpha


def scale_grad(scale, partials):
    """d loss / d scale from the per-program sums of <row, unscaled gradient>: each (row, column) product is counted
    from both of its sides, hence the half."""
    if not (isinstance(scale, torch.Tensor) and scale.requires_grad):
        return None
    return (partials.sum(dtype=torch.float64) / 2).to(scale.dtype).reshape(scale.shape)


def padded_width(x):
    return max(16, triton.next_power_of_2(x.shape[-1]))


def output_chunk(bd, split):
    """Features of the backward's row gradient per program on a GPU: the fp32 accumulator of BM rows x all features
    must stay in registers across the sweep, which holds up to 256 features (64 with three products per tile);
    wider inputs split the features over programs, each recomputing the logits."""
    return min(bd, 64 if split == 3 else 256)


def contraction_chunk(bd, split):
    """Features per step of a logit tile's contraction on a GPU: all of them (the row tile stays on chip across the
    sweep) for 16-bit products; 64 for the two pieces of fp32 inputs, whose full-width row tiles would not fit."""
    return min(bd, 64) if split == 3 else bd


def launch_options(x, tiles, split, backward=False):
    """Constexprs and launch options of a kernel: the padded feature width of x, the tiles, the products per tile,
    the contraction chunk and, in the backward, the features per program. The interpreter has no registers to
    save and pays per loop iteration: it takes whole widths unless the tiles say otherwise."""
    bd = padded_width(x)
    bk = tiles.BK or (bd if INTERPRET else contraction_chunk(bd, split))
    out = dict(BM=tiles.BM, BN=tiles.BN, BD=bd, BK=min(bk, bd), SPLIT=split, num_warps=tiles.warps,
               num_stages=tiles.stages)
    if not backward:
        return out
    bo = tiles.BO or (bd if INTERPRET else output_chunk(bd, split))
    return dict(out, BO=min(bo, bd))


@triton.jit
def load_rows(base, idx, n, d, stride_n, BD: tl.constexpr):
    """A (len(idx), BD) tile of rows, zero beyond n rows and d features (zeros change no dot product)."""
    feats = tl.arange(0, BD)
    ptrs = base + idx.to(tl.int64)[:, None] * stride_n + feats[None, :]
    return tl.load(ptrs, mask=(idx[:, None] < n) & (feats[None, :] < d), other=0.0)


@triton.jit
def load_pieces(hi_base, lo_base, idx, n, d, stride_n, BD: tl.constexpr, SPLIT: tl.constexpr):
    """The (hi, lo) tiles of rows idx; lo is hi when there is one piece."""
    hi = load_rows(hi_base, idx, n, d, stride_n, BD)
    if SPLIT == 3:
        lo = load_rows(lo_base, idx, n, d, stride_n, BD)
    else:
        lo = hi
    return hi, lo


@triton.jit
def row_tiles(r_base, rl_base, rows, n, d, stride_n, BD: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    """The row tiles a program keeps on chip for its whole sweep: all features when the contraction takes them at
    once (BK == BD); else a placeholder, the rows being loaded chunk by chunk."""
    if BK == BD:
        zr, zr_lo = load_pieces(r_base, rl_base, rows, n, d, stride_n, BD, SPLIT)
    else:
        zr = tl.zeros([16, 16], r_base.dtype.element_ty)
        zr_lo = zr
    return zr, zr_lo


@triton.jit
def tile_logits(acc, zr, zr_lo, zc, zc_lo, SPLIT: tl.constexpr):
    """acc + <zr_i, zc_j> for a tile, fp32: one 16-bit product, or three on the split pieces (small terms first)."""
    if SPLIT == 3:
        acc = tl.dot(zr_lo, tl.trans(zc), tl.dot(zr, tl.trans(zc_lo), acc))
    return tl.dot(zr, tl.trans(zc), acc)


@triton.jit
def logits(zr, zr_lo, r_base, rl_base, rows, c_base, cl_base, cols, n, d, stride_n, BD: tl.constexpr,
           BK: tl.constexpr, SPLIT: tl.constexpr):
    """(<z_i, c_j> for rows x cols, the column tiles): with BK == BD from the preloaded row tiles zr, zr_lo and the
    whole column tiles; else chunk by chunk of BK features, both sides loaded per chunk, so that nothing
    full-width stays on chip (the column tiles returned are then placeholders)."""
    if BK == BD:
        zc, zc_lo = load_pieces(c_base, cl_base, cols, n, d, stride_n, BD, SPLIT)
        dot = tile_logits(tl.zeros([rows.shape[0], cols.shape[0]], tl.float32), zr, zr_lo, zc, zc_lo, SPLIT)
    else:
        dot = tl.zeros([rows.shape[0], cols.shape[0]], tl.float32)
        for k in range(0, BD, BK):
            a, a_lo = load_pieces(r_base + k, rl_base + k, rows, n, d - k, stride_n, BK, SPLIT)
            b, b_lo = load_pieces(c_base + k, cl_base + k, cols, n, d - k, stride_n, BK, SPLIT)
            dot = tile_logits(dot, a, a_lo, b, b_lo, SPLIT)
        zc = tl.zeros([16, 16], c_base.dtype.element_ty)
        zc_lo = zc
    return dot, zc, zc_lo


@triton.jit
def tile_product(acc, ds, zc, zc_lo, SPLIT: tl.constexpr):
    """acc + ds @ zc, ds cast to zc's type (split into two pieces like the inputs when SPLIT = 3)."""
    hi = ds.to(zc.dtype)
    if SPLIT == 3:
        acc = tl.dot(hi, zc_lo, acc)
        acc = tl.dot((ds - hi.to(tl.float32)).to(zc.dtype), zc, acc)
    return tl.dot(hi, zc, acc)


@triton.jit
def row_lse(zr, zr_lo, rows, r_base, rl_base, c_base, cl_base, n, d, stride_n, scale2, bounded,
            EXCLUDE_SELF: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    """Natural-log LSE over all n columns of scale * zr @ c^T, for the row tile zr (rows' own column excluded when
    EXCLUDE_SELF); -inf for a row without columns. ``bounded``: every |logit| is within BOUND2_LIMIT (base 2), so
    the sum needs no max. One loop for both cases, branching inside on a value uniform over the program, so that
    the pipelined loads are shared."""
    total = tl.zeros([rows.shape[0]], tl.float32)
    run_max = tl.zeros([rows.shape[0]], tl.float32) + tl.where(bounded, 0.0, float("-inf"))
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        s = logits(zr, zr_lo, r_base, rl_base, rows, c_base, cl_base, cols, n, d, stride_n, BD, BK, SPLIT)[0] * scale2
        valid = cols[None, :] < n
        if EXCLUDE_SELF:
            valid = valid & (rows[:, None] != cols[None, :])
        if bounded:
            total += tl.sum(tl.where(valid, tl.exp2(s), 0.0), axis=1)
        else:
            s = tl.where(valid, s, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(s, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            total = total * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(s - safe_max[:, None]), axis=1)
            run_max = new_max
    return (tl.log2(total) + run_max) * LN2


@triton.jit
def row_grad(acc, dscale, zr, zr_lo, rows, r_base, rl_base, c_base, cl_base, lr_base, lc_base, gr_base, gc_base, n,
             d, stride_n, scale2, bounded, out_off, EXCLUDE_SELF: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
             BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr):
    """(acc + sum_j dS_ij c_j[out_off : out_off + BO], dscale + sum_ij dS_ij <zr_i, c_j>) for the row tile zr, with
    dS_ij = gr_i
    softmax_row_ij + gc_j softmax_col_ij rebuilt from the saved row LSEs lr and column LSEs lc (natural log); g comes
    scaled by alpha. Unscaled by the logit scale: the caller multiplies. The caller's accumulator is carried through
    so that summing over view pairs needs no second (BM, BD) one in registers. Bounded logits: dS_ij = e^S_ij (gr_i
    e^-lr_i + gc_j e^-lc_j), one exp per logit."""
    in_rows = rows < n
    lr = tl.load(lr_base + rows, mask=in_rows, other=0.0) * LOG2E
    gr = tl.load(gr_base + rows, mask=in_rows, other=0.0)
    row_factor = gr * tl.exp2(-lr)
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        in_cols = cols < n
        dot, zc, zc_lo = logits(zr, zr_lo, r_base, rl_base, rows, c_base, cl_base, cols, n, d, stride_n, BD, BK, SPLIT)
        if BO == BD and BK == BD:
            zo, zo_lo = zc, zc_lo
        else:  # the output's share of the features
            zo, zo_lo = load_pieces(c_base + out_off, cl_base + out_off, cols, n, d - out_off, stride_n, BO, SPLIT)
        s = dot * scale2
        lc = tl.load(lc_base + cols, mask=in_cols, other=0.0) * LOG2E
        gc = tl.load(gc_base + cols, mask=in_cols, other=0.0)
        if bounded:
            ds = tl.exp2(s) * (row_factor[:, None] + (gc * tl.exp2(-lc))[None, :])
        else:
            ds = gr[:, None] * tl.exp2(s - lr[:, None]) + gc[None, :] * tl.exp2(s - lc[None, :])
        valid = in_rows[:, None] & in_cols[None, :]  # padding rows too: their factors are not bounded
        if EXCLUDE_SELF:
            valid = valid & (rows[:, None] != cols[None, :])
        ds = tl.where(valid, ds, 0.0)
        dscale += tl.sum(tl.sum(ds * dot, axis=1), axis=0)
        acc = tile_product(acc, ds, zo, zo_lo, SPLIT)
    return acc, dscale


@triton.jit
def store_grad(dx_base, dscale_ptr, acc, dscale, rows, n, d, stride_n, out_scale, part_scale, first_chunk,
               BO: tl.constexpr):
    """Writes out_scale * acc as the rows' gradient (BO features from dx_base) and, from the first feature chunk,
    part_scale * dscale as this program's share of d loss / d scale (the factors of ``backward_scalars``)."""
    feats = tl.arange(0, BO)
    ptrs = dx_base + rows.to(tl.int64)[:, None] * stride_n + feats[None, :]
    mask = (rows[:, None] < n) & (feats[None, :] < d)
    tl.store(ptrs, (acc * out_scale).to(dx_base.dtype.element_ty), mask=mask)
    tl.store(dscale_ptr, dscale * part_scale, mask=first_chunk)
