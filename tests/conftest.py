import os
from pathlib import Path

import pytest
import torch

# The Triton interpreter must be chosen before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public ECGs beside the checkout (../shared/data)."""
    assert DATA.is_dir(), f"expected the shared ECG data at {DATA}"
    return DATA
