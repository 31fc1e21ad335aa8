"""Fused Numba augmentation: 3KG's VCG rotation and scaling, zero masking and the optional steps, in one pass.

``augment_batch`` is what the loader calls; ``vcg_transform`` is the VCG map alone; the steps and the ``Augment``
pipeline describe what to apply.
"""

from .fused import augment_batch
from .seeds import SampleStreams
from .steps import (
    AmplitudeScale,
    Augment,
    BaselineWander,
    Draws,
    GaussianNoise,
    LeadDropout,
    RandomCrop,
    VCGAugment,
    ZeroMask,
)
from .vcg import rotation_matrices, vcg_from_leads, vcg_maps, vcg_transform

__all__ = [
    "AmplitudeScale",
    "Augment",
    "Draws",
    "BaselineWander",
    "GaussianNoise",
    "LeadDropout",
    "RandomCrop",
    "SampleStreams",
    "VCGAugment",
    "ZeroMask",
    "augment_batch",
    "rotation_matrices",
    "vcg_from_leads",
    "vcg_maps",
    "vcg_transform",
]
