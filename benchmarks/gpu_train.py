"""GPU: pretraining-step throughput and model FLOP utilization of the paper preset (issue 5).

The paper preset: dual-stream TemporalNet at width 1.0, 8 leads at 500 Hz, 5 s windows, two augmented copies,
batch 512, Adam (lr 1e-4, eps 1e-4), gradient clipping at 1.0, the CLOCS loss at tau 0.1; bf16 autocast and
torch.compile on the model. Utilization is the model's counted FLOPs (``ecgfast.models.train_flops``) per second
over the GPU's dense bf16 peak. Target: at least 20%, stretch 40%.

    python benchmarks/gpu_train.py                  # on a GPU: the paper preset
    python benchmarks/gpu_train.py --batch 256      # a smaller batch

Without CUDA it runs a tiny configuration on the CPU (no compile) so that the script itself stays tested. It writes
its figures as JSON to benchmarks/results/gpu_train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from ecgfast.models import DualStreamTemporalNet, train_flops

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def contrastive_loss(z: torch.Tensor, patient_id: torch.Tensor) -> torch.Tensor:
    """ecgfast.losses.clocs_loss where it exists; else a stand-in of the same cost class (InfoNCE across views)."""
    try:
        from ecgfast.losses import clocs_loss
    except ImportError:
        z = F.normalize(z.float(), dim=-1)
        b, v, _ = z.shape
        target = torch.arange(b, device=z.device)
        pairs = [(i, j) for i in range(v) for j in range(v) if i != j]
        return sum(F.cross_entropy(z[:, i] @ z[:, j].T / 0.1, target) for i, j in pairs) / len(pairs)
    return clocs_loss(z, patient_id, temperature=0.1)


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
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    model = DualStreamTemporalNet(width=args.width).to(device)
    shape = (args.batch, args.copies, len(model.lead_names), args.samples)
    flops = train_flops(model, shape)  # counted before compile, on the meta device
    compiled = cuda and not args.no_compile
    embed = torch.compile(model.embed) if compiled else model.embed
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)
    x = torch.randn(shape, device=device)
    patient_id = torch.arange(args.batch, device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z = embed(x)
        loss = contrastive_loss(z, patient_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - start) / args.steps

    result = {
        "device": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "compiled": compiled, "batch": args.batch,
        "width": args.width, "copies": args.copies, "samples": args.samples, "steps": args.steps,
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
