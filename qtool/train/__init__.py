"""The optional training engine (quantization-aware training): the ONNX graph lowered to torch
with fake-quantizers where the encodings put them, LSQ range learning, distillation.

torch is an optional extra (`pip install qtool[train]`): nothing in this package imports it at
module level except the modules that only `qtool qat` reaches, and nothing outside this package
imports them, so `import qtool` and the CLI never load torch. `require_torch` turns a missing
torch into the one-line user error.

OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE, unless the user set it), set here because
torch's OpenMP runtime reads it once, when torch is loaded, and every module that imports torch
is in this package. A training step runs about a thousand short parallel regions (each op of
the forward and backward pass); with the default active wait, a thread that reaches a region's
end spins until its siblings arrive, so on a machine whose cores are shared with other
processes a descheduled sibling makes the others burn their time slices spinning. Measured on
EfficientNet-Lite0 (a step of 8 crops, 2 threads, 2 cores at load 10-12): 34-52 s a step
spinning, 5-8 s passive, 6-10 s with one thread (bench/bench_qat.py, docs/qat.md).
"""

from __future__ import annotations

import os

from qtool.errors import QtoolError

WAIT_POLICY = "OMP_WAIT_POLICY"
os.environ.setdefault(WAIT_POLICY, "PASSIVE")  # before any torch import: see above

TORCH_VERSION = "2.13.0"


def require_torch():
    """The torch module, or a QtoolError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise QtoolError("quantization-aware training needs torch, which is not installed",
                         f"pip install 'qtool[train]' (torch=={TORCH_VERSION})") from None
    return torch
