"""Write AIMET encodings files (format versions 1.0.0, 0.6.1 and 2.0.0, `qtool.encodings.formats`).

We write exactly what AIMET writes: the field names and value types follow aimet_onnx
(``qc_quantize_op.py`` ``export_encodings``, ``quantsim.py`` ``_export_encodings``) and
aimet_torch (``_export_to_1_0_0``). Files are written atomically with deterministic bytes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from qtool._version import __version__
from qtool.encodings.blocks import block_entry, refuse_blocks
from qtool.encodings.encoding_set import EncodingSet
from qtool.encodings.formats import ENCODING_VERSIONS
from qtool.errors import QtoolError
from qtool.files.atomic import atomic_write_bytes
from qtool.quant.encoding import Encoding


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
    if not isinstance(enc, Encoding):  # per-block / LPBQ (qtool.encodings.blocks)
        return block_entry(name, enc)
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
    refuse_blocks(enc_set.params, version)
    for name, enc in enc_set.all().items():
        _check_writable(name, enc)
    acts, params = sorted(enc_set.activations.items()), sorted(enc_set.params.items())
    producer = {"package": "qtool", "version": __version__}
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
    """Write atomically (see qtool.files.atomic) with deterministic bytes, so a crash never leaves half a
    file and re-running a step gives an identical file."""
    text = json.dumps(to_json_dict(enc_set, version), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
