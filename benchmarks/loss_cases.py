"""The loss cases the GPU benchmarks time (``bench_kernels.py``, ``gpu_losses.py``): inputs, the call, and the work
counted two ways (effective: 6 FLOPs per logit and feature; the FLOPs the kernels execute). No pytest here: the
GPU script runs in a bare environment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from devices import free_gb, seconds_per_call

from ecgfast import losses
from ecgfast.losses import reference
from ecgfast.kernels import _lse


def logits(name, n, v):
    """The logits of one loss call: P N^2 for the cross-view losses, M^2 for the self-similarity ones."""
    if name == "clocs":
        return v * (v - 1) // 2 * n * n
    if name == "clip":
        return n * n
    m = n * v if name == "supcon" else 2 * n
    return m * m


def kernel_flops(name, n, v, d):
    """The FLOPs the kernels execute for a bf16 call (padded width; bounded logits; the default path)."""
    bd = max(16, 1 << (d - 1).bit_length())
    chunks = bd // _lse.output_chunk(bd, 1, atomic=True)
    per_logit = 2 * bd + chunks * 2 * bd + 4 * bd  # forward; the backward's logits per feature chunk and products
    share = 0.5 if name in ("supcon", "ntxent") else 1.0  # the self-similarity kernels take each pair once
    return logits(name, n, v) * per_logit * share


def call(name, z, patient_id, impl=losses):
    """The loss ``name`` of ``impl`` (ecgfast.losses, or ecgfast.losses.reference: the same signatures) on z."""
    if name == "clip":
        return impl.clip_loss(z[:, 0], z[:, 1], logit_scale=10.0)
    if name == "ntxent":
        return impl.ntxent_loss(z[:, :2], temperature=0.1)
    return getattr(impl, f"{name}_loss")(z, patient_id, temperature=0.1)


def memory_gb(n, v, d):
    """GB a fused loss call needs, with room: the bf16 inputs and gradients, the normalized copy, the losses' fp32
    positive-pair terms and the kernels' fp32 gradient buffer, about 40 bytes per embedding element."""
    return 40 * n * v * d / 2**30


def reference_seconds(name, z, patient_id, reps):
    """(seconds per forward + backward of the materialized reference, ecgfast.losses.reference, on the same
    inputs, None) or (None, why) where its matrices would not fit: about 12 bytes per logit (the logits and their
    gradient in the input dtype, the fp32 softmax; 20 in fp32), estimated before anything is allocated."""
    n, v, _ = z.shape
    need = (20 if z.dtype == torch.float32 else 12) * logits(name, n, v) / 2**30
    free = free_gb()
    if need > 0.5 * free:
        return None, f"needs about {need:.0f} GB, {free:.0f} GB free"
    if need >= 1:
        print(f"{name} N = {n}: the materialized reference needs about {need:.0f} GB", flush=True)
    x = z.detach().clone().requires_grad_()

    def step():
        x.grad = None
        call(name, x, patient_id, impl=reference).backward()

    return seconds_per_call(step, reps), None


def inputs(n, v, d, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    z = F.normalize(torch.randn(n, v, d, generator=gen, device=device), dim=-1).to(dtype).requires_grad_()
    return z, torch.arange(n, device=device) // 2


def inf_cl_seconds(z, reps):
    """Seconds per forward + backward of Inf-CL's ``cal_inf_loss`` on CLIP's two views of z, both directions, in
    fp32 as Inf-CL takes them; None when ``inf_cl`` is not importable."""
    try:
        from inf_cl import cal_inf_loss
    except ImportError:
        return None
    a, b = z[:, 0].detach().float().requires_grad_(), z[:, 1].detach().float().requires_grad_()
    scale = torch.tensor(10.0, device=z.device)
    head_dim = min(a.shape[-1], 256)  # Inf-CL's feature chunk (16 to 256)

    def step():
        a.grad = b.grad = None
        ((cal_inf_loss(a, b, scale=scale, head_dim=head_dim) + cal_inf_loss(b, a, scale=scale, head_dim=head_dim))
         / 2).backward()

    return seconds_per_call(step, reps)


def measure(name, n, v, d, dtype, device, reps, timed=None):
    """One case, forward + backward, timed beside the reference (and Inf-CL on CLIP on a GPU): a row of ms,
    effective TFLOP/s, the kernels' own TFLOP/s (on a GPU; None where the chunked path runs), the reference's
    time and its ratio to ours. ``timed(step)`` gives the seconds per call (default ``seconds_per_call``)."""
    z, patient_id = inputs(n, v, d, dtype, device)

    def step():
        z.grad = None
        call(name, z, patient_id).backward()

    seconds = timed(step) if timed else seconds_per_call(step, reps)
    cuda = torch.device(device).type == "cuda"
    row = dict(loss=name, n=n, v=v, d=d, dtype=str(dtype).removeprefix("torch."), ms=seconds * 1e3,
               effective_tflops=6 * logits(name, n, v) * d / seconds / 1e12,
               kernel_tflops=kernel_flops(name, n, v, d) / seconds / 1e12 if cuda else None)
    ref, why = reference_seconds(name, z, patient_id, reps)
    row.update(reference_ms=ref * 1e3 if ref else None, reference_note=why, vs_reference=ref / seconds if ref else None)
    if name == "clip" and cuda:
        other = inf_cl_seconds(z, reps)
        row.update(inf_cl_ms=other * 1e3 if other else None, vs_inf_cl=other / seconds if other else None)
    return row
