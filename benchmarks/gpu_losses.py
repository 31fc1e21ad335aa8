"""The prepared GPU run of the fused losses, in one command (a few minutes on an H100):

    python benchmarks/gpu_losses.py              # runs from the checkout: no install, torch and triton suffice
    python benchmarks/gpu_losses.py --sizes 16384

1. names the device and its dense 16-bit peak (H100 SXM, PCIe or NVL; H200; A100; ...);
2. checks every loss through the kernels in fp32 ("highest" and "high"), fp16 and bf16 against float64, values and
   gradients (``python -m ecgfast.kernels.check``'s run, N = 2,000);
3. times forward + backward of every loss in bf16 (``loss_cases``: d = 128, V = 2 and 4, CLIP also at d = 512) at
   N = 16,384 and 65,536 with CUDA events over repeated calls, beside the materialized PyTorch reference where its
   N x N matrices fit (estimated before launching) and Inf-CL's ``cal_inf_loss`` on CLIP when importable (install
   it into the same environment first: ``python -m pip install --no-deps .whl/inf_cl-*.whl``, see BENCHMARKS.md);
   effective TFLOP/s count 6 FLOPs per logit and feature;
4. writes everything to benchmarks/results/gpu_losses_<device>.json.

Without a GPU it runs the same steps through the Triton interpreter at a tiny size (a smoke test of the script, run
by the tests).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devices import ROOT, device_info, free_gb, use_checkout  # noqa: E402

CASES = [("clocs", 2, 128), ("clocs", 4, 128), ("supcon", 2, 128), ("ntxent", 2, 128), ("clip", 2, 128),
         ("clip", 2, 512)]


def time_all(sizes, device, reps):
    import torch
    from loss_cases import measure, memory_gb

    rows = []
    for n in sizes:
        for name, v, d in CASES:
            need, free = memory_gb(n, v, d), free_gb()
            print(f"{name} N = {n}, V = {v}, d = {d}: needs about {need:.2f} GB, {free:.0f} GB free", flush=True)
            if need > 0.8 * free:
                rows.append(dict(loss=name, n=n, v=v, d=d, skipped=f"needs about {need:.1f} GB, {free:.1f} free"))
                continue
            rows.append(measure(name, n, v, d, torch.bfloat16 if device == "cuda" else torch.float32, device, reps))
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_table(info, checks, timings):
    from ecgfast.kernels.check import format_rows

    print(f"device: {info['label']} ({info['name']}), dense 16-bit peak {info['peak_tflops']} TFLOP/s")
    print(format_rows(checks))
    print(f"\n{'loss':7} {'N':>7} {'V':>2} {'d':>4} {'ms':>9} {'eff. TFLOP/s':>12} {'kernel TFLOP/s':>14} "
          f"{'x reference':>11} {'x Inf-CL':>8}")
    for r in timings:
        if "skipped" in r:
            print(f"{r['loss']:7} {r['n']:>7} {r['v']:>2} {r['d']:>4} skipped: {r['skipped']}")
            continue
        ref = f"{r['vs_reference']:.1f}" if r["vs_reference"] else "-"
        inf = f"{r['vs_inf_cl']:.2f}" if r.get("vs_inf_cl") else "-"
        kernel = f"{r['kernel_tflops']:.1f}" if r["kernel_tflops"] is not None else "-"
        print(f"{r['loss']:7} {r['n']:>7} {r['v']:>2} {r['d']:>4} {r['ms']:9.3f} {r['effective_tflops']:12.1f} "
              f"{kernel:>14} {ref:>11} {inf:>8}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", help="batch sizes N to time (default 16384 65536 on a GPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the JSON result")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    use_checkout()
    import triton

    from ecgfast.kernels import check

    info = device_info()
    started = time.time()
    device = "cuda" if cuda else "cpu"
    checks = check.run(*((2000, 4, 128) if cuda else (40, 2, 24)), device)
    timings = time_all(args.sizes or ([16384, 65536] if cuda else [64]), device, reps=5 if cuda else 1)
    print_table(info, checks, timings)
    result = dict(device=info, interpreter=not cuda, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0],
                  seconds=time.time() - started, checks=checks, timings=timings)
    out = Path(args.out) / f"gpu_losses_{re.sub(r'[^A-Za-z0-9]+', '_', info['name']).strip('_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} in {result['seconds']:.0f} s")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
