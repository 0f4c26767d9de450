"""Which nodes of a QDQ model onnxruntime runs on integer kernels, and which stay float.

A QDQ model is not run as written. When a session is created, onnxruntime's QDQ transformers
(optimisation level "extended") replace DequantizeLinear -> op -> QuantizeLinear groups of the
forms they know by integer kernels (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QGemm,
QLinearAdd, QLinearConcat, ...), drop the Q/DQ pairs around data-movement ops whose grids agree
(Reshape, MaxPool, ... then run on the 8-bit tensors), fold a Relu into the QuantizeLinear after
it, and leave every other op in float between its DQ and Q. A model can therefore be fully
quantized and still run mostly in float, slower than the float model.

`kernel_report` asks onnxruntime itself: it creates a CPU session at that level, saves the
optimized graph (`optimized_model_filepath`) and maps every node of the QDQ model onto what
runs: by node name (a fused kernel keeps the name of the node it replaces, sometimes with a
"/Fusion" suffix), else by the tensor the node computed. For each node left in float the reason
is read from the QDQ graph around it (`qtool.runtime.kernel_reasons`). The layout passes of the
"all" level (NHWC QLinearConv, NCHWc float Conv) follow and change no integer/float decision.
"""

from __future__ import annotations

import contextlib
import platform
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx_ir as ir
import onnxruntime as ort

from qtool.errors import QtoolError
from qtool.ir.graph import save_model
from qtool.ir.integer_choice import kept_float
from qtool.runtime.kernel_reasons import (NO_OP, QDQ_OPS, UNRECOGNISED, float_reason, integer_note, removed_reason,
                                          shape_only, short_reason)

INTEGER_KERNELS = ("QGemm", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "DynamicQuantizeMatMul",
                   "QAttention", "QEmbedLayerNormalization", "MatMulNBits", "QOrderedMatMul")
INTEGER_TYPES = (ir.DataType.UINT8, ir.DataType.INT8, ir.DataType.UINT16, ir.DataType.INT16,
                 ir.DataType.UINT4, ir.DataType.INT4)
LINEAR_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
KINDS = ("integer", "float", "folded", "shape")
_SUFFIX = re.compile(r"/|_token_\d")


@dataclass(frozen=True)
class NodeKernel:
    """One node of the QDQ model: what onnxruntime runs for it.

    kind: "integer" (an integer kernel, or a data-movement op on the 8-bit tensors), "float",
    "folded" (removed: a Relu folded into its QuantizeLinear, constant folding) or "shape"
    (shape arithmetic, no tensor data); kernel: the op that runs it; reason: why, where the
    graph tells (always for float nodes)."""

    name: str
    op_type: str
    kind: str
    kernel: str
    reason: str = ""

    @property
    def runs_float(self) -> bool:
        """Computes in float32: a float node, or a no-op removed (Identity) that hands a float tensor on."""
        return self.kind == "float" or (self.kind == "folded" and self.reason == NO_OP)


