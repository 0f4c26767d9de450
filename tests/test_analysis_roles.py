"""`analyze` names transformer-specific culprits: roles read from the graph (analysis/roles.py)
on a BERT-style encoder, none on a CNN, and the role of a deliberately broken attention path
shows up in analyze's ranking."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from conftest import run_main
from qtool.analysis.role_label import describe
from qtool.analysis.roles import node_roles
from qtool.ir.graph import load_model
from tiny_bert import sentences, tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def test_every_transformer_role_is_found_once_per_layer(tmp_path):
    layers = 3
    onnx.save(tiny_bert(layers=layers), tmp_path / "bert.onnx")
    roles = Counter(node_roles(load_model(tmp_path / "bert.onnx")).values())
    for role in ("attention scores Q.K^T", "attention context P.V", "attention probabilities", "GELU",
                 "attention output projection",
                 "FFN up-projection", "FFN down-projection"):
        assert roles[role] == layers, role
    assert roles["Q/K/V projection"] == 3 * layers
    assert roles["residual sum into LayerNorm"] == 2 * layers + 1  # + the embedding sum
    assert roles["embedding table"] == 2  # words and positions
    assert roles["attention mask"] >= layers  # the mask's own ops and one masked-scores Add a layer


def test_a_cnn_has_no_transformer_roles():
    assert node_roles(load_model(ROOT / "sample_models" / "conv_bn_relu.onnx")) == {}


def test_describe():
    assert describe("MatMul", "attention scores Q.K^T") == "MatMul: attention scores Q.K^T"
    assert describe("Conv", None) == "Conv"


def test_analyze_names_the_attention_mask_when_it_is_quantized(tmp_path, capsys):
    """With the attention-mask rule off, quantizing the masked scores (range [-3.4e38, x]) rounds
    every score to one value: analyze must rank that group first and say what it is."""
    onnx.save(tiny_bert(layers=1), tmp_path / "bert.onnx")
    np.savez(tmp_path / "d.npz", **sentences(32, seed=3))
    config = json.loads((ROOT / "qtool" / "configs" / "w8a8-per-channel.json").read_text())
    config["patterns"] = {"attention_mask": False}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    code, _, err = run_main(["calibrate", tmp_path / "bert.onnx", "--data", tmp_path / "d.npz", "--config",
                             tmp_path / "cfg.json", "-o", tmp_path / "q"], capsys)
    assert code == 0, err
    code, out, err = run_main(["analyze", tmp_path / "q.onnx", "--data", tmp_path / "d.npz", "--eval-samples", "32",
                               "-o", tmp_path / "report"], capsys)
    assert code == 0, err
    ranking = out[out.index("most sensitive"):].splitlines()[1:6]
    assert "attention mask" in ranking[0] or "attention probabilities" in ranking[0], out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert any(row.get("role") == "attention mask" for row in report["sensitivity"][:3])


def test_written_out_hard_swish_is_named_at_its_result():
    """The bundled PP-OCR classifier writes hard-swish as Add/Clip/Mul/Div: its result nodes are named."""
    from qtool.ir.hard_swish import hard_swishes

    model = load_model(ROOT / "sample_models" / "ppocr_cls.onnx")
    roles = node_roles(model)
    expected = len(hard_swishes(model))
    assert expected > 10 and Counter(roles.values())["hard-swish"] == expected
