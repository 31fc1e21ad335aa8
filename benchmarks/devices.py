"""What the GPU benchmarks share: running from a checkout without installing it, naming the GPU and its peak, and
timing with CUDA events over repeated calls."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Dense 16-bit tensor-core peaks (no sparsity), TFLOP/s, by the marketing name's distinguishing part; the first
# match wins, so the more specific names come first ("GH200" holds "H200").
PEAKS = [
    ("H100 NVL", "H100 NVL", 835.0),
    ("H100 PCIe", "H100 PCIe", 756.0),
    ("H100", "H100 SXM", 989.4),
    ("GH200", "GH200", 989.4),
    ("H200 NVL", "H200 NVL", 835.0),
    ("H200", "H200 SXM", 989.4),
    ("A100", "A100", 312.0),
    ("L40S", "L40S", 362.0),
    ("A10", "A10", 125.0),
]


def use_checkout():
    """Makes ``import ecgfast`` work from this checkout when it is not installed: a bare venv with torch and
    triton needs no ``pip install`` (which, without build isolation, needs setuptools). ``kernels/`` becomes
    ``ecgfast.kernels``, as the install's package-dir mapping makes it."""
    if importlib.util.find_spec("ecgfast") is not None:
        return
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("ecgfast.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ecgfast.kernels"] = module
    spec.loader.exec_module(module)


def card(name):
    """(label, dense 16-bit peak TFLOP/s or None) of a CUDA device name, e.g. "NVIDIA H100 PCIe"."""
    return next(((label, peak) for key, label, peak in PEAKS if key in name), (name, None))


def device_info():
    """{"name", "label", "peak_tflops", "memory_gb"} of CUDA device 0 (peak None when unknown), or of the CPU."""
    import torch

    if not torch.cuda.is_available():
        return dict(name="cpu", label="cpu", peak_tflops=None, memory_gb=None)
    name = torch.cuda.get_device_name(0)
    label, peak = card(name)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    return dict(name=name, label=label, peak_tflops=peak, memory_gb=round(memory, 1))


def seconds_per_call(fn, reps, warmup=1):
    """Mean seconds of fn() over ``reps`` back-to-back calls after ``warmup`` untimed ones: CUDA events around the
    whole run and one synchronization (no host sync between calls); perf_counter on the CPU."""
    import torch

    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1e3 / reps


def free_gb():
    """Free memory in GB: the GPU's, or on the CPU the memory available to a new allocation (/proc/meminfo)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / 2**30
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) / 2**20
