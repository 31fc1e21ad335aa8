"""The loss tests of test_losses.py again, on the Triton kernels (through the interpreter when there is no GPU).

The interpreter costs about 10 ms per tile iteration, so the float64 comparison runs on a pairwise subset of the
cases that still covers every dtype, V in {2, 4, 16}, d in {16, 100, 128, 512}, each patient layout and the
temperature's gradient; the primitives' full matrix is tests/test_kernels.py's.
"""

import pytest

from test_losses import (  # noqa: F401  (one_thread is an autouse fixture: imported to apply here too)
    CASES,
    LOSSES,
    one_thread,
    test_identical_embeddings_give_log_n,
    test_modules_match_functions_and_learn_the_temperature,
    test_single_sample_losses_are_zero,
    test_small_temperature_bf16_stays_finite_and_accurate,
    test_zero_vectors_do_not_give_nan,
)
from test_losses import test_loss_matches_float64_reference as _loss_matches_reference

# Rows of test_losses.CASES: the V = 16 and d = 512 cases only at N = 1, where the interpreter is quick.
TRITON_CASES = [CASES[i] for i in (2, 3, 5, 8, 9, 11, 12)]


@pytest.fixture
def backend():
    return "triton"


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n,v,d,layout,dtype,scale_grad", TRITON_CASES)
def test_loss_matches_float64_reference(backend, name, n, v, d, layout, dtype, scale_grad):
    _loss_matches_reference(backend, name, n, v, d, layout, dtype, scale_grad)
