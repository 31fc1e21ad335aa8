"""CPU: forward + backward throughput of the dual-stream TemporalNet, demo and paper configurations.

The baseline, timed in the same run and alternating with the model so that both share the machine's load, is a
square fp32 matrix multiply: the CPU's practical peak. A configuration's utilization is its model FLOP/s (counted
by ``ecgfast.models.train_flops``) over the matmul's FLOP/s. Targets (issue 5): the demo trains at hundreds of
ECGs/s and the paper's network at under 1 ECG/s on 2 cores; the cases below fail when utilization drops under
the floors that the measured figures in BENCHMARKS.md clear with margin.
"""

import time

import pytest
import torch

from ecgfast.models import DualStreamTemporalNet, train_flops

GEMM_N = 1024

# name: (width, batch, copies, leads, samples, utilization floor)
CONFIGS = {
    "demo": (1 / 16, 64, 2, 8, 250, 0.01),  # 100 Hz, 2.5 s
    "paper": (1.0, 2, 2, 8, 2500, 0.15),  # 500 Hz, 5 s
}


def _gemm_seconds(a: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ a
    return time.perf_counter() - start


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_step_throughput(benchmark, name):
    width, batch, copies, leads, samples, floor = CONFIGS[name]
    torch.manual_seed(0)
    model = DualStreamTemporalNet(width=width)
    x = torch.randn(batch, copies, leads, samples)
    flops = train_flops(model, tuple(x.shape))
    a = torch.randn(GEMM_N, GEMM_N)
    gemm_times = []

    def step():
        model.embed(x).square().mean().backward()
        model.zero_grad(set_to_none=True)

    def gemm_between_rounds():
        gemm_times.append(min(_gemm_seconds(a) for _ in range(3)))
        return (), {}

    step()  # oneDNN builds its kernels on the first call of each shape
    rounds = 10 if name == "demo" else 2
    benchmark.pedantic(step, setup=gemm_between_rounds, rounds=rounds, iterations=1)
    step_s, gemm_s = benchmark.stats.stats.min, min(gemm_times)
    model_rate, gemm_rate = flops / step_s, 2 * GEMM_N**3 / gemm_s
    utilization = model_rate / gemm_rate
    ecgs_per_s = batch / step_s
    benchmark.extra_info.update(ecgs_per_s=ecgs_per_s, gflop_per_ecg=flops / batch / 1e9, utilization=utilization)
    print(f"\n{name}: width {width:g}, {batch} ECGs x {copies} copies x {leads} leads x {samples} samples, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':<8}{'best (s)':>10}{'GFLOP':>10}{'GFLOP/s':>10}{'ECGs/s':>10}")
    print(f"{'model':<8}{step_s:>10.4f}{flops / 1e9:>10.3f}{model_rate / 1e9:>10.1f}{ecgs_per_s:>10.1f}")
    print(f"{'matmul':<8}{gemm_s:>10.4f}{2 * GEMM_N**3 / 1e9:>10.3f}{gemm_rate / 1e9:>10.1f}")
    print(f"utilization (model / matmul FLOP/s): {utilization:.3f} (floor {floor})")
    assert utilization >= floor
