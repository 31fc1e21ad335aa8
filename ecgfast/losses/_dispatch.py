"""Choose the backend of the two log-sum-exp primitives: the Triton kernels or the chunked PyTorch path."""

from __future__ import annotations

import importlib
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def primitive(name: str, backend: str, like: torch.Tensor):
    """The primitive ``name`` ("cross_lse" or "self_lse") of ``backend`` for tensors like ``like``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if like.is_cuda else "torch"
    if backend == "torch":
        from . import chunked

        return getattr(chunked, name)
    if not like.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got {like.device} ones; set TRITON_INTERPRET=1 before importing "
            "ecgfast to run the kernels through the Triton interpreter, or use backend='torch'"
        )
    # Imported on first use: the kernels pull in triton, which a CPU-only user of the torch path never needs.
    return getattr(importlib.import_module(f"ecgfast.kernels.{name}"), name)
