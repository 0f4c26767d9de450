"""`fold`: BatchNormalization (and per-channel Mul/Add) folded into the adjacent layers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qtool.commands.report import Report


@dataclass(frozen=True, kw_only=True)
class FoldOptions:
    """fold has no options: it folds whatever it can fold exactly."""


def fold(model: str | os.PathLike, output: str | os.PathLike, options: FoldOptions = FoldOptions()) -> Report:
    """Fold BatchNormalization (and per-channel Mul/Add) into the adjacent Conv/Gemm/MatMul layers.

    Outputs stay equal to the float model's (within float rounding); BNs that cannot be folded
    exactly are left in place and listed with the reason.

    Example: qtool fold model.onnx -o model_folded.onnx
    """
    from qtool.ir.graph import load_model, save_model

    result = fold_model(load_model(model))
    save_model(result.model, output)
    report = fold_report(result)
    return Report({"output": str(output), **report.summary}, [f"{report.lines[0]}; wrote {output}", *report.lines[1:]])


def fold_model(graph):
    """The folding in memory: a `qtool.steps.fold.FoldResult`."""
    from qtool.steps.fold import fold_batch_norms

    return fold_batch_norms(graph)


def fold_report(result) -> Report:
    summary = {"folded": result.folded,
               "skipped": [{"node": node, "reason": reason} for node, reason in result.skipped]}
    lines = [f"folded {len(result.folded)} BatchNormalization/Mul/Add nodes into their layers"]
    lines += [f"  left in place: {node}: {reason}" for node, reason in result.skipped]
    return Report(summary, lines)
