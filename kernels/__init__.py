"""Triton kernels of ecgfast, imported as ``ecgfast.kernels``: one module per kernel family, each holding its
kernels and the ``torch.autograd.Function`` that drives them. Use them through ``ecgfast.losses``."""
