"""Contrastive losses without the N x N matrix: CLOCS, SupCon, NT-Xent and CLIP, as functions and nn.Modules.

Each loss takes embeddings (N, V, d) (CLIP: two (N, d) towers), keyword-only options, and returns a scalar.
``backend="auto"`` runs the Triton kernels (``ecgfast.kernels``) on CUDA GPUs from sm_80 and the chunked PyTorch
path (``ecgfast.losses.chunked``) elsewhere; ``ecgfast.losses.reference`` holds plain materialized versions.
"""

from __future__ import annotations

import torch
from torch import nn

from ._functional import clip_loss, clocs_loss, ntxent_loss, supcon_loss

__all__ = [
    "clocs_loss",
    "supcon_loss",
    "ntxent_loss",
    "clip_loss",
    "ClocsLoss",
    "SupConLoss",
    "NTXentLoss",
    "ClipLoss",
]


class _TemperatureLoss(nn.Module):
    """The options of a temperature-scaled loss, held once; a temperature given as nn.Parameter is registered."""

    def __init__(self, temperature=0.1, *, normalize=True, backend="auto", gather=False, deterministic=False):
        super().__init__()
        self.temperature = temperature
        self.options = dict(normalize=normalize, backend=backend, gather=gather, deterministic=deterministic)

    def extra_repr(self) -> str:
        temperature = self.temperature if isinstance(self.temperature, float) else "tensor"
        return f"temperature={temperature}, " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class ClocsLoss(_TemperatureLoss):
    """``clocs_loss`` as a module: ``ClocsLoss(temperature=0.1, normalize=..., ...)(z, patient_id)``."""

    def forward(self, z: torch.Tensor, patient_id: torch.Tensor) -> torch.Tensor:
        return clocs_loss(z, patient_id, temperature=self.temperature, **self.options)


class SupConLoss(_TemperatureLoss):
    """``supcon_loss`` as a module: ``SupConLoss(temperature=0.1, ...)(z, patient_id)``."""

    def forward(self, z: torch.Tensor, patient_id: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, patient_id, temperature=self.temperature, **self.options)


class NTXentLoss(_TemperatureLoss):
    """``ntxent_loss`` as a module: ``NTXentLoss(temperature=0.1, ...)(z)`` with z (N, 2, d)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ntxent_loss(z, temperature=self.temperature, **self.options)


class ClipLoss(nn.Module):
    """``clip_loss`` as a module: ``ClipLoss(normalize=..., ...)(a, b, logit_scale)``, open_clip's calling order."""

    def __init__(self, *, normalize=True, backend="auto", gather=False, deterministic=False):
        super().__init__()
        self.options = dict(normalize=normalize, backend=backend, gather=gather, deterministic=deterministic)

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale) -> torch.Tensor:
        return clip_loss(a, b, logit_scale=logit_scale, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
