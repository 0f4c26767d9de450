"""`report.html` in a real browser (issue 14): headless Chromium draws every chart with bars of
real width, and no text of a chart leaves its picture (histogram y labels were clipped).

Needs Debian's chromium and chromium-driver and the selenium package (the dev extra); .ci/run
installs them, so in CI (CI=true) their absence fails the test. On a machine without them and
without CI set, the test is skipped and says what to install.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.report_html import render_html

ROOT = Path(__file__).resolve().parents[1]
CBR = ROOT / "sample_models" / "conv_bn_relu.onnx"
INSTALL = "apt-get install -y chromium chromium-driver; pip install selenium (the dev extra)"

MEASURE = """
const charts = [];
for (const svg of document.querySelectorAll('svg')) {
  const box = svg.getBoundingClientRect();
  const texts = [...svg.querySelectorAll('text')].map(t => {
    const r = t.getBoundingClientRect();
    return {text: t.textContent, left: r.left - box.left, right: box.right - r.right,
            top: r.top - box.top, bottom: box.bottom - r.bottom};
  });
  const bars = [...svg.querySelectorAll('rect.bar')].map(r => {
    const b = r.getBoundingClientRect(); return [b.width, b.height];
  });
  charts.push({label: svg.getAttribute('aria-label'), width: box.width, height: box.height, texts, bars});
}
const squeezed = [...document.querySelectorAll('td, th')]
  .filter(c => c.textContent.length > 20 && c.getBoundingClientRect().width < 80)
  .map(c => c.textContent.slice(0, 40));
return {charts, squeezed};
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver_path and webdriver):
        missing = ", ".join(name for name, found in (("chromium", chromium), ("chromedriver", driver_path),
                                                     ("selenium", webdriver)) if not found)
        if _in_ci():
            pytest.fail(f"CI must render report.html in a browser, but {missing} is missing: {INSTALL}")
        pytest.skip(f"{missing} not installed (CI is not set, so this is not CI): {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _charts(browser, page: Path, width: int = 1280) -> list[dict]:
    """The page's charts as drawn at this window width; no long table cell may be squeezed into a
    narrow column (a long header once left the quantizer names one letter per line)."""
    browser.set_window_size(width, 1000)
    browser.get(page.as_uri())
    measured = browser.execute_script(MEASURE)
    assert not measured["squeezed"], f"{page.name} at {width} px: cells squeezed: {measured['squeezed'][:5]}"
    return measured["charts"]


def _assert_drawn_and_unclipped(charts: list[dict], page: Path) -> None:
    assert charts, f"{page}: no chart"
    for chart in charts:
        where = f"{page.name}: chart {chart['label']!r}"
        assert chart["width"] > 100 and chart["height"] > 50, where
        assert chart["bars"] and max(max(w, h) for w, h in chart["bars"]) > 4, f"{where}: no bar of any size"
        assert all(w > 0 and h > 0 for w, h in chart["bars"]), where
        for text in chart["texts"]:
            outside = {side: round(text[side], 1) for side in ("left", "right", "top", "bottom") if text[side] < -0.5}
            assert not outside, f"{where}: label {text['text']!r} is clipped by {outside} px"


@pytest.fixture
def analyzed(tmp_path, data_dir, capsys) -> Path:
    """A real `qtool analyze` folder: per-tensor W8A8 conv_bn_relu, labelled, 16 samples (one
    sample is 6.25 points of accuracy, so the groups are ranked by the correct-class probability)."""
    import onnxruntime as ort

    data = np.load(data_dir / "d.npz")["input"]
    session = ort.InferenceSession(str(CBR), providers=["CPUExecutionProvider"])
    np.save(tmp_path / "labels.npy", session.run(None, {"input": data})[0].argmax(1).astype(np.int64))
    code, _, err = run_main(["analyze", CBR, "--data", data_dir / "d.npz", "--labels", tmp_path / "labels.npy",
                             "-o", tmp_path / "report"], capsys)
    assert code == 0, err
    return tmp_path / "report"


def test_a_real_report_renders_with_charts_and_nothing_clipped(browser, analyzed):
    report = json.loads((analyzed / "report.json").read_text())
    assert report["ranking"]["by"] == "mean probability of the correct class", report["ranking"]
    assert report["sensitivity"][0]["fine_loss"] > 0, "the worst group costs something measurable"
    for width in (1280, 700):
        charts = _charts(browser, analyzed / "report.html", width)
        labels = [chart["label"] for chart in charts]
        assert any(label.startswith("mean probability of the correct class lost per group") for label in labels), labels
        _assert_drawn_and_unclipped(charts, analyzed / "report.html")
    browser.save_screenshot(str(analyzed / "report.png"))


def test_awkward_numbers_and_names_stay_inside_their_charts(browser, tmp_path):
    """Histogram counts in the hundred thousands, negative seven-digit ranges, long tensor names."""
    counts = [0, 3, 10, 0, 50_000, 200_000, 80_000, 0, 4, 1]
    stats = [{"tensor": "t" * 120, "kind": "activation", "node": "N", "min": -1.5e6, "max": 2.25e6,
              "encoding_min": -1.5e6, "encoding_max": 1.0e6, "bitwidth": 8, "outlier_ratio": 0.01,
              "histogram": {"edges": [-1.5e6 + 3.75e5 * k for k in range(11)], "counts": counts},
              "channel_min": [-1.2e6 * (c + 1) for c in range(40)], "channel_max": [9.9e5 * c for c in range(40)]}]
    sens = [{"group": "g" * 80 + str(i), "op_type": "Conv", "quantizers": ["q"], "only_enabled": -1234.5 - i,
             "only_disabled": 2.0, "loss": 123456.789 / (i + 1), "gain": 1.0} for i in range(25)]
    layer = [{"tensor": f"t{i}", "node": "N", "op_type": "Relu", "sqnr_db": -45.5 + 100 * math.sin(i)}
             for i in range(90)]
    report = {"model": "m.onnx", "metric": {"name": "sqnr", "unit": "dB", "higher_is_better": True}, "samples": 8,
              "summary": {"float": None, "quantized": -1234.5, "weights_only": 99999.99, "activations_only": -5.0,
                          "verdict": "both"},
              "sensitivity": sens, "layer_sqnr": layer, "statistics": stats, "suggestions": []}
    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    for width in (1280, 600):
        _assert_drawn_and_unclipped(_charts(browser, page, width), page)
