"""Ahead-of-time compilation of every kernel for a GPU that is not here, and what the bundled ``cuobjdump`` says
about the result: registers, spills, shared memory, tensor-core and exp instructions. Serves the CI compile test
and the compile report benchmark.

A job compiles the specialization a real launch gets: the launcher marks aligned pointers and the integer
arguments divisible by 16 (n, d, strides at N = 65,536) and turns integers equal to 1 into constants; the same
rules (Triton's own ``native_specialize_impl``) are applied here to the arguments of an example launch.

Each compile runs in a worker process with the interpreter switched off, so that the kernels are real
``JITFunction``s whatever the parent process chose.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# name -> (module, kernel, direction)
KERNELS = {
    "cross_fwd": ("cross_lse", "_cross_lse_fwd", "fwd"),
    "cross_bwd": ("cross_lse", "_cross_lse_bwd", "bwd"),
    "self_fwd": ("self_lse", "_self_lse_fwd", "fwd"),
    "self_bwd": ("self_lse", "_self_lse_bwd", "bwd"),
}
ARCHS = (80, 90)
# The largest dynamic shared memory a block may use (the opt-in maximum): A100, H100.
SHARED_LIMITS = {80: 163 * 1024, 90: 227 * 1024}
# Hopper runs wgmma (HGMMA) for warpgroup tiles and falls back to mma.sync (HMMA) otherwise.
TENSOR_CORE_OPS = {80: r"HMMA", 90: r"HGMMA|HMMA"}
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Example launch: N = 65,536 rows, V = 2 views.
EXAMPLE_N, EXAMPLE_V = 65536, 2


def precisions(dtype):
    """The float32 matmul precisions that give distinct kernels: fp32 inputs take three fp16 products per tile
    under "highest", one under "high" (and "medium"); 16-bit inputs ignore the setting."""
    return ("highest", "high") if dtype == "fp32" else ("-",)


def split(job):
    """The kernels' SPLIT constexpr of a job."""
    return 3 if job["precision"] == "highest" else 1


def jobs(archs=ARCHS, dtypes=("bf16", "fp16", "fp32"), widths=(128, 256, 512), kernels=tuple(KERNELS), sizes=("small",
         "large")):
    """Every (kernel, arch, dtype, width, precision, tiles) that a launch can pick from the tile table."""
    from . import _tiles

    out, seen = [], set()
    for name in kernels:
        direction = KERNELS[name][2]
        for arch in archs:
            for dtype in dtypes:
                itemsize = 4 if dtype == "fp32" else 2
                for bd in widths:
                    small, large = _tiles.TABLE[(arch, direction, itemsize, bd)]
                    for tiles in [t for size, t in (("small", small), ("large", large)) if size in sizes]:
                        for precision in precisions(dtype):
                            key = (name, arch, dtype, bd, precision, tiles)
                            if key not in seen:
                                seen.add(key)
                                out.append(dict(kernel=name, arch=arch, dtype=dtype, bd=bd, precision=precision,
                                                tiles=tuple(tiles)))
    return out


