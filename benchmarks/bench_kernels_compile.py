"""Compile report: every kernel for sm_80 and sm_90, bf16 and fp32, d = 128 and 512, fixed shift and running max,
in each autotune config it can be given; prints registers, shared memory, spills and the tensor-core instructions
found (HMMA on sm_80; HGMMA, or HMMA for tiles under 64 rows, on sm_90a), and writes the table to benchmarks/results/compile_report.txt."""

from pathlib import Path

from ecgfast.kernels import _aot

RESULTS = Path(__file__).resolve().parent / "results"


def test_compile_report():
    jobs = _aot.jobs(dtypes=("bf16", "fp32"), bds=(128, 512), fixed_shifts=(True,), archs=(80, 90))
    jobs += _aot.jobs(dtypes=("bf16",), bds=(128,), fixed_shifts=(False,), archs=(90,))
    results = _aot.compile_all(jobs)
    report = _aot.table(results)
    print("\n" + report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_report.txt").write_text(report + "\n")
    assert not [r for r in results if r["error"]], report
