"""Read AIMET encodings files (1.0.0, 0.6.1, 2.0.0 and the legacy 0.4.0/0.5.0 layout).

Most of reading is validation, so that every problem in a hand-edited or foreign file is one
QtoolError naming the file, the entry and the fix. The formats are described in
`qtool.encodings.formats`; writing them is `qtool.encodings.write`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from qtool.encodings.blocks import BLOCK_KEYS, read_block_entry
from qtool.encodings.encoding_set import EncodingSet
from qtool.encodings.formats import DTYPE_RE, ENCODING_VERSIONS, LEGACY_VERSIONS
from qtool.errors import QtoolError
from qtool.quant.encoding import Encoding, float_encoding

_MISSING = object()


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
    match = DTYPE_RE.fullmatch(dtype)
    if not match:
        raise _bad(src, where, f"output_dtype {dtype!r} is not supported", "use int<N>, uint<N> or float16")
    signed, bw = match.group(1) == "", int(match.group(2))
    if not 2 <= bw <= 32:
        raise _bad(src, where, f"integer bit-width must be 2..32, not {bw}")
    if any(key in entry for key in BLOCK_KEYS):  # per-block / LPBQ (qtool.encodings.blocks)
        return read_block_entry(entry, src, where, signed, bw, _get(entry, "frozen", "bool", src, where, False))
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
    if version not in ENCODING_VERSIONS + LEGACY_VERSIONS:
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
