"""Ahead-of-time compilation of every kernel for a GPU that is not here, and what the bundled ``ptxas -v`` and
``cuobjdump -sass`` say about the result: registers, spills, shared memory and tensor-core instructions. Serves
the CI compile test and the compile report benchmark.

Each compile runs in a worker process with the interpreter switched off, so that the kernels are real
``JITFunction``s whatever the parent process chose.
"""

import itertools
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

KERNELS = {
    "cross_fwd": ("cross_lse", "_cross_lse_fwd", False),
    "cross_bwd": ("cross_lse", "_cross_lse_bwd", True),
    "self_fwd": ("self_lse", "_self_lse_fwd", False),
    "self_bwd": ("self_lse", "_self_lse_bwd", True),
}
SHARED_LIMITS = {80: 163 * 1024, 90: 227 * 1024}
# Hopper runs wgmma (HGMMA) for tiles of 64+ rows and falls back to mma.sync (HMMA) below.
TENSOR_CORE_OPS = {80: "HMMA", 90: "HGMMA|HMMA"}
_POINTER_TYPES = {"lse": "*fp32", "g": "*fp32", "dscale": "*fp32"}
_FLOAT_ARGS = {"scale", "scale2", "shift2"}


def jobs(dtypes=("bf16", "fp32"), bds=(128, 512), fixed_shifts=(True, False), archs=(90,)):
    """Every (kernel, arch, dtype, bd, fixed_shift, config index) that autotuning could pick on a GPU."""
    from . import _lse

    out = []
    for name, arch, dtype, bd, fixed in itertools.product(KERNELS, archs, dtypes, bds, fixed_shifts):
        backward = KERNELS[name][2]
        itemsize = 2 if dtype in ("bf16", "fp16") else 4
        for config in _lse.usable_configs(_lse.GPU_CONFIGS, bd, itemsize, backward):
            i = _lse.GPU_CONFIGS.index(config)
            out.append(dict(kernel=name, arch=arch, dtype=dtype, bd=bd, fixed_shift=fixed, config=i))
    return out


def _bin(tool):
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def compile_one(job):
    """Compiles one job; returns it with shared (bytes), registers, spill_bytes, tensor_core_ops, fits and error."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _lse

    module_name, kernel_name, _ = KERNELS[job["kernel"]]
    fn = getattr(importlib.import_module(f"ecgfast.kernels.{module_name}"), kernel_name).fn
    config = _lse.GPU_CONFIGS[job["config"]]
    # fp32 as it runs for speed (TF32 tensor cores); "ieee" is for small accuracy checks.
    constexprs = dict(config.kwargs, FIXED_SHIFT=job["fixed_shift"], BD=job["bd"], CAST_F32=False, PRECISION="tf32")
    signature, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            continue
        if p.name in ("x", "dx"):
            signature[p.name] = "*" + job["dtype"]
        else:
            signature[p.name] = _POINTER_TYPES.get(p.name, "fp32" if p.name in _FLOAT_ARGS else "i32")
        if signature[p.name].startswith("*") or p.name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # what the launcher sees for aligned tensors and d % 16 == 0
    result = dict(job, config_text=f"BM={config.kwargs['BM']} BN={config.kwargs['BN']} warps={config.num_warps} "
                                   f"stages={config.num_stages}")
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", job["arch"], 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    except Exception as exc:  # a compile failure is a result to report, not a crash of the pool
        return dict(result, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
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
                fits=shared <= SHARED_LIMITS[job["arch"]], error=None)


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
    return out


def table(results):
    """A plain-text table of the results, one line per compile."""
    head = f"{'kernel':10} {'sm':6} {'dtype':5} {'bd':>4} {'shift':5} {'config':30} {'regs':>4} {'smem KB':>7} " \
           f"{'spill':>5} {'TC ops':>6}  problems"
    lines = [head, "-" * len(head)]
    for r in results:
        if r["error"]:
            lines.append(f"{r['kernel']:10} {r['arch']:<6} {r['dtype']:5} {r['bd']:>4} {str(r['fixed_shift']):5} "
                         f"{r['config_text']:30} {r['error']}")
            continue
        lines.append(f"{r['kernel']:10} {r['sm']:6} {r['dtype']:5} {r['bd']:>4} {str(r['fixed_shift']):5} "
                     f"{r['config_text']:30} {r['registers']:>4} {r['shared'] / 1024:>7.1f} {r['spill_bytes']:>5} "
                     f"{r['tensor_core_ops']:>6}  {'; '.join(problems(r))}")
    return "\n".join(lines)
