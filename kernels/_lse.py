"""The log-sum-exp tile machinery that ``cross_lse`` and ``self_lse`` share: tile configs, the launch arguments
derived from the scale, and the two ``@triton.jit`` loops (a row block's LSE, a row block's gradient).

Both loops sweep a block of BM rows against all column tiles of BN rows, so a logit tile (BM x BN) only ever lives
on chip. Logits are kept in base 2 (``scale2 = scale * log2(e)``) so that every exponential is one ``exp2``.

When the logits are bounded, ``|S_ij| <= bound`` (normalized inputs give ``bound = scale``), a fixed shift by the
bound replaces the running max: one exp per logit and no row max. That holds while ``2 * bound`` stays well inside
fp32's normal range (exp(-80) ~ 1.8e-35), hence ``FIXED_SHIFT_LIMIT``; beyond it the online running max is used.
The fixed shift also lets the backward use one exp per logit: exp(S - lse_i) = exp(S - shift) * exp(shift - lse_i).
"""

import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))
FIXED_SHIFT_LIMIT = 40.0
MAX_D = 512
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# A short list: the compile test builds every kernel in each config that survives pruning.
GPU_CONFIGS = [
    triton.Config({"BM": 128, "BN": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 128, "BN": 128}, num_warps=8, num_stages=2),
    triton.Config({"BM": 64, "BN": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 32}, num_warps=8, num_stages=2),
    # Only where none of the above fits (d > 256): small tiles that keep fp32 at d = 512 under sm_80's shared memory.
    triton.Config({"BM": 32, "BN": 16}, num_warps=8, num_stages=2),
]
# The interpreter runs one program at a time at ~10 ms per tile iteration whatever the tile, and autotuning over
# several configs fails there. BM != BN so that a swapped row/column tile size cannot pass the tests.
INTERPRET_CONFIGS = [triton.Config({"BM": 64, "BN": 32}, num_warps=4, num_stages=1)]
CONFIGS = INTERPRET_CONFIGS if INTERPRET else GPU_CONFIGS

SHARED_LIMIT = 227 * 1024  # sm_90; sm_80 allows 163 KB
# Bytes per thread for the backward's register-resident row tile and fp32 accumulator: beyond it ptxas spills
# (measured for sm_90 with the compile report at d = 128).
BACKWARD_BYTES_PER_THREAD = 384


def fits(config, bd, itemsize, backward):
    """Whether a config suits a padded feature width ``bd`` and element size: the row tile and the pipelined column
    tiles in shared memory (with room for layout conversions), and in the backward the row tile and accumulator in
    registers."""
    bm, bn = config.kwargs["BM"], config.kwargs["BN"]
    shared = (bm * bd + max(config.num_stages, 1) * bn * bd) * itemsize
    if shared > SHARED_LIMIT * 3 // 4:
        return False
    return not backward or bm * bd * (itemsize + 4) <= BACKWARD_BYTES_PER_THREAD * 32 * config.num_warps


def usable_configs(configs, bd, itemsize, backward):
    """The configs autotuning tries for this width and element size: those that fit, else the last (smallest)."""
    return [c for c in configs[:-1] if fits(c, bd, itemsize, backward)] or configs[-1:]


def pruner(backward):
    def prune(configs, nargs, **kwargs):
        itemsize = 4 if kwargs["CAST_F32"] else nargs["x"].element_size()
        return usable_configs(configs, kwargs["BD"], itemsize, backward)

    return {"early_config_prune": prune}


def autotune(backward):
    # The backward's per-program d/dscale shares must start at zero for every config tried, since a config with
    # bigger row blocks writes fewer of them.
    reset = ["dscale"] if backward else None
    return triton.autotune(configs=CONFIGS, key=["n", "d"], prune_configs_by=pruner(backward), reset_to_zero=reset)


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


def launch_args(x, scale):
    """Scalar kernel arguments: (scale, scale2, shift2, fixed_shift), with the bound on |logits| from the largest
    squared row norm. One host sync, negligible beside an N x N sweep."""
    sq = torch.linalg.vector_norm(x.detach(), dim=-1, dtype=torch.float32).amax().square()  # no fp32 copy of x
    if isinstance(scale, torch.Tensor):
        scale_f, sq_f = torch.stack([scale.detach().float().reshape(()), sq]).tolist()
    else:
        scale_f, sq_f = float(scale), sq.item()
    bound = abs(scale_f) * sq_f
    return scale_f, scale_f * LOG2E.value, bound * LOG2E.value, bound <= FIXED_SHIFT_LIMIT


def meta(x):
    """Constexprs that follow from the input: padded feature width, the interpreter's fp32 cast and the precision of
    fp32 dots (torch's float32 matmul precision: "highest" keeps IEEE fp32, otherwise TF32)."""
    bd = max(16, triton.next_power_of_2(x.shape[-1]))
    fp32_ieee = torch.get_float32_matmul_precision() == "highest"
    return dict(BD=bd, CAST_F32=INTERPRET, PRECISION="ieee" if fp32_ieee else "tf32")


