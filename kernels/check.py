"""Self-check of the fused losses on this machine: every loss in every dtype through the Triton kernels against
float64, values and gradients (embeddings and temperature), with a verdict.

    python -m ecgfast.kernels.check              # on a GPU: N = 2,000, d = 128, V = 4; under a minute
    TRITON_INTERPRET=1 python -m ecgfast.kernels.check --tiny   # no GPU: through the interpreter, at N = 40

Tolerances, relative to the largest entry of each compared tensor: fp32 under torch's "highest" matmul precision
(TF32x3 tile products) 1e-5; fp32 under "high" (TF32) 5e-3; fp16 and bf16 at most twice the error of the same loss
materialized in that dtype (``ecgfast.losses.reference``), plus 1e-4 (fp16) or 1e-3 (bf16). The upstream gradient
is the loss times 1e-3, where fp16 gradients of unscaled logits underflow.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

LOSSES = ("clocs", "supcon", "ntxent", "clip")
# (dtype, float32 matmul precision, tolerance relative to the largest entry)
SETTINGS = (
    (torch.float32, "highest", 1e-5),
    (torch.float32, "high", 5e-3),
    (torch.float16, "highest", 1e-4),
    (torch.bfloat16, "highest", 1e-3),
)


def _call(name, module, z, patient_id, tau, **options):
    if name == "clip":
        return module.clip_loss(z[:, 0], z[:, 1], logit_scale=1 / tau, **options)
    if name == "ntxent":
        return module.ntxent_loss(z[:, :2], temperature=tau, **options)
    return getattr(module, f"{name}_loss")(z, patient_id, temperature=tau, **options)


def _value_and_grads(name, module, z, patient_id, tau, dtype, **options):
    """[loss, dL/dz, dL/dtau] in float64, the loss multiplied by 1e-3 before backward."""
    z = z.detach().to(dtype).requires_grad_()
    t = torch.tensor(tau, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=z.device,
                     requires_grad=True)
    loss = _call(name, module, z, patient_id, t, **options)
    (loss * 1e-3).backward()
    return [loss.detach().double(), z.grad.double(), t.grad.double()]


def _relative_error(got, want):
    return max(((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want))


def _interpreter_reads_bf16():
    """Whether the interpreter's tl.dot has been patched to read bf16 tiles as numbers (tests/conftest.py does);
    its own multiplies their uint16 bit patterns."""
    from triton.runtime.interpreter import InterpreterBuilder

    return InterpreterBuilder.create_dot.__module__ != "triton.runtime.interpreter"


def run(n, v, d, device, seed=0):
    """One row per (loss, dtype, precision): the largest relative error against float64, the same-dtype
    reference's, the tolerance and the verdict."""
    from ecgfast import losses
    from ecgfast.losses import reference

    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, v, d, generator=gen, device=device, dtype=torch.float64)
    patient_id = torch.randint(0, max(1, 2 * n // 3), (n,), generator=gen, device=device)
    rows = []
    before = torch.get_float32_matmul_precision()
    try:
        for dtype, precision, tol in SETTINGS:
            if dtype == torch.bfloat16 and device == "cpu" and not _interpreter_reads_bf16():
                print("bf16 skipped: the interpreter's own tl.dot multiplies bf16 bit patterns (pytest patches it)")
                continue
            torch.set_float32_matmul_precision(precision)
            inputs = z.to(dtype).double()  # every side sees the same representable inputs
            for name in LOSSES:
                want = _value_and_grads(name, reference, inputs, patient_id, 0.1, torch.float64)
                got = _value_and_grads(name, losses, inputs, patient_id, 0.1, dtype, backend="triton")
                err = _relative_error(got, want)
                ref_err = 0.0
                if dtype != torch.float32:
                    ref_err = _relative_error(_value_and_grads(name, reference, inputs, patient_id, 0.1, dtype), want)
                limit = 2 * ref_err + tol
                rows.append(dict(loss=name, dtype=str(dtype).removeprefix("torch."), precision=precision,
                                 error=err, reference_error=ref_err, limit=limit, ok=err <= limit))
    finally:
        torch.set_float32_matmul_precision(before)
    return rows


def format_rows(rows):
    lines = [f"{'loss':7} {'dtype':9} {'fp32 matmul':11} {'error':>9} {'ref error':>9} {'limit':>9}  verdict"]
    for r in rows:
        precision = r["precision"] if r["dtype"] == "float32" else "-"
        lines.append(f"{r['loss']:7} {r['dtype']:9} {precision:11} {r['error']:9.2e} {r['reference_error']:9.2e} "
                     f"{r['limit']:9.2e}  {'ok' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ecgfast.kernels.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="N = 40, V = 2, d = 24: for the interpreter")
    args = parser.parse_args(argv)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpret:
        print("no CUDA device: set TRITON_INTERPRET=1 (and --tiny) to check the kernels through the interpreter")
        return 2
    device = "cpu" if interpret else "cuda"
    n, v, d = (40, 2, 24) if args.tiny or interpret else (2000, 4, 128)
    name = "Triton interpreter (CPU)" if interpret else torch.cuda.get_device_name()
    print(f"ecgfast kernel self-check on {name}: N = {n}, V = {v}, d = {d}, the loss x 1e-3 before backward")
    start = time.perf_counter()
    rows = run(n, v, d, device)
    print(format_rows(rows))
    failed = [r for r in rows if not r["ok"]]
    verdict = f"{len(failed)} of {len(rows)} checks FAILED" if failed else f"all {len(rows)} checks passed"
    print(f"{verdict} in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
