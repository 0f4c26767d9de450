"""The `qtool analyze` report as one self-contained HTML page (white paper section 4.8).

The page must open offline, mailed or archived next to the model: inline CSS only, and every chart
is inline SVG drawn here (no matplotlib, no JavaScript). Every string from the report goes through
`html.escape` because tensor names may hold `<`, `&` or quotes. The output is deterministic (list
order, fixed float precision, no timestamps or timings) so two runs on the same report diff clean.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from typing import Any
from urllib.parse import quote

from qtool.analysis.role_label import describe

_DASH = "\u2014"
_SEP = " \u00b7 "
_VERDICTS = {
    "weights": "The drop comes from the weights.",
    "activations": "The drop comes from the activations.",
    "both": "The drop comes from both the weights and the activations.",
    "none": "Quantization causes no significant drop.",
}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 3rem;background:#fff}
h1{font-size:1.5rem;margin-bottom:.2rem} h3{font-size:1rem;margin:.2rem 0;word-break:break-all}
h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.meta,.note{color:#555;font-size:.9rem} pre{background:#f5f5f5;padding:.5rem;overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0;font-size:.88rem} th{background:#f3f3f3}
th,td{border-bottom:1px solid #e4e4e4;padding:.2rem .6rem;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} tr.bad td{background:#fde8e8}
.small{font-size:.75rem;color:#555;word-break:break-all} code{word-break:break-all}
.box{padding:.6rem 1rem;border-radius:4px;margin:.5rem 0} .ok{background:#e6f4ea;border:1px solid #7cb98b}
.fail{background:#fde8e8;border:1px solid #d9534f;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:4px;padding:.6rem}
svg{display:block;max-width:100%;height:auto} svg text{font-size:11px;fill:#333}
.bar{fill:#4a78b5} .bar.bad{fill:#c0392b} .axis{stroke:#888;stroke-width:1}
.mark{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3}
"""


def _esc(value: Any) -> str:
    """Every report string goes through here: tensor names can contain markup characters."""
    return html.escape(str(value), quote=True)


def _float(value: Any) -> float:
    """Any report value as a float, NaN when it is not a number (None, a string, a bool)."""
    try:
        return math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: Any) -> float | None:
    """The value when it is a finite number, else None: charts draw only these."""
    v = _float(value)
    return v if math.isfinite(v) else None


def _fmt(value: Any, spec: str = ".2f") -> str:
    """One formatting path for every number so None, NaN and inf show as text, never crash."""
    v = _float(value)
    if math.isnan(v):
        return _DASH
    return format(v, spec) if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _percent(ratio: Any) -> str:
    """A fraction as a percentage with three decimals: outlier ratios are often well under 1%."""
    v = _finite(ratio)
    return _DASH if v is None else f"{v * 100:.3f} %"


def _px(value: float) -> str:
    """SVG coordinates with one decimal: compact and byte-stable."""
    return f"{value:.1f}"


