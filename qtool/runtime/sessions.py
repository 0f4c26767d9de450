"""onnxruntime sessions: intermediate-tensor taps, batching, simulation settings, threads.

Simulation sessions disable onnxruntime's QDQ handling (``session.disable_quant_qdq``) so that
QuantizeLinear/DequantizeLinear run as written, in float, instead of being fused into integer
kernels: the simulated numbers are then exactly eq. 2.7 of the white paper. Constant folding
stays on, which folds DequantizeLinear(int8 weight) into a float weight once per session.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from qtool.data.inputs import InputInfo
from qtool.data.sources import Batch, batch_size_of, slice_batch
from qtool.errors import QtoolError
from qtool.ir.graph import add_initializer, clone, graph_inputs, numpy_dtype, shape_of, unique_name, value_by_name
from qtool.ir.tensor_files import is_large, session_source, shared_weights
from qtool.runtime.device import check_session, current_device, providers
from qtool.runtime.segmented_session import SegmentedSession, segment_bytes, weight_bytes

log = logging.getLogger(__name__)


def input_infos(model: ir.Model) -> list[InputInfo]:
    """The model's real inputs with static dims (symbolic dims become None, their names kept),
    and, for integer inputs, the rows of the embedding table they index."""
    infos = []
    for value in graph_inputs(model):
        shape = shape_of(value)
        dims = None if shape is None else tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
        names = None if shape is None else tuple(d if isinstance(d, str) and d not in ("", "?") else None
                                                 for d in shape)  # '?': Paddle's name for any unnamed dim
        dtype = numpy_dtype(value) or np.dtype(np.float32)
        vocab = embedding_rows(value) if np.issubdtype(dtype, np.integer) else None
        infos.append(InputInfo(value.name, dims, dtype, names, vocab))
    return infos


# ops that pass integer ids on unchanged in value (only their type or layout changes)
_ID_PASSING = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}


def embedding_rows(value: ir.Value) -> int | None:
    """The rows of the embedding table that the ids in `value` index: the smallest over every
    Gather on a constant table reached from it directly or through _ID_PASSING ops (ids beyond
    it would fail there); None when no such Gather is found."""
    rows: list[int] = []
    seen, frontier = set(), [value]
    while frontier:
        current = frontier.pop()
        for node, index in current.uses():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Gather" and index == 1:
                table = node.inputs[0]
                if table is not None and table.const_value is not None and table.const_value.shape:
                    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
                    rows.append(int(table.const_value.shape[axis]))
            elif node.op_type in _ID_PASSING and index == 0:
                frontier.extend(node.outputs)
    return min(rows) if rows else None


def max_batch(model: ir.Model) -> int | None:
    """1 when an input's first dim is fixed to 1 (then samples run one by one), else None."""
    for info in input_infos(model):
        if info.shape and info.shape[0] is not None:
            return info.shape[0]
    return None


class Session(ort.InferenceSession):
    """An onnxruntime session whose run errors are QtoolErrors naming the model and the node.

    onnxruntime fails inside a run for reasons the data or the model cause (an index beyond a
    table, a Reshape the input's length does not divide, a custom kernel's own check); each
    becomes one line, `MODEL: onnxruntime failed in OP node 'NAME': what it said`."""

    source = "the model"
    weights: list = []  # arrays onnxruntime reads in place (qtool.ir.tensor_files.shared_weights)

    def run(self, output_names, input_feed, run_options=None):
        try:
            return super().run(output_names, input_feed, run_options)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise run_error(self.source, exc) from exc


_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'")
_SOURCE_CHECK = re.compile(r"^\S+:\d+ .*? (?:was false|failed)\.\s*")  # onnxruntime's C++ check, before its text


def run_error(source: str, exc: BaseException) -> QtoolError:
    """One line for an onnxruntime run failure: the node (when the message names one) and the
    message without onnxruntime's C++ source location."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    node = _NODE.search(text)
    detail = text.split("Status Message:", 1)[-1].strip()
    detail = _SOURCE_CHECK.sub("", detail) or detail
    where = f" in {node.group(1)} node '{node.group(2)}'" if node else ""
    return QtoolError(f"{source}: onnxruntime failed{where}: {detail[:300]}",
                      "does the data fit the model (shapes, value ranges, the inputs it was exported for)?")


def model_source(model: ir.Model) -> str:
    """The file a model came from (kept in its meta by load_model), for error messages."""
    return str(model.meta.get("qtool.source", "the model"))


def keep_source(copy: ir.Model, original: ir.Model, note: str = "") -> ir.Model:
    """Carry the original's file name over to a derived copy, so errors still name the file."""
    if "qtool.source" in original.meta:
        copy.meta["qtool.source"] = f"{original.meta['qtool.source']}{note}"
    return copy


