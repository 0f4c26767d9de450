"""`--input-shape` and `--data random`: shapes for dynamic dims, and random data a model accepts.

Random data is for smoke tests, but it must still be data the model can run on and that
exercises it: a dynamic dim set to 1 calibrated PP-OCR on 3x1x1 images without a word, and
crashed a YOLO export inside onnxruntime. So:

* every dim after the batch dim must be known: static in the model, or given with
  ``--input-shape NAME=1x3x320x320`` (repeatable). The first (batch) dim of the given shape is
  ignored: ``--batch-size`` sets it. A dim the model fixes must be given as it is; a dynamic dim
  given for one input fills the dims of the same symbolic name on the other inputs (a BERT
  export's 'sequence' on input_ids, attention_mask and token_type_ids alike). Anything left
  dynamic is a one-line error that names the input and the dim.
* float inputs get standard normal values;
* integer inputs that index an embedding table (a Gather on an initializer, directly or through
  Cast/Unsqueeze/Reshape/...; see ``qtool.runtime.sessions.input_infos``) get uniform ids below the
  table's rows, and below ``--vocab-size N`` when given (ids beyond a tokenizer's vocabulary
  would be rows training never touched);
* integer or bool inputs named like masks ("mask" in the name) get ones: everything attended;
* other integer inputs get ids below ``--vocab-size`` when given, else zeros (with a warning:
  qtool cannot know their range); bool inputs get random values.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator

import numpy as np

from qtool.data.inputs import InputInfo
from qtool.errors import QtoolError

log = logging.getLogger(__name__)

_SHAPE = re.compile(r"^\s*([^=\s][^=]*?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)\s*$")
RANDOM_CHUNK = 16  # samples per random chunk


def parse_input_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """`("x=1x3x320x320", ...)` -> {"x": (1, 3, 320, 320)}; one-line errors for bad items."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        match = _SHAPE.match(item)
        if not match:
            raise QtoolError(f"--input-shape {item!r}: expected NAME=D1xD2x..., e.g. x=1x3x320x320")
        name, dims = match.group(1), tuple(int(d) for d in re.split(r"\s*[x,]\s*", match.group(2)))
        if name in shapes:
            raise QtoolError(f"--input-shape: input '{name}' is given twice")
        if any(d < 1 for d in dims):
            raise QtoolError(f"--input-shape {item!r}: every dim must be at least 1")
        shapes[name] = dims
    return shapes


def recipe_input_shapes(mapping: dict[str, object] | None) -> tuple[str, ...]:
    """A recipe's `data.input_shapes` ({x: "1x3x320x320"} or {x: [1, 3, 320, 320]}) as the
    command line's repeated `--input-shape` values."""
    items = []
    for name, shape in (mapping or {}).items():
        text = "x".join(str(d) for d in shape) if isinstance(shape, (list, tuple)) else str(shape)
        items.append(f"{name}={text}")
    return tuple(items)


def apply_input_shapes(inputs: list[InputInfo], shapes: dict[str, tuple[int, ...]]) -> list[InputInfo]:
    """The inputs with dynamic dims filled from `shapes` (and from same-named dims of other
    inputs); a given dim that contradicts a static one, an unknown input name or a wrong rank is
    a one-line error."""
    if not shapes:
        return inputs
    by_name = {info.name: info for info in inputs}
    for name in shapes:
        if name not in by_name:
            raise QtoolError(f"--input-shape {name}=...: the model has no input '{name}'",
                             f"its inputs: {', '.join(by_name)}")
    symbols: dict[str, int] = {}
    for name, dims in shapes.items():
        info = by_name[name]
        if info.shape is not None and len(dims) != len(info.shape):
            raise QtoolError(f"--input-shape {name}={_text(dims)}: the model's input '{name}' has "
                             f"{len(info.shape)} dims {_model_shape(info)}, not {len(dims)}")
        for axis, given in enumerate(dims[1:], start=1):
            want = info.shape[axis] if info.shape is not None else None
            if want is not None and want != given:
                raise QtoolError(f"--input-shape {name}={_text(dims)}: dim {axis} of input '{name}' is {want} "
                                 f"in the model {_model_shape(info)}, not {given}")
            symbol = _symbol(info, axis)
            if want is None and symbol is not None:
                symbols.setdefault(symbol, given)
    out = []
    for info in inputs:
        if info.name in shapes:
            dims = shapes[info.name]
            shape = (info.shape[0] if info.shape is not None else None, *dims[1:])
        elif info.shape is not None:
            shape = tuple(d if d is not None or axis == 0 else symbols.get(_symbol(info, axis))
                          for axis, d in enumerate(info.shape))
        else:
            shape = None
        out.append(dataclasses.replace(info, shape=shape))
    return out


