"""The log-sum-exp tile machinery that ``cross_lse`` and ``self_lse`` share: input checks, the scalars a launch
reads from device memory, launch options, and the ``@triton.jit`` sweeps: a row block's LSE (``row_lse``) and a
row block's gradient (``sweep_grad``), in one pass with the column side added by atomics or owning its rows only
(the atomic-free design).

Every sweep takes a block of BM rows against column tiles of BN rows, so a logit tile (BM x BN) only ever lives on
chip. Logits are kept in base 2 (``scale2 = scale * log2(e)``) so that every exponential is one ``exp2``. Padding
columns get logits of -inf (one FFMA per logit computes the logit and its mask), padding rows are masked only in
the launch over the last row block (``launch_rows``), and the other tiles carry no mask at all.

Bounded logits. When ``|S_ij| <= bound <= FIXED_SHIFT_LIMIT`` (normalized inputs give ``bound = scale``), exp(S)
needs no running max at all: one exp per logit, and a tile's exps give both its row and its column sums. The bound
comes from the largest row norm, computed on the device; the kernels read it and branch at run time, so a launch
never waits for the GPU. Otherwise the online running max is used. In the backward, with f = g e^-lse precomputed
per row and column, dS_ij = e^S_ij (f_row_i + f_col_j): one exp per logit.

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


def factors(lse, g, alpha):
    """(lse, g, f): the saved LSEs and the alpha-scaled gradients, with a row that has no columns (lse = -inf:
    self_lse of one row) set to lse 0 and gradient 0 (it has no logits and gets no gradient, and the kernels need no
    mask for it), and the factors f = g e^-lse of bounded logits, dS_ij = e^S_ij (f_row_i + f_col_j)."""
    finite = torch.isfinite(lse)
    lse, g = torch.where(finite, lse, 0.0), torch.where(finite, g * alpha, 0.0)
    return lse, g, g * torch.exp(-lse)


def scale_grad(scale, partials):
    """d loss / d scale = sum_ij dS_ij <z_i, z_j>, from the programs' shares (summed in a fixed order)."""
    if not (isinstance(scale, torch.Tensor) and scale.requires_grad):
        return None
    return partials.sum(dtype=torch.float64).to(scale.dtype).reshape(scale.shape)


def padded_width(x):
    return max(16, triton.next_power_of_2(x.shape[-1]))


def output_chunk(bd, split, atomic=True):
    """Features of the backward's row gradient per program on a GPU: the fp32 accumulator of BM rows x those
    features stays in registers across the sweep, beside (``atomic``) the column side's BN x features per tile; 128
    features fit with both, 256 with the rows alone (64 with three products per tile). Wider inputs split the
    features over programs, each recomputing the logits."""
    return min(bd, 64 if split == 3 else 128 if atomic else 256)


def atomic_backward(bd, split, deterministic):
    """Whether the backward takes the single-pass design with fp32 atomics (each logit computed once, 6 N^2 d per
    view pair) rather than the atomic-free one (each logit from both of its sides, 8 N^2 d). Up to 128 features the
    single pass wins; wider, its column side needs the features split over programs, which recompute the logits
    (8 N^2 d at 256 features, 12 at 512, as the atomic-free design) and add 4 d / BM bytes of atomics per logit,
    so the atomic-free design is the faster there (the compile report's estimates). fp32 under "highest" (three
    products per tile) takes the atomic-free design too: its column side would need 32-column tiles to fit in
    registers, too few rows for a wgmma."""
    return not deterministic and bd <= 128 and split == 1


def contraction_chunk(bd, split):
    """Features per step of a logit tile's contraction on a GPU: all of them (the row tile stays on chip across the
    sweep) for 16-bit products; 64 for the two pieces of fp32 inputs, whose full-width row tiles would not fit."""
    return min(bd, 64) if split == 3 else bd


