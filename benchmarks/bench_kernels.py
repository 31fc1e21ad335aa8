"""The fused losses, forward + backward, timed by ``python -m pytest --benchmark benchmarks/bench_kernels.py -s``.

On a CUDA GPU (the kernels' cases): every loss in bf16 at d = 128, N = 16,384 and 65,536, V = 2 and 4 (CLOCS) and
CLIP at d = 512, normalized embeddings, tau 0.1 (CLIP's logit_scale 10): the logits are bounded, the default
(atomic) path. Effective TFLOP/s count 6 FLOPs per logit and feature (the logits and their two gradients: 6 N^2 d
per view pair, 6 M^2 d for M self-similarity rows), the kernels' own FLOPs stand beside them (2 per logit and
feature forward, 6 backward, more where the backward splits wide features; half of the pairs for the self-similarity
losses), every row the time ratio to the materialized reference (``ecgfast.losses.reference``) where its N x N
matrices fit in half the free memory (estimated first), and CLIP's rows the ratio to Inf-CL's ``cal_inf_loss``
(both directions, fp32, as Inf-CL takes them) when ``inf_cl`` is importable. Each time is the mean over
back-to-back calls between two CUDA events. A case prints the memory it needs before it runs, and skips when that
is more than the GPU has free.

On a CPU the GPU cases skip with the reason, and the chunked PyTorch path (the CPU backend) is timed at N = 1,024 to
2,048 beside the reference.

The module prints one table of its figures at the end. pytest-benchmark's own table (seconds per round, a round being
several calls) is not comparable across cases of different sizes; read this one.
"""

from __future__ import annotations

import pytest
import torch
from devices import device_info, free_gb, seconds_per_call, use_checkout

use_checkout()

from loss_cases import measure, memory_gb  # noqa: E402

CUDA = torch.cuda.is_available()
# pytest-benchmark's own table, in a group of its own: seconds per round of repeated calls, per case.
pytestmark = pytest.mark.benchmark(group="bench_kernels: s per round of calls; read the printed table")
GPU_CASES = [("clocs", n, v, 128) for n in (16384, 65536) for v in (2, 4)]
GPU_CASES += [(name, n, 2, 128) for name in ("supcon", "ntxent") for n in (16384, 65536)]
GPU_CASES += [("clip", n, 2, d) for n in (16384, 65536) for d in (128, 512)]
CPU_CASES = [("clocs", 2048, 2, 128), ("clip", 2048, 2, 128), ("supcon", 1024, 2, 128)]
ROWS = []


def _run(benchmark, name, n, v, d, dtype, device, reps):
    row = measure(name, n, v, d, dtype, device, reps,
                  timed=lambda step: benchmark.pedantic(seconds_per_call, args=(step, reps), rounds=1, iterations=1))
    benchmark.extra_info.update(row)
    ROWS.append(row)


@pytest.mark.skipif(not CUDA, reason="the kernels' cases need a CUDA GPU; on this CPU the chunked path is timed")
@pytest.mark.parametrize("name,n,v,d", GPU_CASES)
def test_kernels(benchmark, name, n, v, d):
    need = memory_gb(n, v, d)
    print(f"\n{name} N = {n}, V = {v}, d = {d}: needs about {need:.2f} GB of GPU memory")
    if need > 0.8 * free_gb():
        pytest.skip(f"needs about {need:.1f} GB, {free_gb():.1f} GB free")
    _run(benchmark, name, n, v, d, torch.bfloat16, "cuda", reps=10 if n <= 16384 else 3)


@pytest.mark.skipif(CUDA, reason="the chunked path's CPU timing; a GPU runs the kernels' cases")
@pytest.mark.parametrize("name,n,v,d", CPU_CASES)
def test_chunked_on_cpu(benchmark, name, n, v, d):
    _run(benchmark, name, n, v, d, torch.float32, "cpu", reps=2)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not ROWS:
        return
    info = device_info()
    peak = f", dense 16-bit peak {info['peak_tflops']} TFLOP/s" if info["peak_tflops"] else ""
    print(f"\n\nFused losses, forward + backward on {info['label']} ({info['name']}){peak}; backend "
          f"{'triton' if CUDA else 'torch (chunked)'}")
    unit, per = ("TFLOP/s", 1) if CUDA else ("GFLOP/s", 1e3)
    print(f"{'loss':7} {'N':>7} {'V':>2} {'d':>4} {'dtype':9} {'ms':>10} {'effective ' + unit:>18} "
          f"{'kernel ' + unit:>15} {'reference / ours':>16} {'Inf-CL / ours':>13}")
    for r in ROWS:
        kernel = f"{r['kernel_tflops'] * per:.1f}" if r["kernel_tflops"] is not None else "-"
        ref, inf = r["vs_reference"], r.get("vs_inf_cl")
        print(f"{r['loss']:7} {r['n']:>7} {r['v']:>2} {r['d']:>4} {r['dtype']:9} {r['ms']:10.3f} "
              f"{r['effective_tflops'] * per:18.1f} {kernel:>15} {f'{ref:.2f}' if ref else '-':>16} "
              f"{f'{inf:.2f}' if inf else '-':>13}")
    print("effective: 6 FLOPs per logit and feature; kernel: the FLOPs the kernels execute; reference / ours and "
          "Inf-CL / ours: their time over ours in the same run (the materialized reference where it fits in half "
          "the free memory)")
