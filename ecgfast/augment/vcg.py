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

_MATRICES = {"inverse_dower": (INVERSE_DOWER, DOWER), "kors": (KORS, np.linalg.pinv(KORS))}


def selection_matrix(names, wanted) -> np.ndarray:
    """(len(wanted), len(names)) float64 map from leads ``names`` to leads ``wanted``, deriving III, aVR, aVL, aVF."""
    return select_leads(np.eye(len(names)), names, wanted)


def rotation_matrices(angles_deg) -> np.ndarray:
    """(N, 3, 3) float64 R = Rz Ry Rx from (N, 3) angles in degrees about X, Y, Z (right-handed)."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(c[:, 0]), np.zeros_like(c[:, 0])

    def stack(rows):
        return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)

    rx = stack([(one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0])])
    ry = stack([(c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1])])
    rz = stack([(c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one)])
    return rz @ ry @ rx


def vcg_from_leads(x, matrix: str = "inverse_dower") -> np.ndarray:
    """The VCG (..., 3, T) (X, Y, Z) of x (..., 8, T) in LEADS8 or (..., 12, T) in LEADS12 order, in x's units."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-2] not in (8, 12):
        raise ValueError(f"x must be (..., 8, T) in LEADS8 or (..., 12, T) in LEADS12 order, got shape {x.shape}")
    if matrix not in _MATRICES:
        raise ValueError(f"matrix must be one of {sorted(_MATRICES)}, got {matrix!r}")
    forward = _MATRICES[matrix][0]
    if x.shape[-2] == 12:
        forward = forward @ selection_matrix(LEADS12, LEADS8)
    return np.einsum("vl,...lt->...vt", forward.astype(np.result_type(x.dtype, np.float32)), x)


def vcg_maps(angles_deg, scales, matrix: str = "inverse_dower", keep_residual: bool = False) -> np.ndarray:
    """(N, 8, 8) float64 maps on LEADS8 for (N, 3) angles in degrees and (N, 3) scales; see the module docstring."""
    if matrix not in _MATRICES:
        raise ValueError(f"matrix must be one of {sorted(_MATRICES)}, got {matrix!r}")
    angles_deg, scales = np.asarray(angles_deg, np.float64), np.asarray(scales, np.float64)
    if angles_deg.ndim != 2 or angles_deg.shape[1] != 3 or scales.shape != angles_deg.shape:
        raise ValueError(f"angles_deg and scales must both be (N, 3), got {angles_deg.shape} and {scales.shape}")
    if not (np.isfinite(angles_deg).all() and np.isfinite(scales).all()):
        raise ValueError("angles_deg and scales must be finite")
    forward, back = _MATRICES[matrix]
    vcg = rotation_matrices(angles_deg) * scales[:, :, None]  # diag(s) R
    if keep_residual:
        return np.eye(8) + back @ (vcg - np.eye(3)) @ forward
    return back @ vcg @ forward


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
    maps = vcg_maps(angles_deg, scales, matrix, keep_residual)
    if len(maps) != len(x):
        raise ValueError(f"angles_deg has {len(maps)} rows for a batch of {len(x)}")
    if x.shape[1] == 12:
        maps = EXPAND_8_TO_12 @ maps @ selection_matrix(LEADS12, LEADS8)
    return np.matmul(maps.astype(x.dtype), x, out=out)
