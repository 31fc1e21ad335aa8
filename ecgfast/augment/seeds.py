"""Per-sample random numbers from ``numpy.random.SeedSequence((seed, epoch, position))``, for a whole batch at once.

Building one SeedSequence per sample costs about 50 us on the development machine, as long as the fused pass itself
for a batch of 256. ``SampleStreams`` runs NumPy's SeedSequence algorithm (PCG's seed_seq_fe: hash the entropy words
into a 4-word pool, then hash the pool into output words) vectorized over the batch: its words are exactly those of
``SeedSequence((seed, epoch, position)).generate_state(n, np.uint32)``, so a sample's numbers depend on nothing but its
own triple, whatever the batch, the thread count or the process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Constants of numpy/random/bit_generator.pyx (SeedSequence).
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK = 0xFFFFFFFF
# Each augmentation step reads its own range of a sample's words, so enabling one step never shifts another's draws.
_STREAM_WORDS = 1 << 24


@lru_cache(maxsize=64)
def _hash_constants(start: int, n: int) -> np.ndarray:
    """The hash constants INIT_B x MULT_B**k (mod 2**32) of output words k = start .. start + n - 1."""
    first = _INIT_B * pow(_MULT_B, start, 1 << 32) & _MASK
    powers = np.ones(n, np.uint32)
    powers[1:] = np.cumprod(np.full(max(n - 1, 0), _MULT_B, np.uint32), dtype=np.uint32)  # wraps mod 2**32
    constants = np.uint32(first) * powers
    constants.setflags(write=False)
    return constants


def _int_words(value: int, name: str) -> list[int]:
    """Little-endian 32-bit words of a non-negative int, as SeedSequence reads it (0 is one word)."""
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    words = [value & _MASK]
    value >>= 32
    while value:
        words.append(value & _MASK)
        value >>= 32
    return words


class SampleStreams:
    """The random words of ``SeedSequence((seed, epoch, p))`` for every position p of a batch.

    Args:
        seed, epoch: non-negative ints shared by the batch.
        positions: (B,) each sample's position in the epoch's global order, in [0, 2**32).
    """

    def __init__(self, seed: int, epoch: int, positions):
        positions = np.asarray(positions)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be a 1-d integer array, got {positions.dtype} {positions.shape}")
        if positions.size and (positions.min() < 0 or positions.max() > _MASK):
            raise ValueError("positions must lie in [0, 2**32)")
        head = _int_words(seed, "seed") + _int_words(epoch, "epoch")
        entropy = [np.full(len(positions), w, np.uint32) for w in head] + [positions.astype(np.uint32)]
        self.size = len(positions)
        self._pool = self._mix(entropy)

    @staticmethod
    def _mix(entropy: list[np.ndarray]) -> list[np.ndarray]:
        const = _INIT_A

        def hashmix(value):
            nonlocal const
            value = value ^ np.uint32(const)
            const = (const * _MULT_A) & _MASK
            value = value * np.uint32(const)
            return value ^ (value >> np.uint32(16))

        def mix(x, y):
            r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
            return r ^ (r >> np.uint32(16))

        zero = np.zeros_like(entropy[0])
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for word in entropy[_POOL:]:
            for dst in range(_POOL):
                pool[dst] = mix(pool[dst], hashmix(word))
        return pool

    def words(self, start: int, n: int) -> np.ndarray:
        """(B, n) uint32: words start .. start + n - 1 of each sample's ``generate_state`` output."""
        const = _hash_constants(start, n)
        pool = np.stack(self._pool, axis=1)[:, np.arange(start, start + n) % _POOL]
        value = pool ^ const
        value = value * (const * np.uint32(_MULT_B))
        return value ^ (value >> np.uint32(16))

    def uniform(self, stream: int, shape: tuple[int, ...]) -> np.ndarray:
        """(B, *shape) float64 uniform in [0, 1) from 53 bits of two words each, read from the step's own stream."""
        n = int(np.prod(shape, dtype=np.int64))
        w = self.words(stream * _STREAM_WORDS, 2 * n).astype(np.uint64)
        bits = (w[:, 0::2] | (w[:, 1::2] << np.uint64(32))) >> np.uint64(11)
        return (bits * 2.0**-53).reshape((self.size, *shape))