@dataclass(frozen=True)
class KernelReport:
    nodes: tuple[NodeKernel, ...]
    machine: str
    constant_dequantize: int = 0  # DequantizeLinear of a constant left in the optimized graph: run every inference

    def of_kind(self, kind: str) -> list[NodeKernel]:
        return [node for node in self.nodes if node.kind == kind]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per op type of the QDQ model: nodes of each kind (kinds with none left out)."""
        table: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            row = table.setdefault(node.op_type, {})
            row[node.kind] = row.get(node.kind, 0) + 1
        return dict(sorted(table.items()))

    def float_groups(self) -> dict[tuple[str, str], list[str]]:
        """(op type, reason) -> the names of the float nodes it holds, largest groups first."""
        groups: dict[tuple[str, str], list[str]] = {}
        for node in self.of_kind("float"):
            groups.setdefault((node.op_type, node.reason), []).append(node.name)
        return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))

    def summary_line(self) -> str:
        """One line: the linear layers on integer kernels, and why the others stay float."""
        counts = self.counts()
        linear = [(op, counts[op]) for op in LINEAR_OPS if op in counts]
        if not linear:
            integer, total = len(self.of_kind("integer")), len(self.nodes)
            return f"onnxruntime ({self.machine}): {integer} of {total} nodes on integer kernels"
        parts = [f"{row.get('integer', 0)} of {sum(row.values())} {op}" for op, row in linear]
        line = f"onnxruntime ({self.machine}): {', '.join(parts)} on integer kernels"
        stay = [node for node in self.of_kind("float") if node.op_type in LINEAR_OPS]
        if stay:
            reasons: dict[str, int] = {}
            for node in stay:
                reasons[short_reason(node.reason)] = reasons.get(short_reason(node.reason), 0) + 1
            why = ", ".join(f"{n} {reason}" if len(reasons) > 1 else reason
                            for reason, n in sorted(reasons.items(), key=lambda item: -item[1]))
            line += f"; {len(stay)} stay float ({why})"
        others = len(self.of_kind("float")) - len(stay)
        line += f"; {others} other node{'s' if others > 1 else ''} float" if others else ""
        requantized = sum(bool(node.reason) for node in self.of_kind("integer"))
        return line + (f"; {requantized} with a float weight onnxruntime quantized per tensor itself"
                       if requantized else "")

    def as_dict(self) -> dict:
        return {"machine": self.machine, "counts": self.counts(), "constant_dequantize": self.constant_dequantize,
                "nodes": [asdict(node) for node in self.nodes]}


def kernel_report(model: ir.Model, source: str = "model") -> KernelReport:
    """What onnxruntime's CPU provider runs for each node of the QDQ `model` (not changed)."""
    with tempfile.TemporaryDirectory(prefix="qtool-kernels-") as tmp, _named(model):
        optimized = _optimized(model, Path(tmp), source)
        names = {node.name for node in model.graph}
        nodes = tuple(_classify(node, optimized, names) for node in model.graph if node.op_type not in QDQ_OPS)
    kept = kept_float(model)  # the export's own per-layer choice (qtool.ir.integer_choice) says why, where it made one
    nodes = tuple(replace(node, reason=kept[node.name]) if node.kind == "float" and node.name in kept else node
                  for node in nodes)
    return KernelReport(nodes, platform.machine() or "cpu", optimized.constant_dequantize)


def has_quantizers(model: ir.Model) -> bool:
    """Whether the model has QuantizeLinear/DequantizeLinear nodes (a QDQ model)."""
    return any(node.op_type in QDQ_OPS for node in model.graph)


@contextlib.contextmanager
def _named(model: ir.Model) -> Iterator[None]:
    """Give unnamed and duplicate-named nodes unique names for the analysis; restore them after."""
    saved = [(node, node.name) for node in model.graph]
    seen: set[str] = set()
    try:
        for index, (node, name) in enumerate(saved):
            if not name:
                node.name = f"(unnamed {node.op_type} #{index})"
            elif name in seen:
                node.name = f"{name} #{index}"
            seen.add(node.name)
        yield
    finally:
        for node, name in saved:
            node.name = name


@dataclass
class _Optimized:
    """The graph onnxruntime runs: nodes by name and by name stem, and the producer of each tensor."""

    by_name: dict[str, ir.Node]
    by_stem: dict[str, ir.Node]  # a fused node's name before a "/MatMulAddFusion" or "_token_N" onnxruntime added
    producer: dict[str, ir.Node]
    constant_dequantize: int

    def find(self, node: ir.Node, names: set[str]) -> ir.Node | None:
        """The node that runs `node`: same name, or its name plus a suffix onnxruntime added (unless
        that longer name is another node's of the QDQ model, `names`)."""
        if node.name in self.by_name:
            return self.by_name[node.name]
        found = self.by_stem.get(node.name)
        return found if found is not None and found.name not in names else None


