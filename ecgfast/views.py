"""View specs: how one ECG becomes the C input views of L leads and T samples that the loader yields as (B, C, L, T).

Two modes, after CLOCS and the paper:
- ``"copies"``: C augmented copies of one window (the paper: 2 copies of a random 5 s window).
- ``"segments"``: C non-overlapping windows of the same ECG, each augmented (intersegment): ``segments="fixed"`` takes
  consecutive windows (0-5 s and 5-10 s), ``segments="random"`` places them at random without overlap.

Lead groups (the paper's dual stream) belong to the model, which turns each view into embeddings; not to the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .leads import LEADS8, canonical_lead

MODES = ("copies", "segments")
SEGMENTS = ("fixed", "random")


@dataclass(frozen=True)
class ViewSpec:
    """C views of ``window`` samples of ``leads`` per ECG.

    Args:
        leads: lead names of each view, standard names in any order (default LEADS8: I, II, V1-V6).
        fs: sampling rate in Hz of the store the views come from.
        window: samples per view (the paper: 2,500, 5 s at 500 Hz).
        copies: number of views C per ECG.
        mode: "copies" or "segments" (see the module docstring).
        segments: for mode="segments", "fixed" (consecutive windows) or "random" (random, non-overlapping).
    """

    leads: tuple[str, ...] = LEADS8
    fs: float = 500.0
    window: int = 2500
    copies: int = 2
    mode: str = "copies"
    segments: str = "fixed"

    def __post_init__(self):
        leads = tuple(self.leads)
        object.__setattr__(self, "leads", leads)
        if not leads:
            raise ValueError("ViewSpec.leads is empty")
        unknown = [name for name in leads if canonical_lead(name) != name]
        if unknown:
            raise ValueError(f"ViewSpec.leads {unknown} are not standard lead names (I, II, III, aVR, aVL, aVF, V1-V6)")
        if len(set(leads)) != len(leads):
            raise ValueError(f"ViewSpec.leads {leads} repeats a lead")
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"ViewSpec.fs must be a positive rate in Hz, got {self.fs}")
        for name in ("window", "copies"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ViewSpec.{name} must be a positive integer, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"ViewSpec.mode must be one of {MODES}, got {self.mode!r}")
        if self.segments not in SEGMENTS:
            raise ValueError(f"ViewSpec.segments must be one of {SEGMENTS}, got {self.segments!r}")
        if self.mode == "copies" and self.segments != "fixed":
            raise ValueError('ViewSpec.segments applies to mode="segments" only')

    @classmethod
    def paper(cls, fs: float = 500.0) -> ViewSpec:
        """The paper's views: 2 augmented copies of a 5 s window of the 8 independent leads."""
        return cls(fs=fs, window=round(5 * fs))

    @classmethod
    def intersegment(cls, fs: float = 500.0, segments: str = "fixed") -> ViewSpec:
        """CLOCS intersegment views: 0-5 s and 5-10 s (or two random non-overlapping 5 s windows)."""
        return cls(fs=fs, window=round(5 * fs), mode="segments", segments=segments)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, L, T) of one ECG's views."""
        return self.copies, len(self.leads), self.window

    @property
    def random_segments(self) -> bool:
        """Whether the views are segments placed at random (then always at random, with or without a crop)."""
        return self.mode == "segments" and self.segments == "random"

    @property
    def min_length(self) -> int:
        """The shortest record, in samples, that gives these views."""
        return self.window if self.mode == "copies" else self.copies * self.window

    def starts(self, lengths, u=None) -> np.ndarray:
        """(B, C) int64 first sample of each view.

        Args:
            lengths: (B,) valid samples of each record, each at least ``min_length``.
            u: (B, C) uniforms in [0, 1) placing the windows at random (a random crop), or None to start at sample 0.
                Random segments are always placed at random and need ``u``.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        slack = lengths - self.min_length  # room left to move the windows
        if (slack < 0).any():
            raise ValueError(
                f"records shorter than the {self.min_length} samples these views need: {lengths[slack < 0]}"
            )
        offsets = np.arange(self.copies, dtype=np.int64) * self.window if self.mode == "segments" else 0
        if self.mode == "segments" and self.segments == "random":
            if u is None:
                raise ValueError("random segments need uniforms u to place them")
            # C sorted points in [0, slack] spread the slack over the gaps: non-overlapping, uniformly placed windows.
            shifts = np.sort(np.floor(u * (slack[:, None] + 1)).astype(np.int64), axis=1)
            return offsets + shifts
        shift = 0 if u is None else np.floor(u[:, :1] * (slack[:, None] + 1)).astype(np.int64)
        return np.broadcast_to(offsets + shift, (len(lengths), self.copies)).astype(np.int64)
