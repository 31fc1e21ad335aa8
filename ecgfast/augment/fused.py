"""The fused augmentation pass the loader calls: int16 block -> C augmented float32 views per ECG, in one Numba pass.

Per batch, Python draws every view's parameters from the samples' seeds (vectorized, ``SampleStreams``) and folds
lead selection, the gain, the VCG map, amplitude scaling and lead dropout into one (L x n_src) matrix per view. The
kernel then reads each window once, adds noise and wander, applies the matrix and masks, writing straight into the
output buffer. It releases the GIL, so threads split the batch; each sample's result depends only on its own
parameters, hence is the same whatever the thread count or the batch around it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np

from ..leads import LEADS8
from ..views import ViewSpec
from .steps import Augment, GaussianNoise
from .vcg import selection_matrix, vcg_maps


@numba.njit(nogil=True, cache=True, fastmath=True)
def _fused_kernel(
    raw, src, starts, mask_starts, maps, mask_len, table, noise_sd, noise_off, wander_on, wander, out, b0, b1
):
    # Inner loops index slices with range(n) only: an index that might be negative (start + t) makes Numba check
    # for wraparound on every access and keeps LLVM from vectorizing (measured: 4x slower).
    _, copies, leads, window = out.shape
    n_src = src.shape[0]
    x = np.empty((n_src, window), np.float32)
    for b in range(b0, b1):
        for c in range(copies):
            start = starts[b, c]
            # The copies of one window share their input unless noise or wander makes each its own.
            if c == 0 or start != starts[b, c - 1] or noise_sd != 0.0 or wander_on:
                for j in range(n_src):
                    xj, row = x[j], raw[b, src[j], start:start + window]
                    for t in range(window):
                        xj[t] = row[t]
                    if noise_sd != 0.0:
                        noise = table[noise_off[b, c, j]:noise_off[b, c, j] + window]
                        for t in range(window):
                            xj[t] += noise_sd * noise[t]
                    if wander_on:
                        # A rotating phasor instead of a sin() per sample.
                        amp, phase, step = wander[b, c, j, 0], wander[b, c, j, 1], wander[b, c, j, 2]
                        sn, cs, sd, cd = np.sin(phase), np.cos(phase), np.sin(step), np.cos(step)
                        for t in range(window):
                            xj[t] += amp * sn
                            sn, cs = sn * cd + cs * sd, cs * cd - sn * sd
            for i in range(leads):
                # Zero the masked samples, compute only the kept ones (the paper masks half of each lead): the kept
                # part is [lo0, hi0) and [lo1, hi1).
                o = out[b, c, i]
                lo0, hi0, lo1, hi1 = 0, window, 0, 0
                if mask_len > 0:
                    m0 = mask_starts[b, c, i]
                    end = m0 + mask_len
                    if end <= window:
                        hi0, lo1, hi1 = m0, end, window
                    else:
                        lo0, hi0 = end - window, m0
                    o[m0:end].fill(0.0)
                    o[:max(end - window, 0)].fill(0.0)
                for part in range(2):
                    lo, hi = (lo0, hi0) if part == 0 else (lo1, hi1)
                    kept, n = o[lo:hi], hi - lo
                    w0, x0 = maps[b, c, i, 0], x[0, lo:hi]
                    for t in range(n):
                        kept[t] = w0 * x0[t]
                    for j in range(1, n_src):
                        wj = maps[b, c, i, j]
                        if wj != 0.0:
                            xj = x[j, lo:hi]
                            for t in range(n):
                                kept[t] += wj * xj[t]


@lru_cache(maxsize=1)
def _executor() -> ThreadPoolExecutor:
    # One pool for the process, never resized, so that concurrent callers (the loader's threads) can share it.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ecgfast-augment")


def _lead_maps(store_leads, spec: ViewSpec, vcg: bool):
    """(store columns used, selection onto the VCG's LEADS8 or straight onto the spec's leads, LEADS8 -> spec)."""
    hub = LEADS8 if vcg else spec.leads
    select = selection_matrix(store_leads, hub)
    src = np.flatnonzero(np.abs(select).sum(axis=0))
    expand = selection_matrix(LEADS8, spec.leads) if vcg else np.eye(len(spec.leads))
    return src, select[:, src], expand


def _check_inputs(raw, lengths, store_leads, spec, gain_uv, out):
    if np.issubdtype(raw.dtype, np.floating) and np.isnan(raw).any():
        raise ValueError("raw contains NaN; augment_batch takes the store's int16 samples")
    if raw.ndim != 3 or raw.dtype != np.int16:
        raise ValueError(f"raw must be an int16 (B, L, T) block, got {raw.dtype} of shape {raw.shape}")
    if raw.shape[1] != len(store_leads):
        raise ValueError(f"raw has {raw.shape[1]} leads but store_leads names {len(store_leads)}: {list(store_leads)}")
    if lengths.shape != (len(raw),):
        raise ValueError(f"lengths must be ({len(raw)},), got {lengths.shape}")
    if not (np.isfinite(gain_uv) and gain_uv > 0):
        raise ValueError(f"gain_uv must be a positive number of microvolts per unit, got {gain_uv}")
    if (lengths > raw.shape[2]).any():
        raise ValueError(f"lengths {lengths[lengths > raw.shape[2]]} exceed the block's {raw.shape[2]} samples")
    need = spec.min_length
    if len(raw) and lengths.max() < need:
        raise ValueError(
            f"the views need {need} samples (window {spec.window} x {spec.copies if spec.mode == 'segments' else 1}),"
            f" longer than every record of the batch (longest {lengths.max()})"
        )
    short = np.flatnonzero(lengths < need)
    if short.size:
        raise ValueError(f"batch rows {short.tolist()} are shorter than the {need} samples the views need")
    shape = (len(raw), *spec.shape)
    if out is not None and (out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")


def augment_batch(
    raw, lengths, *, gain_uv, store_leads, spec: ViewSpec, augment: Augment, seed, epoch, positions, out=None,
    threads=None,
):
    """Turn a raw int16 block into augmented float32 millivolt views, (B, C, L, T), in one fused pass.

    Args:
        raw: int16 (B, L_store, T_store) as ``ECGStore.read_block(..., raw=True)`` gives it.
        lengths: (B,) valid samples of each record; windows stay within them.
        gain_uv: microvolts per int16 unit.
        store_leads: the names of raw's L_store leads. Leads the spec needs but the store lacks (III, aVR, aVL, aVF)
            are derived from I and II.
        spec: the ``ViewSpec`` (leads, window, copies, copies or segments).
        augment: the ``Augment`` steps.
        seed, epoch, positions: view parameters of row b derive from SeedSequence((seed, epoch, positions[b])).
        out: optional C-contiguous float32 (B, C, L, T) buffer (a pinned torch tensor's memory works).
        threads: threads splitting the batch (default: the cores available). Results do not depend on it.

    Returns:
        out (the buffer given, or a new array).
    """
    raw = np.ascontiguousarray(raw)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    target = out
    out = None if out is None else np.asarray(out)
    _check_inputs(raw, lengths, store_leads, spec, float(gain_uv), out)
    if out is None:
        out = np.empty((len(raw), *spec.shape), np.float32)
    batch, (copies, leads, window) = len(raw), spec.shape
    if np.size(positions) != batch:
        raise ValueError(f"positions has {np.size(positions)} entries for a batch of {batch}")
    src, select, expand = _lead_maps(store_leads, spec, augment.vcg is not None)
    draws = augment.draw(spec, lengths, seed=seed, epoch=epoch, positions=positions, inputs=len(src))
    to_units = 1000.0 / gain_uv  # millivolts -> int16 units, for what is added before the gain

    # One matrix per view: gain, lead selection, VCG map, amplitude and dropout folded together.
    if augment.vcg is not None:
        maps = vcg_maps(draws.angles.reshape(-1, 3), draws.scales.reshape(-1, 3), augment.vcg.matrix,
                        augment.vcg.keep_residual, select=select, expand=expand).reshape(batch, copies, leads, -1)
    else:
        maps = np.broadcast_to(expand @ select, (batch, copies, leads, len(src)))
    maps = maps * (gain_uv / 1000.0)
    if draws.amplitude is not None:
        maps = maps * draws.amplitude[..., None, None]
    if draws.keep is not None:
        maps = maps * draws.keep[..., None]
    maps = np.ascontiguousarray(maps, dtype=np.float32)

    table, noise_sd, noise_off = GaussianNoise.table(window), 0.0, np.zeros((1, 1, 1), np.int64)
    if augment.noise is not None:
        noise_sd, noise_off = augment.noise.std_mv * to_units, draws.noise_offsets
    wander = np.zeros((1, 1, 1, 3))
    if draws.wander is not None:
        wander = draws.wander * [to_units, 1.0, 2 * np.pi / spec.fs]  # mV -> units, Hz -> radians per sample
    mask_len, mask_starts = 0, np.zeros((1, 1, 1), np.int64)
    if augment.mask is not None:
        mask_len, mask_starts = augment.mask.length(window), draws.mask_starts

    # C-contiguous arrays of fixed dtypes: one compiled signature serves every call.
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (src, draws.starts, mask_starts, noise_off)]
    args = (raw, *ints[:3], maps, mask_len, table, float(noise_sd), ints[3], augment.wander is not None,
            np.ascontiguousarray(wander, dtype=np.float64), out)
    threads = max(1, min(threads or os.cpu_count() or 1, batch))
    if threads == 1:
        _fused_kernel(*args, 0, batch)
    else:
        bounds = np.linspace(0, batch, threads + 1).astype(int)
        jobs = [_executor().submit(_fused_kernel, *args, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
    return out if target is None else target
