"""The `qtool analyze` HTML page: self-contained, escaped, deterministic, every section drawn."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import pytest

from qtool.analysis.report_html import render_html

NASTY = 'act<1>&"q"'  # a tensor name that breaks HTML if written raw
TRACKED = {"html", "head", "body", "main", "table", "tr", "td", "th", "svg", "div", "section", "ol", "li",
           "pre", "p", "h1", "h2", "h3", "code", "text", "title", "a", "style"}
HEADINGS = ["FP32 sanity", "Summary", "Sensitivity", "Per-layer SQNR", "Statistics", "Suggestions"]


def _full_report() -> dict:
    """A report shaped like the one `qtool analyze` writes, with the awkward cases mixed in."""
    sens = [{"group": f"Conv_{i}" if i != 3 else NASTY, "op_type": "Conv",
             "quantizers": [f"conv{i}.out", f"conv{i}.w"], "only_enabled": 99.0 - 0.2 * i,
             "only_disabled": 84.0 + 0.1 * i, "loss": 40.0 / (i + 1), "gain": 12.0 / (i + 1)} for i in range(45)]
    layer = [{"tensor": f"t{i}", "node": f"N_{i}", "op_type": "Relu", "sqnr_db": 20.0 + 10 * math.sin(i / 7)}
             for i in range(300)]
    layer[17]["sqnr_db"] = float("nan")
    layer[42]["sqnr_db"] = float("inf")
    layer[5]["tensor"] = NASTY
    counts = [0, 3, 10, 0, 50, 200, 80, 0, 4, 1]
    stats = [
        {"tensor": NASTY, "kind": "activation", "node": "Conv_3", "min": -3.2, "max": 40.1,
         "encoding_min": -3.2, "encoding_max": 12.0, "bitwidth": 8, "outlier_ratio": 0.0012,
         "histogram": {"edges": [-3.2 + 4.33 * k for k in range(11)], "counts": counts}},
        {"tensor": "conv7.w", "kind": "param", "node": "Conv_7", "min": -0.5, "max": 0.7,
         "encoding_min": -0.5, "encoding_max": 0.7, "bitwidth": 8, "outlier_ratio": 0.0,
         "histogram": {"edges": [], "counts": []},
         "channel_min": [-0.1 * c for c in range(16)], "channel_max": [0.05 * c for c in range(16)]},
    ]
    return {
        "model": "out/model.onnx", "encodings": "out/model.encodings.json",
        "metric": {"name": "sqnr", "unit": "dB", "higher_is_better": True},
        "samples": 64, "seconds": 123.4, "qtool_version": "0.1.0",
        "fp32_sanity": {"passed": True, "max_abs_diff": 0.0, "message": "all quantizers bypassed"},
        "summary": {"float": 100.0, "quantized": 83.2, "weights_only": 99.1, "activations_only": 84.0,
                    "verdict": "activations"},
        "sensitivity": sens, "layer_sqnr": layer, "statistics": stats,
        "suggestions": [{"reason": f"{NASTY} output: 16-bit recovers it",
                         "override": {"tensors": NASTY, "bitwidth": 16}, "expected": 97.0},
                        {"reason": "Conv_0 weights", "override": {"tensors": "conv0.w", "bitwidth": 16},
                         "expected": None}],
        "overrides_file": "report/overrides.json",
        "plots": {"conv7.w": "plots/conv7 w#1.png"},
    }


def _minimal_report() -> dict:
    """What an early or partial run might write: most keys absent or empty."""
    return {"model": "m.onnx", "summary": {"float": 0.91, "quantized": float("nan")},
            "sensitivity": [], "statistics": [{"tensor": "x", "histogram": {"edges": [0, 1], "counts": [0]},
                                               "min": float("-inf"), "max": None}]}


class _TagStack(HTMLParser):
    """Checks that every tracked tag that opens also closes, in the right order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in TRACKED:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag not in TRACKED:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]!r}")
        else:
            self.stack.pop()


def _section(page: str, sid: str) -> str:
    """The HTML of one section of the page, by its id."""
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert match, sid
    return match.group(1)


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(_full_report())


def test_self_contained_document(page):
    assert page.startswith("<!DOCTYPE html>")
    for banned in ("http://", "https://", "<script src", "<link", "<img", "@import", "url("):
        assert banned not in page, banned
    assert "<style>" in page