def scale_grad(scale, partials):
    """d loss / d scale from the per-program sums of <row, unscaled gradient>: each (row, column) product is counted
    from both of its sides, hence the half."""
    if not (isinstance(scale, torch.Tensor) and scale.requires_grad):
        return None
    return (partials.sum(dtype=torch.float64) / 2).to(scale.dtype).reshape(scale.shape)


@triton.jit
def load_rows(base, idx, n, d, stride_n, BD: tl.constexpr, CAST_F32: tl.constexpr):
    """A (len(idx), BD) tile of rows, zero beyond n rows and d features (zeros change no dot product)."""
    feats = tl.arange(0, BD)
    ptrs = base + idx.to(tl.int64)[:, None] * stride_n + feats[None, :]
    tile = tl.load(ptrs, mask=(idx[:, None] < n) & (feats[None, :] < d), other=0.0)
    if CAST_F32:  # the interpreter's tl.dot on bf16 operands is wrong
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def row_lse(zr, rows, c_base, n, d, stride_n, scale2, shift2, EXCLUDE_SELF: tl.constexpr,
            FIXED_SHIFT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, CAST_F32: tl.constexpr,
            PRECISION: tl.constexpr):
    """Natural-log LSE over all n columns of scale * zr @ c^T, for the row tile zr (rows' own column excluded when
    EXCLUDE_SELF); -inf for a row without columns."""
    total = tl.zeros([zr.shape[0]], tl.float32)
    run_max = tl.full([zr.shape[0]], float("-inf"), tl.float32)
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        zc = load_rows(c_base, cols, n, d, stride_n, BD, CAST_F32)
        s = tl.dot(zr, tl.trans(zc), input_precision=PRECISION) * scale2
        valid = cols[None, :] < n
        if EXCLUDE_SELF:
            valid = valid & (rows[:, None] != cols[None, :])
        if FIXED_SHIFT:
            total += tl.sum(tl.where(valid, tl.exp2(s - shift2), 0.0), axis=1)
        else:
            s = tl.where(valid, s, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(s, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            total = total * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(s - safe_max[:, None]), axis=1)
            run_max = new_max
    if FIXED_SHIFT:
        return (tl.log2(total) + shift2) * LN2
    return (tl.log2(total) + run_max) * LN2


@triton.jit
def row_grad(acc, zr, rows, c_base, lr_base, lc_base, gr_base, gc_base, n, d, stride_n, scale2, shift2,
             EXCLUDE_SELF: tl.constexpr, FIXED_SHIFT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
             CAST_F32: tl.constexpr, PRECISION: tl.constexpr):
    """acc + sum_j dS_ij c_j for the row tile zr, with dS_ij = gr_i softmax_row_ij + gc_j softmax_col_ij rebuilt from
    the saved row LSEs lr and column LSEs lc (natural log). Unscaled: the caller multiplies by scale. The caller's
    accumulator is carried through so that summing over view pairs needs no second (BM, BD) one in registers."""
    in_rows = rows < n
    lr = tl.load(lr_base + rows, mask=in_rows, other=0.0) * LOG2E
    gr = tl.load(gr_base + rows, mask=in_rows, other=0.0)
    if FIXED_SHIFT:
        row_factor = gr * tl.exp2(shift2 - lr)
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        in_cols = cols < n
        zc = load_rows(c_base, cols, n, d, stride_n, BD, CAST_F32)
        s = tl.dot(zr, tl.trans(zc), input_precision=PRECISION) * scale2
        lc = tl.load(lc_base + cols, mask=in_cols, other=0.0) * LOG2E
        gc = tl.load(gc_base + cols, mask=in_cols, other=0.0)
        if FIXED_SHIFT:
            col_factor = gc * tl.exp2(shift2 - lc)
            ds = tl.exp2(s - shift2) * (row_factor[:, None] + col_factor[None, :])
        else:
            ds = gr[:, None] * tl.exp2(s - lr[:, None]) + gc[None, :] * tl.exp2(s - lc[None, :])
        valid = in_cols[None, :]
        if EXCLUDE_SELF:
            valid = valid & (rows[:, None] != cols[None, :])
        ds = tl.where(valid, ds, 0.0)
        acc += tl.dot(ds.to(zc.dtype), zc, input_precision=PRECISION)
    return acc


@triton.jit
def store_grad(dx_base, dscale_ptr, zr, acc, rows, n, d, stride_n, scale, BD: tl.constexpr):
    """Writes scale * acc as the rows' gradient and sum <zr, acc> as this program's share of d loss / d scale."""
    feats = tl.arange(0, BD)
    ptrs = dx_base + rows.to(tl.int64)[:, None] * stride_n + feats[None, :]
    mask = (rows[:, None] < n) & (feats[None, :] < d)
    tl.store(ptrs, (acc * scale).to(dx_base.dtype.element_ty), mask=mask)
    tl.store(dscale_ptr, tl.sum(tl.sum(zr.to(tl.float32) * acc, axis=1), axis=0))
