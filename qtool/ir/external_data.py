"""ONNX external data: checked before onnx reads it, and written under the output's own name.

A model over protobuf's 2 GB limit (or any model an exporter saved that way) keeps its weights in
a second file named by each tensor's `location`. Reading: qtool checks every location itself
before onnx opens anything, whatever the onnx version (onnx 1.16 follows a symlinked data file out
of the model's folder, so any readable file could be copied into the outputs): the location must
be relative, stay inside the model's folder once resolved, pass through no symlink, and hold the
bytes the tensor claims. Writing: a model read with external data is written with external data,
`out.onnx` + `out.onnx.data`, both staged and renamed together (qtool.files.atomic.StagedOutputs),
so the pair is complete and never points at another `.data` file that happens to be in the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from qtool.errors import QtoolError
from qtool.files.atomic import (StagedOutputs, atomic_write_bytes, copies_onto_itself, copy_file_atomic, final_path,
                                staged_companion)
from qtool.files.output_guard import register_input

# tensors smaller than this stay inside the .onnx file (onnx's own default threshold)
SIZE_THRESHOLD = 1024
ALIGNMENT = 64  # each tensor starts at a multiple of this in the data file


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def model_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, sparse ones, attributes, subgraphs, functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _check_location(path: Path, tensor: onnx.TensorProto) -> Path:
    """The data file of one external tensor, checked; QtoolError naming the model and location."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: tensor '{tensor.name}' has its data in '{location}'"
    keep_beside = "keep the model's external data files in its folder, as regular files"
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts:
        raise QtoolError(f"{where}, which is outside the model's folder", keep_beside)
    folder = path.parent
    current = folder
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise QtoolError(f"{where}, which is a symlink (qtool does not follow links for external data)",
                             keep_beside)
    if not current.resolve().is_relative_to(folder.resolve()):
        raise QtoolError(f"{where}, which resolves outside the model's folder", keep_beside)
    if not current.is_file():
        raise QtoolError(f"{where}, which is missing or not a file", "copy the model together with its data file")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise QtoolError(f"{where} at a malformed offset or length ({exc})", "re-save the model") from exc
    size = current.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise QtoolError(f"{where}, bytes {offset}..{offset + (length or 0)} of a {size}-byte file",
                         "is the data file truncated?")
    return current


def external_data_files(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """The external data files a model (read without its data) refers to, each checked."""
    files = {_check_location(path, tensor) for tensor in model_tensors(proto)
             if tensor.data_location == onnx.TensorProto.EXTERNAL}
    return sorted(files)


def load_external_data(proto: onnx.ModelProto, path: Path) -> bool:
    """Check and read the external data of `proto` (read from `path` without it) into the proto.
    Returns whether there was any; the files are registered as inputs of the running command."""
    files = external_data_files(proto, path)
    if not files:
        return False
    for file in files:
        register_input(file)
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise QtoolError(f"{path}: cannot read its external data ({type(exc).__name__}: {str(exc)[:150]})",
                         "is the data file truncated or from another model?") from exc
    return True


def externalize(proto: onnx.ModelProto, location: str) -> bytes:
    """Move the main graph's initializers of SIZE_THRESHOLD bytes or more out of `proto` (in
    place) into one data blob named `location`; returns the blob (deterministic: graph order)."""
    chunks: list[bytes] = []
    offset = 0
    for tensor in proto.graph.initializer:
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < SIZE_THRESHOLD:
            continue
        pad = -offset % ALIGNMENT
        chunks.append(b"\0" * pad)
        offset += pad
        data = tensor.raw_data
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks)


def save_with_external_data(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `proto` to `path` with its large weights in `<name>.data` beside it, where `<name>` is
    the final output name (`path` may be a StagedOutputs temporary). Changes `proto`."""
    final = final_path(path)
    name = f"{final.name}.data"
    blob = externalize(proto, name)
    serialised = proto.SerializeToString(deterministic=True)
    if not blob:  # every tensor under the threshold: one self-contained file
        atomic_write_bytes(path, serialised)
        return
    companion = staged_companion(path, name)
    if companion is not None:
        atomic_write_bytes(path, serialised)
        atomic_write_bytes(companion, blob)
        return
    with StagedOutputs() as out:
        atomic_write_bytes(out.path(final), serialised)
        atomic_write_bytes(out.path(final.with_name(name)), blob)


def copy_model_with_external_data(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Copy a model that stores its weights as external data to `dst` (data under dst's name);
    False, writing nothing, when `src` has no external data (a byte copy is then exact)."""
    src = Path(src)
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise QtoolError(f"{src}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not load_external_data(proto, src):
        return False
    save_with_external_data(proto, dst)
    return True


def copy_model_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """An unchanged copy of an ONNX model (`qtool.files.atomic.copy_file_atomic`), except that a
    model whose weights are stored as external data is re-serialised, its data under dst's own
    name (`out.onnx` + `out.onnx.data`): a byte copy would point at a data file the output folder
    does not have, or at another one that happens to be there."""
    if not copies_onto_itself(src, dst) and copy_model_with_external_data(src, dst):
        return
    copy_file_atomic(src, dst)
