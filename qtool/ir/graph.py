"""The graph layer: the only module that touches ONNX protobuf.

Everything else works on ``onnx_ir`` models (values know their producer and consumers), so
transforms never search for consumers by scanning names. Loading checks the file and turns
protobuf errors into one-line QtoolErrors; saving is atomic (temporary file, then rename) and
deterministic (protobuf's deterministic serialisation), so reruns give byte-identical files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from qtool.errors import QtoolError
from qtool.files.atomic import atomic_write_bytes
from qtool.files.output_guard import register_input
from qtool.ir.checks import check_weights
from qtool.ir.external_data import load_external_data, register_external_data, save_model_with_external_data
from qtool.ir.tensor_files import initializer_values, inline_bytes, is_large, proto_with, read_on_demand, spill

log = logging.getLogger(__name__)

# QuantizeLinear/DequantizeLinear with a per-channel `axis` exist from opset 13 on.
MIN_QDQ_OPSET = 13

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)

# model.meta key: the model was read with external data, so it is written with external data too
EXTERNAL_DATA = "qtool.ir.external_data"
SPILL_BYTES = 1 << 20  # a computed weight of a large model this big goes to a scratch file


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and sanity-check an ONNX file, its external data read into the proto (for small
    models; `load_model` leaves the weights in their file); every failure names the file."""
    path = Path(path)
    proto, external, _ = _read_proto(path)
    if external:
        load_external_data(proto, path)
    return proto


def _read_proto(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool, bytes | None]:
    """(the checked proto without its external data, whether it has any, the file's bytes when it
    has none). External data locations are checked by qtool before onnx or onnxruntime open them
    (qtool.ir.external_data); a model with external data is checked from its file, so no weight
    is read here. The checker (and shape inference, in load_model) take the file's bytes as
    read: given the proto, each serialises it again (MiniLM, 47 MB: the checker took 0.49 s, on the
    bytes 0.08 s; shape inference 0.68 s, on the bytes 0.47 s)."""
    path = Path(path)
    if not path.exists():
        raise QtoolError(f"{path}: no such file", "check the path to the ONNX model")
    if path.is_dir():
        raise QtoolError(f"{path}: is a directory, not an ONNX model file")
    register_input(path)
    try:
        serialised = path.read_bytes()
        proto = onnx.load_from_string(serialised)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise QtoolError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})",
            "is the file truncated or not an .onnx file?",
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise QtoolError(f"{path}: not an ONNX model (the file parsed to an empty graph)", "is it an .onnx file?")
    external = register_external_data(proto, path)
    try:
        onnx.checker.check_model(str(path) if external else serialised)
    except Exception as exc:
        problem = str(exc).splitlines()[0][:200]
        if not _runs_in_onnxruntime(str(path) if external else serialised):
            raise QtoolError(f"{path}: invalid ONNX model: {problem}") from exc
        # the checker is stricter than the runtime (e.g. graph outputs declared without a shape,
        # as several exporters write them): a model onnxruntime runs is one we can quantize
        log.warning("%s: onnx.checker: %s; onnxruntime accepts the model, continuing", path, problem)
    return proto, external, None if external else serialised


