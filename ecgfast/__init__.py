"""ecgfast: self-supervised contrastive pretraining of ECG foundation models, fast from disk to GPU.

Submodules load lazily so that ``import ecgfast.losses`` needs only torch and triton.
"""

import importlib.util

__version__ = "0.1.0"

# kernels/ becomes ecgfast.kernels only through the install's package-dir mapping.
if importlib.util.find_spec("ecgfast.kernels") is None:
    raise ImportError(
        "ecgfast is imported from a checkout that is not installed, so ecgfast.kernels cannot be found: "
        "install it as the README says (pip install -c constraints.txt -e \".[dev]\")"
    )
