"""Read and write AIMET encodings files (format versions 1.0.0, 0.6.1 and 2.0.0).

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
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

import qtool
from qtool.errors import QtoolError
from qtool.quant.encoding import Encoding, float_encoding

ENCODING_VERSIONS = ("1.0.0", "0.6.1", "2.0.0")
# AIMET's spec: files without "version" are 0.4.0; 0.4.0/0.5.0 are 0.6.1's layout (0.4.0 lacks dtype).
_LEGACY_VERSIONS = ("0.4.0", "0.5.0")
_DTYPE_RE = re.compile(r"(u?)int(\d+)")
_MISSING = object()


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
    """Write atomically (temp file in the same folder, then os.replace) with deterministic bytes,
    so a crash never leaves half a file and re-running a step gives an identical file."""
    text = json.dumps(to_json_dict(enc_set, version), indent=2, sort_keys=True, allow_nan=False) + "\n"
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x" honours the umask, unlike mkstemp
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise QtoolError(f"{path}: cannot write encodings file ({e.strerror or e})") from e


# ----------------------------------------------------------------------------- reading


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _many(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: test(v) or (isinstance(v, list) and len(v) > 0 and all(map(test, v)))


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (_is_int, "an integer"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "numbers": (_many(_is_num), "a number or a non-empty list of numbers"),
    "ints": (_many(_is_int), "an integer or a non-empty list of integers"),
    "flag": (lambda v: v in ("True", "False") if isinstance(v, str) else isinstance(v, bool),
             '"True" or "False"'),
}
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def _get(entry: dict, key: str, kind: str, src: str, where: str, default: Any = _MISSING) -> Any:
    """entry[key] checked against ``kind``; one-line QtoolError naming file, entry and field."""
    if key not in entry:
        if default is not _MISSING:
            return default
        raise QtoolError(f"{src}: {where}: field {key!r} is missing")
    value = entry[key]
    test, text = _KINDS[kind]
    if not test(value):
        raise QtoolError(f"{src}: {where}: field {key!r} must be {text}, not {_JSON_TYPES.get(type(value), 'that')}")
    return value


def _bad(src: str, where: str, what: str, hint: str | None = None) -> QtoolError:
    return QtoolError(f"{src}: {where}: {what}", hint)


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _int_encoding(src: str, where: str, bw: Any, scales: list, offsets: list, symmetric: bool,
                  axis: int | None, frozen: bool) -> Encoding:
    if not _is_int(bw) or not 2 <= bw <= 32:
        raise _bad(src, where, f"integer bit-width must be 2..32, not {bw!r}")
    if len(scales) != len(offsets):
        raise _bad(src, where, f"{len(scales)} scales but {len(offsets)} offsets")
    if axis is None and len(scales) != 1:
        raise _bad(src, where, f"per-tensor encoding with {len(scales)} scales")
    with np.errstate(over="ignore"):
        scale = np.asarray(scales, np.float64).astype(np.float32)
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise _bad(src, where, "field 'scale' must hold positive finite float32 numbers")
    offset = np.asarray(offsets, np.float64)
    if np.any(offset > 0) or np.any(offset < -(2**bw - 1)):  # checked before the int64 cast
        raise _bad(src, where, f"offset {offsets} is outside -(2^{bw}-1)..0", "the range must contain zero")
    return Encoding(int(bw), scale, offset.astype(np.int64), symmetric, "int", axis, frozen)


def _float_encoding(src: str, where: str, bw: Any) -> Encoding:
    if bw not in (16, 32) or isinstance(bw, bool):
        raise _bad(src, where, f"float bit-width must be 16 or 32, not {bw!r}")
    return float_encoding(int(bw))


def _read_1_0_0(entry: dict, src: str, where: str) -> Encoding:
    dtype = _get(entry, "dtype", "str", src, where)
    enc_type = _get(entry, "enc_type", "str", src, where)
    bw = _get(entry, "bw", "int", src, where)
    if dtype == "FLOAT":
        return _float_encoding(src, where, bw)
    if dtype != "INT":
        raise _bad(src, where, f"field 'dtype' must be 'INT' or 'FLOAT', not {dtype!r}")
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise _bad(src, where, f"enc_type {enc_type!r} is not supported", "qtool handles per-tensor and per-channel")
    if any(_as_list(entry.get("zero_point_shift", 0))):
        raise _bad(src, where, "fractional zero points (zero_point_shift) are not supported")
    return _int_encoding(
        src, where, bw, _as_list(_get(entry, "scale", "numbers", src, where)),
        _as_list(_get(entry, "offset", "ints", src, where)), _get(entry, "is_sym", "bool", src, where),
        0 if enc_type == "PER_CHANNEL" else None, _get(entry, "frozen", "bool", src, where, False))


def _read_0_6_1(channels: Any, src: str, where: str) -> Encoding:
    if not isinstance(channels, list) or not channels or not all(isinstance(c, dict) for c in channels):
        raise _bad(src, where, "must be a non-empty list of encoding objects")
    first = channels[0]
    dtype = _get(first, "dtype", "str", src, where, "int")
    bw = _get(first, "bitwidth", "int", src, where)
    if dtype == "float":
        return _float_encoding(src, where, bw)
    if dtype != "int":
        raise _bad(src, where, f"field 'dtype' must be 'int' or 'float', not {dtype!r}")
    sym = _get(first, "is_symmetric", "flag", src, where)  # AIMET writes strings; bools tolerated
    for i, c in enumerate(channels[1:], 1):
        if c.get("bitwidth") != bw or c.get("is_symmetric") != sym or c.get("dtype", "int") != dtype:
            raise _bad(src, f"{where}[{i}]", "channels disagree on bitwidth/dtype/is_symmetric")
    scales = [_get(c, "scale", "numbers", src, f"{where}[{i}]") for i, c in enumerate(channels)]
    offsets = [_get(c, "offset", "ints", src, f"{where}[{i}]") for i, c in enumerate(channels)]
    if any(isinstance(v, list) for v in scales + offsets):
        raise _bad(src, where, "fields 'scale' and 'offset' must be single numbers in 0.6.1 channels")
    return _int_encoding(src, where, bw, scales, offsets, sym in ("True", True),
                         0 if len(channels) > 1 else None, _get(first, "frozen", "bool", src, where, False))


def _read_2_0_0(entry: dict, src: str, where: str) -> Encoding:
    dtype = _get(entry, "output_dtype", "str", src, where)
    if dtype in ("float16", "float32"):
        return float_encoding(int(dtype[5:]))
    match = _DTYPE_RE.fullmatch(dtype)
    if not match:
        raise _bad(src, where, f"output_dtype {dtype!r} is not supported", "use int<N>, uint<N> or float16")
    if "block_size" in entry or "per_block_int_scale" in entry:
        raise _bad(src, where, "per-block encodings are not supported")
    signed, bw = match.group(1) == "", int(match.group(2))
    if not 2 <= bw <= 32:
        raise _bad(src, where, f"integer bit-width must be 2..32, not {bw}")
    y_scale = _get(entry, "y_scale", "numbers", src, where)
    axis = _get(entry, "axis", "int", src, where, None)
    scales = _as_list(y_scale)
    zp = _as_list(_get(entry, "y_zero_point", "ints", src, where, [0] * len(scales)))
    if isinstance(y_scale, list) and len(scales) > 1 and axis is None:
        raise _bad(src, where, f"field 'axis' is missing (needed for {len(scales)} scales)")
    if len(zp) != len(scales):
        raise _bad(src, where, f"{len(scales)} scales but {len(zp)} zero points")
    half = 2 ** (bw - 1)
    zps = np.asarray(zp, np.float64)
    lo, hi = (-half, half - 1) if signed else (0, 2 * half - 1)
    if np.any(zps < lo) or np.any(zps > hi):
        raise _bad(src, where, f"y_zero_point {zp} does not fit {dtype}")
    offset = -zps.astype(np.int64) - (half if signed else 0)
    # AIMET: signed dtype == symmetric quantizer. A signed container whose offsets are not one of
    # the symmetric grids (signed, strict, unsigned-symmetric) is an asymmetric grid in disguise.
    symmetric = signed and bool(np.all(np.isin(offset, (-half, -(half - 1), 0))))
    return _int_encoding(src, where, bw, scales, offset.tolist(), symmetric,
                         None if axis is None else int(axis), _get(entry, "frozen", "bool", src, where, False))


def _add(out: dict[str, Encoding], name: str, enc: Encoding, src: str, where: str) -> None:
    if name in out:
        raise _bad(src, where, f"tensor {name!r} has more than one encoding")
    out[name] = enc


def from_json_dict(doc: dict, *, source: str = "<encodings>", param_names: set[str] | None = None) -> EncodingSet:
    """Parse any supported version (detected from "version"); ``source`` names the file in errors.

    ``param_names`` only matters for 2.0.0, whose single list does not say what is a parameter.
    """
    src = source
    if not isinstance(doc, dict):
        raise QtoolError(f"{src}: an encodings file must hold a JSON object, not {_JSON_TYPES.get(type(doc), 'that')}")
    version = _get(doc, "version", "str", src, "top level", "0.4.0")
    if version not in ENCODING_VERSIONS + _LEGACY_VERSIONS:
        raise QtoolError(f"{src}: unknown encodings version {version!r}",
                         f"qtool reads versions {', '.join(ENCODING_VERSIONS)}")
    result = EncodingSet(quantizer_args=dict(_get(doc, "quantizer_args", "dict", src, "top level", {})))
    excluded = _get(doc, "excluded_layers", "list", src, "top level", [])
    if not all(isinstance(x, str) for x in excluded):
        raise QtoolError(f"{src}: top level: field 'excluded_layers' must be a list of strings")
    result.excluded = list(excluded)

    if version == "2.0.0":
        for i, entry in enumerate(_get(doc, "encodings", "list", src, "top level")):
            where = f"encodings[{i}]"
            if not isinstance(entry, dict):
                raise _bad(src, where, "must be an object")
            name = _get(entry, "name", "str", src, where)
            enc = _read_2_0_0(entry, src, f"{where} ({name!r})")
            is_param = name in param_names if param_names is not None else enc.axis is not None
            _add(result.params if is_param else result.activations, name, enc, src, where)
    sections = () if version == "2.0.0" else (("activation_encodings", result.activations),
                                               ("param_encodings", result.params))
    for section, target in sections:
        if version == "1.0.0":
            for i, entry in enumerate(_get(doc, section, "list", src, "top level")):
                where = f"{section}[{i}]"
                if not isinstance(entry, dict):
                    raise _bad(src, where, "must be an object")
                name = _get(entry, "name", "str", src, where)
                _add(target, name, _read_1_0_0(entry, src, f"{where} ({name!r})"), src, where)
        else:
            for name, channels in _get(doc, section, "dict", src, "top level").items():
                target[name] = _read_0_6_1(channels, src, f"{section}[{name!r}]")
    both = result.activations.keys() & result.params.keys()
    if both:
        raise QtoolError(f"{src}: tensor {sorted(both)[0]!r} is both an activation and a param")
    return result


def load_encodings(path: str | os.PathLike, *, param_names: set[str] | None = None) -> EncodingSet:
    """Read an encodings file; every problem is a one-line QtoolError naming the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise QtoolError(f"{path}: no such encodings file") from None
    except json.JSONDecodeError as e:
        raise QtoolError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise QtoolError(f"{path}: not a text (UTF-8) file") from None
    except OSError as e:
        raise QtoolError(f"{path}: cannot read encodings file ({e.strerror or e})") from None
    return from_json_dict(doc, source=path, param_names=param_names)
