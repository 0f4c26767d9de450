"""The charts and number formatting of the `qtool analyze` HTML page: inline SVG, no library.

Every chart leaves room for its labels: a y-axis label column as wide as its longest label, x
labels at the plot's edges anchored inwards, values right of horizontal bars inside the picture,
so nothing is clipped at any page width (tests/test_report_browser.py renders the page in
Chromium and checks every text box lies inside its chart).
"""

from __future__ import annotations

import html
import math
from typing import Any

DASH = "\u2014"
CHAR_WIDTH = 7.0  # px per character of 11 px chart text, on the wide side (digits are about 6.1)


def esc(value: Any) -> str:
    """Every report string goes through here: tensor names can contain markup characters."""
    return html.escape(str(value), quote=True)


def to_float(value: Any) -> float:
    """Any report value as a float, NaN when it is not a number (None, a string, a bool)."""
    try:
        return math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return math.nan


def finite(value: Any) -> float | None:
    """The value when it is a finite number, else None: charts draw only these."""
    v = to_float(value)
    return v if math.isfinite(v) else None


def fmt(value: Any, spec: str = ".2f") -> str:
    """One formatting path for every number so None, NaN and inf show as text, never crash."""
    v = to_float(value)
    if math.isnan(v):
        return DASH
    if not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    text = format(v, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def percent(ratio: Any) -> str:
    """A fraction as a percentage with three decimals: outlier ratios are often well under 1%."""
    v = finite(ratio)
    return DASH if v is None else f"{v * 100:.3f} %"


def px(value: float) -> str:
    """SVG coordinates with one decimal: compact and byte-stable."""
    return f"{value:.1f}"


def span(lo: float, hi: float) -> tuple[float, float]:
    """Widen a degenerate axis range so the scale never divides by zero."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 0.5
    return lo - pad, hi + pad


def nice_step(n: int, labels: int = 10) -> int:
    """Every Nth index (1, 2, 5 x 10^k) so at most about `labels` x labels are printed."""
    raw = max(1, math.ceil(n / labels))
    base = 10 ** (len(str(raw)) - 1)
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def svg(width: int, height: int, label: str, body: list[str]) -> str:
    """Inline SVG (no xmlns needed inside HTML); the aria-label names the chart for readers and tests."""
    size = f'viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
    return "\n".join([f'<svg {size} role="img" aria-label="{esc(label)}">', *body, "</svg>"])


def rect(x0: float, y0: float, w: float, h: float, bad: bool) -> str:
    """One bar; `bad` bars take the warning colour from the stylesheet."""
    return f'<rect class="bar{" bad" if bad else ""}" x="{px(x0)}" y="{px(y0)}" width="{px(w)}" height="{px(h)}"/>'


def hbars(items: list[tuple[str, Any, bool]], label: str, spec: str = ".2f") -> str:
    """Labelled horizontal bars (summary, sensitivity): (label, value, bad). Non-finite values
    get no bar but keep their row and printed value, so the list still reads in order."""
    vals = [v for v in (finite(it[1]) for it in items) if v is not None]
    if not items or not vals:
        return ""
    lo, hi = span(min(0.0, *vals), max(0.0, *vals))
    left, width, row, total = 230, 440, 20, 760
    height = row * len(items) + 10

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    out = []
    for i, (name, raw, bad) in enumerate(items):
        y = 5 + i * row
        fits = int((left - 10) / CHAR_WIDTH)
        short = name if len(name) <= fits else name[:fits - 1] + "\u2026"
        out.append(f'<text x="{left - 6}" y="{px(y + 14)}" text-anchor="end"><title>{esc(name)}</title>'
                   f"{esc(short)}</text>")
        v = finite(raw)
        if v is not None:
            x0, x1 = sorted((x(0.0), x(v)))
            out.append(rect(x0, y + 3, max(x1 - x0, 1.0), row - 6, bad))
        out.append(f'<text x="{left + width + 8}" y="{px(y + 14)}">{esc(fmt(raw, spec))}</text>')
    out.append(f'<line class="axis" x1="{px(x(0.0))}" y1="0" x2="{px(x(0.0))}" y2="{height}"/>')
    return svg(total, height, label, out)


def vbars(bars: list[tuple[float, float, float, float, bool]], xlim: tuple[float, float],
           ylim: tuple[float, float], *, label: str, xticks: list[tuple[float, str]],
           marks: tuple[float, ...] | list[float] = (), width: int = 760, height: int = 220) -> str:
    """Bars in an x-y plane (per-layer SQNR, histogram, per-channel ranges): (x0, x1, y0, y1, bad)
    in data units, y axis with 5 labels, x labels only where asked, dashed vertical `marks`."""
    (xa, xb), (ya, yb) = span(*xlim), span(*ylim)
    yticks = [(ya + (yb - ya) * k / 4, fmt(ya + (yb - ya) * k / 4, ".3g")) for k in range(5)]
    left = max(40, round(10 + CHAR_WIDTH * max(len(text) for _, text in yticks)))  # room for the widest y label
    right, top, bottom = 8, 8, 22
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - xa) / (xb - xa) * pw

    def sy(v: float) -> float:
        return top + (yb - v) / (yb - ya) * ph

    out = []
    for v, text in yticks:
        out.append(f'<text x="{left - 4}" y="{px(sy(v) + 4)}" text-anchor="end">{esc(text)}</text>')
    for x0, x1, y0, y1, bad in bars:
        px0, px1 = sx(x0), sx(x1)
        py0, py1 = sorted((sy(y0), sy(y1)))
        out.append(rect(px0, py0, max(px1 - px0, 0.8), max(py1 - py0, 1.0), bad))
    for m in marks:
        out.append(f'<line class="mark" x1="{px(sx(m))}" y1="{top}" x2="{px(sx(m))}" y2="{top + ph}"/>')
    for v, text in xticks:  # labels at the plot's edges are anchored inwards so they are not clipped
        anchor = "start" if sx(v) < left + 12 else "end" if sx(v) > left + pw - 12 else "middle"
        out.append(f'<text x="{px(sx(v))}" y="{height - 6}" text-anchor="{anchor}">{esc(text)}</text>')
    base = sy(min(max(0.0, ya), yb))
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{px(base)}" x2="{left + pw}" y2="{px(base)}"/>')
    return svg(width, height, label, out)
