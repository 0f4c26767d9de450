"""aimet-onnx's LayerNormalization / RMSNormalization fusions (placement "aimet"): to be written."""

from __future__ import annotations

from qtool.plan.aimet_graph import Graph


def fuse_layer_norms(graph: Graph) -> list[str]:
    return []


def fuse_rms_norms(graph: Graph) -> list[str]:
    return []
