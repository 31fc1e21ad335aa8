"""CPU: the chunked torch path of ecgfast.losses against the materialized reference, CLOCS with V = 2, d = 128.

Targets (issue 4): forward + backward at N = 16,384 in at most 1.5x the reference's time; peak memory at
N = 32,768 under 1 GB beyond the inputs, measured in a fresh process (the reference would need ~21 GB there, so its
peak is measured at N = 16,384 instead).

The peak is the fresh process's VmHWM, the figure ru_maxrss reports, read from /proc: ru_maxrss of a child starts
at its parent's resident size when it forks, which after the timing case here is gigabytes and hides the child's own
peak.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from ratios import interleaved_rates, print_table

from ecgfast.losses import clocs_loss, reference

D = 128
N_TIME = 16_384
N_MEMORY = 32_768
PEAKS = []  # (path, N, GB beyond the inputs) of the peak-memory cases, printed as one table
# pytest-benchmark's own table, in a group of its own: seconds of one call or one fresh process, per case.
pytestmark = pytest.mark.benchmark(group="bench_losses_cpu: s per call or process; read the printed figures")


def _inputs(n):
    z = F.normalize(torch.randn(n, 2, D, generator=torch.Generator().manual_seed(0)), dim=-1)
    return z, torch.arange(n) // 2  # two ECGs per patient, as the patient-aware sampler draws them


def _chunked(z, patient_id):
    clocs_loss(z, patient_id, backend="torch").backward()


def _reference(z, patient_id):
    reference.clocs_loss(z, patient_id).backward()


def test_chunked_time_against_reference(benchmark):
    print(f"\nN = {N_TIME}: the reference needs about {20 * N_TIME**2 / 2**30:.1f} GB of memory")
    z, patient_id = _inputs(N_TIME)
    cases = {
        "reference": lambda: _reference(z.clone().requires_grad_(), patient_id),
        "chunked": lambda: _chunked(z.clone().requires_grad_(), patient_id),
    }
    # Each call takes seconds to minutes here, so one call per case and round.
    rates = interleaved_rates(cases, N_TIME, rounds=2, min_seconds=0)
    print_table(f"CLOCS forward + backward, N = {N_TIME}, V = 2, d = {D}, fp32", rates, "reference", unit="ECGs/s")
    gflop = 8 * N_TIME**2 * D / 1e9  # forward + backward of one view pair, as the issue counts it
    print("GFLOP/s: " + ", ".join(f"{name} {gflop * r.wall / N_TIME:.1f}" for name, r in rates.items()))
    speedup = rates["chunked"].wall / rates["reference"].wall
    print(f"chunked time / reference time: {1 / speedup:.2f} (target <= 1.5)")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(cases["chunked"], rounds=1, iterations=1)
    assert 1 / speedup <= 1.5


_PEAK = """
import sys
import torch, torch.nn.functional as F
from ecgfast.losses import clocs_loss, reference

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

n, path = int(sys.argv[1]), sys.argv[2]
z = F.normalize(torch.randn(n, 2, {d}), dim=-1).requires_grad_()
patient_id = torch.arange(n) // 2
before = peak_kib()
loss = clocs_loss(z, patient_id, backend="torch") if path == "chunked" else reference.clocs_loss(z, patient_id)
loss.backward()
print((peak_kib() - before) / 2**20)
""".format(d=D)


@pytest.mark.parametrize("path,n", [("chunked", N_MEMORY), ("chunked", N_TIME), ("reference", N_TIME)])
def test_peak_memory_beyond_inputs(benchmark, path, n):
    # The reference holds the N x N logits and their gradient in fp32 (and softmax temporaries): about 20 N^2 bytes.
    need = 20 * n * n / 2**30 if path == "reference" else 0.3
    print(f"\n{path} N = {n}: needs about {need:.1f} GB of memory")

    def fresh_process():
        out = subprocess.run([sys.executable, "-c", _PEAK, str(n), path], capture_output=True, text=True, check=True)
        return float(out.stdout)

    extra_gb = benchmark.pedantic(fresh_process, rounds=1, iterations=1)
    benchmark.extra_info["peak_gb_beyond_inputs"] = extra_gb
    PEAKS.append((path, n, extra_gb))
    if path == "chunked" and n == N_MEMORY:
        assert extra_gb < 1.0


@pytest.fixture(scope="module", autouse=True)
def peak_table():
    """The peak-memory figures as one table at the end of the module."""
    yield
    if PEAKS:
        print(f"\n\nCLOCS forward + backward, V = 2, d = {D}, fp32: peak memory beyond the inputs (VmHWM of a fresh "
              f"process; target < 1 GB for the chunked path at N = {N_MEMORY:,})")
        print(f"{'path':10} {'N':>7} {'GB':>7}")
        for path, n, gb in PEAKS:
            print(f"{path:10} {n:>7} {gb:7.3f}")
