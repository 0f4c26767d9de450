"""ONNX external data: checked before onnx reads it, and written under the output's own name.

A model over protobuf's 2 GB limit (or any model an exporter saved that way) keeps its weights in
a second file named by each tensor's `location`. Reading: qtool checks every location itself
before onnx opens anything, whatever the onnx version (onnx 1.16 follows a symlinked data file out
of the model's folder, so any readable file could be copied into the outputs): the location must
be relative, stay inside the model's folder once resolved, pass through no symlink, and hold the
bytes the tensor claims. Writing: a model read with external data is written with external data,
`out.onnx` + `out.onnx.data`, both staged and renamed together (qtool.files.atomic.StagedOutputs),
so the pair is complete and never points at another `.data` file that happens to be in the output folder.
The weights are streamed, tensor by tensor, from where they are (memory, or the input's data file
read on demand) into the output's data file, and the .onnx file holds only references: writing a
model over 2 GB needs no copy of it in memory (qtool.ir.tensor_files, docs/large_models.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from contextlib import contextmanager
from typing import BinaryIO

import onnx
import onnx_ir as ir

from qtool.errors import QtoolError
from qtool.files.atomic import (StagedOutputs, atomic_write_bytes, copies_onto_itself, copy_file_atomic, final_path,
                                staged_companion)
from qtool.files.output_guard import register_input
from qtool.ir.tensor_files import (CHUNK, SIZE_THRESHOLD, external_stand_in, inline_bytes, is_large_tensor, proto_with,
                                   released, tensor_chunks)

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
    Returns whether there was any; the files are registered as inputs of the running command.
    Only for small models (`qtool.ir.graph.load_proto`): `load_model` leaves them in their file."""
    if not register_external_data(proto, path):
        return False
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise QtoolError(f"{path}: cannot read its external data ({type(exc).__name__}: {str(exc)[:150]})",
                         "is the data file truncated or from another model?") from exc
    return True


def register_external_data(proto: onnx.ModelProto, path: Path) -> bool:
    """Check the external data locations of `proto` (read from `path`) and register the files as
    inputs of the running command (never written over); whether there are any."""
    files = external_data_files(proto, path)
    for file in files:
        register_input(file)
    return bool(files)


class _DataWriter:
    """Appends tensors to an open data file, each at a multiple of ALIGNMENT, and says where."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.offset = handle, 0

    def append(self, chunks: Iterable[bytes | memoryview]) -> tuple[int, int]:
        pad = -self.offset % ALIGNMENT
        self.handle.write(b"\0" * pad)
        self.offset += pad
        start = self.offset
        for chunk in chunks:
            self.handle.write(chunk)
            self.offset += len(chunk)
        return start, self.offset - start


@contextmanager
def _pair(path: str | os.PathLike) -> Iterator[tuple[Path, Path, str]]:
    """(where the model goes, where its data goes, the data's location as the model names it):
    staged together, renamed together (`path` may itself be a StagedOutputs temporary)."""
    final = final_path(path)
    name = f"{final.name}.data"
    companion = staged_companion(path, name)
    try:
        if companion is not None:
            yield Path(path), companion, name
            return
        with StagedOutputs() as out:
            yield out.path(final), out.path(final.with_name(name)), name
    except OSError as exc:  # a full disk, a quota: one line, and the staged files are gone
        raise QtoolError(f"{final.with_name(name)}: cannot write ({exc.strerror or exc})",
                         "check the free space where the output goes") from exc


def save_model_with_external_data(model: ir.Model, path: str | os.PathLike) -> None:
    """Write `model` to `path` with its main graph's initializers of SIZE_THRESHOLD bytes or more
    in `<name>.data` beside it, where `<name>` is the final output name, in graph order. Each
    weight is streamed from where it lives (memory, or the input's data file) to the data file,
    and the .onnx file gets a proto of references: no copy of the weights is built in memory."""
    large = [value for value in model.graph.initializers.values() if is_large_tensor(value.const_value)]
    if not large:  # every tensor under the threshold: one self-contained file
        atomic_write_bytes(path, inline_bytes(model))
        return
    with _pair(path) as (model_path, data_path, location):
        stand_ins = {}
        with open(data_path, "wb") as handle:
            writer = _DataWriter(handle)
            for value in large:
                with released(value.const_value) as tensor:
                    offset, length = writer.append(tensor_chunks(tensor))
                stand_ins[value] = external_stand_in(tensor, location, offset, length, data_path.parent)
        atomic_write_bytes(model_path, proto_with(model, stand_ins).SerializeToString(deterministic=True))


def _copy_chunks(file: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(file, "rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(length, CHUNK))
            if not chunk:
                raise QtoolError(f"{file}: ends before byte {offset + length}", "is the data file truncated?")
            length -= len(chunk)
            yield chunk


def _set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


def _stored_bytes(src: Path, tensor: onnx.TensorProto) -> tuple[int, Callable[[], Iterator[bytes]]]:
    """(length, chunks) of a tensor's raw bytes: in its external data file, or in raw_data."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        data = tensor.raw_data if tensor.HasField("raw_data") else b""
        return len(data), lambda: iter((data,))
    file = _check_location(src, tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    offset = int(info.get("offset", "0"))
    length = int(info["length"]) if "length" in info else file.stat().st_size - offset
    return length, lambda: _copy_chunks(file, offset, length)


def _inline(tensor: onnx.TensorProto, chunks: Callable[[], Iterator[bytes]]) -> None:
    """An external tensor that stays in the .onnx file gets its bytes back (others stay as they are)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = b"".join(chunks())


def copy_model_with_external_data(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Copy a model that stores its weights as external data to `dst` (data under dst's name),
    streaming each weight from the input's data file: the layout of `save_model_with_external_data`
    (main-graph tensors of SIZE_THRESHOLD bytes or more in the data file, in graph order, the
    others inline). False, writing nothing, when `src` has no external data (a byte copy is
    then exact)."""
    src = Path(src)
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise QtoolError(f"{src}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not register_external_data(proto, src):
        return False
    main = len(proto.graph.initializer)  # model_tensors yields them first
    tensors = [(tensor, _stored_bytes(src, tensor)) for tensor in model_tensors(proto)]
    moved = [index < main and length >= SIZE_THRESHOLD for index, (_, (length, _)) in enumerate(tensors)]
    if not any(moved):
        for tensor, (_, chunks) in tensors:
            _inline(tensor, chunks)
        atomic_write_bytes(dst, proto.SerializeToString(deterministic=True))
        return True
    with _pair(dst) as (model_path, data_path, location):
        with open(data_path, "wb") as handle:
            writer = _DataWriter(handle)
            for (tensor, (_, chunks)), move in zip(tensors, moved):
                if move:
                    _set_location(tensor, location, *writer.append(chunks()))
                else:
                    _inline(tensor, chunks)
        atomic_write_bytes(model_path, proto.SerializeToString(deterministic=True))
    return True


def copy_model_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """An unchanged copy of an ONNX model (`qtool.files.atomic.copy_file_atomic`), except that a
    model whose weights are stored as external data is re-serialised, its data under dst's own
    name (`out.onnx` + `out.onnx.data`): a byte copy would point at a data file the output folder
    does not have, or at another one that happens to be there."""
    if not copies_onto_itself(src, dst) and copy_model_with_external_data(src, dst):
        return
    copy_file_atomic(src, dst)