def _bin(tool):
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def _example_args(fn, dtype, bd):
    """A launch's non-constexpr arguments by name: pointers as dtype-carrying mocks (an fp32 input reaches the
    kernels as fp16 pieces, its gradient is fp32), the integers of a contiguous (N, V, d) input with d = bd."""
    import torch
    from triton.runtime.jit import MockTensor

    n, v, d = EXAMPLE_N, EXAMPLE_V, bd
    ints = dict(n=n, d=d, stride_n=v * d, stride_v=d, V=v, P=v * (v - 1) // 2)
    if "stride_v" not in fn.arg_names:  # self_lse takes a 2-d input
        ints["stride_n"] = d
    types = dict(x=torch.float16 if dtype == "fp32" else getattr(torch, DTYPE_NAMES[dtype]))
    types.update(xl=types["x"], dx=getattr(torch, DTYPE_NAMES[dtype]))
    out = {}
    for p in fn.params:
        if p.is_constexpr:
            continue
        out[p.name] = ints[p.name] if p.name in ints else MockTensor(types.get(p.name, torch.float32))
    return out


def compile_one(job):
    """Compiles one job; returns it with shared (bytes), registers, spill_bytes, tensor_core_ops, ex2, fits, error."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    from . import _lse
    from ._lse import Tiles

    module_name, kernel_name, _ = KERNELS[job["kernel"]]
    fn = getattr(importlib.import_module(f"ecgfast.kernels.{module_name}"), kernel_name)
    tiles = Tiles(*job["tiles"])
    constexprs = dict(BM=tiles.BM, BN=tiles.BN, BD=job["bd"], BK=_lse.contraction_chunk(job["bd"], split(job)),
                      SPLIT=split(job))
    if KERNELS[job["kernel"]][2] == "bwd":
        constexprs["BO"] = _lse.output_chunk(job["bd"], split(job))
    signature, attrs = {}, {}
    args = _example_args(fn, job["dtype"], job["bd"])
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            continue
        kind, spec = native_specialize_impl(BaseBackend, args[p.name], False, True, True)
        signature[p.name] = kind
        if kind == "constexpr":  # an integer equal to 1
            constexprs[p.name] = spec
        elif spec:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    result = dict(job, config_text=str(tiles))
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", job["arch"], 32),
                                  options=dict(num_warps=tiles.warps, num_stages=tiles.stages))
    except Exception as exc:  # a compile failure is a result to report, not a crash of the pool
        return dict(result, error=" ".join(f"{type(exc).__name__}: {exc}".split())[:400])
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp, "k.cubin")
        cubin.write_bytes(compiled.asm["cubin"])
        # Resource usage from the cubin itself: re-running ptxas -v would double the compile time.
        usage = subprocess.run([_bin("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    resources = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    shared = compiled.metadata.shared
    return dict(result, sm=compiled.metadata.arch, shared=shared, registers=int(resources["REG"]),
                spill_bytes=int(resources["STACK"]) + int(resources["LOCAL"]),
                tensor_core_ops=len(re.findall(rf"\b(?:{TENSOR_CORE_OPS[job['arch']]})\b", sass)),
                ex2=len(re.findall(r"MUFU\.EX2", sass)), fits=shared <= SHARED_LIMITS[job["arch"]], error=None)


def _worker_init():
    os.environ.pop("TRITON_INTERPRET", None)


def compile_all(jobs_, workers=None):
    """Compiles the jobs in a pool of fresh processes; returns their results in order."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=ctx, initializer=_worker_init) as pool:
        return list(pool.map(compile_one, jobs_))


def problems(result):
    """What is wrong with one compile result, or an empty list."""
    if result["error"]:
        return [result["error"]]
    out = []
    if result["spill_bytes"]:
        out.append(f"{result['spill_bytes']} bytes of register spills")
    if not result["fits"]:
        out.append(f"{result['shared']} bytes of shared memory, over {SHARED_LIMITS[result['arch']]}")
    if not result["tensor_core_ops"]:
        out.append("no tensor-core instruction")
    return out


def table(results):
    """A plain-text table of the results, one line per compile."""
    head = (f"{'kernel':10} {'sm':6} {'dtype':5} {'bd':>4} {'precision':9} {'tiles':30} {'regs':>4} {'smem KB':>7} "
            f"{'spill':>5} {'TC ops':>6} {'EX2':>4}  problems")
    lines = [head, "-" * len(head)]
    for r in results:
        start = f"{r['kernel']:10} sm{r['arch']:<4} {r['dtype']:5} {r['bd']:>4} {r['precision']:9} {r['config_text']:30}"
        if r["error"]:
            lines.append(f"{start} {r['error']}")
            continue
        lines.append(f"{start} {r['registers']:>4} {r['shared'] / 1024:>7.1f} {r['spill_bytes']:>5} "
                     f"{r['tensor_core_ops']:>6} {r['ex2']:>4}  {'; '.join(problems(r))}")
    return "\n".join(lines)
