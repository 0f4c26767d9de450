"""Write AIMET encodings files (format versions 1.0.0, 0.6.1 and 2.0.0); the formats and `EncodingSet`.

Reading (and validating) them is `qtool.encodings_read`.

The encodings file is the half of a quantized model that other tools consume (AIMET's
``load_encodings_to_sim``, QNN converters), so we write exactly what AIMET writes; the field
names and value types follow aimet_onnx (``qc_quantize_op.py`` ``export_encodings``,
``quantsim.py`` ``_export_encodings``) and aimet_torch (``_export_to_1_0_0``):

* 1.0.0 (default): ``activation_encodings``/``param_encodings`` are lists of
  ``{name, dtype: INT|FLOAT, enc_type, bw, is_sym, scale: [..], offset: [..]}``; offsets are on
  the unsigned grid (signed symmetric int8 -> -128), ``is_sym`` is a JSON boolean.
* 0.6.1 (legacy): the same two keys map name -> list of per-channel dicts
  ``{bitwidth, dtype: int|float, is_symmetric: "True"|"False" (strings), min, max, offset, scale}``.
* 2.0.0: one list ``encodings`` of onnx::QuantizeLinear-style entries ``{name, output_dtype,
  y_scale, y_zero_point?, axis?}``. AIMET picks a signed ``output_dtype`` exactly when the
  quantizer is symmetric, and writes ``int{bw}``/``uint{bw}`` for any bit-width (``int6`` too);
  ``y_zero_point = -offset - 2^(b-1)`` for signed dtypes and ``-offset`` for unsigned ones, left
  out when all zero. Float16 quantizers are not quantizers in 2.0.0 and get no entry (AIMET).

What the formats cannot hold:

* The per-channel axis (1.0.0/0.6.1): readers return ``axis=0`` as a placeholder for per-channel
  encodings; call :func:`resolve_axes` with the graph's knowledge (ConvTranspose weights: 1).
  A 0.6.1 per-channel encoding with a single channel reads back as per tensor.
* Param vs activation (2.0.0): decided by ``param_names``; without it, entries with an ``axis``
  are params and the rest activations (AIMET itself filters by its own parameter names).
* Frozen: AIMET has no field. We add ``"frozen": true`` to *integer* entries only when frozen;
  AIMET's affine readers look up the keys they need and ignore others, but its float reader
  compares the whole entry with the float16 template, so float entries never carry it (a float
  cast has nothing calibrated to freeze anyway).
* Per-block / LPBQ / vector encodings and fractional zero points have no place in
  :class:`Encoding`; reading them is a QtoolError rather than a silent approximation.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

import qtool
from qtool.atomic import atomic_write_bytes
from qtool.errors import QtoolError
from qtool.quant.encoding import Encoding

ENCODING_VERSIONS = ("1.0.0", "0.6.1", "2.0.0")
# AIMET's spec: files without "version" are 0.4.0; 0.4.0/0.5.0 are 0.6.1's layout (0.4.0 lacks dtype).
_LEGACY_VERSIONS = ("0.4.0", "0.5.0")
_DTYPE_RE = re.compile(r"(u?)int(\d+)")


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


def resolve_axes(enc_set: EncodingSet, axis_of: Callable[[str], int]) -> EncodingSet:
    """A copy whose per-channel encodings take their axis from ``axis_of(tensor_name)``.

    1.0.0/0.6.1 files do not store the channel axis, so only the graph can say it (e.g. 1 for
    ConvTranspose weights); per-tensor encodings are left alone and ``axis_of`` is not called.
    """

    def fix(encs: dict[str, Encoding]) -> dict[str, Encoding]:
        return {n: e if e.axis is None else replace(e, axis=axis_of(n)) for n, e in encs.items()}

    return EncodingSet(fix(enc_set.activations), fix(enc_set.params),
                       dict(enc_set.quantizer_args), list(enc_set.excluded))


# ----------------------------------------------------------------------------- writing


def _f(x: Any) -> float:
    """The exact double value of a float32: what AIMET writes (float32 ``.tolist()``), so any
    reader gets the same float32 back and ``repr`` in json.dumps round-trips it."""
    return float(np.float32(x))


def _check_writable(name: str, enc: Encoding) -> None:
    """Refuse what AIMET could not load back (and what 2.0.0 zero points could not hold)."""
    if enc.is_float:
        return
    if enc.axis is None and enc.scale.size != 1:
        raise ValueError(f"{name}: per-tensor encoding with {enc.scale.size} scales")
    if not (np.all(np.isfinite(enc.scale)) and np.all(enc.scale > 0)):
        raise QtoolError(f"{name}: encoding scale must be positive and finite, got {enc.scale.tolist()}")
    if np.any(enc.offset > 0) or np.any(enc.offset < -(2**enc.bw - 1)):
        raise QtoolError(f"{name}: offset {enc.offset.tolist()} is outside -(2^{enc.bw}-1)..0",
                         "the range of an encoding must contain zero")


def _entry_1_0_0(name: str, enc: Encoding) -> dict[str, Any]:
    if enc.is_float:
        return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": enc.bw}
    entry = {
        "name": name, "dtype": "INT", "enc_type": "PER_TENSOR" if enc.axis is None else "PER_CHANNEL",
        "bw": enc.bw, "is_sym": enc.symmetric,
        "scale": [_f(s) for s in enc.scale], "offset": [int(o) for o in enc.offset],
    }
    return {**entry, "frozen": True} if enc.frozen else entry


def _entry_0_6_1(enc: Encoding) -> list[dict[str, Any]]:
    if enc.is_float:
        return [{"bitwidth": enc.bw, "dtype": "float"}]
    extra = {"frozen": True} if enc.frozen else {}
    return [
        {"bitwidth": enc.bw, "dtype": "int", "is_symmetric": str(enc.symmetric), "min": _f(lo),
         "max": _f(hi), "offset": int(o), "scale": _f(s), **extra}
        for s, o, lo, hi in zip(enc.scale, enc.offset, enc.min, enc.max)
    ]


def _entry_2_0_0(name: str, enc: Encoding) -> dict[str, Any] | None:
    if enc.is_float:
        return None  # AIMET: "v2 encoding doesn't treat float16/bfloat16 as quantized dtypes"
    signed = enc.symmetric
    zp = -enc.offset - (2 ** (enc.bw - 1) if signed else 0)  # in range: _check_writable
    scale: Any = [_f(s) for s in enc.scale]
    zps: Any = [int(z) for z in zp]
    entry: dict[str, Any] = {"name": name, "output_dtype": f"{'' if signed else 'u'}int{enc.bw}"}
    if enc.axis is None:
        scale, zps = scale[0], zps[0]
    else:
        entry["axis"] = enc.axis
    entry["y_scale"] = scale
    if np.any(zp != 0):
        entry["y_zero_point"] = zps
    return {**entry, "frozen": True} if enc.frozen else entry


def to_json_dict(enc_set: EncodingSet, version: str = "1.0.0") -> dict:
    """The JSON document AIMET would write for these encodings, entries sorted by name."""
    if version not in ENCODING_VERSIONS:
        raise QtoolError(f"unknown encodings version {version!r}", f"use one of {', '.join(ENCODING_VERSIONS)}")
    both = enc_set.activations.keys() & enc_set.params.keys()
    if both:
        raise ValueError(f"tensors both activation and param: {sorted(both)}")
    for name, enc in enc_set.all().items():
        _check_writable(name, enc)
    acts, params = sorted(enc_set.activations.items()), sorted(enc_set.params.items())
    producer = {"package": "qtool", "version": qtool.__version__}
    doc: dict[str, Any] = {"version": version}
    if version == "1.0.0":
        doc.update(producer=producer, excluded_layers=list(enc_set.excluded),
                   activation_encodings=[_entry_1_0_0(n, e) for n, e in acts],
                   param_encodings=[_entry_1_0_0(n, e) for n, e in params])
    elif version == "0.6.1":
        doc.update(excluded_layers=list(enc_set.excluded),
                   activation_encodings={n: _entry_0_6_1(e) for n, e in acts},
                   param_encodings={n: _entry_0_6_1(e) for n, e in params})
    else:
        entries = (_entry_2_0_0(n, e) for n, e in sorted(enc_set.all().items()))
        doc.update(producer=producer, encodings=[e for e in entries if e is not None])
        if enc_set.excluded:  # not in AIMET's 2.0.0 files; kept so the set round-trips
            doc["excluded_layers"] = list(enc_set.excluded)
    if enc_set.quantizer_args:
        doc["quantizer_args"] = dict(enc_set.quantizer_args)
    return doc


def save_encodings(enc_set: EncodingSet, path: str | os.PathLike, version: str = "1.0.0") -> None:
    """Write atomically (see qtool.atomic) with deterministic bytes, so a crash never leaves half a
    file and re-running a step gives an identical file."""
    text = json.dumps(to_json_dict(enc_set, version), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
