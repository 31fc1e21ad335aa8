"""Compile report: every kernel for sm_80 and sm_90, in bf16, fp16 and fp32 (under the "highest" and "high" float32
matmul precisions), at padded widths 128, 256 and 512, in each configuration of the tile table, with the
specialization a launch at N = 65,536 gets. Prints registers, shared memory, spills, tensor-core instructions
(HMMA on sm_80; HGMMA, or HMMA where a tile is too small for a warpgroup, on sm_90a) and MUFU.EX2 instructions, and
writes the table to benchmarks/results/compile_report.txt; fails on any problem."""

from pathlib import Path

from ecgfast.kernels import _aot

RESULTS = Path(__file__).resolve().parent / "results"


def test_compile_report(benchmark):
    jobs = _aot.jobs()
    print(f"\ncompiling {len(jobs)} kernels (a few seconds each on one core)")
    results = benchmark.pedantic(_aot.compile_all, args=(jobs,), rounds=1, iterations=1)
    report = _aot.table(results)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_report.txt").write_text(report + "\n")
    assert not [r for r in results if _aot.problems(r)], report
