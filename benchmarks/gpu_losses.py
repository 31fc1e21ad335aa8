"""The prepared GPU run of the Triton losses, in one command (under 5 minutes on an H100):

    python benchmarks/gpu_losses.py            # installs the checkout (--no-deps) and inf-cl from .whl/ if present

1. checks every kernel on the GPU against the float64 reference, fp32 (IEEE) and bf16, values and gradients;
2. times forward + backward of cross_lse (bf16, d = 128, V = 2) and of clip_loss at N = 4k ... 256k against the
   materialized PyTorch reference, a torch.compile'd reference and Inf-CL's ``cal_inf_loss`` (when importable),
   with effective TFLOP/s (8 N^2 d per view pair over the time) and peak memory beyond the inputs;
3. writes everything, naming the device, to benchmarks/results/gpu_losses_<device>.json.

Without a GPU it runs the same steps through the Triton interpreter at a tiny size (a smoke test of the script).
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
D = 128


def install():
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(pip + ["-e", str(ROOT)], check=True)
    if (ROOT / ".whl").is_dir():  # filled by the `pip download` command in BENCHMARKS.md
        subprocess.run(pip + ["--no-index", "--find-links", str(ROOT / ".whl"), "inf-cl"], check=False)


def value_and_grads(fn, x, scale, seed=0):
    import torch

    x = x.detach().clone().requires_grad_()
    s = torch.tensor(scale, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device,
                     requires_grad=True)
    out = fn(x, s)
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen, device=x.device, dtype=torch.float64) for o in out]
    sum((o.double() * g).sum() for o, g in zip(out, grads)).backward()
    return [o.detach().double() for o in out] + [x.grad.double(), s.grad.double()]


def check_kernels(device, n):
    """Max errors of each primitive (and each loss, when ecgfast.losses is there) against float64, per dtype."""
    import torch
    import torch.nn.functional as F

    from ecgfast.kernels.cross_lse import cross_lse
    from ecgfast.kernels.self_lse import self_lse

    from ecgfast.losses import reference

    ref_cross, ref_self = reference.cross_lse, reference.self_lse
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, kernel, ref, shape in [("cross_lse V=2", cross_lse, ref_cross, (n, 2, 100)),
                                         ("cross_lse V=4", cross_lse, ref_cross, (n, 4, D)),
                                         ("self_lse", self_lse, ref_self, (2 * n, D))]:
            x = F.normalize(torch.randn(*shape, device=device, dtype=torch.float64), dim=-1).to(dtype)
            want = value_and_grads(ref, x.double(), 10.0)
            got = value_and_grads(kernel, x, 10.0)
            same = value_and_grads(ref, x, 10.0)  # the reference in the kernel's dtype: the error to compare with
            rows.append(check_row(name, dtype, got, want, same))
    rows += check_losses(device, n)
    return rows


def check_row(name, dtype, got, want, same):
    err = [(g - w).abs().max().item() for g, w in zip(got, want)]
    err_same = [(s - w).abs().max().item() for s, w in zip(same, want)]
    scale = [w.abs().max().item() for w in want]
    if str(dtype) == "torch.float32":
        ok = all(e <= 1e-5 * s + 1e-5 for e, s in zip(err, scale))
    else:
        ok = all(e <= 2 * r + 1e-3 * max(1.0, s) for e, r, s in zip(err, err_same, scale))
    return dict(check=name, dtype=str(dtype).replace("torch.", ""), max_err=max(err), ref_same_dtype_err=max(err_same),
                ok=ok)


def check_losses(device, n):
    import torch
    import torch.nn.functional as F

    try:
        from ecgfast import losses
        from ecgfast.losses import reference
    except ImportError:
        return []
    pid = torch.arange(n, device=device) // 2
    cases = {
        "clocs_loss": lambda m, z: m.clocs_loss(z, pid, temperature=0.1, **kw(m)),
        "supcon_loss": lambda m, z: m.supcon_loss(z[:, :2], pid, temperature=0.1, **kw(m)),
        "ntxent_loss": lambda m, z: m.ntxent_loss(z[:, :2], temperature=0.1, **kw(m)),
        "clip_loss": lambda m, z: m.clip_loss(z[:, 0], z[:, 1], logit_scale=10.0, **kw(m)),
    }
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        z0 = F.normalize(torch.randn(n, 4, D, device=device, dtype=torch.float64), dim=-1).to(dtype)
        for name, loss in cases.items():
            out = [run_loss(loss, losses, z0), run_loss(loss, reference, z0.double()), run_loss(loss, reference, z0)]
            rows.append(check_row(name, dtype, *out))
    return rows


def kw(module):
    return {"backend": "triton"} if module.__name__ == "ecgfast.losses" else {}


def run_loss(loss, module, z):
    z = z.detach().clone().requires_grad_()
    value = loss(module, z)
    value.backward()
    return [value.detach().double(), z.grad.double()]


def timed(fn, reps):
    """Median seconds of fn() after one warm-up call (which also autotunes); perf_counter without CUDA."""
    import torch

    fn()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn):
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def contenders(scale, interpret):
    """name -> f(a, b) returning a loss to differentiate; the clip loss each way, ours first."""
    import torch
    import torch.nn.functional as F

    from ecgfast.kernels.cross_lse import cross_lse

    def ours_primitive(a, b):  # the kernel alone: the LSE sums, both directions
        row, col = cross_lse(torch.stack([a, b], 1), scale)
        return row.sum() + col.sum()

    def reference_clip(a, b):
        logits = scale * a @ b.T
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target)) / 2

    out = {"cross_lse (Triton)": ours_primitive}
    try:
        from ecgfast.losses import clip_loss

        out["clip_loss (Triton)"] = lambda a, b: clip_loss(a, b, logit_scale=scale, normalize=False, backend="triton")
    except ImportError:
        pass
    out["reference"] = reference_clip
    if not interpret:
        out["reference (torch.compile)"] = torch.compile(reference_clip)
        try:
            from inf_cl import cal_inf_loss

            # Inf-CL is fp32/TF32 only and one call is one direction: the symmetric loss takes two. Without a
            # process group it runs its single-GPU (flash) path.
            s = lambda a: torch.tensor(scale, device=a.device)
            out["Inf-CL"] = lambda a, b: (cal_inf_loss(a.float(), b.float(), scale=s(a), head_dim=D)
                                          + cal_inf_loss(b.float(), a.float(), scale=s(a), head_dim=D)) / 2
        except ImportError:
            pass
    return out


def time_all(device, sizes, reps, interpret):
    import torch
    import torch.nn.functional as F

    scale = 10.0
    rows = []
    total_mem = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    fns = contenders(scale, interpret)
    for n in sizes:
        a = F.normalize(torch.randn(n, D, device=device), dim=-1).to(torch.bfloat16).requires_grad_()
        b = F.normalize(torch.randn(n, D, device=device), dim=-1).to(torch.bfloat16).requires_grad_()
        flops = 8 * n * n * D
        for name, fn in fns.items():
            if name.startswith("reference") and total_mem and 12 * n * n > 0.8 * total_mem:
                rows.append(dict(n=n, method=name, skipped="the N x N matrices do not fit"))
                continue

            def step():
                a.grad = b.grad = None
                fn(a, b).backward()

            try:
                t = timed(step, reps)
                peak = peak_bytes(step)
            except Exception as exc:  # one contender failing (e.g. out of memory) must not lose the others
                rows.append(dict(n=n, method=name, skipped=f"{type(exc).__name__}: {exc}"[:200]))
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            rows.append(dict(n=n, method=name, seconds=t, tflops=flops / t / 1e12, peak_extra_bytes=peak))
        timed_here = [r for r in rows if r["n"] == n and "seconds" in r]
        for r in timed_here:  # the first contender, cross_lse, always runs
            r["time_vs_cross_lse"] = r["seconds"] / timed_here[0]["seconds"]
        del a, b
    return rows


def print_table(checks, timings):
    print(f"{'check':22} {'dtype':9} {'max err':>10} {'ref err':>10}  ok")
    for c in checks:
        print(f"{c['check']:22} {c['dtype']:9} {c['max_err']:10.2e} {c['ref_same_dtype_err']:10.2e}  {c['ok']}")
    print(f"\n{'N':>7} {'method':28} {'ms':>9} {'TFLOP/s':>8} {'time / cross_lse':>17} {'peak GB':>8}")
    for r in timings:
        if "skipped" in r:
            print(f"{r['n']:>7} {r['method']:28} skipped: {r['skipped']}")
            continue
        peak = f"{r['peak_extra_bytes'] / 1e9:8.3f}" if r["peak_extra_bytes"] is not None else "       -"
        print(f"{r['n']:>7} {r['method']:28} {r['seconds'] * 1e3:9.3f} {r['tflops']:8.2f} "
              f"{r['time_vs_cross_lse']:17.2f} {peak}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-install", action="store_true", help="skip the pip installs")
    parser.add_argument("--sizes", type=int, nargs="*", help="batch sizes N to time (default 4k ... 256k on a GPU)")
    args = parser.parse_args()
    if not args.no_install:
        install()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    import triton

    torch.set_float32_matmul_precision("highest")  # IEEE fp32 tile dots for the fp32 checks
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "cpu (Triton interpreter)"
    started = time.time()
    checks = check_kernels(device, 1000 if cuda else 40)
    sizes = args.sizes or ([4096, 16384, 65536, 262144] if cuda else [64])
    timings = time_all(device, sizes, reps=5 if cuda else 1, interpret=not cuda)
    print_table(checks, timings)
    result = dict(device=name, interpreter=not cuda, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0], d=D,
                  dtype="bfloat16", scale=10.0, seconds=time.time() - started, checks=checks, timings=timings)
    out = ROOT / "benchmarks" / "results" / f"gpu_losses_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)} in {result['seconds']:.0f} s")
    if not all(c["ok"] for c in checks):
        sys.exit("some kernel checks failed: see the table above")


if __name__ == "__main__":
    main()
