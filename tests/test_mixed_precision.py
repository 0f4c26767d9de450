"""Mixed precision: candidates parsed strictly, costs counted right, the greedy search meets a
reachable goal with a real (recalibrated) pair, and both debugging steps run in recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.analysis.cost import layer_macs
from qtool.analysis.mixed_precision import Candidate, parse_candidates
from qtool.errors import QtoolError
from qtool.ir.graph import load_model
from qtool.plan.overrides import load_overrides

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "sample_models" / "broken_layer.onnx"


def test_candidates_are_sorted_cheapest_first_and_checked():
    assert parse_candidates("w16a16, w8a8,w8a16") == [Candidate(8, 8), Candidate(8, 16), Candidate(16, 16)]
    for bad in ("w8a8", "w8a8,int8", "w8a8,w1a8", "w8a8,w8a8"):
        with pytest.raises(QtoolError, match="--candidates"):
            parse_candidates(bad)


def test_layer_macs_are_counted_from_real_shapes():
    model = load_model(BROKEN)
    macs = layer_macs(model, {"input": np.zeros((2, 3, 32, 32), np.float32)})
    assert macs["Conv_1"] == 16 * 32 * 32 * (3 * 3 * 3)
    assert macs["Conv_3"] == 32 * 16 * 16 * (16 * 3 * 3)  # stride 2
    assert macs["Gemm_1"] == 10 * 32


def test_mixed_precision_meets_a_reachable_goal_with_a_recalibrated_pair(data_dir, capsys):
    out = data_dir / "amp"
    # the pooled SQNR: with 16 samples, the weakest class logit (RMS 0.08) stays under 15 dB even at w16a16
    code, stdout, err = run_main(["mixed-precision", BROKEN, "--data", data_dir / "d.npz", "--candidates",
                                  "w8a8,w16a16", "--target", "15", "--metric", "sqnr", "--json", "-o", out], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["met"] and 1 <= len(result["raised"]) < result["blocks"]
    curve = result["curve"]
    assert curve[0]["metric"] < 3 and curve[-1]["metric"] >= 15
    raises = [p for p in curve if "back to" not in p["step"]]
    assert all(b["relative_bops"] > a["relative_bops"] for a, b in zip(raises, raises[1:]))
    assert result["final_metric"] == pytest.approx(curve[-1]["metric"], abs=0.5)
    overrides = load_overrides(out / "overrides.json")
    assert overrides[0].tensors == ("*",) and any(o.bitwidth == 16 for o in overrides)
    enc = json.loads((out / "model.encodings.json").read_text())
    assert {e["bw"] for e in enc["activation_encodings"]} == {8, 16}
    code, stdout, _ = run_main(["simulate", out / "model.onnx", "--data", data_dir / "d.npz", "--json"], capsys)
    assert json.loads(stdout)["outputs"]["logits"]["sqnr_db"] == pytest.approx(result["final_metric"], abs=0.5)


def test_unreachable_goal_says_so(data_dir, capsys):
    code, stdout, _ = run_main(["mixed-precision", BROKEN, "--data", data_dir / "d.npz", "--candidates",
                                "w8a8,w8a16", "--target", "200", "-o", data_dir / "amp2"], capsys)
    assert code == 0 and "goal NOT met" in stdout


def test_analyze_and_mixed_precision_steps_in_a_recipe(data_dir, capsys):
    recipe = data_dir / "r.yaml"
    recipe.write_text(f"""model: {BROKEN}
output: {data_dir / 'rout'}
data: {{calibration: d.npz}}
steps:
  - calibrate: {{}}
  - analyze: {{}}
  - calibrate: {{}}
  - simulate: {{}}
  - mixed_precision: {{candidates: "w8a8,w16a16", target: 15}}
  - simulate: {{}}
expect: {{min_sqnr_db: 15}}
""")
    code, _, err = run_main(["run", recipe], capsys)
    assert code == 0, err
    summary = json.loads((data_dir / "rout" / "run.json").read_text())
    third = json.loads((data_dir / "rout" / "03-calibrate" / "run.json").read_text())
    assert third["options"]["overrides"].endswith("02-analyze/overrides.json")  # the fix, written back
    fixed = summary["steps"][3]["summary"]["outputs"]["logits"]["sqnr_db"]
    broken = summary["steps"][1]["summary"]["summary"]["quantized"]
    assert broken < 3 and fixed > 30


def test_changed_evaluation_data_reruns_analyze(data_dir, capsys):
    folder = data_dir / "evalchange"
    folder.mkdir()
    np.save(folder / "e.npy", np.load(data_dir / "d.npz")["input"][:4])
    recipe = folder / "r.yaml"
    recipe.write_text(f"model: {BROKEN}\noutput: out\ndata: {{calibration: {data_dir / 'd.npz'}, evaluation: e.npy}}\n"
                      "steps:\n  - calibrate: {}\n  - analyze: {max_suggestions: 1}\n")
    assert run_main(["run", recipe], capsys)[0] == 0
    np.save(folder / "e.npy", np.load(data_dir / "d.npz")["input"][4:8])
    assert run_main(["run", recipe], capsys)[0] == 0
    steps = json.loads((folder / "out" / "run.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["skipped", "ran"]
