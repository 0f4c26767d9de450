"""A model whose weights exceed a memory budget, run as a chain of sessions, one at a time.

onnxruntime memory-maps a large model's weights (qtool.ir.tensor_files), and every page a run
touches stays resident in the process as long as the session lives: a whole-model session of a
2.2 GB model holds 2.2 GB. ``SegmentedSession`` cuts the graph, in topological order, into
segments of at most QTOOL_SEGMENT_BYTES of weights (default 256 MiB) and, for each ``run``,
creates each segment's session, runs it on the values the earlier segments produced, and drops
it before the next: at most one segment's weights are resident, plus the activations of the
batch that cross a cut. The price is a session build per segment and run (tens of ms per
segment against seconds of compute for a batch through such a model). It offers the part of
``InferenceSession``'s interface that qtool uses: run, get_inputs, get_outputs, get_providers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from qtool.ir.tensor_files import initializer_values, is_large_tensor

SEGMENT_BYTES_ENV = "QTOOL_SEGMENT_BYTES"
DEFAULT_SEGMENT_BYTES = 256 << 20

_TYPES = {ir.DataType.FLOAT: "float", ir.DataType.FLOAT16: "float16", ir.DataType.DOUBLE: "double",
          ir.DataType.INT64: "int64", ir.DataType.INT32: "int32", ir.DataType.UINT8: "uint8",
          ir.DataType.INT8: "int8", ir.DataType.BOOL: "bool", ir.DataType.BFLOAT16: "bfloat16"}


class Arg(NamedTuple):
    """What onnxruntime's NodeArg tells about an input or output."""
    name: str
    type: str
    shape: list


def segment_bytes() -> int:
    try:
        return int(float(os.environ.get(SEGMENT_BYTES_ENV, DEFAULT_SEGMENT_BYTES)))
    except ValueError:
        return DEFAULT_SEGMENT_BYTES


def weight_bytes(model: ir.Model) -> int:
    """Bytes of the model's large weights (those kept in data files)."""
    return sum(v.const_value.nbytes for v in initializer_values(model) if is_large_tensor(v.const_value))


def _arg(value: ir.Value) -> Arg:
    shape = [] if value.shape is None else [d if isinstance(d, int) else getattr(d, "value", None)
                                            for d in value.shape]
    return Arg(value.name, f"tensor({_TYPES.get(value.dtype, 'float')})", shape)


def _cuts(nodes: list[ir.Node], limit: int) -> list[list[ir.Node]]:
    """Consecutive runs of nodes whose (distinct) large weights add up to at most `limit` (a
    node whose own weights exceed it is a segment of its own)."""
    segments: list[list[ir.Node]] = [[]]
    seen: set[int] = set()
    total = 0
    for node in nodes:
        own = {id(v): v.const_value.nbytes for v in node.inputs
               if v is not None and id(v) not in seen and is_large_tensor(v.const_value)}
        if segments[-1] and total + sum(own.values()) > limit:
            segments.append([])
            seen, total = set(), 0
        segments[-1].append(node)
        seen.update(own)
        total += sum(own.values())
    return segments


def _own_memory(output: object) -> object:
    """A session's output in memory of its own. onnxruntime returns views into the session's
    allocator arena, and such a view keeps the whole arena alive after the session is gone:
    each segment's results pinned the memory its largest temporaries needed (a dequantized
    weight: 64 MiB for a 4096 x 4096 layer), so a run held one arena per segment, growing with
    the model (bias-correct: S/3). A copy of the few activations that leave a segment frees it."""
    if isinstance(output, np.ndarray) and output.base is not None:
        return np.array(output)
    return output


class SegmentedSession:
    """Runs `model` segment by segment; `make` builds one segment's session (qtool's settings)."""

    def __init__(self, model: ir.Model, make: Callable[[ir.Model], object], limit: int) -> None:
        self._make = make
        order = list(model.graph)
        initializers = set(model.graph.initializers)
        inputs = [v for v in model.graph.inputs if v.name not in initializers]
        dynamic = set(inputs)
        for node in order:
            if any(v in dynamic for v in node.inputs if v is not None):
                dynamic.update(node.outputs)
        segments = _cuts(order, limit)
        position = {id(node): i for i, segment in enumerate(segments) for node in segment}
        wanted = {v.name for v in model.graph.outputs}
        self._parts: list[tuple[ir.Model, list[str], list[str]]] = []
        for index, segment in enumerate(segments):
            members = {id(node) for node in segment}
            needs = sorted({v.name for node in segment for v in node.inputs
                            if v is not None and v in dynamic and id(v.producer()) not in members})
            gives = [v for node in segment for v in node.outputs if v in dynamic and (
                v.name in wanted or any(position[id(user)] > index for user, _ in v.uses()))]
            if gives:
                self._parts.append((self._extract(model, needs, gives), needs, [v.name for v in gives]))
        self._inputs = [_arg(v) for v in inputs]
        self._outputs = [_arg(v) for v in model.graph.outputs]
        self.source = "the model"

    @staticmethod
    def _extract(model: ir.Model, needs: list[str], gives: list[ir.Value]) -> ir.Model:
        graph = ir.convenience.extract(model.graph, inputs=needs, outputs=gives)
        for value in list(graph.inputs):
            if not value.uses():
                graph.inputs.remove(value)
        for value in graph.outputs:
            if value.dtype is None:
                value.dtype = ir.DataType.FLOAT
        part = ir.Model(graph, ir_version=model.ir_version, functions=model.functions.values())
        part.meta.update({k: v for k, v in model.meta.items() if k.startswith("qtool.source")})
        return part

    def get_inputs(self) -> list[Arg]:
        return self._inputs

    def get_outputs(self) -> list[Arg]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options=None) -> list:
        values = dict(input_feed)
        for part, needs, gives in self._parts:
            session = self._make(part)
            feeds = {name: values[name] for name in needs if name in values}
            values.update(zip(gives, map(_own_memory, session.run(gives, feeds, run_options))))
            del session  # its weights are unmapped before the next segment maps its own
        names = output_names or [o.name for o in self._outputs]
        return [values[name] for name in names]