def _span(lo: float, hi: float) -> tuple[float, float]:
    """Widen a degenerate axis range so the scale never divides by zero."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 0.5
    return lo - pad, hi + pad


def _nice_step(n: int, labels: int = 10) -> int:
    """Every Nth index (1, 2, 5 x 10^k) so at most about `labels` x labels are printed."""
    raw = max(1, math.ceil(n / labels))
    base = 10 ** (len(str(raw)) - 1)
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    """Inline SVG (no xmlns needed inside HTML); the aria-label names the chart for readers and tests."""
    size = f'viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
    return "\n".join([f'<svg {size} role="img" aria-label="{_esc(label)}">', *body, "</svg>"])


def _rect(x0: float, y0: float, w: float, h: float, bad: bool) -> str:
    """One bar; `bad` bars take the warning colour from the stylesheet."""
    return f'<rect class="bar{" bad" if bad else ""}" x="{_px(x0)}" y="{_px(y0)}" width="{_px(w)}" height="{_px(h)}"/>'


def _table(headers: list[str], rows: list[list[Any]], *, num: frozenset[int] = frozenset(),
           small: frozenset[int] = frozenset(), bad: frozenset[int] = frozenset()) -> str:
    """Every table of the page: cells are plain text (escaped here), `num` columns right-aligned,
    `small` columns in a small font, `bad` row indices highlighted."""
    def cls(i: int) -> str:
        names = ("num" if i in num else "") + (" small" if i in small else "")
        return f' class="{names.strip()}"' if names.strip() else ""

    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(headers)) + "</tr>")
    for r, row in enumerate(rows):
        row_cls = ' class="bad"' if r in bad else ""
        out.append(f"<tr{row_cls}>" + "".join(f"<td{cls(i)}>{_esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _hbars(items: list[tuple[str, Any, bool]], label: str, spec: str = ".2f") -> str:
    """Labelled horizontal bars (summary, sensitivity): (label, value, bad). Non-finite values
    get no bar but keep their row and printed value, so the list still reads in order."""
    vals = [v for v in (_finite(it[1]) for it in items) if v is not None]
    if not items or not vals:
        return ""
    lo, hi = _span(min(0.0, *vals), max(0.0, *vals))
    left, width, row, total = 230, 440, 20, 760
    height = row * len(items) + 10

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    out = []
    for i, (name, raw, bad) in enumerate(items):
        y = 5 + i * row
        short = name if len(name) <= 36 else name[:35] + "\u2026"
        out.append(f'<text x="{left - 6}" y="{_px(y + 14)}" text-anchor="end"><title>{_esc(name)}</title>'
                   f"{_esc(short)}</text>")
        v = _finite(raw)
        if v is not None:
            x0, x1 = sorted((x(0.0), x(v)))
            out.append(_rect(x0, y + 3, max(x1 - x0, 1.0), row - 6, bad))
        out.append(f'<text x="{left + width + 8}" y="{_px(y + 14)}">{_esc(_fmt(raw, spec))}</text>')
    out.append(f'<line class="axis" x1="{_px(x(0.0))}" y1="0" x2="{_px(x(0.0))}" y2="{height}"/>')
    return _svg(total, height, label, out)


def _vbars(bars: list[tuple[float, float, float, float, bool]], xlim: tuple[float, float],
           ylim: tuple[float, float], *, label: str, xticks: list[tuple[float, str]],
           marks: tuple[float, ...] | list[float] = (), width: int = 760, height: int = 220) -> str:
    """Bars in an x-y plane (per-layer SQNR, histogram, per-channel ranges): (x0, x1, y0, y1, bad)
    in data units, y axis with 5 labels, x labels only where asked, dashed vertical `marks`."""
    (xa, xb), (ya, yb) = _span(*xlim), _span(*ylim)
    left, right, top, bottom = 52, 8, 8, 22
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - xa) / (xb - xa) * pw

    def sy(v: float) -> float:
        return top + (yb - v) / (yb - ya) * ph

    out = []
    for k in range(5):
        v = ya + (yb - ya) * k / 4
        out.append(f'<text x="{left - 4}" y="{_px(sy(v) + 4)}" text-anchor="end">{_esc(_fmt(v, ".3g"))}</text>')
    for x0, x1, y0, y1, bad in bars:
        px0, px1 = sx(x0), sx(x1)
        py0, py1 = sorted((sy(y0), sy(y1)))
        out.append(_rect(px0, py0, max(px1 - px0, 0.8), max(py1 - py0, 1.0), bad))
    for m in marks:
        out.append(f'<line class="mark" x1="{_px(sx(m))}" y1="{top}" x2="{_px(sx(m))}" y2="{top + ph}"/>')
    for v, text in xticks:  # labels at the plot's edges are anchored inwards so they are not clipped
        anchor = "start" if sx(v) < left + 12 else "end" if sx(v) > left + pw - 12 else "middle"
        out.append(f'<text x="{_px(sx(v))}" y="{height - 6}" text-anchor="{anchor}">{_esc(text)}</text>')
    base = sy(min(max(0.0, ya), yb))
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{_px(base)}" x2="{left + pw}" y2="{_px(base)}"/>')
    return _svg(width, height, label, out)


def _section(sid: str, title: str, body: str) -> str:
    """One numbered part of the page; the id lets people link to it."""
    return f'<section id="{sid}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _title(report: dict) -> str:
    """The same title for the browser tab and the page heading."""
    return "qtool analyze" + (f": {report['model']}" if report.get("model") else "")


def _diff(a: Any, b: Any) -> float | None:
    """a - b when both are finite numbers, else None (shown as a dash)."""
    fa, fb = _finite(a), _finite(b)
    return None if fa is None or fb is None else fa - fb


def _metric_label(report: dict) -> tuple[str, str]:
    """(name, unit) of the metric: the unit is appended to numbers and column heads."""
    metric = report.get("metric") or {}
    return str(metric.get("name", "metric")), str(metric.get("unit") or "")


def _header(report: dict) -> str:
    """Title and the one line that says what was measured and how."""
    name, unit = _metric_label(report)
    better = (report.get("metric") or {}).get("higher_is_better")
    parts = [f"encodings: {report['encodings']}" if report.get("encodings") else "",
             f"metric: {name}" + (f" ({unit})" if unit else "") if report.get("metric") else "",
             {True: "higher is better", False: "lower is better"}.get(better, ""),
             f"{_fmt(report['samples'], '.0f')} samples" if report.get("samples") is not None else "",
             f"qtool {report['qtool_version']}" if report.get("qtool_version") else ""]
    meta = _SEP.join(p for p in parts if p)
    return f"<h1>{_esc(_title(report))}</h1>" + (f'\n<p class="meta">{_esc(meta)}</p>' if meta else "")


def _sanity(report: dict) -> str:
    """FP32 sanity first: if bypassing every quantizer does not reproduce float, nothing below holds."""
    s = report.get("fp32_sanity") or {}
    if "passed" not in s:
        return ""
    ok = s["passed"] is True
    head = "passed" if ok else "FAILED \u2014 the simulation itself is wrong"
    text = f"{head} (max abs diff {_fmt(s.get('max_abs_diff'), '.4g')})"
    msg = f"<br>{_esc(s['message'])}" if s.get("message") else ""
    return _section("fp32-sanity", "FP32 sanity", f'<div class="box {"ok" if ok else "fail"}">{_esc(text)}{msg}</div>')


def _summary(report: dict) -> str:
    """The four settings of figure 4.8's first split: weights versus activations."""
    s = report.get("summary") or {}
    keys = [("float", "float"), ("quantized", "quantized"), ("weights_only", "weights only"),
            ("activations_only", "activations only")]
    present = [(k, label) for k, label in keys if k in s]
    if not present:
        return ""
    name, unit = _metric_label(report)
    rows = [[label, _fmt(s[k]), _fmt(_diff(s[k], s.get("float")))] for k, label in present]
    body = [_table(["setting", name + (f" ({unit})" if unit else ""), "vs float"], rows, num=frozenset({1, 2})),
            _hbars([(label, s[k], False) for k, label in present], f"{name} per setting")]
    verdict = s.get("verdict")
    if verdict:
        body.append(f"<p>{_esc(_VERDICTS.get(verdict, f'Verdict: {verdict}'))}</p>")
    return _section("summary", "Summary", "\n".join(b for b in body if b))


