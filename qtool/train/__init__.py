"""The optional training engine (quantization-aware training): the ONNX graph lowered to torch
with fake-quantizers where the encodings put them, LSQ range learning, distillation.

torch is an optional extra (`pip install qtool[train]`): nothing in this package imports it at
module level except the modules that only `qtool qat` reaches, and nothing outside this package
imports them, so `import qtool` and the CLI never load torch. `require_torch` turns a missing
torch into the one-line user error.
"""

from __future__ import annotations

from qtool.errors import QtoolError

TORCH_VERSION = "2.13.0"


def require_torch():
    """The torch module, or a QtoolError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise QtoolError("quantization-aware training needs torch, which is not installed",
                         f"pip install 'qtool[train]' (torch=={TORCH_VERSION})") from None
    return torch