def backward_options(x, tiles, split, deterministic, scale):
    """(atomic, options, chunks) of a backward launch on the operands x: the design (``atomic_backward``), the
    kernel's constexprs and launch options (DSCALE when the scale gets a gradient), and the feature chunks, the
    grid's last axis."""
    atomic = atomic_backward(padded_width(x), split, deterministic)
    options = launch_options(x, tiles, split, backward=True, atomic=atomic)
    options["DSCALE"] = isinstance(scale, torch.Tensor) and scale.requires_grad
    return atomic, options, options["BD"] // options["BO"]


def launch_rows(kernel, n, bm, grid, *args, **options):
    """Launches ``kernel`` over the full row blocks (ROW_EDGE off: no row masks at all) and, when n is not a
    multiple of bm, once more over the last, partial block (ROW_EDGE on). ``grid`` holds the other grid axes; the
    kernel's first argument after ``block0`` is the first row block of the launch."""
    full = n // bm
    if full:
        kernel[(full, *grid)](0, *args, ROW_EDGE=False, **options)
    if n % bm:
        kernel[(1, *grid)](full, *args, ROW_EDGE=True, **options)


def launch_options(x, tiles, split, backward=False, atomic=True):
    """Constexprs and launch options of a kernel: the padded feature width of x, the tiles, the products per tile,
    the contraction chunk and, in the backward, the features per program. The interpreter has no registers to
    save and pays per loop iteration: it takes whole widths unless the tiles say otherwise."""
    bd = padded_width(x)
    bk = tiles.BK or (bd if INTERPRET else contraction_chunk(bd, split))
    out = dict(BM=tiles.BM, BN=tiles.BN, BD=bd, BK=min(bk, bd), SPLIT=split, num_warps=tiles.warps,
               num_stages=tiles.stages)
    if not backward:
        return out
    bo = tiles.BO or (bd if INTERPRET else output_chunk(bd, split, atomic))
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
def pieces(ds, dtype, SPLIT: tl.constexpr):
    """ds cast to the operand type: (hi, lo), lo = the rest in a second piece when SPLIT = 3 (else hi again)."""
    hi = ds.to(dtype)
    if SPLIT == 3:
        lo = (ds - hi.to(tl.float32)).to(dtype)
    else:
        lo = hi
    return hi, lo


@triton.jit
def tile_product(acc, a, a_lo, zc, zc_lo, SPLIT: tl.constexpr):
    """acc + a @ zc on the operand pieces (three products, small terms first, when SPLIT = 3)."""
    if SPLIT == 3:
        acc = tl.dot(a, zc_lo, acc)
        acc = tl.dot(a_lo, zc, acc)
    return tl.dot(a, zc, acc)


@triton.jit
def load_vector(base, idx, n):
    return tl.load(base + idx, mask=idx < n, other=0.0)


@triton.jit
def tile_logits2(dot, scale2, cols, n):
    """The logits of a tile in base 2, -inf in padding columns: one FFMA per logit, and padding columns need no
    other mask (their exp is 0)."""
    return dot * scale2 + tl.where(cols < n, 0.0, float("-inf"))[None, :]


@triton.jit
def row_mask(x, rows, cols, n, value, ROW_EDGE: tl.constexpr, DIAGONAL: tl.constexpr):
    """x with ``value`` in padding rows (only the last row block has them: ROW_EDGE) and on the diagonal (a
    self-similarity tile that holds it: DIAGONAL); x itself elsewhere, at no cost."""
    if ROW_EDGE:
        x = tl.where((rows < n)[:, None], x, value)
    if DIAGONAL:
        x = tl.where(rows[:, None] != cols[None, :], x, value)
    return x


