import collections
import os

import numpy as np
import pytest
import torch

# The Triton interpreter must be chosen before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Operand dtype of every tl.dot the interpreter ran, e.g. {"fp16": 12}: shows which code path of a kernel ran.
DOT_OPERANDS = collections.Counter()


def _as_float32(handle):
    """A dot operand's values in float32, as a tensor core reads them: bf16 (stored as uint16, the high half of a
    float32) and fp16 exactly."""
    import triton.language as tl

    data, dtype = handle.data, handle.dtype.scalar
    if dtype == tl.bfloat16:
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32)


def _patch_interpreter_dot():
    """The interpreter's tl.dot multiplies bf16 tiles as their uint16 bit patterns. Patch it to compute as tensor
    cores do, 16-bit operands exactly with fp32 accumulation, so that every dtype runs its real code path under
    test; the kernels under test keep their operand types."""
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        DOT_OPERANDS[a.dtype.scalar.name] += 1
        out = np.matmul(_as_float32(a), _as_float32(b), dtype=np.float32) + d.data
        return TensorHandle(out.astype(d.data.dtype), d.dtype.scalar)

    InterpreterBuilder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_dot()


@pytest.fixture
def dot_operands():
    """The operand dtype of each tl.dot run under the interpreter during the test."""
    DOT_OPERANDS.clear()
    return DOT_OPERANDS