def _sensitivity(report: dict) -> str:
    """Per-group ranking: which quantizer groups cost the most alone and recover the most when fixed."""
    rows = report.get("sensitivity") or []
    if not rows:
        return ""
    s = report.get("summary") or {}
    drop = _diff(s.get("float"), s.get("quantized"))
    limit = 0.1 * drop if drop is not None and drop > 0 else None

    def bad(r: dict) -> bool:
        loss = _finite(r.get("loss"))
        return limit is not None and loss is not None and loss > limit

    top = rows[:30]
    name, unit = _metric_label(report)
    u = f" ({unit})" if unit else ""
    heads = ["#", "group", "op type: role", f"only enabled{u}", f"only disabled{u}", f"loss{u}", f"gain{u}", "quantizers"]
    table = _table(heads,
                   [[i + 1, r.get("group", ""), describe(r.get("op_type", ""), r.get("role")), _fmt(r.get("only_enabled")),
                     _fmt(r.get("only_disabled")), _fmt(r.get("loss")), _fmt(r.get("gain")),
                     ", ".join(map(str, r.get("quantizers") or []))] for i, r in enumerate(top)],
                   num=frozenset({0, 3, 4, 5, 6}), small=frozenset({7}),
                   bad=frozenset(i for i, r in enumerate(top) if bad(r)))
    why = f"Highlighted: loss above 10% of the total drop ({_fmt(drop)}{u}). " if limit is not None else ""
    note = f'<p class="note">{_esc(why)}Showing {len(top)} of {len(rows)} groups; the chart shows the top 20.</p>'
    chart = _hbars([(str(r.get("group", "")), r.get("loss"), bad(r)) for r in rows[:20]], f"loss per group ({name})")
    return _section("sensitivity", "Sensitivity", "\n".join(b for b in (note, table, chart) if b))


