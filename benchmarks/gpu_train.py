"""GPU: pretraining-step throughput and model FLOP utilization of the paper preset (issue 5).

The paper preset: dual-stream TemporalNet at width 1.0, 8 leads at 500 Hz, 5 s windows, two augmented copies,
batch 512, Adam (lr 1e-4, eps 1e-4), gradient clipping at 1.0, the CLOCS loss at tau 0.1; bf16 autocast and
torch.compile on the model. Utilization is the model's counted FLOPs (``ecgfast.models.train_flops``) per second
over the GPU's dense bf16 peak. Target: at least 20%, stretch 40%.

    python benchmarks/gpu_train.py                  # on a GPU: the paper preset
    python benchmarks/gpu_train.py --batch 256      # a smaller batch

It runs from the checkout (no install: torch and triton suffice), names the exact card and its peak (H100 SXM, PCIe
or NVL; H200; A100), estimates the step's memory before launching it (and stops with the batch that would fit),
times the steps with CUDA events, and writes its figures as JSON to benchmarks/results/gpu_train_<device>.json.
Without CUDA it runs a tiny configuration on the CPU (no compile) so that the script itself stays tested: its loss
through the Triton kernels under the interpreter when TRITON_INTERPRET=1 is set (as the tests do, with the
interpreter's bf16 dot patched: on its own it multiplies bf16 bit patterns), else the chunked PyTorch path.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devices import device_info, seconds_per_call, use_checkout  # noqa: E402

use_checkout()  # runs from the checkout in a bare environment with torch and triton

from ecgfast.losses import clocs_loss  # noqa: E402
from ecgfast.models import DualStreamTemporalNet, train_flops  # noqa: E402

# The kernels on a GPU; under the Triton interpreter (TRITON_INTERPRET=1, as the tests set it) the same kernels at
# the tiny CPU configuration; otherwise the chunked PyTorch path.
BACKEND = "triton" if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1" else "torch"


def memory_estimate_gb(model: torch.nn.Module, shape: tuple) -> float:
    """GB that a training step needs, estimated on the meta device before anything runs: the tensors autograd saves
    for the backward (counted in fp32; bf16 autocast saves about half of them in 16 bits, so this errs high), the
    weights with their gradients and Adam's two moments, and the input batch."""
    meta = copy.deepcopy(model).to("meta").train()
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        meta.embed(torch.empty(shape, device="meta"))
    weights = 16 * sum(p.numel() for p in model.parameters())
    return (saved + weights + 4 * math.prod(shape)) / 2**30


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512 if cuda else 4)
    p.add_argument("--width", type=float, default=1.0 if cuda else 1 / 16)
    p.add_argument("--samples", type=int, default=2500 if cuda else 250, help="samples per window")
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--steps", type=int, default=20 if cuda else 3, help="timed steps")
    p.add_argument("--warmup", type=int, default=5 if cuda else 1, help="untimed steps (compilation happens here)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (always skipped on CPU)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()

    device = torch.device("cuda" if cuda else "cpu")
    info = device_info()  # the exact card: H100 SXM, PCIe or NVL, H200, A100, ... and its dense bf16 peak
    name = info["name"] if cuda else platform.processor() or "cpu"
    peak = (args.peak_tflops or info["peak_tflops"] or 0) * 1e12 or None
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    model = DualStreamTemporalNet(width=args.width).to(device)
    shape = (args.batch, args.copies, len(model.lead_names), args.samples)
    flops = train_flops(model, shape)  # counted before compile, on the meta device
    need = memory_estimate_gb(model, shape)
    free = torch.cuda.mem_get_info()[0] / 2**30 if cuda else None
    print(f"{info['label']}: batch {args.batch} needs about {need:.1f} GB (an upper estimate)"
          + (f", {free:.1f} GB free" if cuda else ""))
    if cuda and need > free:
        sys.exit(f"batch {args.batch} would not fit: about {need:.1f} GB needed, {free:.1f} GB free; "
                 f"try --batch {max(1, int(args.batch * free / need))}")
    compiled = cuda and not args.no_compile
    embed = torch.compile(model.embed) if compiled else model.embed
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)
    x = torch.randn(shape, device=device)
    patient_id = torch.arange(args.batch, device=device)

    last = {}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z = embed(x)
        loss = clocs_loss(z, patient_id, temperature=0.1, backend=BACKEND)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last["loss"] = loss.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    step_s = seconds_per_call(step, args.steps, warmup=0)  # CUDA events around the steps, one synchronization
    loss = last["loss"]

    result = {
        "device": name, "device_label": info["label"], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "compiled": compiled, "batch": args.batch,
        "width": args.width, "copies": args.copies, "loss_backend": BACKEND, "memory_estimate_gb": need, "samples": args.samples, "steps": args.steps,
        "warmup_s": round(warmup_s, 3), "step_s": step_s, "ecgs_per_s": args.batch / step_s,
        "model_gflop_per_step": flops / 1e9, "model_tflops_per_s": flops / step_s / 1e12,
        "peak_tflops": peak / 1e12 if peak else None, "mfu": flops / step_s / peak if peak else None,
        "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss": loss.item(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_train_{'_'.join(name.split()) if cuda else 'cpu'}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
