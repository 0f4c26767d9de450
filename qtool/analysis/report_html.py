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

from qtool.analysis.report_svg import esc, finite, to_float, fmt, hbars, nice_step, percent, vbars
from qtool.analysis.role_label import describe

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
.small{font-size:.75rem;color:#555;word-break:break-all;min-width:14rem} code{word-break:break-all}
.box{padding:.6rem 1rem;border-radius:4px;margin:.5rem 0} .ok{background:#e6f4ea;border:1px solid #7cb98b}
.fail{background:#fde8e8;border:1px solid #d9534f;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:4px;padding:.6rem}
svg{display:block;max-width:100%;height:auto} svg text{font-size:11px;fill:#333}
.bar{fill:#4a78b5} .bar.bad{fill:#c0392b} .axis{stroke:#888;stroke-width:1}
.mark{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3}
"""


def _table(headers: list[str], rows: list[list[Any]], *, num: frozenset[int] = frozenset(),
           small: frozenset[int] = frozenset(), bad: frozenset[int] = frozenset()) -> str:
    """Every table of the page: cells are plain text (escaped here), `num` columns right-aligned,
    `small` columns in a small font, `bad` row indices highlighted."""
    def cls(i: int) -> str:
        names = ("num" if i in num else "") + (" small" if i in small else "")
        return f' class="{names.strip()}"' if names.strip() else ""

    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers)) + "</tr>")
    for r, row in enumerate(rows):
        row_cls = ' class="bad"' if r in bad else ""
        out.append(f"<tr{row_cls}>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _section(sid: str, title: str, body: str) -> str:
    """One numbered part of the page; the id lets people link to it."""
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _title(report: dict) -> str:
    """The same title for the browser tab and the page heading."""
    return "qtool analyze" + (f": {report['model']}" if report.get("model") else "")


def _diff(a: Any, b: Any) -> float | None:
    """a - b when both are finite numbers, else None (shown as a dash)."""
    fa, fb = finite(a), finite(b)
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
             f"{fmt(report['samples'], '.0f')} samples" if report.get("samples") is not None else "",
             f"qtool {report['qtool_version']}" if report.get("qtool_version") else ""]
    meta = _SEP.join(p for p in parts if p)
    return f"<h1>{esc(_title(report))}</h1>" + (f'\n<p class="meta">{esc(meta)}</p>' if meta else "")


def _sanity(report: dict) -> str:
    """FP32 sanity first: if bypassing every quantizer does not reproduce float, nothing below holds."""
    s = report.get("fp32_sanity") or {}
    if "passed" not in s:
        return ""
    ok = s["passed"] is True
    head = "passed" if ok else "FAILED \u2014 the simulation itself is wrong"
    text = f"{head} (max abs diff {fmt(s.get('max_abs_diff'), '.4g')})"
    msg = f"<br>{esc(s['message'])}" if s.get("message") else ""
    return _section("fp32-sanity", "FP32 sanity", f'<div class="box {"ok" if ok else "fail"}">{esc(text)}{msg}</div>')


def _value(value: Any, unit: str) -> str:
    """A metric value: an exact SQNR is null in the report and reads 'exact' here."""
    return "exact" if value is None and unit == "dB" else fmt(value)


def _summary(report: dict) -> str:
    """The four settings of figure 4.8's first split: weights versus activations; with a metric
    that counts samples, the finer figure beside it."""
    s = report.get("summary") or {}
    keys = [("float", "float"), ("quantized", "quantized"), ("weights_only", "weights only"),
            ("activations_only", "activations only")]
    present = [(k, label) for k, label in keys if k in s]
    if not present:
        return ""
    name, unit = _metric_label(report)
    fine = s.get("fine") or {}
    heads = ["setting", name + (f" ({unit})" if unit else ""), "vs float"]
    heads += [f"{fine['name']} (%)", "vs float"] if fine else []
    rows = [[label, _value(s[k], unit), fmt(_diff(s[k], s.get("float")))]
            + ([fmt(fine.get(k)), fmt(_diff(fine.get(k), fine.get("float")))] if fine else []) for k, label in present]
    if s.get("verdict_from") and fine:  # the count cannot see the drop: chart the finer figure's
        chart = hbars([(label, _diff(fine.get("float"), fine.get(k)), False) for k, label in present],
                      f"{fine.get('name')} lost per setting (points)")
    else:
        chart = hbars([(label, s[k], False) for k, label in present], f"{name} per setting")
    body = [_table(heads, rows, num=frozenset({1, 2, 3, 4})), chart]
    verdict = s.get("verdict")
    if verdict:
        by = f" (told by the {s['verdict_from']}: {name} moves in whole samples)" if s.get("verdict_from") else ""
        body.append(f"<p>{esc(_VERDICTS.get(verdict, f'Verdict: {verdict}'))}{esc(by)}</p>")
    return _section("summary", "Summary", "\n".join(b for b in body if b))


def _sensitivity(report: dict) -> str:
    """Per-group ranking: which quantizer groups cost the most alone and recover the most when
    fixed; the chart shows what the ranking used (the finer figure when the metric cannot tell
    the groups apart; SQNR alone quantized when float is exact, so a loss means nothing)."""
    rows = report.get("sensitivity") or []
    if not rows:
        return ""
    s = report.get("summary") or {}
    ranking = report.get("ranking") or {}
    drop = _diff(s.get("float"), s.get("quantized"))
    limit = 0.1 * drop if drop is not None and drop > 0 else None

    def bad(r: dict) -> bool:
        loss = finite(r.get("loss"))
        return limit is not None and loss is not None and loss > limit

    top = rows[:30]
    name, unit = _metric_label(report)
    u = f" ({unit})" if unit else ""
    fine = ranking.get("fine") if any("fine_loss" in r for r in rows) else None
    heads = ["#", "group", "op type: role", f"only enabled{u}", f"only disabled{u}", f"loss{u}", f"gain{u}"]
    heads += ["finer figure lost (points)"] if fine else []
    table = _table(heads + ["quantizers"],
                   [[i + 1, r.get("group", ""), describe(r.get("op_type", ""), r.get("role")),
                     _value(r.get("only_enabled"), unit), _value(r.get("only_disabled"), unit), fmt(r.get("loss")),
                     fmt(r.get("gain"))] + ([fmt(r.get("fine_loss"))] if fine else [])
                    + [", ".join(map(str, r.get("quantizers") or []))] for i, r in enumerate(top)],
                   num=frozenset(range(8 if fine else 7)) - {1, 2}, small=frozenset({8 if fine else 7}),
                   bad=frozenset(i for i, r in enumerate(top) if bad(r)))
    why = f"Highlighted: loss above 10% of the total drop ({fmt(drop)}{u}). " if limit is not None else ""
    if ranking.get("note"):
        why = f"{ranking['note'][0].upper()}{ranking['note'][1:]}. {why}"
    note = f'<p class="note">{esc(why)}Showing {len(top)} of {len(rows)} groups; the chart shows the top 20.</p>'
    if fine and ranking.get("by") == fine:
        key, chart_label = "fine_loss", f"{fine} lost per group (points)"
    elif all(finite(r.get("loss")) is None for r in rows):
        key, chart_label = "only_enabled", f"{name} with only this group quantized{u}"
    else:
        key, chart_label = "loss", f"loss per group ({name})"
    chart = hbars([(str(r.get("group", "")), r.get(key), bad(r)) for r in rows[:20]], chart_label)
    return _section("sensitivity", "Sensitivity", "\n".join(b for b in (note, table, chart) if b))


def _layer_sqnr(report: dict) -> str:
    """SQNR per activation in model order: where along the network the error is born."""
    rows = report.get("layer_sqnr") or []
    if not rows:
        return ""
    # NaN ranks as worst (a broken tensor must surface), +inf (identical tensors) as best.
    sqnr = [math.inf if r.get("sqnr_db") is None else to_float(r.get("sqnr_db")) for r in rows]  # null: exact
    lowest = sorted(range(len(rows)), key=lambda i: (-math.inf if math.isnan(sqnr[i]) else sqnr[i], i))[:20]
    low_set = set(lowest)
    pts = [(i, finite(r.get("sqnr_db"))) for i, r in enumerate(rows)]
    vals = [v for _, v in pts if v is not None]
    body = []
    if vals:
        step = nice_step(len(rows))
        bars = [(i + 0.1, i + 0.9, 0.0, v, i in low_set) for i, v in pts if v is not None]
        body.append(vbars(bars, (0.0, float(len(rows))), (min(0.0, *vals), max(0.0, *vals)),
                           label="SQNR (dB) per quantized activation, model order",
                           xticks=[(i + 0.5, str(i)) for i in range(0, len(rows), step)]))
        skipped = len(rows) - len(vals)
        body.append(f'<p class="note">x: activation index in model order; y: SQNR in dB; red: the 20 lowest.'
                    f'{f" {skipped} non-finite value(s) not drawn." if skipped else ""}</p>')
    body.append(_table(["index", "tensor", "node", "op type", "SQNR (dB)"],
                       [[i, rows[i].get("tensor", ""), rows[i].get("node", ""), rows[i].get("op_type", ""),
                         _value(rows[i].get("sqnr_db"), "dB")] for i in lowest], num=frozenset({0, 4})))
    return _section("layer-sqnr", "Per-layer SQNR", "\n".join(body))


def _histogram(st: dict) -> str:
    """Value histogram with the encoding range as two dashed lines: clipped mass is visible."""
    hist = st.get("histogram") or {}
    edges = [finite(e) for e in hist.get("edges") or []]
    counts = [finite(c) or 0.0 for c in hist.get("counts") or []]
    if not counts or len(edges) != len(counts) + 1 or None in edges or max(counts) <= 0:
        return ""
    lo, hi = finite(st.get("encoding_min")), finite(st.get("encoding_max"))
    marks = [m for m in (lo, hi) if m is not None]
    clipped = [(lo is not None and a < lo) or (hi is not None and b > hi) for a, b in zip(edges, edges[1:])]
    bars = [(edges[i], edges[i + 1], 0.0, c, clipped[i]) for i, c in enumerate(counts) if c > 0]
    xlim = (min([edges[0], *marks]), max([edges[-1], *marks]))
    return vbars(bars, xlim, (0.0, max(counts)), label="histogram", marks=marks, width=400, height=160,
                  xticks=[(xlim[0], fmt(xlim[0], ".3g")), (xlim[1], fmt(xlim[1], ".3g"))])


def _channel_ranges(st: dict) -> str:
    """Per-channel min..max as thin vertical bars: the spread that per-channel quantization or CLE fixes."""
    lows, highs = st.get("channel_min") or [], st.get("channel_max") or []
    pairs = [(i, finite(a), finite(b)) for i, (a, b) in enumerate(zip(lows, highs))]
    pairs = [(i, a, b) for i, a, b in pairs if a is not None and b is not None]
    if not pairs:
        return ""
    n = max(i for i, _, _ in pairs) + 1
    bars = [(i + 0.3, i + 0.7, a, b, False) for i, a, b in pairs]
    ylim = (min(0.0, *(a for _, a, _ in pairs)), max(0.0, *(b for _, _, b in pairs)))
    return vbars(bars, (0.0, float(n)), ylim, label="per-channel range", width=400, height=160,
                  xticks=[(i + 0.5, str(i)) for i in range(0, n, nice_step(n, 6))])


def _stat_card(st: dict, plots: dict) -> str:
    """One tensor: the numbers that explain its range problem, then its two small charts."""
    tensor = str(st.get("tensor", ""))
    bits = f"{st['bitwidth']}-bit" if st.get("bitwidth") is not None else None
    sub = _SEP.join(str(p) for p in (st.get("kind"), st.get("node"), bits) if p)
    rows = [["min / max", f"{fmt(st.get('min'), '.4g')} / {fmt(st.get('max'), '.4g')}"],
            ["encoding range", f"{fmt(st.get('encoding_min'), '.4g')} / {fmt(st.get('encoding_max'), '.4g')}"],
            ["outliers (outside the encoding range)", percent(st.get("outlier_ratio"))]]
    parts = [f'<div class="card">\n<h3><code>{esc(tensor)}</code></h3>',
             f'<p class="meta">{esc(sub)}</p>' if sub else "", _table([], rows, num=frozenset({1})),
             _histogram(st), _channel_ranges(st)]
    if tensor in plots:
        href = quote(str(plots[tensor]).replace("\\", "/"), safe="/")
        parts.append(f'<p class="note"><a href="{esc(href)}">matplotlib plot (PNG)</a></p>')
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
            expected = (f'<p class="note">expected {esc(name)} after this and the ones above: '
                        f"{esc(fmt(it['expected']))} {esc(unit)}</p>") if it.get("expected") is not None else ""
            body.append(f"<li><p>{esc(it.get('reason', ''))}</p>\n<pre>{esc(pretty)}</pre>{expected}</li>")
        body.append("</ol>")
    if path:
        cmd = f"qtool calibrate MODEL --data CALIB --overrides {shlex.quote(str(path))} -o OUT"
        body.append(f"<p>Overrides written to <code>{esc(path)}</code>. Use them with:</p>\n<pre>{esc(cmd)}</pre>")
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
    head = f'<meta charset="utf-8">\n<title>{esc(_title(report))}</title>\n<style>{_CSS}</style>'
    page = f"<head>\n{head}\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>"
    return f'<!DOCTYPE html>\n<html lang="en">\n{page}\n</html>\n'
