"""What the commands read: pairs, data and labels, and where a pair's outputs go.

Steps never touch the disk; these helpers do, and turn every user mistake into a QtoolError
that names the file. Data and labels may also be arrays (the Python API): they get the same
checks, and errors name them `data` / `labels`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from qtool.data.checks import check_labels
from qtool.data.memory import is_in_memory, memory_source
from qtool.data.sources import DataSource, ImageSpec, open_data
from qtool.encodings.encoding_set import EncodingSet, resolve_axes
from qtool.encodings.read import load_encodings
from qtool.errors import QtoolError
from qtool.ir.graph import load_model, shape_of, value_by_name
from qtool.plan.build import param_axis
from qtool.plan.overrides import load_overrides
from qtool.runtime.custom_ops import check_custom_ops
from qtool.runtime.sessions import input_infos

ENCODINGS_SUFFIX = ".encodings.json"


def output_prefix(out: str | os.PathLike) -> Path:
    """`-o out/model`, `-o out/model.onnx` and `-o out/model.encodings.json` all mean out/model."""
    text = str(out)
    for suffix in (ENCODINGS_SUFFIX, ".encodings", ".onnx"):
        if text.endswith(suffix):
            return Path(text[: -len(suffix)])
    return Path(text)


def pair_prefix(model: str | os.PathLike, output: str | os.PathLike | None) -> Path:
    """Where a command that writes a pair puts it: `-o PREFIX` (PREFIX.onnx + PREFIX.encodings.json),
    or without -o, beside the model under its own stem (model.onnx -> model.encodings.json)."""
    return output_prefix(output if output is not None else model)


def read_overrides(path: str | os.PathLike | None) -> tuple:
    """The overrides of an `--overrides` file (none without one)."""
    return load_overrides(path) if path else ()


def default_encodings_path(model_path: str | os.PathLike) -> Path:
    return output_prefix(model_path).with_name(output_prefix(model_path).name + ENCODINGS_SUFFIX)


def load_pair(model_path: str | os.PathLike, encodings_path: str | os.PathLike | None
              ) -> tuple[ir.Model, EncodingSet, str]:
    """The model and its encodings, with per-channel axes taken from the graph."""
    model = load_model(model_path)
    if encodings_path is None:
        encodings_path = default_encodings_path(model_path)
        if not Path(encodings_path).exists():
            raise QtoolError(f"{model_path}: no encodings given and {encodings_path} does not exist",
                             "pass --encodings FILE (written by 'qtool calibrate')")
    source = str(encodings_path)
    encodings = load_encodings(encodings_path, param_names=set(model.graph.initializers))
    values = value_by_name(model)
    for name in encodings.all():
        if name not in values:
            raise QtoolError(f"{source}: tensor '{name}' is not in {model_path}",
                             "were these encodings computed for another model?")
    encodings = resolve_axes(encodings, lambda name: param_axis(values[name]))
    check_encoding_shapes(encodings, values, source)
    check_custom_ops(model, str(model_path))
    return model, encodings, source


def check_encoding_shapes(encodings: EncodingSet, values: dict[str, ir.Value], source: str) -> None:
    """Per-channel encodings against the tensors they quantize: one scale per channel of a weight,
    activations per tensor (qtool and onnxruntime's integer kernels quantize them so)."""
    for name, enc in encodings.activations.items():
        if enc.axis is not None and enc.scale.size > 1:
            raise QtoolError(f"{source}: activation '{name}' has a per-channel encoding ({enc.scale.size} scales)",
                             "qtool quantizes activations per tensor: give it one scale and offset")
    for name, enc in encodings.params.items():
        tensor = values[name].const_value
        problem = enc.fits(tuple(tensor.shape)) if hasattr(enc, "block_size") and tensor is not None else None
        if problem:  # a per-block encoding (qtool.quant.blockwise)
            raise QtoolError(f"{source}: '{name}': {problem}", "were these encodings computed for another model?")
        if enc.is_float or enc.axis is None or tensor is None or hasattr(enc, "block_size"):
            continue
        shape = tuple(tensor.shape)
        if not -len(shape) <= enc.axis < len(shape) or shape[enc.axis] != enc.scale.size:
            channels = f"{shape[enc.axis]} channels on axis {enc.axis}" if -len(shape) <= enc.axis < len(shape) \
                else f"no axis {enc.axis}"
            raise QtoolError(f"{source}: '{name}' has {enc.scale.size} per-channel scales, but the tensor "
                             f"(shape {shape}) has {channels}",
                             "were these encodings computed for another model or an older version of it?")


def open_model_data(model: ir.Model, spec: Any, *, samples: int | None, preprocess: str | None = None,
                    seed: int = 0, input_shapes: Iterable[str] = (), vocab_size: int | None = None) -> DataSource:
    """`--data` for this model (a path, 'random', or arrays: qtool.data.memory); `input_shapes`
    are `--input-shape` values (NAME=1x3x320x320)."""
    from qtool.data.random_data import apply_input_shapes, parse_input_shapes

    shapes = parse_input_shapes(input_shapes or ())
    if is_in_memory(spec):
        return memory_source(spec, apply_input_shapes(input_infos(model), shapes), samples=samples)
    return open_data(os.fspath(spec), input_infos(model), samples=samples, image_spec=ImageSpec.parse(preprocess),
                     seed=seed, input_shapes=shapes, vocab_size=vocab_size)


def load_labels(path: Any, model: ir.Model | None = None, data: DataSource | None = None) -> np.ndarray:
    """Integer class labels, one per sample (.npy, or .txt with one integer a line, or an array
    from Python). With the model and the data they label: one label per sample of the data, a
    classifier output of the model, and labels inside its classes (qtool.data.checks.check_labels)."""
    if is_in_memory(path):
        return _checked_labels(np.asarray(path), "labels", model, data)
    path = Path(path)
    if not path.is_file():
        raise QtoolError(f"{path}: {'is a directory, not a labels file' if path.is_dir() else 'no such labels file'}")
    try:
        with warnings.catch_warnings():  # numpy warns on an empty text file: the check below says it
            warnings.simplefilter("ignore")
            labels = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
                np.loadtxt(path, dtype=np.int64, ndmin=1)
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise QtoolError(f"{path}: cannot read labels ({type(exc).__name__}: {text})",
                         "use a .npy of integers (numpy.save) or a text file with one integer a line") from exc
    if not isinstance(labels, np.ndarray):
        labels.close()  # np.load gave an NpzFile: the file is a zip archive whatever its name
        raise QtoolError(f"{path}: labels must be a 1-D array of integers, got an .npz archive",
                         "save the labels alone with numpy.save")
    return _checked_labels(labels, str(path), model, data)


def _checked_labels(labels: np.ndarray, where: str, model: ir.Model | None, data: DataSource | None) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        kind = f"{labels.dtype} {labels.shape}"
        raise QtoolError(f"{where}: labels must be a 1-D array of integers, got {kind}")
    if model is not None:
        outputs = [(value.name, shape_of(value)) for value in model.graph.outputs]
        check_labels(labels, where, data.total() if data is not None else None,
                     data.label if data is not None else "the data", outputs)
    return labels