def _layer_sqnr(report: dict) -> str:
    """SQNR per activation in model order: where along the network the error is born."""
    rows = report.get("layer_sqnr") or []
    if not rows:
        return ""
    # NaN ranks as worst (a broken tensor must surface), +inf (identical tensors) as best.
    sqnr = [_float(r.get("sqnr_db")) for r in rows]
    lowest = sorted(range(len(rows)), key=lambda i: (-math.inf if math.isnan(sqnr[i]) else sqnr[i], i))[:20]
    low_set = set(lowest)
    pts = [(i, _finite(r.get("sqnr_db"))) for i, r in enumerate(rows)]
    vals = [v for _, v in pts if v is not None]
    body = []
    if vals:
        step = _nice_step(len(rows))
        bars = [(i + 0.1, i + 0.9, 0.0, v, i in low_set) for i, v in pts if v is not None]
        body.append(_vbars(bars, (0.0, float(len(rows))), (min(0.0, *vals), max(0.0, *vals)),
                           label="SQNR (dB) per quantized activation, model order",
                           xticks=[(i + 0.5, str(i)) for i in range(0, len(rows), step)]))
        skipped = len(rows) - len(vals)
        body.append(f'<p class="note">x: activation index in model order; y: SQNR in dB; red: the 20 lowest.'
                    f'{f" {skipped} non-finite value(s) not drawn." if skipped else ""}</p>')
    body.append(_table(["index", "tensor", "node", "op type", "SQNR (dB)"],
                       [[i, rows[i].get("tensor", ""), rows[i].get("node", ""), rows[i].get("op_type", ""),
                         _fmt(rows[i].get("sqnr_db"))] for i in lowest], num=frozenset({0, 4})))
    return _section("layer-sqnr", "Per-layer SQNR", "\n".join(body))


def _histogram(st: dict) -> str:
    """Value histogram with the encoding range as two dashed lines: clipped mass is visible."""
    hist = st.get("histogram") or {}
    edges = [_finite(e) for e in hist.get("edges") or []]
    counts = [_finite(c) or 0.0 for c in hist.get("counts") or []]
    if not counts or len(edges) != len(counts) + 1 or None in edges or max(counts) <= 0:
        return ""
    lo, hi = _finite(st.get("encoding_min")), _finite(st.get("encoding_max"))
    marks = [m for m in (lo, hi) if m is not None]
    clipped = [(lo is not None and a < lo) or (hi is not None and b > hi) for a, b in zip(edges, edges[1:])]
    bars = [(edges[i], edges[i + 1], 0.0, c, clipped[i]) for i, c in enumerate(counts) if c > 0]
    xlim = (min([edges[0], *marks]), max([edges[-1], *marks]))
    return _vbars(bars, xlim, (0.0, max(counts)), label="histogram", marks=marks, width=400, height=160,
                  xticks=[(xlim[0], _fmt(xlim[0], ".3g")), (xlim[1], _fmt(xlim[1], ".3g"))])


def _channel_ranges(st: dict) -> str:
    """Per-channel min..max as thin vertical bars: the spread that per-channel quantization or CLE fixes."""
    lows, highs = st.get("channel_min") or [], st.get("channel_max") or []
    pairs = [(i, _finite(a), _finite(b)) for i, (a, b) in enumerate(zip(lows, highs))]
    pairs = [(i, a, b) for i, a, b in pairs if a is not None and b is not None]
    if not pairs:
        return ""
    n = max(i for i, _, _ in pairs) + 1
    bars = [(i + 0.3, i + 0.7, a, b, False) for i, a, b in pairs]
    ylim = (min(0.0, *(a for _, a, _ in pairs)), max(0.0, *(b for _, _, b in pairs)))
    return _vbars(bars, (0.0, float(n)), ylim, label="per-channel range", width=400, height=160,
                  xticks=[(i + 0.5, str(i)) for i in range(0, n, _nice_step(n, 6))])


