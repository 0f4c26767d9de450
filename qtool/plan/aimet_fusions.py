"""aimet-onnx's fusions of ``supergroup_pass_list``, on the graph view (placement "aimet").

Mirrors ``QuantSimConfigurator.apply_fusions`` -> ``fuse_supergroups`` (graph_passes/fusions/):
before any quantizer is placed, each pattern becomes one op of domain ``aimet.supergroup`` whose
inner tensors have no quantizer at all, and whose constants become the fused op's parameters.

* ``MatmulAdd`` (matmul_add.py, ``MatmulAddFusion``): ``MatMul(x, W) + b`` (either order of the
  Add), also ``MatMul(x, Transpose(W, perm=[1, 0]))``, with W a constant of rank 2 and b a
  constant of rank 1 -> ``Gemm(x, W, b, transB)`` for any rank of x. The MatMul output (and the
  Transpose's) must feed nothing else, as onnxscript's rewriter requires of inner values.
* ``LayerNormalization`` and ``RMSNormalization`` (layernorm.py, rmsnorm.py): see
  aimet_norm_fusions.py.
"""

from __future__ import annotations

from qtool.plan.aimet_graph import FUSED_DOMAIN, Graph, Op


def _inner(graph: Graph, name: str) -> bool:
    """A value inside a fused pattern: read by exactly one op and not a model output."""
    return len(graph.consumers.get(name, [])) == 1 and name not in graph.outputs


def _rank(graph: Graph, name: str) -> int | None:
    array = graph.constants.get(name)
    return None if array is None else array.ndim


def _matmul_weight(graph: Graph, matmul: Op) -> tuple[str, bool, list[Op]] | None:
    """(W, transB, the Transpose if any) of a MatMul the fusion accepts."""
    if len(matmul.inputs) != 2:
        return None
    weight = matmul.inputs[1]
    if _rank(graph, weight) == 2:
        return weight, False, []
    transpose = graph.producer.get(weight)
    if transpose is None or transpose.type != "Transpose" or not _inner(graph, weight):
        return None
    perm = transpose.attr("perm")
    if perm is not None and list(perm) != [1, 0]:
        return None
    if _rank(graph, transpose.inputs[0]) == 2:
        return transpose.inputs[0], True, [transpose]
    return None


def fuse_matmul_add(graph: Graph) -> list[str]:
    """Replace every MatMul+Add the fusion matches by one Gemm op; the tensors fused away."""
    gone: list[str] = []
    count = 0
    for matmul in [op for op in graph.ops if op.type == "MatMul" and op.domain == ""]:
        if matmul not in graph.ops:
            continue
        weight = _matmul_weight(graph, matmul)
        out = matmul.outputs[0]
        consumers = graph.consumers.get(out, [])
        if weight is None or not _inner(graph, out) or consumers[0].type != "Add" or len(consumers[0].inputs) != 2:
            continue
        add = consumers[0]
        bias = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if bias == out or _rank(graph, bias) != 1:
            continue
        name, trans_b, transpose = weight
        fused = [*transpose, matmul, add]
        gemm = Op(f"node_Gemm_{count}", "Gemm", [matmul.inputs[0], name, bias], list(add.outputs),
                  {"transB": int(trans_b)}, FUSED_DOMAIN, tuple(op.name for op in fused))
        count += 1
        gone += [n for op in fused[:-1] for n in op.outputs]
        graph.replace(fused, gemm)
    return gone


def apply_fusions(graph: Graph, passes: tuple[str, ...]) -> list[str]:
    """The fusions `passes` name, in aimet's order of rules; the tensors they fused away."""
    from qtool.plan.aimet_norm_fusions import fuse_layer_norms, fuse_rms_norms

    gone: list[str] = []
    for name in passes:
        if name == "MatmulAdd":
            gone += fuse_matmul_add(graph)
        elif name == "LayerNormalization":
            gone += fuse_layer_norms(graph)
        elif name == "RMSNormalization":
            gone += fuse_rms_norms(graph)
    return gone