def _runs_in_onnxruntime(model: str | bytes) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load a model as onnx_ir with shapes inferred and float Constant nodes lifted to initializers.
    External data stays in its file: a weight is read when a step looks at it, and onnxruntime
    maps the file itself (qtool.ir.tensor_files)."""
    path = Path(path)
    proto, external, serialised = _read_proto(path)
    model = model_from_proto(proto, str(path), base_dir=path.parent if external else None, serialised=serialised)
    if external:
        model.meta[EXTERNAL_DATA] = True
    return model


def model_from_proto(proto: onnx.ModelProto, source: str, base_dir: str | os.PathLike | None = None,
                     serialised: bytes | None = None) -> ir.Model:
    """A model as qtool works on it (shapes inferred, Constants lifted, weights checked), from a
    proto already in memory; `source` names it in messages; `base_dir` is the folder its
    external data locations are relative to; `serialised`: the proto's bytes, when at hand."""
    try:
        proto = onnx.shape_inference.infer_shapes(proto if serialised is None else serialised)
    except Exception as exc:  # shape inference is a help, not a requirement
        log.warning("%s: shape inference failed (%s); continuing without it", source, exc)
    model = ir.from_proto(proto)
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
        read_on_demand(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    model.meta["qtool.source"] = source  # for error messages further down
    check_weights(model, source)  # NaN/Inf weights: refused, naming the tensor (qtool.ir.checks)
    return model


def model_to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as one proto, weights inline (small models: the public API hands protos out)."""
    return proto_with(model, {})


def model_bytes(model: ir.Model) -> bytes:
    """Serialised model, deterministic, weights inline (small models only: onnxruntime sessions
    use qtool.ir.tensor_files.session_source, which also takes models over 2 GB)."""
    return inline_bytes(model)


def save_model(model: ir.Model, path: str | os.PathLike) -> None:
    """Save atomically and deterministically; a model read with external data (or too large for
    one protobuf) is written with its weights in `<name>.data` beside it, streamed tensor by
    tensor (qtool.ir.external_data), the two files renamed together."""
    if model.meta.get(EXTERNAL_DATA) or is_large(model):
        save_model_with_external_data(model, path)
    else:
        atomic_write_bytes(path, model_bytes(model))


def _keep_storage(source: ir.Model, copy: ir.Model) -> ir.Model:
    """`copy` remembers that `source` came with external data (steps work on copies), and shares
    its weights in files (each read gives a fresh array, so sharing is safe) instead of copies."""
    if source.meta.get(EXTERNAL_DATA):
        copy.meta[EXTERNAL_DATA] = True
    mapped = {value.name: value.const_value for value in initializer_values(source)
              if isinstance(value.const_value, ir.ExternalTensor)}
    if mapped:
        for value in initializer_values(copy):
            if value.name in mapped and isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = mapped[value.name]
    return copy


def _external_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto in which weights in files stay references (small whatever the
    model's size); only for a round trip through _keep_storage, which maps them back."""
    return ir.to_proto(model)


def clone(model: ir.Model) -> ir.Model:
    """A deep copy, so that a step never changes the model its caller holds (weights in files are
    shared: they cannot be changed in place)."""
    return _keep_storage(model, ir.from_proto(_external_proto(model)))


def opset(model: ir.Model) -> int:
    return model.opset_imports.get("", 1)


def ensure_opset(model: ir.Model, minimum: int = MIN_QDQ_OPSET, source: str = "model") -> ir.Model:
    """Return the model at `minimum` opset or newer, converting old models (PP-OCR ships opset 11).

    onnxruntime.quantization writes invalid per-channel QDQ models for opset < 13; we convert
    first with onnx's version converter, which keeps tensor names (encodings stay valid).
    """
    if opset(model) >= minimum:
        return model
    try:
        converted = onnx.version_converter.convert_version(_external_proto(model), minimum)
        if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in converted.graph.initializer):
            onnx.checker.check_model(converted)  # (the checker cannot follow references without a file)
    except Exception as exc:
        raise QtoolError(
            f"{source}: cannot convert from opset {opset(model)} to {minimum} for QDQ ({str(exc)[:150]})",
            f"convert the model to opset >= {minimum} first",
        ) from exc
    log.debug("%s: converted from opset %d to %d for QuantizeLinear/DequantizeLinear", source, opset(model), minimum)
    return _keep_storage(model, ir.from_proto(converted))


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of an initializer (None for computed tensors and missing inputs)."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def is_float(value: ir.Value) -> bool:
    """Whether a tensor carries floats (only those get quantizers). Unknown types count as float
    only when produced by an op that keeps its input type, which shape inference normally tells."""
    return value.dtype in FLOAT_TYPES


def nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Main-graph nodes in topological order (subgraphs of If/Loop are left alone)."""
    return iter(model.graph)


def node_label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def set_initializer(model: ir.Model, value: ir.Value, array: np.ndarray) -> None:
    """Replace an initializer's data in place (its name and consumers stay)."""
    value.const_value = _stored(model, array, value.name)
    if value.name not in model.graph.initializers:
        model.graph.register_initializer(value)


def _stored(model: ir.Model, array: np.ndarray, name: str | None) -> ir.TensorProtocol:
    """A new weight as a tensor: in memory, or, in a model whose weights are in files (over
    SPILL_BYTES), written to a scratch file and read on demand (qtool.ir.tensor_files.spill), so
    that the weights a step computes for a large model do not pile up in RAM."""
    tensor = ir.tensor(array, name=name)
    if array.nbytes >= SPILL_BYTES and (model.meta.get(EXTERNAL_DATA) or is_large(model)):
        return spill(tensor)
    return tensor


def hand_over(old: ir.Value, new: ir.Value, old_name: str | None = None) -> None:
    """Every consumer and graph output of `old` reads `new` instead, and `new` takes `old`'s name
    (`old` is renamed `old_name`, or left unnamed): encodings, overrides and users that know the
    tensor by name follow it to the value that now stands for it."""
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = old_name
    new.name = name


def add_initializer(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer with a name unique in the graph."""
    name = unique_name(model, name)
    value = ir.Value(name=name, const_value=_stored(model, array, name))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype
    model.graph.register_initializer(value)
    return value


def unique_name(model: ir.Model, base: str) -> str:
    """`base`, or `base_N` if a value or node already has that name."""
    taken = model.meta.setdefault("qtool.names", set())
    if not taken:
        taken.update(model.graph.initializers)
        taken.update(v.name for v in model.graph.inputs)
        for node in model.graph.all_nodes():
            taken.update(out.name for out in node.outputs)
            if node.name:
                taken.add(node.name)
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def value_by_name(model: ir.Model) -> dict[str, ir.Value]:
    """Every named value of the main graph: inputs, initializers, node outputs."""
    found: dict[str, ir.Value] = {v.name: v for v in model.graph.inputs}
    found.update(model.graph.initializers)
    for node in model.graph:
        for out in node.outputs:
            found[out.name] = out
    return found


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Real inputs (old models list initializers as inputs too)."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def shape_of(value: ir.Value) -> tuple[int | str | None, ...] | None:
    """Static dims as ints, symbolic dims as their names (None when unknown)."""
    if value.shape is None:
        return None
    dims = []
    for dim in value.shape:
        if isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(getattr(dim, "value", None))
    return tuple(dims)


def numpy_dtype(value: ir.Value) -> np.dtype | None:
    return None if value.dtype is None else np.dtype(value.dtype.numpy())
