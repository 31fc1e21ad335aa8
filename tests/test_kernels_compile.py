"""The Triton kernels compile ahead of time for sm_80 and sm_90 (no GPU needed), with the specialization a launch at
N = 65,536 gets: no compile error, no register spill, shared memory within the architecture's limit, tensor-core
instructions present. A subset that fits CI: the cross-view kernels in the large-N tiles of the table, bf16 and fp32
under both float32 matmul precisions, d = 128 and 512; ``pytest --benchmark benchmarks/bench_kernels_compile.py``
compiles the full matrix. The interpreter tests prove the arithmetic; only this proves the kernels build."""

from ecgfast.kernels import _aot


def test_cross_kernels_compile_for_sm80_and_sm90_without_spills():
    jobs = _aot.jobs(archs=(80, 90), dtypes=("bf16", "fp32"), widths=(128, 512), kernels=("cross_fwd", "cross_bwd"),
                     sizes=("large",))
    assert {(j["dtype"], j["precision"]) for j in jobs} == {("bf16", "-"), ("fp32", "highest"), ("fp32", "high")}
    results = _aot.compile_all(jobs)
    bad = [f"{r['kernel']} sm{r['arch']} {r['dtype']} {r['precision']} d={r['bd']} {r['config_text']}: "
           f"{'; '.join(_aot.problems(r))}" for r in results if _aot.problems(r)]
    assert not bad, "\n" + "\n".join(bad)
