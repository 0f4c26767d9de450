"""Round trips with aimet-onnx (issue 15, part 3), checked against recorded fixtures, no aimet.

* aimet -> qtool: the encodings aimet's own ``sim.export`` wrote (1.0.0 and 2.0.0, recorded by the
  bench in tests/fixtures/aimet/encodings) load into qtool, name exactly the quantizers of qtool's
  plan for the same config file, and qtool's QDQ model built from them reproduces the outputs
  aimet's sim gave on the recorded probe inputs (>= 40 dB SQNR).
* qtool -> aimet: what ``qtool calibrate --config <aimet's file>`` + ``qtool export`` write passes
  the checks of aimet's ``load_encodings_to_sim(strict=True)`` (quantsim.py
  ``_validate_encodings_to_load`` and ``QcQuantizeOp._fill_mismatching_encoding_settings_info``,
  repeated here): no name aimet has no quantizer for, none of its enabled quantizers missing, and
  the same encoding type, bit-width, symmetry, strict and unsigned symmetry. The bench does the
  real load (`make bench-aimet`, docs/aimet_compat.md section 4).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aimet_models import PROBE_SEED, PROBES, random_inputs
from aimet_wheel import FIXTURES, fixture_model, shipped_configs, table
from conftest import run_main
from qtool.commands.inputs import load_pair
from qtool.encodings.write import to_json_dict
from qtool.ir.graph import load_model
from qtool.ir.qdq import build_qdq_model
from qtool.plan.aimet_configure import GRID_PRESERVING
from qtool.plan.aimet_tensors import OUTPUTS_IGNORED
from qtool.plan.build import build_plan
from qtool.plan.config import parse_config
from qtool.runtime.sessions import make_session
from qtool.steps.calibrate import CalibrateOptions, calibrate

EXPORTS = sorted((FIXTURES / "encodings").glob("*.encodings"))
TARGETS = ("default_config.json", "htp_quantsim_config_v73.json")
MOVERS = GRID_PRESERVING | OUTPUTS_IGNORED


def _parts(path) -> tuple[str, str, str]:
    model, config, version = path.name.removesuffix(".encodings").split("__")
    return model, f"{config}.json", version


def _outputs(model, samples: list[dict]) -> list[np.ndarray]:
    session = make_session(model, simulate=True)
    return [a for sample in samples for a in session.run(None, sample)]


def _sqnr(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    ref = np.concatenate([a.ravel() for a in reference]).astype(np.float64)
    noise = float(np.sum((ref - np.concatenate([a.ravel() for a in test]).astype(np.float64)) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("path", EXPORTS, ids=lambda p: p.name.removesuffix(".encodings"))
def test_aimets_own_encodings_reproduce_its_sim(path, folder) -> None:
    model_name, config, version = _parts(path)
    source = fixture_model(model_name, folder)
    model, encodings, _ = load_pair(source, path)  # as `qtool simulate/export --encodings` read it
    plan = build_plan(model, parse_config(shipped_configs()[config], config))
    assert set(plan.all()) <= set(encodings.all()), "a quantizer of qtool's plan has no encoding in aimet's export"
    producers = {out.name: node.op_type for node in model.graph for out in node.outputs}
    for name in set(encodings.all()) - set(plan.all()):
        # sim.export also writes the encoding of a data-movement op's input under its output's name (Reshape,
        # Flatten, Transpose, MaxPool, Identity ...: the same grid), and 2.0.0 the int32 biases it does not simulate
        assert producers.get(name) in MOVERS or encodings.all()[name].bw >= 32, name
    recorded = json.loads((FIXTURES / "encodings" / f"{model_name}__{config[:-5]}__probe_outputs.json").read_text())
    assert (recorded["probes"], recorded["probe_seed"]) == (PROBES, PROBE_SEED)
    ours = _outputs(build_qdq_model(model, encodings), random_inputs(source, model_name, PROBES, PROBE_SEED))
    sim, export = ([np.asarray(o["values"], np.float32).reshape(o["shape"]) for o in recorded[key]]
                   for key in ("sim_outputs", "qdq_outputs"))
    assert _sqnr(export, ours) >= 40.0  # aimet's own QDQ export of its sim (to_onnx_qdq): like for like
    # aimet's sim rounds values half-way between grid points up, QuantizeLinear to even (docs/aimet_compat.md):
    # as close to aimet's sim as aimet's own QDQ export is (the classifier's random probes: 27-30 dB both)
    assert _sqnr(sim, ours) >= min(40.0, _sqnr(sim, export)) - 0.5


def test_simulate_takes_aimets_file_with_constant_activations(folder, capsys, tmp_path) -> None:
    """The file `qtool simulate` refused before placement "aimet": a Constant@N activation that
    names an initializer (a Mul's scale, quantized as aimet quantizes model inputs)."""
    path = FIXTURES / "encodings" / "ppocr_cls_folded__default_config__1.0.0.encodings"
    doc = json.loads(path.read_text())
    assert "Constant@0" in {e["name"] for e in doc["activation_encodings"]}
    source = fixture_model("ppocr_cls_folded", folder)
    samples = random_inputs(source, "ppocr_cls_folded", 2, PROBE_SEED)
    np.savez(tmp_path / "probe.npz", x=np.concatenate([s["x"] for s in samples]))
    code, out, err = run_main(["simulate", source, "--encodings", path, "--data", tmp_path / "probe.npz",
                               "-o", tmp_path / "qdq.onnx"], capsys)
    assert code == 0, err
    assert (tmp_path / "qdq.onnx").exists() and "SQNR" in out


def aimet_strict_mismatches(rows: dict, doc: dict) -> list[str]:
    """What ``load_encodings_to_sim(strict=True)`` would refuse in `doc` for a sim whose quantizers
    are `rows` (a recorded table; every quantizer signed-symmetric-only: strict and unsigned False)."""
    if doc["version"] == "2.0.0":
        entries = {}
        for e in doc["encodings"]:
            signed, bw = not e["output_dtype"].startswith("u"), int(e["output_dtype"].lstrip("uint"))
            zero = np.asarray(e.get("y_zero_point", 0), np.float64).reshape(-1)
            entries[e["name"]] = {"enc_type": "PER_CHANNEL" if isinstance(e["y_scale"], list) else "PER_TENSOR",
                                  "bw": bw, "is_sym": signed,
                                  "offset": [float(-zero[0] - (2 ** (bw - 1) if signed else 0))]}
    else:
        entries = {e["name"]: e for e in doc["activation_encodings"] + doc["param_encodings"]}
    enabled = {n for n, r in rows.items() if r["enabled"]}
    found = [f"{n}: no quantizer in aimet's sim" for n in sorted(set(entries) - set(rows))]
    found += [f"{n}: aimet's quantizer is disabled" for n in sorted(set(entries) & set(rows) - enabled)]
    found += [f"{n}: enabled in aimet, no encoding" for n in sorted(enabled - set(entries))]
    for name in sorted(enabled & set(entries)):
        row, e = rows[name], entries[name]
        kind = "PER_CHANNEL" if row["per_channel_axis"] is not None else "PER_TENSOR"
        sym, offset = e["is_sym"] is True, e["offset"][0]
        checks = {"encoding type": (kind, e["enc_type"]), "bit-width": (row["bitwidth"], e["bw"]),
                  "symmetric": (row["symmetric"], sym),
                  "strict symmetric": (False, sym and offset == -(2 ** (e["bw"] - 1)) + 1),
                  "unsigned symmetric": (False, sym and offset == 0)}
        found += [f"{name}: {what} aimet {a} vs file {b}" for what, (a, b) in checks.items() if a != b]
    return found


@pytest.mark.parametrize("config", TARGETS)
@pytest.mark.parametrize("model_name", ["ppocr_cls_folded", "norms_block"])
def test_our_export_passes_aimets_strict_load(model_name, config, folder) -> None:
    recorded = FIXTURES / model_name / config
    if not recorded.exists():
        pytest.skip(f"{recorded} not recorded yet (make bench-aimet)")
    source = fixture_model(model_name, folder)
    model = load_model(source)
    plan = build_plan(model, parse_config(shipped_configs()[config], config))
    samples = random_inputs(source, model_name, 4, 1)
    encodings = calibrate(model, plan, samples, CalibrateOptions(scheme="minmax")).encodings
    rows = table(model_name, config)["rows"]
    assert table(model_name, config)["quantizer_flags"].keys() == {"strict_symmetric=False,unsigned_symmetric=False"}
    for version in ("1.0.0", "2.0.0"):
        mismatches = aimet_strict_mismatches(rows, to_json_dict(encodings, version))
        assert not mismatches, f"{version}: {len(mismatches)} mismatches, e.g. " + "; ".join(mismatches[:6])
    for group in plan.ties:  # aimet loads each name into the one shared quantizer: they must agree
        first = encodings.activations[group[0]]
        assert all(np.array_equal(encodings.activations[n].scale, first.scale)
                   and np.array_equal(encodings.activations[n].offset, first.offset) for n in group)
