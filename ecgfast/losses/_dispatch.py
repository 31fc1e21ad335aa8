"""Choose the backend of the two log-sum-exp primitives: the Triton kernels or the chunked PyTorch path."""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import chunked

BACKENDS = ("auto", "triton", "torch")
# The kernels are compiled and checked for sm_80 (A100) and sm_90 (H100); older GPUs take the chunked path.
MIN_CAPABILITY = (8, 0)
_warned = False


def _kernels_suit(device: torch.device) -> bool:
    """Whether backend="auto" runs the kernels on this device; warns once when a GPU has to fall back."""
    global _warned
    if device.type != "cuda":
        return False
    capability = torch.cuda.get_device_capability(device)
    reason = None
    if capability < MIN_CAPABILITY:
        reason = (f"the Triton kernels are compiled and tested for sm_80 and newer, and this GPU is "
                  f"sm_{capability[0]}{capability[1]}")
    elif importlib.util.find_spec("triton") is None:
        reason = "triton is not installed"
    if reason and not _warned:
        _warned = True
        warnings.warn(f"ecgfast.losses: {reason}; backend='auto' uses the chunked PyTorch path", stacklevel=4)
    return reason is None


def primitive(name: str, backend: str, like: torch.Tensor):
    """The primitive ``name`` ("cross_lse" or "self_lse") of ``backend`` for tensors like ``like``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if _kernels_suit(like.device) else "torch"
    if backend == "torch":
        return chunked.cross_lse if name == "cross_lse" else chunked.self_lse
    if not like.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got {like.device} ones; set TRITON_INTERPRET=1 before importing "
            "ecgfast to run the kernels through the Triton interpreter, or use backend='torch'"
        )
    # Imported here, on first use: the kernels pull in triton, which a CPU user of the torch path never needs, and
    # read TRITON_INTERPRET when first imported.
    if name == "cross_lse":
        from ecgfast.kernels.cross_lse import cross_lse

        return cross_lse
    from ecgfast.kernels.self_lse import self_lse

    return self_lse
