"""`EncodingSet`: the core type, every quantizer of one model keyed by tensor name.

It is the encodings half of a pair (the float model is the other); the formats it is read from
and written to are described in `qtool.encodings.formats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from qtool.quant.encoding import Encoding


@dataclass
class EncodingSet:
    """All quantizers of one model, keyed by ONNX tensor name (insertion order is kept)."""

    activations: dict[str, Encoding] = field(default_factory=dict)
    params: dict[str, Encoding] = field(default_factory=dict)
    quantizer_args: dict[str, Any] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    def all(self) -> dict[str, Encoding]:
        """Activations then params in one dict (names are unique across both in a valid set)."""
        return {**self.activations, **self.params}

    def copy(self) -> "EncodingSet":
        """A copy whose dicts and list can be changed without touching this set (encodings are shared)."""
        return EncodingSet(dict(self.activations), dict(self.params), dict(self.quantizer_args), list(self.excluded))


def resolve_axes(enc_set: EncodingSet, axis_of: Callable[[str], int]) -> EncodingSet:
    """A copy whose per-channel encodings take their axis from ``axis_of(tensor_name)``.

    1.0.0/0.6.1 files do not store the channel axis, so only the graph can say it (e.g. 1 for
    ConvTranspose weights); per-tensor encodings are left alone and ``axis_of`` is not called.
    """

    def fix(encs: dict[str, Encoding]) -> dict[str, Encoding]:
        return {n: e if e.axis is None or not isinstance(e, Encoding) else replace(e, axis=axis_of(n))
                for n, e in encs.items()}  # per-block encodings (quant.blockwise) store their axis

    return EncodingSet(fix(enc_set.activations), fix(enc_set.params),
                       dict(enc_set.quantizer_args), list(enc_set.excluded))
