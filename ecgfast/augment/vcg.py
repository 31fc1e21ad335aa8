"""The vectorcardiogram (VCG) map: leads -> X, Y, Z -> scale and rotate -> back to leads, one 8 x 8 matrix per sample.

y = B diag(s) R M x for x the eight independent leads (I, II, V1-V6): M maps them to the VCG (inverse Dower or Kors),
R = Rz Ry Rx rotates it and B maps it back (Dower for inverse Dower; pinv(Kors) for Kors, since Kors x Dower is far
from the identity and would distort every ECG even at zero angle). The product has rank 3: even at zero angle and
unit scale it drops the non-dipolar part of the ECG. ``keep_residual=True`` keeps that part:
y = x + B (diag(s) R - I) M x.
"""

from __future__ import annotations

import numpy as np

from ..leads import DOWER, EXPAND_8_TO_12, INVERSE_DOWER, KORS, LEADS8, LEADS12, select_leads

# matrix name -> (leads -> VCG, VCG -> leads)
MATRICES = {"inverse_dower": (INVERSE_DOWER, DOWER), "kors": (KORS, np.linalg.pinv(KORS))}


def selection_matrix(names, wanted) -> np.ndarray:
    """(len(wanted), len(names)) float64 map from leads ``names`` to leads ``wanted``, deriving III, aVR, aVL, aVF."""
    return select_leads(np.eye(len(names)), names, wanted)


def rotation_matrices(angles_deg) -> np.ndarray:
    """(N, 3, 3) float64 R = Rz Ry Rx from (N, 3) angles in degrees about X, Y, Z (right-handed)."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    for axis in range(3):  # X, then Y, then Z: each rotates the plane of the two axes after it, cyclically
        i, j = (axis + 1) % 3, (axis + 2) % 3
        step = np.zeros((len(a), 3, 3))
        step[:, axis, axis] = 1
        step[:, i, i] = step[:, j, j] = c[:, axis]
        step[:, i, j], step[:, j, i] = -s[:, axis], s[:, axis]
        r = step @ r
    return r


def vcg_from_leads(x, matrix: str = "inverse_dower") -> np.ndarray:
    """The VCG (..., 3, T) (X, Y, Z) of x (..., 8, T) in LEADS8 or (..., 12, T) in LEADS12 order, in x's units."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-2] not in (8, 12):
        raise ValueError(f"x must be (..., 8, T) in LEADS8 or (..., 12, T) in LEADS12 order, got shape {x.shape}")
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {sorted(MATRICES)}, got {matrix!r}")
    forward = MATRICES[matrix][0]
    if x.shape[-2] == 12:
        forward = forward @ selection_matrix(LEADS12, LEADS8)
    return np.einsum("vl,...lt->...vt", forward.astype(np.result_type(x.dtype, np.float32)), x)


def vcg_maps(angles_deg, scales, matrix: str = "inverse_dower", keep_residual: bool = False, select=None, expand=None):
    """(N, L_out, L_in) float64 maps ``expand @ A @ select`` for (N, 3) angles in degrees and (N, 3) scales.

    A is the 8 x 8 map on LEADS8 (see the module docstring); ``select`` (8, L_in) brings the input leads to LEADS8 and
    ``expand`` (L_out, 8) takes LEADS8 to the output leads, both the identity by default.
    """
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {sorted(MATRICES)}, got {matrix!r}")
    angles_deg, scales = np.asarray(angles_deg, np.float64), np.asarray(scales, np.float64)
    if angles_deg.ndim != 2 or angles_deg.shape[1] != 3 or scales.shape != angles_deg.shape:
        raise ValueError(f"angles_deg and scales must both be (N, 3), got {angles_deg.shape} and {scales.shape}")
    if not (np.isfinite(angles_deg).all() and np.isfinite(scales).all()):
        raise ValueError("angles_deg and scales must be finite")
    select = np.eye(8) if select is None else np.asarray(select, np.float64)
    expand = np.eye(8) if expand is None else np.asarray(expand, np.float64)
    forward, back = MATRICES[matrix]
    forward, back = forward @ select, expand @ back
    core = rotation_matrices(angles_deg) * scales[:, :, None]  # diag(s) R
    if keep_residual:
        core = core - np.eye(3)
    # Two GEMMs over the whole batch rather than N tiny matrix products.
    half = (core.reshape(-1, 3) @ forward).reshape(len(core), 3, -1)
    maps = (back @ half.transpose(1, 0, 2).reshape(3, -1)).reshape(len(back), len(core), -1).transpose(1, 0, 2)
    return maps + expand @ select if keep_residual else maps


def vcg_transform(x, angles_deg, scales, matrix: str = "inverse_dower", keep_residual: bool = False, out=None):
    """Rotate and scale each ECG's heart vector.

    Args:
        x: (B, 8, T) in LEADS8 order (I, II, V1-V6) or (B, 12, T) in LEADS12 order; float32 or float64. For 12 leads
            the eight independent leads drive the map and III, aVR, aVL, aVF are rebuilt from the new I and II.
        angles_deg: (B, 3) rotations about X, Y, Z in degrees, applied as R = Rz Ry Rx.
        scales: (B, 3) scale of X, Y, Z, applied after the rotation.
        matrix: "inverse_dower" (the paper's, back-projection by Dower) or "kors" (back-projection by pinv(Kors)).
        keep_residual: keep the part of x outside the VCG subspace (x + B (diag(s) R - I) M x).
        out: optional array of x's shape and dtype to write into.

    Returns:
        y of x's shape and dtype.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1] not in (8, 12):
        raise ValueError(f"x must be (B, 8, T) in LEADS8 or (B, 12, T) in LEADS12 order, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if np.isnan(x).any():
        raise ValueError("x contains NaN")
    if len(angles_deg) != len(x):
        raise ValueError(f"angles_deg has {len(angles_deg)} rows for a batch of {len(x)}")
    twelve = x.shape[1] == 12
    select, expand = (selection_matrix(LEADS12, LEADS8), EXPAND_8_TO_12) if twelve else (None, None)
    maps = vcg_maps(angles_deg, scales, matrix, keep_residual, select=select, expand=expand)
    return np.matmul(maps.astype(x.dtype), x, out=out)
