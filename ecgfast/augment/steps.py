"""The augmentation steps and the ``Augment`` pipeline that holds them.

Each step validates its settings and draws its per-view parameters from a batch's ``SampleStreams``, reading its
own stream (the class attribute ``stream``) so that adding or removing a step never changes another's draws. The
fused pass (``augment_batch``) applies them all in one go, in the fixed order crop -> noise and wander -> the linear
map (VCG x amplitude x lead dropout) -> zero mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..views import ViewSpec
from .seeds import SampleStreams
from .vcg import MATRICES


def _check(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class RandomCrop:
    """Place the view spec's window (the paper: 5 s) at a uniform random start within each record's valid length.

    The window's length lives in the ``ViewSpec``; without a RandomCrop the window starts at sample 0.
    """

    stream = 1

    def draw(self, streams: SampleStreams, copies: int) -> np.ndarray:
        return streams.uniform(self.stream, (copies,))


@lru_cache(maxsize=4)
def _normal_table(size: int) -> np.ndarray:
    # The entropy is a constant so that every process builds the same table.
    table = np.random.default_rng(0x3C6EF372).standard_normal(size).astype(np.float32)
    table.setflags(write=False)
    return table


@dataclass(frozen=True)
class GaussianNoise:
    """Add white Gaussian noise of ``std_mv`` millivolts to every input lead of every view.

    The noise of a view's lead is a slice of one fixed table of standard normals at a random offset: Gaussian noise
    at memory speed, and a pure function of the sample's seed.
    """

    std_mv: float = 0.05
    stream = 2

    def __post_init__(self):
        _check(np.isfinite(self.std_mv) and self.std_mv >= 0, f"GaussianNoise.std_mv must be >= 0, got {self.std_mv}")

    @staticmethod
    def table(window: int) -> np.ndarray:
        """The float32 standard normals that views of ``window`` samples read (at least 4 windows long)."""
        return _normal_table(max(1 << 17, 1 << int(np.ceil(np.log2(4 * window)))))

    def draw(self, streams: SampleStreams, shape: tuple[int, ...], window: int) -> np.ndarray:
        """Offsets into ``table(window)``, each leaving room for ``window`` samples."""
        room = len(self.table(window)) - window + 1
        return np.floor(streams.uniform(self.stream, shape) * room).astype(np.int64)


@dataclass(frozen=True)
class BaselineWander:
    """Add one slow sinusoid per input lead: amplitude U(0, max_mv) mV, frequency U(min_hz, max_hz), random phase."""

    max_mv: float = 0.1
    min_hz: float = 0.05
    max_hz: float = 0.5
    stream = 3

    def __post_init__(self):
        _check(np.isfinite(self.max_mv) and self.max_mv >= 0, f"BaselineWander.max_mv must be >= 0, got {self.max_mv}")
        _check(0 <= self.min_hz <= self.max_hz,
               f"BaselineWander needs 0 <= min_hz <= max_hz, got {self.min_hz}, {self.max_hz}")

    def draw(self, streams: SampleStreams, shape: tuple[int, ...]) -> np.ndarray:
        """(*shape, 3): amplitude in mV, phase in radians, frequency in Hz."""
        u = streams.uniform(self.stream, (*shape, 3))
        return np.stack(
            [u[..., 0] * self.max_mv, u[..., 1] * 2 * np.pi, self.min_hz + u[..., 2] * (self.max_hz - self.min_hz)], -1
        )


@dataclass(frozen=True)
class VCGAugment:
    """3KG's VCG rotation and scaling (see ``vcg_transform``), drawn per view.

    Args:
        max_angle: each angle about X, Y, Z from U(-max_angle, max_angle) degrees.
        max_scale: each axis' scale from U(1, max_scale) ...
        p_invert_scale: ... replaced by its inverse with this probability.
        matrix: "inverse_dower" or "kors".
        keep_residual: keep the part of the ECG outside the rank-3 VCG subspace.
    """

    max_angle: float = 45.0
    max_scale: float = 1.5
    p_invert_scale: float = 0.5
    matrix: str = "inverse_dower"
    keep_residual: bool = False
    stream = 4

    def __post_init__(self):
        _check(np.isfinite(self.max_angle) and self.max_angle >= 0,
               f"VCGAugment.max_angle must be >= 0, got {self.max_angle}")
        _check(np.isfinite(self.max_scale) and self.max_scale >= 1,
               f"VCGAugment.max_scale must be >= 1, got {self.max_scale}")
        _check(0 <= self.p_invert_scale <= 1, f"VCGAugment.p_invert_scale must be in [0, 1], got {self.p_invert_scale}")
        _check(self.matrix in MATRICES, f"VCGAugment.matrix must be one of {sorted(MATRICES)}, got {self.matrix!r}")

    def draw(self, streams: SampleStreams, copies: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, C, 3) angles in degrees and (B, C, 3) scales."""
        u = streams.uniform(self.stream, (copies, 3, 3))
        angles = (2 * u[..., 0] - 1) * self.max_angle
        scales = 1 + u[..., 1] * (self.max_scale - 1)
        return angles, np.where(u[..., 2] < self.p_invert_scale, 1 / scales, scales)


