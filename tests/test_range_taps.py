"""Min-max taps reduce per sample inside onnxruntime; the ranges must still be the exact ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from qtool.ir.graph import load_model, model_bytes
from qtool.plan.build import build_plan
from qtool.plan.config import load_config
from qtool.quant import compute_encoding
from qtool.runtime.sessions import with_range_taps, with_taps
from qtool.steps.calibrate import CalibrateOptions, calibrate

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def test_range_taps_leave_one_value_per_sample_and_calibrate_matches_numpy():
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    name = model.graph.inputs[0].name
    rng = np.random.default_rng(7)
    batches = [rng.normal(0, 1, (n, 3, 32, 32)).astype(np.float32) for n in (5, 3)]  # uneven batches
    plan = build_plan(model, load_config("default"))
    measured = [n for n in plan.activations if n != name]
    tapped, outputs = with_range_taps(model, measured)
    session = ort.InferenceSession(model_bytes(tapped), providers=["CPUExecutionProvider"])
    first = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: batches[0]})))
    low, high = outputs[measured[0]]
    assert first[low].shape == first[high].shape == (5,)  # per sample: numpy finishes the batch

    # the encodings equal those of the exact ranges over every sample, from the whole tensors
    whole = ort.InferenceSession(model_bytes(with_taps(model, measured)), providers=["CPUExecutionProvider"])
    values = [dict(zip(measured, whole.run(measured, {name: b}))) for b in batches]
    result = calibrate(model, plan, [{name: b} for b in batches], CalibrateOptions(scheme="minmax"))
    for tensor in measured:
        lo = min(float(v[tensor].min()) for v in values)
        hi = max(float(v[tensor].max()) for v in values)
        expected = compute_encoding(lo, hi, plan.activations[tensor].spec)
        assert result.encodings.activations[tensor].same_as(expected), tensor
