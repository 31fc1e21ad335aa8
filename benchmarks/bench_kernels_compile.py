"""Compile report: every kernel a launch can run, for sm_80 and sm_90, in bf16, fp16 and fp32 (under the "highest"
and "high" float32 matmul precisions), at padded widths 128, 256 and 512, in each configuration of the tile table,
with the specialization a launch at N = 65,536 gets; plus the variants that sum d loss / d scale ("+dscale") and
the launches over the last, partial row block ("+edge", bf16). Per compile it prints registers, shared memory,
spills, and for the column sweep's steady-state iteration (read from the SASS): tensor-core instructions per tile,
tensor FLOPs per logit, MUFU.EX2 per logit (bounded logits; running max), CTAs per SM and a STATIC ESTIMATE of the
milliseconds per view pair on an H100 SXM (``ecgfast.kernels._sass``: a resource model, not a measurement). Writes
the table to benchmarks/results/compile_report.txt and fails on any compile error, spill or shared-memory
overflow. About 10 to 20 minutes on two cores (the Triton cache makes a rerun quick)."""

from pathlib import Path

import pytest

from ecgfast.kernels import _aot

RESULTS = Path(__file__).resolve().parent / "results"
N = _aot.EXAMPLE_N
# pytest-benchmark's own table, in a group of its own: the seconds the whole matrix took to compile.
pytestmark = pytest.mark.benchmark(group="bench_kernels_compile: s to compile the matrix; read the report")


def _jobs():
    jobs = _aot.jobs()
    jobs += [dict(j, kernel=j["kernel"] + "+dscale") for j in jobs
             if j["kernel"] in ("cross_bwd", "self_bwd", "cross_bwd_det", "self_bwd_det") and j["dtype"] != "fp16"]
    jobs += [dict(j, kernel=j["kernel"] + "+edge") for j in jobs
             if j["dtype"] == "bf16" and "+" not in j["kernel"] and not j["kernel"].endswith("_cols")]
    return jobs


def _find(results, kernel, bd):
    """The sm_90 bf16 result of a kernel at a width, in the large-N tiles (the last of the table's pair)."""
    found = [r for r in results if r["kernel"] == kernel and r["arch"] == 90 and r["dtype"] == "bf16"
             and r["bd"] == bd]
    return found[-1]


def estimates(results):
    """Lines of the static estimate (H100 SXM) for the issue's goal cases: effective TFLOP/s count 6 N^2 d per
    view pair over forward + backward."""
    lines = []
    for what, d, fwd, bwd in (("CLOCS bf16, d = 128, N = 65,536, V = 2", 128, "cross_fwd", "cross_bwd"),
                              ("CLIP bf16, d = 512, N = 65,536", 512, "cross_fwd", "cross_bwd_det")):
        f, b = _find(results, fwd, d), _find(results, bwd, d)
        ms = f["estimate_ms"] + b["estimate_ms"]
        lines.append(f"{what}: forward {f['estimate_ms']:.2f} ms ({f['bound']}-bound) + backward "
                     f"{b['estimate_ms']:.2f} ms ({b['bound']}-bound) = {ms:.2f} ms per pair, "
                     f"{6 * N * N * d / ms / 1e9:.0f} TFLOP/s effective (6 N^2 d), "
                     f"{8 * N * N * d / ms / 1e9:.0f} on the 8 N^2 d accounting")
    return lines


def test_compile_report(benchmark):
    jobs = _jobs()
    print(f"\ncompiling {len(jobs)} kernels (a few seconds each on one core)")
    results = benchmark.pedantic(_aot.compile_all, args=(jobs,), rounds=1, iterations=1)
    report = _aot.table(results) + "\n\nSTATIC ESTIMATES (H100 SXM resource model, not measurements):\n" + "\n".join(
        estimates(results))
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_report.txt").write_text(report + "\n")
    assert not [r for r in results if _aot.problems(r)], report
