"""Export: the deployable artefacts of a pair, AIMET style.

NAME.onnx is the float model (tensor names match the encodings), NAME.encodings the encodings
JSON, NAME_qdq.onnx a QDQ model with integer weights and int32 biases that onnxruntime runs with
its integer kernels (QDQ fusion allowed there, unlike in simulation).

Targets of NAME_qdq.onnx: "qdq" (default) is the model the encodings describe, for any runtime;
"matmulnbits" has per-block MatMul/Gemm weights as onnxruntime's MatMulNBits (`qtool.ir.matmulnbits`);
"ort-cpu" is the form onnxruntime's CPU provider fuses best (`qtool.ir.ort_cpu` rewrites the pair
before the build; then, from onnxruntime's own kernel report, `qtool.ir.float_islands` stores
the weights of what it runs in float anyway in float). docs/deploy.md has what each rewrite costs and gains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from qtool.encodings.encoding_set import EncodingSet
from qtool.ir.qdq import build_qdq_model

TARGETS = ("qdq", "ort-cpu", "matmulnbits")


@dataclass
class ExportResult:
    float_model: ir.Model
    encodings: EncodingSet
    qdq_model: ir.Model
    rewrites: dict[str, int] = field(default_factory=dict)  # ort-cpu: what each rewrite touched


def export(model: ir.Model, encodings: EncodingSet, *, source: str = "encodings", target: str = "qdq",
           fused: str = "auto") -> ExportResult:
    """Build the deployable QDQ model; the float model and encodings pass through unchanged."""
    rewrites: dict[str, int] = {}
    if target == "ort-cpu":
        qdq, rewrites = ort_cpu_model(model, encodings, source, fused=fused)
    elif target == "matmulnbits":  # per-block MatMul/Gemm weights as com.microsoft MatMulNBits
        from qtool.ir.matmulnbits import matmulnbits_model

        qdq, skipped = matmulnbits_model(model, encodings, source)
        rewrites = {"matmulnbits": sum(node.op_type == "MatMulNBits" for node in qdq.graph),
                    "blocks_kept": len(skipped)}
    else:
        qdq = build_qdq_model(model, encodings, integer_bias=True, source=source)
    qdq.producer_name = "qtool"
    return ExportResult(model, encodings, qdq, rewrites)


def ort_cpu_model(model: ir.Model, encodings: EncodingSet, source: str = "encodings", *,
                  fused: str = "auto") -> tuple[ir.Model, dict[str, int]]:
    """The QDQ model in the form onnxruntime's CPU provider fuses, and the rewrite counts.
    `fused`: which tensors the encodings leave unquantized inside fused activations get derived
    grids (integer kernels: QLinearConv, QLinearSigmoid, ...) rather than run those ops in float
    with float weights (the plain export's numbers): `qtool.ir.ort_cpu.FUSED`. The layers the
    export leaves float by choice (qtool.ir.integer_choice: MaxPool, and with "auto" the hard-swish
    Convs its rule keeps float) are named in the model (KEPT_FLOAT_KEY) with the reason, for the
    kernel report."""
    from qtool.ir.float_islands import drop_unused_initializers, float_constants
    from qtool.ir.integer_choice import KEPT_FLOAT_KEY, kept_float_entry
    from qtool.ir.ort_cpu import ort_cpu_pair
    from qtool.runtime.kernels import kernel_report

    choices: list = []
    graph, encs, rewrites = ort_cpu_pair(model, encodings, source, fused=fused, choices=choices)
    qdq = build_qdq_model(graph, encs, integer_bias=True, source=source)
    if any(not choice.integer for choice in choices):
        qdq.metadata_props[KEPT_FLOAT_KEY] = kept_float_entry(choices)
        rewrites["kept_float"] = sum(not choice.integer for choice in choices)
    rewrites["float_constants"] = float_constants(qdq, _float_nodes(qdq, kernel_report(qdq, source)))
    drop_unused_initializers(qdq)
    return qdq, rewrites


def _float_nodes(qdq: ir.Model, report) -> set[int]:
    """Ids of the nodes the kernel report says run in float, and of shape arithmetic (Shape reads a
    float tensor as well as a quantized one). The report's nodes follow the graph's order, Q/DQ left out."""
    from qtool.runtime.kernel_reasons import QDQ_OPS

    nodes = [node for node in qdq.graph if node.op_type not in QDQ_OPS]
    return {id(node) for node, kernel in zip(nodes, report.nodes, strict=True)
            if kernel.runs_float or kernel.kind == "shape"}