def _stat_card(st: dict, plots: dict) -> str:
    """One tensor: the numbers that explain its range problem, then its two small charts."""
    tensor = str(st.get("tensor", ""))
    bits = f"{st['bitwidth']}-bit" if st.get("bitwidth") is not None else None
    sub = _SEP.join(str(p) for p in (st.get("kind"), st.get("node"), bits) if p)
    rows = [["min / max", f"{_fmt(st.get('min'), '.4g')} / {_fmt(st.get('max'), '.4g')}"],
            ["encoding range", f"{_fmt(st.get('encoding_min'), '.4g')} / {_fmt(st.get('encoding_max'), '.4g')}"],
            ["outliers (outside the encoding range)", _percent(st.get("outlier_ratio"))]]
    parts = [f'<div class="card">\n<h3><code>{_esc(tensor)}</code></h3>',
             f'<p class="meta">{_esc(sub)}</p>' if sub else "", _table([], rows, num=frozenset({1})),
             _histogram(st), _channel_ranges(st)]
    if tensor in plots:
        href = quote(str(plots[tensor]).replace("\\", "/"), safe="/")
        parts.append(f'<p class="note"><a href="{_esc(href)}">matplotlib plot (PNG)</a></p>')
    parts.append("</div>")
    return "\n".join(p for p in parts if p)


def _statistics(report: dict) -> str:
    """Cards for the worst tensors, in the report's order."""
    stats = report.get("statistics") or []
    if not stats:
        return ""
    plots = report.get("plots") or {}
    cards = "\n".join(_stat_card(st, plots) for st in stats)
    return _section("statistics", "Statistics", f'<div class="cards">\n{cards}\n</div>')


def _suggestions(report: dict) -> str:
    """The fix as runtime-config overrides, with the command that applies them."""
    items = report.get("suggestions") or []
    path = report.get("overrides_file")
    if not items and not path:
        return ""
    name, unit = _metric_label(report)
    body = []
    if items:
        body.append("<ol>")
        for it in items:
            pretty = json.dumps(it.get("override"), indent=2, default=str)
            expected = (f'<p class="note">expected {_esc(name)} after this and the ones above: '
                        f"{_esc(_fmt(it['expected']))} {_esc(unit)}</p>") if it.get("expected") is not None else ""
            body.append(f"<li><p>{_esc(it.get('reason', ''))}</p>\n<pre>{_esc(pretty)}</pre>{expected}</li>")
        body.append("</ol>")
    if path:
        cmd = f"qtool calibrate MODEL --data CALIB --overrides {shlex.quote(str(path))} -o OUT"
        body.append(f"<p>Overrides written to <code>{_esc(path)}</code>. Use them with:</p>\n<pre>{_esc(cmd)}</pre>")
    return _section("suggestions", "Suggestions", "\n".join(body))


def without_timings(result: dict) -> dict:
    """An analyze report (or mixed-precision result) as it is written to disk: without the
    wall-clock seconds it took, so that two runs on the same inputs write byte-identical files (the
    time is in the printed summary). Here because the CLI imports this module, and it is light."""
    return {key: value for key, value in result.items() if key != "seconds"}


def render_html(report: dict) -> str:
    """The whole page for one `qtool analyze` report; sections whose keys are missing are left out."""
    parts = [_header(report), _sanity(report), _summary(report), _sensitivity(report),
             _layer_sqnr(report), _statistics(report), _suggestions(report)]
    body = "\n".join(p for p in parts if p)
    head = f'<meta charset="utf-8">\n<title>{_esc(_title(report))}</title>\n<style>{_CSS}</style>'
    page = f"<head>\n{head}\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>"
    return f'<!DOCTYPE html>\n<html lang="en">\n{page}\n</html>\n'
