"""The numeric rules every backend shares: input dtypes, when a fixed shift may replace the running max, and how an
embedding is normalized (including a zero one). Plain torch: the chunked path and the kernels both import it."""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# With every logit bounded, |S_ij| <= bound, exp(S) needs no running max: e^(+-40) lies far inside fp32's normal
# range (1.2e-38 ... 3.4e38) even after summing 10^9 terms or multiplying by an upstream gradient. Normalized inputs
# give bound = 1 / tau, so tau >= 0.025 qualifies; the slack admits 16-bit rounding of normalized rows (a bf16
# row's |z|^2 reaches 1.002, an fp16 one's 1.0005), so that tau = 0.025 in bf16 still takes the fixed-shift path.
FIXED_SHIFT_LIMIT = 40.0 * 1.01

# Shorter rows count as zero embeddings (F.normalize's eps).
ZERO_NORM = 1e-12


def normalize(x: torch.Tensor) -> torch.Tensor:
    """x / |x| along the last axis, computed in at least fp32 and returned in x's dtype.

    A zero embedding (|x| < 1e-12) stays as it is, and its gradient is the loss's gradient with respect to the
    normalized row, passed through unchanged: as large as any other row's. ``F.normalize`` would divide by its eps
    instead, scaling that gradient by 1e12, which a training step cannot use.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
    return (xf / torch.where(norm < ZERO_NORM, 1.0, norm)).to(x.dtype)
