"""The Triton kernels compile ahead of time for sm_80 and sm_90 (no GPU needed), with the specialization a launch at
N = 65,536 gets, and their SASS has the properties the design promises. A subset that fits CI (26 compiles);
``pytest --benchmark benchmarks/bench_kernels_compile.py`` compiles and reports the full matrix. The interpreter
tests prove the arithmetic; only this proves the kernels build and what they build to."""

import pytest

from ecgfast.kernels import _aot, _tiles


def _subset():
    # fp32 under both float32 matmul precisions for the cross-view kernels on both architectures, d = 128 and 512
    jobs = _aot.jobs(archs=(80, 90), dtypes=("fp32",), widths=(128, 512), kernels=("cross_fwd", "cross_bwd",
                                                                                    "cross_bwd_det"), sizes=("large",))
    # the bf16 kernels of every loss on sm_90, with d = 512 on the wide path
    jobs += _aot.jobs(archs=(90,), dtypes=("bf16",), widths=(128, 512), kernels=("cross_fwd", "cross_bwd",
                                                                                  "cross_bwd_det", "self_fwd",
                                                                                  "self_bwd"), sizes=("large",))
    return jobs


@pytest.fixture(scope="module")
def results():
    return _aot.compile_all(_subset())


def test_kernels_compile_without_spills_within_shared_memory(results):
    assert {(r["dtype"], r["precision"]) for r in results} == {("bf16", "-"), ("fp32", "highest"), ("fp32", "high")}
    bad = [f"{r['kernel']} sm{r['arch']} {r['dtype']} {r['precision']} d={r['bd']} {r['config_text']}: "
           f"{'; '.join(_aot.problems(r))}" for r in results if _aot.problems(r)]
    assert not bad, "\n" + "\n".join(bad)


def test_sm90_sweeps_run_on_wgmma_with_one_exp_per_logit(results):
    # On sm_90 every tile product is a wgmma (HGMMA, no mma.sync fallback) at every width, in tiles of 64 rows or
    # more; the bounded-logits path of every column sweep takes one MUFU.EX2 per logit.
    sm90 = [r for r in results if r["arch"] == 90]
    assert {r["bd"] for r in sm90} == {128, 512}
    for r in sm90:
        what = f"{r['kernel']} {r['dtype']} {r['precision']} d={r['bd']} {r['config_text']}"
        assert r["hgmma_ops"] == r["tensor_core_ops"] > 0, what
        assert r["config_text"].startswith(("BM=64", "BM=128")), what
        assert r["loop"] and r["ex2_per_logit"] <= 1.0, what
    assert min(t.BM for pair in _tiles.TABLE.values() for t in pair) >= 64
