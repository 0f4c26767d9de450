"""`calibrate --scheme auto`: one histogram pass gives every scheme's encodings, exactly as each
scheme alone would, and the kept one is the candidate whose simulated outputs are closest to float."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.ir.graph import load_model
from qtool.plan.build import PlanOptions, build_plan
from qtool.plan.config import load_config
from qtool.quant import QuantSpec
from qtool.quant.observers import SCHEMES, MinMaxObserver, NoiseObserver, PercentileObserver
from qtool.steps.calibrate import AIMET_SCHEME_NAMES, CalibrateOptions, calibrate
from qtool.steps.scheme_choice import first_samples
from qtool.steps.simulate import simulate

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_one_histogram_gives_each_scheme_what_it_gives_alone():
    rng = np.random.default_rng(3)
    batches = [np.concatenate([rng.standard_normal(4000), rng.standard_normal(8) * 40]).astype(np.float32)
               for _ in range(3)]
    alone = {"minmax": MinMaxObserver(), "sqnr": NoiseObserver(30.0), "mse": NoiseObserver(1.0),
             "percentile": PercentileObserver(99.9)}
    shared = NoiseObserver(30.0)
    for observer in (*alone.values(), shared):
        if not isinstance(observer, MinMaxObserver):  # as calibrate does: bins laid over the final range
            observer.preset_range(min(b.min() for b in batches), max(b.max() for b in batches))
        for batch in batches:
            observer.update(batch)
    for spec in (QuantSpec(bw=8, symmetric=False), QuantSpec(bw=4, symmetric=True)):
        encodings = {s: shared.compute_as(s, spec, percentile=99.9, sqnr_gamma=30.0) for s in SCHEMES}
        for scheme, observer in alone.items():
            assert encodings[scheme].same_as(observer.compute(spec)), scheme
        assert len({float(e.scale[0]) for e in encodings.values()}) == 4  # the outliers make them differ


def test_first_samples_cuts_the_stream():
    batches = [{"x": np.full((16, 2), i)} for i in range(3)]
    cut = list(first_samples(batches, 20))
    assert [len(b["x"]) for b in cut] == [16, 4] and cut[1]["x"][0, 0] == 1


@pytest.fixture(scope="module")
def block():
    model = load_model(SAMPLES / "mobilenet_block.onnx")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 3, 32, 32)).astype(np.float32)
    x[:, :, :2] *= 30  # rows of outliers: clipping them or not matters, so the schemes differ
    plan = build_plan(model, load_config("default"), PlanOptions(act_bw=6))
    return model, plan, x


def batches_of(x: np.ndarray):
    return lambda: [{"input": x[i:i + 16]} for i in range(0, len(x), 16)]


def test_auto_chooses_on_held_out_samples_and_keeps_the_best(block):
    model, plan, x = block
    auto = calibrate(model, plan, batches_of(x), CalibrateOptions(scheme="auto", auto_samples=16))
    assert auto.samples == 48 and set(auto.scheme_scores) == set(SCHEMES)
    sqnr = {scheme: scores["sqnr_db"] for scheme, scores in auto.scheme_scores.items()}
    assert sqnr[auto.scheme] == max(sqnr.values())  # no Softmax output: SQNR decides
    assert len(set(sqnr.values())) > 1
    assert auto.encodings.quantizer_args["quant_scheme"] == AIMET_SCHEME_NAMES[auto.scheme]
    # candidates come from the samples after the first 16 and are judged on those 16 (min-max
    # ranges do not depend on histogram bins, so this one matches to the digit)
    rest = calibrate(model, plan, batches_of(x[16:]), CalibrateOptions(scheme="minmax")).encodings
    report = simulate(model, rest, [{"input": x[:16]}]).report
    assert np.mean([row["sqnr_db"] for row in report.values()]) == pytest.approx(sqnr["minmax"], abs=0.01)
    # the kept encodings come from all 48 samples: the histograms merge exactly
    alone = calibrate(model, plan, batches_of(x), CalibrateOptions(scheme=auto.scheme)).encodings
    for name, enc in alone.activations.items():
        assert auto.encodings.activations[name].same_as(enc), name


def test_auto_needs_more_samples_than_it_holds_out(block):
    from qtool.errors import QtoolError

    model, plan, x = block
    with pytest.raises(QtoolError, match="holds out 32 samples"):
        calibrate(model, plan, batches_of(x[:32]), CalibrateOptions(scheme="auto", auto_samples=32))
    known = calibrate(model, plan, batches_of(x[:32]), CalibrateOptions(scheme="auto", auto_samples=32), total=32)
    assert known.samples == 32  # with the count known, at most half is held out


def test_auto_needs_batches_it_can_read_again(block):
    model, plan, x = block
    with pytest.raises(ValueError, match="auto"):
        calibrate(model, plan, batches_of(x)(), CalibrateOptions(scheme="auto"))


def test_cli_scheme_auto_says_what_it_chose(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((24, 3, 32, 32)).astype(np.float32))
    code, out, err = run_main(["calibrate", SAMPLES / "conv_bn_relu.onnx", "--data", tmp_path / "d.npz",
                               "--scheme", "auto", "--auto-samples", "16", "-o", tmp_path / "m", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["scheme"] in SCHEMES and set(summary["scheme_scores"]) == set(SCHEMES)
    written = json.loads((tmp_path / "m.encodings.json").read_text())
    assert written["quantizer_args"]["quant_scheme"] == AIMET_SCHEME_NAMES[summary["scheme"]]


@pytest.mark.parametrize("opset,axis,expected_shape", [(13, -1, (2, 5)), (11, 1, (2,)), (11, 2, (2, 5))])
def test_softmax_outputs_decide_by_argmax_along_their_axis(opset, axis, expected_shape):
    """opset >= 13: argmax along the axis, one decision per position; older opsets: softmax over
    the dims from the axis on, flattened."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from qtool.steps.scheme_choice import decision_outputs

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["p"], axis=axis)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 7])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [2, 5, 7])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    decide = decision_outputs(model)["p"]
    x = np.random.default_rng(0).standard_normal((2, 5, 7))
    picks = decide(x)
    assert picks.shape == expected_shape
    if expected_shape == (2,):
        np.testing.assert_array_equal(picks, x.reshape(2, -1).argmax(axis=1))
    else:
        np.testing.assert_array_equal(picks, x.argmax(axis=-1))


def test_auto_on_a_softmax_classifier_ranks_by_argmax_agreement_first(tmp_path):
    model = load_model(SAMPLES / "ppocr_cls.onnx")  # ends in Softmax over (0, 180 degrees)
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(0.5, 0.6, (48, 3, 48, 192)), -1, 1).astype(np.float32)
    plan = build_plan(model, load_config("default"), PlanOptions(act_bw=4))
    batches = lambda: [{"x": x[i:i + 16]} for i in range(0, 48, 16)]  # noqa: E731
    auto = calibrate(model, plan, batches, CalibrateOptions(scheme="auto", auto_samples=16))
    ranked = {s: (v["decision_agreement"], v["sqnr_db"]) for s, v in auto.scheme_scores.items()}
    assert ranked[auto.scheme] == max(ranked.values())
