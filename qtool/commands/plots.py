"""Weight-range plots like the white paper's figures 4.2-4.3 (section 4.3).

One row per layer: a bar per output channel from its min to its max weight, before CLE and,
when given, after CLE beside it on the same y scale, so the narrowing of the spread is visible
at a glance. matplotlib is an optional extra (`qtool[plots]`): it is imported only here, inside
the function, so the rest of qtool never pays for it or needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtool.errors import QtoolError
from qtool.files.atomic import atomic_output
from qtool.analysis.weight_ranges import LayerRanges, match_after

# Per-format metadata that would otherwise carry the matplotlib version or a timestamp, so
# reruns write byte-identical files.
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
}


def choose_layers(before: list[LayerRanges], layers: list[str] | None, max_layers: int) -> list[LayerRanges]:
    """The named layers in the order given, else the `max_layers` widest-spread ones (ties in
    graph order): those are the layers where CLE matters, and a plot of 100 layers is unreadable."""
    if layers is not None:
        by_name = {r.name: r for r in before}
        unknown = [name for name in layers if name not in by_name]
        if unknown:
            valid = ", ".join(r.name for r in before[:5]) + (", ..." if len(before) > 5 else "")
            raise QtoolError(f"no layer named {', '.join(map(repr, unknown))} to plot", f"layers: {valid or 'none'}")
        return [by_name[name] for name in layers]
    ranked = sorted(range(len(before)), key=lambda i: (-before[i].spread_ratio, i))
    return [before[i] for i in ranked[:max(max_layers, 0)]]


def _import_matplotlib():
    try:
        import matplotlib  # noqa: F401  (a plain import first: it fails when matplotlib is blocked)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QtoolError("plots need matplotlib", "pip install 'qtool[plots]'") from exc
    return Figure, FigureCanvasAgg


def _panel(ax, r: LayerRanges, label: str, color: str) -> None:
    x = range(r.channels)
    # A bar from min to max per channel: the boxes of figure 4.2.
    ax.bar(x, r.channel_range, bottom=r.channel_min, width=0.8, color=color, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.5)
    label = f" {label}" if label else ""
    ax.set_title(f"{r.name} ({r.op_type}){label}: spread {r.spread_ratio:.3g}", fontsize=9)
    ax.set_xlabel("output channel", fontsize=8)
    ax.set_ylabel("weight value", fontsize=8)
    ax.set_xlim(-1, max(r.channels, 1))
    ax.tick_params(labelsize=7)


def plot_ranges(before: list[LayerRanges], after: list[LayerRanges] | None = None, *, path: str | os.PathLike,
                layers: list[str] | None = None, max_layers: int = 8,
                labels: tuple[str, str] = ("before CLE", "after CLE")) -> None:
    """Write the per-output-channel weight ranges of the chosen layers to `path` (.png, .svg, .pdf).

    `labels` name the two panels (e.g. ("before fold", "after fold") for BN folding alone).
    The file appears atomically (rendered beside it, then renamed), so a failed or interrupted
    plot never leaves half an image where a previous one was.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in _METADATA:
        raise QtoolError(f"{path}: cannot plot to .{fmt}", "use a .png, .svg or .pdf file name")
    chosen = choose_layers(before, layers, max_layers)
    if not chosen:
        raise QtoolError("no Conv/ConvTranspose/Gemm/MatMul with a constant weight to plot")
    partners = match_after(chosen, after) if after is not None else [None] * len(chosen)
    cols = 2 if after is not None else 1
    fig = Figure(figsize=(6.0 * cols, 2.8 * len(chosen)), layout="constrained")
    FigureCanvasAgg(fig)  # the non-interactive Agg canvas, without touching pyplot's global backend
    axes = fig.subplots(len(chosen), cols, squeeze=False, sharey="row")
    for row, (r, a) in enumerate(zip(chosen, partners)):
        _panel(axes[row][0], r, labels[0] if after is not None else "", "tab:blue")
        # One explicit y range per row: autoscaling shared axes clips bars at the bars' sticky edges.
        low, high = r.tensor_range if a is None else (min(r.tensor_range[0], a.tensor_range[0]),
                                                      max(r.tensor_range[1], a.tensor_range[1]))
        pad = 0.05 * (high - low) or 0.5
        axes[row][0].set_ylim(min(low, 0.0) - pad, max(high, 0.0) + pad)
        if after is None:
            continue
        if a is None:
            axes[row][1].text(0.5, 0.5, "not in the model after CLE", ha="center", va="center",
                              transform=axes[row][1].transAxes)
        else:
            _panel(axes[row][1], a, labels[1], "tab:orange")
    import matplotlib

    # svg.hashsalt fixes the ids SVG output would otherwise draw at random.
    with matplotlib.rc_context({"svg.hashsalt": "qtool"}), atomic_output(path) as handle:
        fig.savefig(handle, format=fmt, dpi=100, metadata=_METADATA[fmt])


def plots_available() -> bool:
    """Whether the optional matplotlib extra is installed (commands then add a picture)."""
    try:
        _import_matplotlib()
    except QtoolError:
        return False
    return True


def pareto_plot(result: dict, path: str | os.PathLike) -> bool:
    """Mixed precision's accuracy/cost curve: metric against relative bit-operations, one point per
    raised layer block, the goal as a dashed line. Returns True when written."""
    Figure, FigureCanvasAgg = _import_matplotlib()
    curve = result["curve"] + [result["all_highest"]]
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([p["relative_bops"] for p in result["curve"]], [p["metric"] for p in result["curve"]], "o-",
            color="tab:blue", markersize=3, label="greedy raises")
    ax.plot([curve[-1]["relative_bops"]], [curve[-1]["metric"]], "s", color="tab:green", label=curve[-1]["step"])
    ax.axhline(result["goal"], color="tab:red", linestyle="--", linewidth=1, label="goal")
    unit = result["metric"]["unit"]
    ax.set_xlabel(f"bit-operations relative to all {result['candidates'][0]}")
    ax.set_ylabel(f"{result['metric']['name']} ({unit})" if unit else result["metric"]["name"])
    ax.legend(fontsize=8)
    with atomic_output(path) as handle:
        fig.savefig(handle, format="png", dpi=100, metadata=_METADATA["png"])
    return True
