"""Tile sizes of every launch: one fixed choice per (architecture, kernel direction, element size, padded width,
batch size bucket), so that every rank of a distributed run launches the same code and nothing is tuned at run
time. The choices are the spill-free configurations of the compile report (``benchmarks/bench_kernels_compile.py``)
that keep the most work per program; the interpreter takes sm_90's, so the tests run the GPU's tile shapes.
"""

from __future__ import annotations

import contextlib

import torch

from ._lse import INTERPRET, Tiles

# Below this many rows per view the grid of 128-row blocks leaves most of a GPU's SMs idle: take 64-row blocks.
SMALL_N = 8192

# (arch family, direction, bytes per element, padded width) -> (tiles for small N, tiles for large N). fp32
# (4 bytes) covers both of its float32 matmul precisions.
TABLE = {
    (90, "fwd", 2, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (90, "fwd", 2, 256): (Tiles(64, 64, 4, 2), Tiles(128, 64, 8, 2)),
    (90, "fwd", 2, 512): (Tiles(64, 32, 4, 2), Tiles(64, 64, 4, 2)),
    (90, "bwd", 2, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (90, "bwd", 2, 256): (Tiles(64, 32, 8, 2), Tiles(64, 64, 8, 2)),
    (90, "bwd", 2, 512): (Tiles(64, 32, 8, 1), Tiles(64, 32, 8, 2)),
    (90, "fwd", 4, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (90, "fwd", 4, 256): (Tiles(64, 64, 4, 2), Tiles(128, 64, 8, 2)),
    (90, "fwd", 4, 512): (Tiles(64, 32, 4, 2), Tiles(64, 64, 4, 2)),
    (90, "bwd", 4, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (90, "bwd", 4, 256): (Tiles(64, 32, 8, 2), Tiles(64, 64, 8, 2)),
    (90, "bwd", 4, 512): (Tiles(64, 32, 8, 1), Tiles(64, 32, 8, 1)),
    (80, "fwd", 2, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (80, "fwd", 2, 256): (Tiles(64, 64, 4, 2), Tiles(128, 64, 8, 2)),
    (80, "fwd", 2, 512): (Tiles(64, 32, 4, 2), Tiles(64, 64, 4, 2)),
    (80, "bwd", 2, 128): (Tiles(64, 64, 8, 2), Tiles(64, 64, 8, 2)),
    (80, "bwd", 2, 256): (Tiles(64, 32, 8, 2), Tiles(64, 64, 8, 2)),
    (80, "bwd", 2, 512): (Tiles(64, 32, 8, 2), Tiles(64, 32, 8, 2)),
    (80, "fwd", 4, 128): (Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 3)),
    (80, "fwd", 4, 256): (Tiles(64, 32, 4, 2), Tiles(64, 32, 4, 2)),
    (80, "fwd", 4, 512): (Tiles(64, 32, 4, 2), Tiles(64, 32, 4, 2)),
    (80, "bwd", 4, 128): (Tiles(64, 64, 8, 2), Tiles(64, 64, 8, 2)),
    (80, "bwd", 4, 256): (Tiles(64, 32, 8, 2), Tiles(64, 64, 8, 2)),
    (80, "bwd", 4, 512): (Tiles(64, 32, 8, 2), Tiles(64, 32, 8, 2)),
}
WIDTHS = (128, 256, 512)
_forced: dict[str, Tiles] = {}


def arch(device: torch.device) -> int:
    """The table's architecture family of a device: 90 for sm_90 and newer, 80 for sm_8x; sm_90 for the
    interpreter."""
    if INTERPRET or device.type != "cuda":
        return 90
    major, _ = torch.cuda.get_device_capability(device)
    return 90 if major >= 9 else 80


def choose(direction: str, x: torch.Tensor) -> Tiles:
    """The tiles of the ``direction`` ("fwd" or "bwd") kernel for input x (N, [V,] d)."""
    if direction in _forced:
        return _forced[direction]
    width = next(w for w in WIDTHS if w >= x.shape[-1])
    small, large = TABLE[(arch(x.device), direction, x.element_size(), width)]
    return small if x.shape[0] <= SMALL_N else large


@contextlib.contextmanager
def forced(**tiles: Tiles):
    """Within the block, launch with these tiles (``fwd=``, ``bwd=``) whatever the table says: for tests and for
    timing the alternatives on a GPU."""
    _forced.update(tiles)
    try:
        yield
    finally:
        for direction in tiles:
            _forced.pop(direction, None)
