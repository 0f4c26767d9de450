"""Block-wise weights through the commands: calibrate --weight-block-size (RTN, LPBQ, GPTQ),
simulate, export --target matmulnbits, the 2.0.0 round trip, and the one-line errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from qtool.commands.inputs import load_pair
from qtool.quant.blockwise import BlockEncoding
from qtool.runtime.sessions import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
import blockwise_models  # noqa: E402

BLOCKS = ["--config", "w4-weight-only", "--weight-block-size", "32", "--encoding-version", "2.0.0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blockwise")
    blockwise_models.mlp(folder / "m.onnx")
    blockwise_models.data(folder / "d.npz")
    return folder


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _sqnr(work: Path, prefix: Path, capsys) -> float:
    code, out, err = run_main(["simulate", f"{prefix}.onnx", "--data", work / "d.npz", "--reference",
                               work / "m.onnx", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)["outputs"]["y"]["sqnr_db"]


def test_weight_only_blocks_simulate_and_round_trip(work, capsys):
    code, out, err = run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS, "-o",
                               work / "rtn"], capsys)
    assert code == 0, err
    assert "per-block weights (blocks of 32 inputs): 3 MatMul/Gemm weight(s)" in out
    doc = json.loads((work / "rtn.encodings.json").read_text())
    entries = {e["name"]: e for e in doc["encodings"]}
    assert set(entries) == {"w1", "w2", "w3"}  # weight-only: no activation encodings
    assert entries["w1"]["axis"] == 0 and entries["w3"]["axis"] == 1 and entries["w2"]["block_size"] == 32
    assert np.shape(entries["w1"]["y_scale"]) == (2, 96) and np.shape(entries["w3"]["y_scale"]) == (16, 2)
    _, encodings, _ = load_pair(work / "rtn.onnx", None)
    assert all(isinstance(e, BlockEncoding) for e in encodings.params.values())
    assert 10 < _sqnr(work, work / "rtn", capsys) < 40


def test_gptq_beats_round_to_nearest_and_freezes(work, capsys):
    code, out, err = run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS,
                               "--weight-rounding", "gptq", "-o", work / "gptq", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["gptq"]) == 3 and all(x["error_gptq"] < x["error_nearest"] for x in summary["gptq"])
    _, encodings, _ = load_pair(work / "gptq.onnx", None)
    assert all(e.frozen for e in encodings.params.values())
    if not (work / "rtn.onnx").exists():
        run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS, "-o", work / "rtn"], capsys)
    assert _sqnr(work, work / "gptq", capsys) > _sqnr(work, work / "rtn", capsys) + 2.0


def test_w4a16_lpbq_exports_matmulnbits_equal_to_the_dequantize_form(work, capsys):
    code, out, err = run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", "--config", "w4a16",
                               "--weight-block-size", "16", "--lpbq", "--encoding-version", "2.0.0", "-o",
                               work / "lpbq"], capsys)
    assert code == 0 and "LPBQ weights" in out, err
    entry = next(e for e in json.loads((work / "lpbq.encodings.json").read_text())["encodings"] if e["name"] == "w1")
    assert np.shape(entry["per_block_int_scale"]) == (4, 96) and np.shape(entry["per_channel_float_scale"]) == (1, 96)
    outputs = {}
    for target in ("qdq", "matmulnbits"):
        code, out, err = run_main(["export", work / "lpbq.onnx", "-o", work / target, "--target", target,
                                   "--encoding-version", "2.0.0"], capsys)
        assert code == 0, err
        import onnx_ir as ir

        model = ir.load(str(work / target / "model_qdq.onnx"))
        ops = {node.op_type for node in model.graph}
        assert ("MatMulNBits" in ops) == (target == "matmulnbits") and "QuantizeLinear" in ops  # 16-bit activations
        x = np.load(work / "d.npz")["x"][:4]
        outputs[target] = make_session(model, simulate=True).run(None, {"x": x})
    assert "matmulnbits forms: MatMulNBits layers 3" in out
    for a, b in zip(outputs["qdq"], outputs["matmulnbits"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, names", [
    (["--encoding-version", "1.0.0", "--config", "w4-weight-only", "--weight-block-size", "32"],
     "--weight-block-size: per-block encodings are written in AIMET's 2.0.0 format only"),
    (["--lpbq", "--encoding-version", "2.0.0"], "--lpbq: "),
    ([*BLOCKS, "--weight-rounding", "gptq", "--no-output"], "--weight-rounding gptq: "),
    (["--config", "w8a8-per-channel", "--weight-block-size", "32", "--encoding-version", "2.0.0"], None),
])
def test_bad_block_options_are_one_line_errors(work, capsys, args, names):
    before = _digest(work)
    out_args = [] if "--no-output" in args else ["-o", work / "bad" / "x"]
    args = [a for a in args if a != "--no-output"]
    code, out, err = run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *args, *out_args], capsys)
    if names is None:  # w8a8-per-channel quantizes the weights too: blocks of 8 bits, fine
        assert code == 0, err
        return
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith(f"qtool: error: {names}"), err
    assert "Traceback" not in err and not (work / "bad").exists() and _digest(work) == before


def test_export_of_a_block_pair_needs_2_0_0_and_blocks_for_matmulnbits(work, capsys):
    if not (work / "rtn.onnx").exists():
        run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS, "-o", work / "rtn"], capsys)
    code, _, err = run_main(["export", work / "rtn.onnx", "-o", work / "e1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--encoding-version 2.0.0" in err and not (work / "e1").exists()
    run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", "--config", "w4a8", "-o", work / "pc"], capsys)
    code, _, err = run_main(["export", work / "pc.onnx", "-o", work / "e2", "--target", "matmulnbits"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--weight-block-size" in err and not (work / "e2").exists()


def test_encodings_of_another_model_are_refused(work, capsys, tmp_path):
    blockwise_models.mlp(tmp_path / "m.onnx", k=96)  # same names, other K: 3 blocks of 32 where there were 2
    if not (work / "rtn.onnx").exists():
        run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS, "-o", work / "rtn"], capsys)
    code, _, err = run_main(["simulate", tmp_path / "m.onnx", "--encodings", work / "rtn.encodings.json",
                             "--data", "random"], capsys)
    assert code == 2 and err.count("\n") == 1 and "'w1'" in err and "need (3, 96) scales, not (2, 96)" in err, err


@pytest.mark.parametrize("command", ["bias-correct", "adaround", "analyze"])
def test_commands_that_do_not_take_block_pairs_say_so(work, capsys, command):
    if not (work / "rtn.onnx").exists():
        run_main(["calibrate", work / "m.onnx", "--data", work / "d.npz", *BLOCKS, "-o", work / "rtn"], capsys)
    extra = ["--encodings", work / "rtn.encodings.json"] if command == "adaround" else []
    code, out, err = run_main([command, work / "rtn.onnx", *extra, "--data", work / "d.npz", "-o",
                               work / f"no_{command}"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"'w1' has a per-block encoding, which {command} does not" in err
    assert not list(work.glob(f"no_{command}*"))


def test_convolution_weights_keep_their_encodings_and_say_why(tmp_path, capsys):
    """Conv weights are not made per block (onnxruntime 1.32 fuses DequantizeLinear(block_size)
    -> Conv -> QuantizeLinear into QLinearConv, which rejects the block scales when the export
    runs: docs/blockwise.md): conv_bn_relu's seven Conv weights keep their calibrated
    encodings, the report names them, and its one Gemm weight is made per block."""
    from qtool.steps.blockwise import CONV_KEPT

    model = Path(__file__).resolve().parents[1] / "sample_models" / "conv_bn_relu.onnx"
    code, out, err = run_main(["calibrate", model, "--data", "random", "--weight-block-size", "4",
                               "--encoding-version", "2.0.0", "-o", tmp_path / "c", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    kept = {entry["weight"] for entry in summary["kept_weights"] if entry["reason"] == CONV_KEPT}
    _, encodings, _ = load_pair(tmp_path / "c.onnx", None)
    blocked = {name for name, enc in encodings.params.items() if isinstance(enc, BlockEncoding)}
    assert len(kept) == 7 and len(blocked) == 1 and not kept & blocked and kept <= set(encodings.params)
