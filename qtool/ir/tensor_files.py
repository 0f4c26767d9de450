"""Weights that live in files: how qtool works on models of any size without one big protobuf.

A model read with external data keeps its weights in the input's ``.data`` file, as
``ReadTensor``s (onnx_ir ``ExternalTensor``s read on demand into memory the caller owns, rather
than mapped for the tensor's life). Three things would otherwise pull every weight into memory
(and fail past protobuf's 2 GB limit): serialising the model for onnxruntime, copying it
(``clone``), and hashing it. Here:

* ``proto_with`` serialises a model with some tensors swapped for stand-ins (an external
  reference, or an inline copy), without ever building a proto that holds the large weights;
* ``shared_weights`` gives onnxruntime a small model's weights as the arrays they are in memory
  (no protobuf copy), and a proto that refers to them;
* ``session_source`` gives onnxruntime a small proto whose large weights are external
  references to the files that hold them (the input's ``.data`` file, or a scratch file for a
  weight a step computed), and the folder they are relative to
  (``session.model_external_initializers_file_folder_path``): onnxruntime memory-maps them
  instead of copying them (measured: no anonymous memory for the weights, docs/large_models.md);
* ``spill`` writes a computed weight of a large model to a scratch file of this process
  (removed at exit) and hands back a ``ReadTensor`` of it, so that the weights a step changes
  (fold, AdaRound, export's integer weights) do not accumulate in RAM;
* ``update_digest`` hashes a model's structure and its weights' bytes tensor by tensor.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import onnx_ir as ir

from qtool.files.atomic import process_gone

# tensors smaller than this stay inside the .onnx file (onnx's own default threshold)
SIZE_THRESHOLD = 1024
# a model whose weights in memory add up to more than this is handled like one read from external
# data (sessions from files, computed weights spilled): one protobuf cannot exceed 2 GB
LARGE_BYTES = 1 << 30
CHUNK = 64 << 20  # bytes written or hashed at a time

_scratch: dict[str, object] = {}


class ReadTensor(ir.ExternalTensor):  # pylint: disable=too-many-ancestors
    """An external tensor read from its file each time it is asked for, into memory the caller
    owns, instead of onnx_ir's memory map kept for the life of the tensor: the weights a step
    has looked at do not stay resident in this process (onnxruntime maps the file itself)."""

    def numpy(self) -> np.ndarray:
        if self.dtype.bitwidth < 8 or self.dtype == ir.DataType.STRING:
            return super().numpy()
        dtype = np.dtype(self.dtype.numpy()).newbyteorder("<")
        return np.fromfile(self.path, dtype=dtype, count=self.size, offset=self.offset or 0).reshape(
            self.shape.numpy())

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204 - numpy's protocol
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def tobytes(self) -> bytes:
        if self.dtype.bitwidth < 8:
            return super().tobytes()
        return self.numpy().tobytes()


def read_tensor(tensor: ir.ExternalTensor) -> ReadTensor:
    """The same external tensor, read on demand (ReadTensor)."""
    return ReadTensor(tensor.location, tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape,
                      name=tensor.name, base_dir=tensor.base_dir)


def read_on_demand(model: ir.Model) -> None:
    """Every external initializer of the model becomes a ReadTensor."""
    for value in initializer_values(model):
        if isinstance(value.const_value, ir.ExternalTensor) and not isinstance(value.const_value, ReadTensor):
            value.const_value = read_tensor(value.const_value)


def initializer_values(model: ir.Model) -> Iterator[ir.Value]:
    """Initializers of the main graph, then of every subgraph (If/Loop bodies)."""
    yield from model.graph.initializers.values()
    for graph in model.graph.subgraphs():
        yield from graph.initializers.values()


def is_large(model: ir.Model) -> bool:
    """Whether the model's weights are in files (read with external data or spilled) or add up to
    more than LARGE_BYTES: such a model goes to onnxruntime by file, never as one protobuf."""
    total = 0
    for value in initializer_values(model):
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            return True
        total += 0 if tensor is None or isinstance(tensor, ir.StringTensor) else tensor.nbytes
    return total > LARGE_BYTES


def is_large_tensor(tensor: ir.TensorProtocol | None) -> bool:
    """Whether a tensor is big enough to be kept in a data file rather than in the .onnx file."""
    return tensor is not None and not isinstance(tensor, ir.StringTensor) and tensor.nbytes >= SIZE_THRESHOLD


def tensor_chunks(tensor: ir.TensorProtocol) -> Iterator[memoryview | bytes]:
    """The tensor's bytes as ONNX stores them (little endian, 4-bit values packed), in pieces of
    at most CHUNK bytes (one tensor in memory at a time)."""
    if tensor.dtype.bitwidth < 8 or np.little_endian is False:
        yield tensor.tobytes()
        return
    array = np.ascontiguousarray(tensor.numpy())
    view = memoryview(array.reshape(-1).view(np.uint8))
    for start in range(0, len(view), CHUNK):
        yield view[start:start + CHUNK]


def inline_copy(tensor: ir.TensorProtocol) -> ir.Tensor:
    """An in-memory copy of a (small) tensor, serialised inside the .onnx file."""
    return ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)


def external_stand_in(tensor: ir.TensorProtocol, location: str, offset: int, length: int,
                      base_dir: str | os.PathLike) -> ir.ExternalTensor:
    """An external reference to bytes of `tensor` at `location` (relative to `base_dir`)."""
    return ir.ExternalTensor(location, offset, length, tensor.dtype, shape=tensor.shape, name=tensor.name,
                             base_dir=base_dir)


def proto_with(model: ir.Model, stand_ins: dict[ir.Value, ir.TensorProtocol]) -> onnx.ModelProto:
    """The model as a proto with each value's tensor replaced by its stand-in while serialising
    (the model is left as it was). Every other external tensor is inlined: a proto never
    refers to a file it did not choose."""
    swaps = dict(stand_ins)
    for value in initializer_values(model):
        if value not in swaps and isinstance(value.const_value, ir.ExternalTensor):
            swaps[value] = inline_copy(value.const_value)
    kept = {value: value.const_value for value in swaps}
    try:
        for value, tensor in swaps.items():
            value.const_value = tensor
        return ir.to_proto(model)
    finally:
        for value, tensor in kept.items():
            value.const_value = tensor


def _scratch_dir() -> str:
    """This process's folder of spilled weights (under TMPDIR), removed at exit (a session's
    memory maps of them stay valid after that)."""
    folder = _scratch.get("dir")
    if folder is None:
        _remove_stale_scratch()
        folder = tempfile.mkdtemp(prefix=f"qtool-weights-{os.getpid()}-")
        _scratch["dir"], _scratch["count"] = folder, 0
        atexit.register(shutil.rmtree, folder, True)
    return str(folder)


def _remove_stale_scratch() -> None:
    """Scratch folders of killed runs (no exit handler ran) go when the next run starts."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        parts = name.split("-")
        if name.startswith("qtool-weights-") and len(parts) == 4 and parts[2].isdigit() \
                and process_gone(int(parts[2])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def spill(tensor: ir.TensorProtocol) -> ir.ExternalTensor:
    """Write a computed tensor to a scratch file and return a tensor read from it on demand."""
    folder = _scratch_dir()
    _scratch["count"] = int(_scratch["count"]) + 1  # type: ignore[call-overload]
    location = f"{_scratch['count']}.bin"
    length = 0
    with open(os.path.join(folder, location), "wb") as handle:
        for chunk in tensor_chunks(tensor):
            handle.write(chunk)
            length += len(chunk)
    spilled = read_tensor(external_stand_in(tensor, location, 0, length, folder))
    # the file goes with the last reference to it (a session that mapped it keeps its map)
    weakref.finalize(spilled, _remove, os.path.join(folder, location))
    return spilled


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def spill_large(model: ir.Model) -> None:
    """Replace every large in-memory initializer of a large model by a spilled copy (same values)."""
    for value in initializer_values(model):
        tensor = value.const_value
        if is_large_tensor(tensor) and not isinstance(tensor, ir.ExternalTensor):
            value.const_value = spill(tensor)


def inline_bytes(model: ir.Model) -> bytes:
    """The model as one deterministic protobuf, every weight inline: the one route from a model
    to bytes (onnxruntime's input for a small model, model_bytes, a small external-data save)."""
    return proto_with(model, {}).SerializeToString(deterministic=True)


# weights onnxruntime can take as they are in memory (numpy's own types: no 4-bit, no ml_dtypes)
_SHARED_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16,
                                                 np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_))