def check_random_inputs(inputs: list[InputInfo], vocab_size: int | None) -> None:
    """Refuse random data the model cannot run on (an unknown dim), and say what each integer
    input will get."""
    for info in inputs:
        if info.shape is None:
            raise QtoolError(f"--data random: input '{info.name}' has no known shape",
                             f"give it with --input-shape {info.name}=1xD1xD2...")
        for axis, dim in enumerate(info.shape[1:], start=1):
            if dim is None:
                symbol = _symbol(info, axis)
                named = f" ('{symbol}')" if symbol else ""
                raise QtoolError(f"--data random: input '{info.name}' has dynamic dim {axis}{named}",
                                 f"give it with --input-shape {info.name}={_example(info)}")
        kind = integer_kind(info, vocab_size)
        if kind == "zeros":
            log.warning("--data random: integer input '%s' indexes no embedding table qtool can find and is not "
                        "named like a mask: it gets zeros (give --vocab-size N for ids below N)", info.name)
        elif kind is not None and kind.startswith("ids"):
            log.info("--data random: input '%s' gets random %s", info.name, kind)


def integer_kind(info: InputInfo, vocab_size: int | None) -> str | None:
    """What random data an input gets: None (float: normal values), "ones" (a mask), "bool",
    "ids below N", or "zeros"."""
    if np.issubdtype(info.dtype, np.floating):
        return None
    if "mask" in info.name.lower():
        return "ones"
    if info.dtype == np.bool_:
        return "bool"
    high = _id_limit(info, vocab_size)
    return f"ids below {high}" if high else "zeros"


def _id_limit(info: InputInfo, vocab_size: int | None) -> int | None:
    if info.vocab and vocab_size:
        return min(info.vocab, vocab_size)
    return info.vocab or vocab_size


def random_chunks(inputs: list[InputInfo], total: int, seed: int, vocab_size: int | None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """`total` random samples in chunks of RANDOM_CHUNK (the inputs' shapes are all known:
    `check_random_inputs` ran when the source was opened)."""
    rng = np.random.default_rng(seed)
    for start in range(0, total, RANDOM_CHUNK):
        n = min(RANDOM_CHUNK, total - start)
        chunk = {}
        for info in inputs:
            dims = (n, *(info.shape or (None,))[1:])
            kind = integer_kind(info, vocab_size)
            if kind is None:
                chunk[info.name] = rng.standard_normal(dims).astype(info.dtype)
            elif kind == "ones":
                chunk[info.name] = np.ones(dims, info.dtype)
            elif kind == "bool":
                chunk[info.name] = rng.integers(0, 2, dims).astype(info.dtype)
            elif kind == "zeros":
                chunk[info.name] = np.zeros(dims, info.dtype)
            else:
                chunk[info.name] = rng.integers(0, _id_limit(info, vocab_size), dims).astype(info.dtype)
        yield chunk


def _symbol(info: InputInfo, axis: int) -> str | None:
    names = info.dim_names
    return names[axis] if names is not None and axis < len(names) else None


def _text(dims: Iterable[int]) -> str:
    return "x".join(str(d) for d in dims)


def _model_shape(info: InputInfo) -> str:
    if info.shape is None:
        return "(unknown)"
    return "(" + ", ".join(str(d) if d is not None else (_symbol(info, a) or "?")
                           for a, d in enumerate(info.shape)) + ")"


def _example(info: InputInfo) -> str:
    """The shape to give, with a placeholder for each dim the user must choose."""
    dims = ["1"] + [str(d) if d is not None else f"<{_symbol(info, a) or f'dim{a}'}>"
                    for a, d in enumerate(info.shape[1:], start=1)]
    return "x".join(dims)
