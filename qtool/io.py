"""File IO shared by the CLI and (later) the recipe runner: pairs, data, outputs.

Steps never touch the disk; these helpers do, and turn every user mistake into a QtoolError
that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qtool.data import DataSource, ImageSpec, open_data
from qtool.encodings_io import EncodingSet, resolve_axes
from qtool.encodings_read import load_encodings
from qtool.errors import QtoolError
from qtool.graph import load_model, value_by_name
from qtool.plan import param_axis
from qtool.runtime import input_infos

ENCODINGS_SUFFIX = ".encodings.json"


def output_prefix(out: str | os.PathLike) -> Path:
    """`-o out/model`, `-o out/model.onnx` and `-o out/model.encodings.json` all mean out/model."""
    text = str(out)
    for suffix in (ENCODINGS_SUFFIX, ".encodings", ".onnx"):
        if text.endswith(suffix):
            return Path(text[: -len(suffix)])
    return Path(text)


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
    return model, encodings, source


def open_model_data(model: ir.Model, spec: str, *, samples: int | None, preprocess: str | None,
                    seed: int = 0, input_shapes: Iterable[str] = (), vocab_size: int | None = None) -> DataSource:
    """`--data` for this model; `input_shapes` are `--input-shape` values (NAME=1x3x320x320)."""
    from qtool.random_data import parse_input_shapes

    return open_data(spec, input_infos(model), samples=samples, image_spec=ImageSpec.parse(preprocess), seed=seed,
                     input_shapes=parse_input_shapes(input_shapes or ()), vocab_size=vocab_size)


def load_labels(path: str | os.PathLike) -> np.ndarray:
    """Integer class labels, one per sample (.npy, or .txt with one integer a line)."""
    path = Path(path)
    if not path.exists():
        raise QtoolError(f"{path}: no such labels file")
    try:
        labels = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except Exception as exc:
        raise QtoolError(f"{path}: cannot read labels ({exc})", "use a .npy of integers or a text file") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise QtoolError(f"{path}: labels must be a 1-D array of integers, got {labels.dtype} {labels.shape}")
    return labels