IN_MEMORY = "qtool-in-memory"  # the location of a stand-in whose bytes are handed over as an array


def shared_weights(model: ir.Model) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small model for onnxruntime without copying its weights into a protobuf: (the model
    serialised with each main-graph weight of SIZE_THRESHOLD bytes or more as an external
    reference, the arrays those references stand for, by name). onnxruntime takes the arrays as
    they are (``SessionOptions.add_external_initializers``: no copy, no parse), where the bytes
    route would copy every weight twice (into the proto, then into the string) and onnxruntime a
    third time (parsing): a MiniLM session (47 MB of weights) took 0.77 s, now 0.32 s. The
    arrays must outlive the session. Same weights, same values: the session computes the same.
    Like proto_with, the stand-ins sit in `model` while it is serialised: no other thread may
    read the model meanwhile (simulate makes its float session from a copy)."""
    stand_ins, arrays = {}, {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not is_large_tensor(tensor) or isinstance(tensor, ir.ExternalTensor) or tensor.dtype.bitwidth < 8:
            continue
        array = tensor.numpy()
        if array.dtype not in _SHARED_DTYPES or not array.dtype.isnative or not array.flags.c_contiguous:
            continue
        stand_ins[value] = external_stand_in(tensor, IN_MEMORY, 0, array.nbytes, "")
        arrays[value.name] = array
    return proto_with(model, stand_ins).SerializeToString(deterministic=True), arrays


def session_source(model: ir.Model) -> tuple[bytes, str | None]:
    """What onnxruntime loads: (serialised model, None) for a small model; for a large one, a
    proto whose large weights are external references, and the folder they are relative to
    (the deepest folder holding every data file). Spills the model's computed large weights."""
    if not is_large(model):
        return inline_bytes(model), None  # no external tensor: the same bytes as ir.to_proto
    spill_large(model)
    external = {value: value.const_value for value in initializer_values(model)
                if isinstance(value.const_value, ir.ExternalTensor)}
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(t.path)) for t in external.values()])
    stand_ins = {value: external_stand_in(t, os.path.relpath(os.path.abspath(t.path), folder), t.offset or 0,
                                          t.length if t.length is not None else t.nbytes, folder)
                 for value, t in external.items()}
    return proto_with(model, stand_ins).SerializeToString(deterministic=True), folder


def update_digest(digest, model: ir.Model) -> None:  # noqa: ANN001 - any hashlib object
    """Feed the model to a hashlib digest: its structure, then each weight's bytes, in order."""
    external = {value: value.const_value for value in initializer_values(model) if is_large_tensor(value.const_value)}
    stand_ins = {value: external_stand_in(t, "weights", 0, t.nbytes, "") for value, t in external.items()}
    digest.update(proto_with(model, stand_ins).SerializeToString(deterministic=True))
    for tensor in external.values():
        for chunk in tensor_chunks(tensor):
            digest.update(chunk)


@contextmanager
def released(tensor: ir.TensorProtocol) -> Iterator[ir.TensorProtocol]:
    """Use a memory-mapped tensor, then unmap it, so the pages read do not stay in this process's
    resident memory (a no-op for in-memory tensors, or while other arrays still view the map)."""
    try:
        yield tensor
    finally:
        if isinstance(tensor, ir.ExternalTensor):
            try:
                tensor.release()
            except BufferError:  # an array made from it is still alive: the map stays
                pass
