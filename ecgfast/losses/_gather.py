"""All-gather across torch.distributed ranks, with gradient, so that a loss sees the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes):
        rank, world = dist.get_rank(), dist.get_world_size()
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.start, ctx.stop, ctx.world = sum(sizes[:rank]), sum(sizes[: rank + 1]), world
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        # Every rank computes the same loss on the same global batch, so the gradient w.r.t. this rank's slice is
        # the same on all of them: the world-size factor stands for the all-reduce (sum) of those gradients. DDP
        # then averages the parameter gradients over ranks, which gives exactly the single-process gradient of the
        # loss on the concatenated batch.
        return grad[ctx.start : ctx.stop] * ctx.world, None


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (n_rank, ...) of every rank in rank order; ranks may hold different n. Differentiable.

    The gradient returned to this rank's x is world_size times the local one (see ``_AllGather.backward``), so that
    DDP's averaging yields the gradient of the global-batch loss.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("gather=True needs an initialized torch.distributed process group")
    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return _AllGather.apply(x, [int(s) for s in sizes])