def _stems(graph: ir.Graph) -> dict[str, ir.Node]:
    stems: dict[str, ir.Node] = {}
    for node in graph:
        for match in _SUFFIX.finditer(node.name or ""):
            stems.setdefault(node.name[:match.start()], node)
    return stems


def _optimized(model: ir.Model, folder: Path, source: str) -> _Optimized:
    path, optimized = folder / "model.onnx", folder / "optimized.onnx"
    save_model(model, path)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    # weights go to a side file: the analysis reads the graph only
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "64")
    options.add_session_config_entry("session.disable_prepacking", "1")  # the analysis runs nothing
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QtoolError(f"{source}: onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from exc
    graph = ir.load(str(optimized)).graph
    producer = {out.name: node for node in graph for out in node.outputs if out is not None}
    # onnxruntime does not constant-fold DequantizeLinear in a QDQ model (it would undo the fusions),
    # so a DQ of a weight whose consumer stayed float runs every time, and that consumer cannot prepack it
    constants = sum(node.op_type == "DequantizeLinear" and node.inputs[0].const_value is not None
                    and bool(node.outputs[0].consumers()) for node in graph)
    return _Optimized({node.name: node for node in graph if node.name}, _stems(graph), producer, constants)


def _by_tensor(node: ir.Node, optimized: _Optimized) -> ir.Node | None:
    """The optimized node that now computes `node`'s output (directly, or after the QuantizeLinear
    that read it): `node` was fused into it, or removed if that is the QuantizeLinear itself."""
    if not node.outputs or node.outputs[0] is None:
        return None
    out = node.outputs[0]
    if out.name in optimized.producer:
        return optimized.producer[out.name]
    readers = out.consumers()
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        return optimized.producer.get(readers[0].outputs[0].name)
    return None


def _classify(node: ir.Node, optimized: _Optimized, names: set[str]) -> NodeKernel:
    if shape_only(node):
        return NodeKernel(node.name, node.op_type, "shape", node.op_type)
    runs = optimized.find(node, names)
    if runs is None:
        into = _by_tensor(node, optimized)
        if into is None or into.op_type == "QuantizeLinear" or into.name == node.name:
            return NodeKernel(node.name, node.op_type, "folded", "", removed_reason(node))
        if not _is_integer_kernel(into.op_type):  # e.g. HardSwish, which runs as HardSigmoid + Mul
            return NodeKernel(node.name, node.op_type, "float", into.op_type, float_reason(node))
        return NodeKernel(node.name, node.op_type, "folded", into.op_type, f"fused into the integer {into.op_type} "
                                                                           f"'{into.name}'")
    if _is_integer_kernel(runs.op_type):
        return NodeKernel(node.name, node.op_type, "integer", runs.op_type, integer_note(node))
    data = next((value for value in runs.inputs if value is not None and value.const_value is None), None)
    if data is not None and data.dtype in INTEGER_TYPES:
        return NodeKernel(node.name, node.op_type, "integer", f"{runs.op_type} ({data.dtype.name.lower()})")
    reason = float_reason(node)
    if reason == UNRECOGNISED and runs.op_type != node.op_type:
        reason = (f"rewritten by onnxruntime into a float {runs.op_type} ('{runs.name}') before its QDQ fusions "
                  "(e.g. MatMul + Add into Reshape -> Gemm -> Reshape), which then did not match")
    return NodeKernel(node.name, node.op_type, "float", runs.op_type, reason)


def _is_integer_kernel(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in INTEGER_KERNELS


def kernel_summary(model: ir.Model, source: str) -> str:
    """`kernel_report(...).summary_line()`, or why there is none (what `qtool export` prints)."""
    try:
        return kernel_report(model, source).summary_line()
    except QtoolError as exc:
        return f"onnxruntime: no kernel report: {exc}"