def make_session(model: ir.Model, *, simulate: bool = False, optimize: bool = True,
                 threads: int | None = None, whole: bool = False, spinning: bool = True) -> ort.InferenceSession:
    """A session on the current device (runtime.device: CPU unless --device cuda); `simulate`
    keeps QDQ nodes unfused (float fake quantization). A model with more weights in files than
    QTOOL_SEGMENT_BYTES runs segment by segment (qtool.runtime.segmented_session) unless `whole`.
    `spinning=False`: the session's idle threads sleep instead of spinning, for sessions that run
    at the same time as another one (whose working threads the spinning ones would take cores from)."""
    if not whole and is_large(model) and weight_bytes(model) > segment_bytes():
        session = SegmentedSession(model, lambda part: make_session(part, simulate=simulate, optimize=optimize,
                                                                    threads=threads, whole=True, spinning=spinning),
                                   segment_bytes())
        session.source = model_source(model)
        return session
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions (one line each); no log lines on stderr
    # onnxruntime's default order (a reverse DFS from the graph outputs) runs every tap after the
    # whole network when taps are extra outputs, keeping all activations alive at once (6.8 GB
    # instead of 0.3 GB on PP-OCRv4 rec); the priority-based order runs each tap when it is ready.
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    threads = threads or int(os.environ.get("QTOOL_THREADS", "0")) or None
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if simulate:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model_source(model)
    device = current_device()
    try:
        weights: list[ort.OrtValue] = []
        if device == "cpu" and not is_large(model):
            serialised, arrays = shared_weights(model)
            folder, weights = None, [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays.values()]
            if weights:
                options.add_external_initializers(list(arrays), weights)
        else:
            serialised, folder = session_source(model)
        session = Session(serialised, _mapped_weights(options, folder), providers=providers(device),
                          disabled_optimizers=None if folder is None else ["ConstantFolding"])
        session.weights = weights  # onnxruntime reads them in place: they live as long as the session
    except Exception as exc:
        from qtool.runtime.custom_ops import custom_op_error

        raise custom_op_error(model, source) or QtoolError(
            f"{source}: onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from exc
    check_session(session, device)
    session.source = source
    return session


def _mapped_weights(options: ort.SessionOptions, folder: str | None) -> ort.SessionOptions:
    """Options for a model whose weights are in files under `folder` (qtool.ir.tensor_files):
    onnxruntime memory-maps them, and makes no copy of its own: no packed copy per weight
    (prepacking), no folded one (constant folding turns a fake-quantized weight into a float
    copy of it; disabled by the caller). Each run then recomputes the few constant nodes."""
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def with_taps(model: ir.Model, names: Iterable[str]) -> ir.Model:
    """A copy of the model whose graph outputs also include the named intermediate tensors."""
    tapped = keep_source(clone(model), model)
    values = value_by_name(tapped)
    outputs = {v.name for v in tapped.graph.outputs}
    for name in names:
        if name in outputs:
            continue
        value = values[name]
        if value.type is None:
            value.dtype = ir.DataType.FLOAT
        tapped.graph.outputs.append(value)
        outputs.add(name)
    return tapped


def with_range_taps(model: ir.Model, names: Iterable[str]) -> tuple[ir.Model, dict[str, tuple[str, str]]]:
    """A copy whose outputs include ReduceMin/ReduceMax of the named tensors, per sample.

    Min-max calibration needs two numbers per tensor per batch; reducing inside onnxruntime
    avoids copying every intermediate tensor out of the session, which costs more than the
    inference itself on conv nets (hundreds of MB per batch). Each tensor of known rank is
    reduced over every axis but the first, leaving one value per sample for numpy to finish:
    onnxruntime reduces contiguous inner axes in parallel, but a reduction to one scalar runs
    far slower (PP-OCRv4, 140 tensors: +23% over the float pass reduced to scalars, +4% per
    sample). Tensors of unknown rank are reduced whole.
    """
    values = value_by_name(model)
    taps: dict[str, tuple[str, str, list[int]]] = {}
    for name in names:
        shape = values[name].shape
        axes = list(range(1, len(shape))) if shape is not None and len(shape) >= 2 else []
        for op in ("ReduceMin", "ReduceMax"):
            taps[f"{name}\0{op}"] = (name, op, axes)
    tapped, outputs = with_reduce_taps(model, taps)
    return tapped, {name: (outputs[f"{name}\0ReduceMin"], outputs[f"{name}\0ReduceMax"]) for name in names}


def with_mean_taps(model: ir.Model, taps: dict[str, tuple[str, list[int]]]) -> tuple[ir.Model, dict[str, str]]:
    """A copy whose outputs include ReduceMean of named tensors over the given axes.

    `taps`: key -> (tensor name, axes); returns key -> name of the new output. Per-channel means
    leave the session instead of whole tensors (bias correction needs only those).
    """
    return with_reduce_taps(model, {key: (name, "ReduceMean", axes) for key, (name, axes) in taps.items()})


def with_reduce_taps(model: ir.Model, taps: dict[str, tuple[str, str, list[int]]]) -> tuple[ir.Model, dict[str, str]]:
    """A copy whose outputs include a reduction (ReduceMean/Max/Min/SumSquare) of named tensors,
    or their "Shape" (axes ignored), which says how many elements a reduction covered.

    `taps`: key -> (tensor name, op, axes); returns key -> name of the new output. Each
    reduction sits right after its tensor's producer, so onnxruntime can free the tensor early.
    """
    tapped = keep_source(clone(model), model)
    values = value_by_name(tapped)
    axes_as_input = tapped.opset_imports.get("", 1) >= 18
    outputs = {}
    for key, (name, op, axes) in taps.items():
        value = values[name]
        out = ir.Value(name=unique_name(tapped, f"{name}_{op}"))
        out.dtype = value.dtype or ir.DataType.FLOAT
        if op == "Shape":
            out.dtype = ir.DataType.INT64
            node = ir.node(op, [value], outputs=[out])
        elif not axes:  # every axis: the default of the Reduce ops
            node = ir.node(op, [value], {"keepdims": 0}, outputs=[out])
        elif axes_as_input:
            axes_value = add_initializer(tapped, f"{name}_{op}_axes", np.asarray(axes, np.int64))
            node = ir.node(op, [value, axes_value], {"keepdims": 0}, outputs=[out])
        else:
            node = ir.node(op, [value], {"keepdims": 0, "axes": list(axes)}, outputs=[out])
        producer = value.producer()
        if producer is None:
            tapped.graph.insert_before(next(iter(tapped.graph)), node)
        else:
            tapped.graph.insert_after(producer, node)
        tapped.graph.outputs.append(out)
        outputs[key] = out.name
    return tapped, outputs


def split_batches(batches: Iterable[dict[str, np.ndarray]], limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    """The batches cut into pieces of at most `limit` samples (a model whose batch dim is fixed,
    usually to 1, runs one sample at a time); a Batch's pieces keep their sample indices."""
    for batch in batches:
        count = batch_size_of(batch)
        if limit is None or count <= limit:
            yield batch
            continue
        for start in range(0, count, limit):
            yield slice_batch(batch, start, start + limit)


def run_batches(session: ort.InferenceSession, batches: Iterable[dict[str, np.ndarray]],
                output_names: list[str] | None = None, batch_limit: int | None = None
                ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yield (feeds, outputs by name) per batch; a model with batch dim fixed to 1 runs sample by sample.
    A `Batch`'s feeds are a Batch with the same sample indices. Outputs of a batch cut into
    pieces are joined again: the pieces come from one batch, so they share a shape."""
    names = output_names or [o.name for o in session.get_outputs()]
    for batch in batches:
        feeds = as_feeds(session, batch)
        count = len(next(iter(feeds.values())))
        if batch_limit is not None and count > batch_limit:
            parts = [session.run(names, {k: v[i:i + batch_limit] for k, v in feeds.items()})
                     for i in range(0, count, batch_limit)]
            results = [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        else:
            results = session.run(names, feeds)
        yield feeds, dict(zip(names, results))


def as_feeds(session: ort.InferenceSession, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch's arrays contiguous and of the types the session's inputs take; a `Batch`
    stays a Batch with the same sample indices (labels are looked up by them)."""
    types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
    feeds = {k: np.ascontiguousarray(v, dtype=types.get(k, v.dtype)) for k, v in batch.items()}
    return Batch(feeds, batch.indices) if isinstance(batch, Batch) else feeds


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}
