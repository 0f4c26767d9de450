"""`plot-ranges`: per-output-channel weight ranges drawn layer by layer (white paper figures 4.2-4.3)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qtool.commands.fields import option
from qtool.commands.report import Report


@dataclass(frozen=True, kw_only=True)
class PlotRangesOptions:
    compare: str | None = option(None, "A second model (e.g. after equalize) drawn beside the first.")
    layers: str | None = option(None, "Comma-separated layer names (default: the widest-spread ones).")
    max_layers: int = option(8, "Layers to draw.", bounds=(1, None))


def plot_ranges(model: str | os.PathLike, output: str | os.PathLike, options: PlotRangesOptions) -> Report:
    """Draw per-output-channel weight ranges of each layer (white paper figures 4.2-4.3).

    Needs matplotlib (pip install 'qtool[plots]').

    Example: qtool plot-ranges folded.onnx --compare equalized.onnx -o ranges.png
    """
    from qtool.analysis.weight_ranges import layer_ranges
    from qtool.commands.plots import plot_ranges as draw
    from qtool.ir.graph import load_model

    names = [n.strip() for n in options.layers.split(",")] if options.layers else None
    before = layer_ranges(load_model(model), names)
    after = layer_ranges(load_model(options.compare), None) if options.compare else None
    draw(before, after, path=output, layers=names, max_layers=len(before) if names else options.max_layers)
    return Report({"output": str(output), "layers": len(before)}, [f"wrote {output}"])
