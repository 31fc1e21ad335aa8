"""The paper's view pipeline in plain, vectorized NumPy: the benchmark's baseline and the tests' float64 reference.

Written independently of ecgfast.augment (its own rotation matrices, cropping and masking); only the published lead
matrices come from ecgfast.leads.
"""

from __future__ import annotations

import numpy as np

from ecgfast.leads import DOWER, INVERSE_DOWER, KORS


def rotation(angles_deg: np.ndarray) -> np.ndarray:
    """(..., 3, 3) Rz @ Ry @ Rx, right-handed, for angles (..., 3) in degrees about X, Y, Z."""
    a = np.deg2rad(angles_deg)
    out = np.empty(a.shape[:-1] + (3, 3))
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    # The product Rz Ry Rx written out.
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = -sy, cy * sx, cy * cx
    return out


def vcg_map(angles_deg, scales, matrix="inverse_dower", keep_residual=False) -> np.ndarray:
    """(..., 8, 8) float64 LEADS8 maps: B diag(s) R M, or I + B (diag(s) R - I) M."""
    forward, back = (INVERSE_DOWER, DOWER) if matrix == "inverse_dower" else (KORS, np.linalg.pinv(KORS))
    core = np.asarray(scales, np.float64)[..., :, None] * rotation(np.asarray(angles_deg, np.float64))
    if keep_residual:
        return np.eye(8) + back @ (core - np.eye(3)) @ forward
    return back @ core @ forward


def pipeline(raw, gain_uv, starts, window, angles_deg, scales, mask_starts, mask_len, matrix="inverse_dower",
             keep_residual=False, dtype=np.float32) -> np.ndarray:
    """raw int16 (B, 8, T) in LEADS8 order -> views (B, C, 8, window): crop, to mV, VCG map, zero mask.

    starts (B, C); angles_deg, scales (B, C, 3); mask_starts (B, C, 8); mask_len zeros per lead, wrapping.
    """
    b = np.arange(len(raw))[:, None, None, None]
    lead = np.arange(raw.shape[1])[None, None, :, None]
    t = starts[:, :, None, None] + np.arange(window)
    x = raw[b, lead, t].astype(dtype) * dtype(gain_uv / 1000)
    y = vcg_map(angles_deg, scales, matrix, keep_residual).astype(dtype) @ x
    masked = (np.arange(window) - mask_starts[..., None]) % window < mask_len
    y[masked] = 0
    return y


def paper_views(raw, lengths, gain_uv, window, copies, rng) -> np.ndarray:
    """The benchmark's baseline: draw the paper's parameters for the batch, then run ``pipeline``."""
    batch = len(raw)
    starts = np.repeat(rng.integers(0, lengths - window + 1)[:, None], copies, axis=1)
    angles = rng.uniform(-45, 45, (batch, copies, 3))
    scales = rng.uniform(1, 1.5, (batch, copies, 3))
    scales = np.where(rng.random((batch, copies, 3)) < 0.5, 1 / scales, scales)
    mask_starts = rng.integers(0, window, (batch, copies, raw.shape[1]))
    return pipeline(raw, gain_uv, starts, window, angles, scales, mask_starts, round(0.5 * window))