@triton.jit
def tile_ds(s, rows, cols, n, fr, fc, lse_r, lse_c, g_r, g_c, bounded, ROW_EDGE: tl.constexpr,
            DIAGONAL: tl.constexpr):
    """The logit gradients of a tile (times alpha), dS_ij = g_row_i softmax_row_ij + g_col_j softmax_col_ij, from
    the logits s (base 2, -inf in padding columns): bounded logits use the factors f = g e^-lse of rows (fr) and
    columns (fc), one exp per logit; otherwise the LSEs and gradients at lse_r, lse_c, g_r, g_c, two. Zero in
    padding rows and, with DIAGONAL, on the diagonal."""
    if bounded:
        ds = tl.exp2(s) * (fr[:, None] + fc[None, :])
    else:
        lr = load_vector(lse_r, rows, n) * LOG2E
        lc = load_vector(lse_c, cols, n) * LOG2E
        gr = load_vector(g_r, rows, n)
        gc = load_vector(g_c, cols, n)
        ds = gr[:, None] * tl.exp2(s - lr[:, None]) + gc[None, :] * tl.exp2(s - lc[None, :])
    return row_mask(ds, rows, cols, n, 0.0, ROW_EDGE, DIAGONAL)


@triton.jit
def row_lse(total, run_max, zr, zr_lo, rows, r_base, rl_base, c_base, cl_base, col_sums, n, d, stride_n, scale2,
            bounded, first, stop, ATOMIC: tl.constexpr, ROW_EDGE: tl.constexpr, DIAGONAL: tl.constexpr,
            BN: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr):
    """The running (total, run_max) of the rows over the column tiles from ``first`` to ``stop`` of S = scale *
    z_rows @ c^T: their LSE is ``lse_of(total, run_max)``. ``bounded``: every |logit| is within BOUND2_LIMIT (base
    2), so the sums of e^S need no max (run_max stays 0), and with ATOMIC each tile's column sums are added to
    ``col_sums``: each logit is then computed once for its row and its column. One loop for both cases, branching
    inside on a value uniform over the program, so that the pipelined loads are shared. DIAGONAL leaves out
    each row's own column."""
    for start in range(first, stop, BN):
        cols = start + tl.arange(0, BN)
        dot = logits(zr, zr_lo, r_base, rl_base, rows, c_base, cl_base, cols, n, d, stride_n, BD, BK, SPLIT)[0]
        s = row_mask(tile_logits2(dot, scale2, cols, n), rows, cols, n, float("-inf"), ROW_EDGE, DIAGONAL)
        if bounded:
            e = tl.exp2(s)
            total += tl.sum(e, axis=1)
            if ATOMIC:
                tl.atomic_add(col_sums + cols, tl.sum(e, axis=0), mask=cols < n, sem="relaxed")
        else:
            new_max = tl.maximum(run_max, tl.max(s, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            total = total * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(s - safe_max[:, None]), axis=1)
            run_max = new_max
    return total, run_max


@triton.jit
def lse_start(rows, bounded):
    """(total, run_max) before any column: run_max is 0 for bounded logits (no max is kept), -inf otherwise."""
    return tl.zeros([rows.shape[0]], tl.float32), tl.zeros([rows.shape[0]], tl.float32) + tl.where(bounded, 0.0,
                                                                                                     float("-inf"))


@triton.jit
def lse_of(total, run_max):
    """Natural-log LSE from a sum of exp2(s - run_max); -inf for a row without columns."""
    return (tl.log2(total) + run_max) * LN2


@triton.jit
def sweep_grad(acc, share, zr, zr_lo, zro, zro_lo, rows, r_base, rl_base, c_base, cl_base, dc_base, lse_r, lse_c,
               g_r, g_c, f_r, f_c, n, d, stride_n, scale2, bounded, out_off, first, stop, COLUMNS: tl.constexpr,
               ROW_EDGE: tl.constexpr, DIAGONAL: tl.constexpr, DSCALE: tl.constexpr, BN: tl.constexpr,
               BD: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, SPLIT: tl.constexpr):
    """One pass over the column tiles from ``first`` to ``stop``, each logit tile computed once: returns (acc + sum_j
    dS_ij c_j, the row side for features out_off to out_off + BO; with DSCALE, share + sum_ij dS_ij <z_i, c_j>, the
    tiles' part of d loss / d scale, in fp32 from the fp32 dS), and with COLUMNS adds the column side sum_i dS_ij z_i
    to the fp32 buffer at ``dc_base`` with atomics. Without COLUMNS the program owns its rows' gradient: the
    atomic-free design, each logit computed again by the program that owns its column (the caller's accumulators
    are carried through, so that summing over view pairs needs no second (BM, BO) one in registers). DIAGONAL
    leaves out each row's own column, in self-similarity tiles taken from both of their rows (the block's own tiles
    in the single pass, every tile in the atomic-free design): they count half in the share. dS from the saved LSEs
    (natural log), the alpha-scaled gradients g and the factors f = g e^-lse of rows (_r) and columns (_c).
    Unscaled by the logit scale: the caller multiplies."""
    fr = load_vector(f_r, rows, n)
    feats = tl.arange(0, BO)
    for start in range(first, stop, BN):
        cols = start + tl.arange(0, BN)
        dot, zc, zc_lo = logits(zr, zr_lo, r_base, rl_base, rows, c_base, cl_base, cols, n, d, stride_n, BD, BK, SPLIT)
        if BO == BD and BK == BD:
            zo, zo_lo = zc, zc_lo
        else:  # the output's share of the features
            zo, zo_lo = load_pieces(c_base + out_off, cl_base + out_off, cols, n, d - out_off, stride_n, BO, SPLIT)
        ds = tile_ds(tile_logits2(dot, scale2, cols, n), rows, cols, n, fr, load_vector(f_c, cols, n), lse_r, lse_c,
                     g_r, g_c, bounded, ROW_EDGE, DIAGONAL)
        ds_hi, ds_lo = pieces(ds, zo.dtype, SPLIT)
        acc = tile_product(acc, ds_hi, ds_lo, zo, zo_lo, SPLIT)
        if DSCALE:
            share += tl.sum(tl.sum(ds * dot, axis=1), axis=0) * (0.5 if DIAGONAL else 1.0)
        if COLUMNS:  # the pieces transposed, not the fp32 tile: the products stay wgmma on sm_90
            dzc = tile_product(tl.zeros([BN, BO], tl.float32), tl.trans(ds_hi), tl.trans(ds_lo), zro, zro_lo, SPLIT)
            ptrs = dc_base + cols.to(tl.int64)[:, None] * stride_n + feats[None, :]
            tl.atomic_add(ptrs, dzc, mask=(cols[:, None] < n) & (feats[None, :] < d - out_off), sem="relaxed")
    return acc, share


@triton.jit
def out_tiles(zr, zr_lo, r_base, rl_base, rows, n, d, stride_n, out_off, BD: tl.constexpr, BK: tl.constexpr,
              BO: tl.constexpr, SPLIT: tl.constexpr):
    """The rows' features out_off to out_off + BO, the operand of the column side: the row tiles themselves when
    they are whole."""
    if BO == BD and BK == BD:
        zo, zo_lo = zr, zr_lo
    else:
        zo, zo_lo = load_pieces(r_base + out_off, rl_base + out_off, rows, n, d - out_off, stride_n, BO, SPLIT)
    return zo, zo_lo


@triton.jit
def add_rows(dx_base, acc, rows, n, d, stride_n, BO: tl.constexpr):
    """Adds a program's row side of the gradient to the fp32 buffer (other programs add their column sides)."""
    feats = tl.arange(0, BO)
    ptrs = dx_base + rows.to(tl.int64)[:, None] * stride_n + feats[None, :]
    tl.atomic_add(ptrs, acc, mask=(rows[:, None] < n) & (feats[None, :] < d), sem="relaxed")


@triton.jit
def store_grad(dx_base, acc, rows, n, d, stride_n, out_scale, BO: tl.constexpr):
    """Writes out_scale * acc as the rows' gradient (BO features from dx_base)."""
    feats = tl.arange(0, BO)
    ptrs = dx_base + rows.to(tl.int64)[:, None] * stride_n + feats[None, :]
    tl.store(ptrs, (acc * out_scale).to(dx_base.dtype.element_ty), mask=(rows[:, None] < n) & (feats[None, :] < d))
