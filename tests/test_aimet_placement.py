"""Placement parity with aimet-onnx (issue 15, part 2), checked against the recorded tables, no aimet.

For every model the bench records (tests/fixtures/aimet) and every runtime config aimet-onnx
2.42.0 ships (read from its wheel), the plan qtool makes from that config file (placement "aimet",
the default for a config that does not say) has exactly the quantizers aimet's
``QuantizationSimModel`` enabled: the same tensors, bit-widths, symmetry, per-channel axes,
parameter-or-activation kind, fixed ranges, and the same tied groups. qtool's built-in configs
(placement "qtool") keep qtool's own choices, and the switch says which is which.
"""

from __future__ import annotations

import hashlib

import pytest

from aimet_wheel import FIXTURES, REGENERATE, ROOT, fixture_model, shipped_configs, table
from qtool.ir.graph import load_model
from qtool.plan.build import build_plan
from qtool.plan.config import load_config, parse_config

TABLES = sorted(p for p in FIXTURES.glob("*/*.json") if p.parent.name != "encodings")


def aimet_differences(model: str, config: str, plan) -> list[str]:
    """Every way `plan` differs from aimet's recorded table (empty: the same quantizers)."""
    recorded = table(model, config)
    enabled = {name: row for name, row in recorded["rows"].items() if row["enabled"]}
    ours = plan.all()
    found = [f"only aimet: {n} ({enabled[n]['kind']}, {enabled[n]['set_by']})" for n in sorted(set(enabled) - set(ours))]
    found += [f"only qtool: {n} ({ours[n].kind}/{ours[n].role})" for n in sorted(set(ours) - set(enabled))]
    for name in sorted(set(ours) & set(enabled)):
        row, tensor = enabled[name], ours[name]
        pairs = {"bit-width": (row["bitwidth"], tensor.spec.bw), "symmetric": (row["symmetric"], tensor.spec.symmetric),
                 "per-channel axis": (row["per_channel_axis"], tensor.spec.axis),
                 "kind": (row["kind"] == "param", tensor.kind == "param")}
        if row["kind"] != "input":  # a constant's range is its value in qtool, aimet calibrates it on the value
            fixed = tensor.fixed_range
            pairs["fixed range"] = (row["fixed_range"], list(fixed) if fixed is not None else None)
        found += [f"{name}: {what} aimet {a} vs qtool {q}" for what, (a, q) in pairs.items() if a != q]
    tied = {tuple(sorted([n, *(t for t in row["tied_with"] if recorded["rows"][t]["enabled"])]))
            for n, row in enabled.items() if row["tied_with"]}
    expected = sorted(list(group) for group in tied if len(group) > 1)
    if expected != plan.ties:
        found.append(f"ties: aimet {expected} vs qtool {plan.ties}")
    return found


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    return {name: load_model(fixture_model(name, folder))
            for name in sorted({p.parent.name for p in TABLES})} | {"folder": folder}


@pytest.mark.parametrize("path", TABLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_plan_equals_aimets_quantizers(path, models) -> None:
    model, config = path.parent.name, path.name
    source = fixture_model(model, models["folder"])
    if source.is_relative_to(ROOT / "sample_models"):  # models built here may differ in bytes across onnx versions
        assert hashlib.sha256(source.read_bytes()).hexdigest() == table(model, config)["model_sha256"], REGENERATE
    loaded = parse_config(shipped_configs()[config], config)
    assert loaded.placement == "aimet"
    differences = aimet_differences(model, config, build_plan(models[model], loaded))
    assert not differences, f"{len(differences)} differences, e.g. " + "; ".join(differences[:8])


def test_the_builtin_configs_keep_qtools_placement(models) -> None:
    """The bundled classifier under qtool's own default: its rules, not aimet's (the classes the
    analysis in docs/aimet_compat.md names), while aimet's default_config.json gives aimet's plan."""
    classifier = models["ppocr_cls_folded"]
    ours = build_plan(classifier, load_config("default"))
    assert load_config("default").placement == "qtool"
    differences = aimet_differences("ppocr_cls_folded", "default_config.json", ours)
    assert any(d.startswith("only qtool: Reshape@") for d in differences)  # aimet: no quantizer after Reshape
    assert any(d.startswith("only aimet: Add@") for d in differences)  # hard-swish's x + 3: qtool's rule
    assert any(d.startswith("Constant@") and "kind" in d for d in differences)  # a Mul's scale: qtool's weight
    # what else tells qtool's default from aimet's: the MatmulAdd pass (and unsigned_symmetric, no placement matter)
    aimet = parse_config({**load_config("default").raw, "placement": "aimet", "supergroup_pass_list": ["MatmulAdd"]},
                         "default as aimet")
    assert not aimet_differences("ppocr_cls_folded", "default_config.json", build_plan(classifier, aimet))


def test_placement_defaults_follow_the_switch() -> None:
    """Keys the config leaves out: aimet's defaults under "aimet", qtool's under "qtool"."""
    bare = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}}}
    aimet, own = parse_config(bare, "a.json"), parse_config({**bare, "placement": "qtool"}, "q.json")
    assert (aimet.placement, own.placement) == ("aimet", "qtool")
    assert not aimet.unsigned_symmetric and not own.unsigned_symmetric  # aimet's libpymo default, both
    assert not aimet.params.symmetric and own.params.symmetric  # aimet's quantizers start asymmetric
    assert not aimet.mixed_ranges.enabled and own.mixed_ranges.enabled
    assert not aimet.patterns.attention_mask and own.patterns.attention_mask
    assert aimet.patterns.layer_norm_output_bw is None and own.patterns.layer_norm_output_bw == 16
    opted = parse_config({**bare, "patterns": {"attention_mask": True}}, "o.json")
    assert opted.patterns.attention_mask and not opted.patterns.pointwise_functions