@dataclass(frozen=True)
class AmplitudeScale:
    """Multiply each view by one factor from U(low, high) (one factor for all leads keeps the lead relations)."""

    low: float = 0.8
    high: float = 1.25
    stream = 5

    def __post_init__(self):
        _check(0 < self.low <= self.high, f"AmplitudeScale needs 0 < low <= high, got {self.low}, {self.high}")

    def draw(self, streams: SampleStreams, copies: int) -> np.ndarray:
        return self.low + streams.uniform(self.stream, (copies,)) * (self.high - self.low)


@dataclass(frozen=True)
class LeadDropout:
    """Zero each output lead of each view entirely with probability p."""

    p: float = 0.1
    stream = 6

    def __post_init__(self):
        _check(0 <= self.p <= 1, f"LeadDropout.p must be in [0, 1], got {self.p}")

    def draw(self, streams: SampleStreams, copies: int, leads: int) -> np.ndarray:
        """(B, C, L) bool, True where the lead is kept."""
        return streams.uniform(self.stream, (copies, leads)) >= self.p


@dataclass(frozen=True)
class ZeroMask:
    """Partial lead blanking: each lead of each view gets round(fraction x T) consecutive samples zeroed, from a
    uniform random start, wrapping around the end of the window."""

    fraction: float = 0.5
    stream = 7

    def __post_init__(self):
        _check(0 <= self.fraction <= 1, f"ZeroMask.fraction must be in [0, 1], got {self.fraction}")

    def length(self, window: int) -> int:
        """Zeroed samples per lead of a ``window``-sample view."""
        return round(self.fraction * window)

    def draw(self, streams: SampleStreams, copies: int, leads: int, window: int) -> np.ndarray:
        """(B, C, L) int64 first masked sample of each lead."""
        return np.floor(streams.uniform(self.stream, (copies, leads)) * window).astype(np.int64)


@dataclass(frozen=True)
class Draws:
    """Every view's parameters for one batch of B ECGs, C views, L output leads and ``inputs`` input leads; None for a
    step left out."""

    starts: np.ndarray  # (B, C) first sample of each view's window
    angles: np.ndarray | None = None  # (B, C, 3) degrees about X, Y, Z
    scales: np.ndarray | None = None  # (B, C, 3)
    amplitude: np.ndarray | None = None  # (B, C)
    keep: np.ndarray | None = None  # (B, C, L) bool, False for dropped leads
    noise_offsets: np.ndarray | None = None  # (B, C, inputs) into GaussianNoise.table(window)
    wander: np.ndarray | None = None  # (B, C, inputs, 3) amplitude mV, phase rad, frequency Hz
    mask_starts: np.ndarray | None = None  # (B, C, L) first zeroed sample


@dataclass(frozen=True)
class Augment:
    """The chosen steps, applied in this fixed order by ``augment_batch``; None leaves a step out."""

    crop: RandomCrop | None = None
    noise: GaussianNoise | None = None
    wander: BaselineWander | None = None
    vcg: VCGAugment | None = None
    amplitude: AmplitudeScale | None = None
    dropout: LeadDropout | None = None
    mask: ZeroMask | None = None

    @classmethod
    def paper(cls, matrix: str = "inverse_dower", keep_residual: bool = False) -> Augment:
        """The paper's pipeline: random 5 s crop, VCG rotation (+-45 deg) and scaling (1-1.5, inverted half the
        time), then half of each lead zeroed."""
        return cls(crop=RandomCrop(), vcg=VCGAugment(matrix=matrix, keep_residual=keep_residual), mask=ZeroMask(0.5))

    def draw(self, spec: ViewSpec, lengths, *, seed: int, epoch: int, positions, inputs: int) -> Draws:
        """Every view's parameters, row b from SeedSequence((seed, epoch, positions[b])); ``inputs`` is the number
        of input leads that noise and wander act on."""
        streams = SampleStreams(seed, epoch, np.asarray(positions).reshape(-1))
        copies, leads, window = spec.shape
        placed = self.crop is not None or spec.random_segments
        draws = {"starts": spec.starts(lengths, (self.crop or RandomCrop()).draw(streams, copies) if placed else None)}
        if self.vcg is not None:
            draws["angles"], draws["scales"] = self.vcg.draw(streams, copies)
        if self.amplitude is not None:
            draws["amplitude"] = self.amplitude.draw(streams, copies)
        if self.dropout is not None:
            draws["keep"] = self.dropout.draw(streams, copies, leads)
        if self.noise is not None:
            draws["noise_offsets"] = self.noise.draw(streams, (copies, inputs), window)
        if self.wander is not None:
            draws["wander"] = self.wander.draw(streams, (copies, inputs))
        if self.mask is not None:
            draws["mask_starts"] = self.mask.draw(streams, copies, leads, window)
        return Draws(**draws)