def test_special_characters_only_escaped(page):
    assert NASTY not in page
    assert "act&lt;1&gt;&amp;&quot;q&quot;" in page
    assert "<1>" not in page


def test_every_section_heading_present(page):
    positions = [page.index(f"<h2>{h}</h2>") for h in HEADINGS]
    assert positions == sorted(positions), "sections out of order"
    assert "<h1>qtool analyze: out/model.onnx</h1>" in page
    assert "The drop comes from the activations." in page


def test_sensitivity_table_rows_and_highlight(page):
    sens = _section(page, "sensitivity")
    table = sens[sens.index("<table>"):sens.index("</table>")]
    assert table.count("<tr") == 1 + 30  # header + the top 30 of 45
    # total drop 16.8 -> threshold 1.68; loss 40/(i+1) > 1.68 for i <= 22
    assert table.count('<tr class="bad">') == 23
    chart = sens[sens.index("<svg"):]
    assert chart.count("<rect") == 20


def test_histogram_bars_match_nonempty_counts(page):
    stats = _section(page, "statistics")
    cards = stats.split('<div class="card">')[1:]
    assert len(cards) == 2
    hist = re.search(r'<svg[^>]*aria-label="histogram".*?</svg>', cards[0], re.S).group(0)
    assert hist.count("<rect") == sum(1 for c in _full_report()["statistics"][0]["histogram"]["counts"] if c > 0)
    assert hist.count('class="mark"') == 2  # the encoding range
    assert 'class="bar bad"' in hist  # bins above encoding_max = 12
    # the empty histogram is skipped, the per-channel chart has one bar per channel
    assert 'aria-label="histogram"' not in cards[1]
    chan = re.search(r'<svg[^>]*aria-label="per-channel range".*?</svg>', cards[1], re.S).group(0)
    assert chan.count("<rect") == 16
    assert "0.120 %" in cards[0]
    assert 'href="plots/conv7%20w%231.png"' in cards[1]


def test_layer_sqnr_chart_and_lowest_table(page):
    sec = _section(page, "layer-sqnr")
    svg = sec[sec.index("<svg"):sec.index("</svg>")]
    assert svg.count("<rect") == 298  # NaN and inf are not drawn
    assert "2 non-finite value(s) not drawn" in sec
    table = sec[sec.index("<table>"):sec.index("</table>")]
    assert table.count("<tr") == 21
    assert "<td class=\"num\">17</td>" in table  # the NaN tensor ranks as worst, shown as a dash
    assert "\u2014" in table


def test_suggestions_and_command(page):
    sec = _section(page, "suggestions")
    assert sec.count("<li>") == 2
    assert "&quot;bitwidth&quot;: 16" in sec
    assert "97.00 dB" in sec
    assert "qtool calibrate MODEL --data CALIB --overrides report/overrides.json -o OUT" in sec


def test_deterministic(page):
    assert render_html(_full_report()) == page


@pytest.mark.parametrize("which", ["full", "minimal", "failed"])
def test_tags_balance(page, which):
    failed = {**_full_report(), "fp32_sanity": {"passed": False, "max_abs_diff": float("nan")}}
    html_text = {"full": page, "minimal": render_html(_minimal_report()), "failed": render_html(failed)}[which]
    parser = _TagStack()
    parser.feed(html_text)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []


def test_minimal_report_omits_missing_sections():
    page = render_html(_minimal_report())
    assert page.startswith("<!DOCTYPE html>")
    for present in ("Summary", "Statistics"):
        assert f"<h2>{present}</h2>" in page
    for absent in ("FP32 sanity", "Sensitivity", "Per-layer SQNR", "Suggestions"):
        assert f"<h2>{absent}</h2>" not in page
    assert "<svg" in _section(page, "summary")  # the float bar is drawn, the NaN one is not
    assert "<svg" not in _section(page, "statistics")  # all-zero histogram, no channels
    assert "-inf" in page
    assert render_html({}).startswith("<!DOCTYPE html>")


def test_failed_sanity_is_red():
    page = render_html({"fp32_sanity": {"passed": False, "max_abs_diff": 0.25}})
    assert 'class="box fail"' in page
    assert "FAILED \u2014 the simulation itself is wrong (max abs diff 0.25)" in page
