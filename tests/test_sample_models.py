"""The committed sample models and OCR data are valid, reproducible and usable.

No network, no Pillow: only onnx, onnxruntime and numpy. The PP-OCRv4 recogniser is not
committed (10 MB); its test runs only where sample_models/fetch_ppocr.py has put it in
build/models/.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
REC_MODEL = ROOT / "build" / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_models_{name}", SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


make_synthetic = _load("make_synthetic")
ocr_data = _load("ocr_data")
fetch_ppocr = _load("fetch_ppocr")

# file -> ({input: shape with batch 2}, {output: shape}, opset)
SYNTHETIC = {
    "conv_bn_relu.onnx": ({"input": (2, 3, 32, 32)}, {"logits": (2, 10)}, 17),
    "mobilenet_block.onnx": ({"input": (2, 3, 32, 32)}, {"logits": (2, 10)}, 17),
    "relu6_attr_opset6.onnx": ({"input": (2, 3, 8, 8)}, {"logits": (2, 4)}, 6),
    "attention_block.onnx": ({"tokens": (2, 16, 32)}, {"out": (2, 16, 32)}, 17),
    "two_inputs.onnx": ({"image": (2, 3, 16, 16), "features": (2, 8)}, {"scores": (2, 4)}, 17),
    "broken_layer.onnx": ({"input": (2, 3, 32, 32)}, {"logits": (2, 10)}, 17),
}


def test_every_generated_model_is_listed():
    assert set(make_synthetic.MODELS) == set(SYNTHETIC)


@pytest.mark.parametrize("fname", sorted(SYNTHETIC))
def test_synthetic_model_checks_and_runs(fname):
    inputs, outputs, opset = SYNTHETIC[fname]
    path = SAMPLES / fname
    assert path.stat().st_size < 200_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    so = ort.SessionOptions()
    so.log_severity_level = 3  # opset 6 draws a "not guaranteed" warning
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    results = sess.run(list(outputs), feeds)
    for (name, shape), value in zip(outputs.items(), results):
        assert value.shape == shape, name
        assert value.dtype == np.float32 and np.isfinite(value).all()
        assert value.std() > 1e-3  # not a degenerate (dead) network


def test_conv_bn_relu_has_the_patterns_it_is_for():
    ops = [n.op_type for n in onnx.load(str(SAMPLES / "conv_bn_relu.onnx")).graph.node]
    for op in ("Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "Concat",
               "AveragePool", "GlobalAveragePool", "Flatten", "Gemm"):
        assert op in ops
    clips = [n for n in onnx.load(str(SAMPLES / "relu6_attr_opset6.onnx")).graph.node
             if n.op_type == "Clip"]
    assert len(clips) == 1 and {a.name for a in clips[0].attribute} == {"min", "max"}


def test_make_synthetic_is_byte_identical(tmp_path):
    for path in make_synthetic.write_all(tmp_path):
        assert path.read_bytes() == (SAMPLES / path.name).read_bytes(), path.name


@pytest.mark.parametrize("task,width", [("cls", 192), ("rec", 320)])
@pytest.mark.parametrize("split", ["calib", "eval"])
def test_ocr_arrays(task, width, split):
    x, targets = ocr_data.load_split(task, split)
    n = 300 if task == "cls" else 200
    assert x.shape == (n, 3, 48, width) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.5 and x.max() > 0.5
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])
    with np.load(ocr_data.DATA) as d:
        widths = d[f"{task}_widths"][:n] if split == "calib" else d[f"{task}_widths"][n:]
    assert widths.min() >= 1 and widths.max() <= width
    for img, w in zip(x, widths):  # pad region is exactly 0 in normalised space
        assert not img[:, :, w:].any()
    if task == "cls":
        assert targets.dtype == np.int64 and targets.sum() == n // 2
    else:
        assert len(targets) == n and all(10 <= len(t) <= 40 for t in targets)


def test_ocr_cli_writes_model_ready_npz(tmp_path):
    out, labels = tmp_path / "cls.npz", tmp_path / "labels.npy"
    ocr_data.main(["--task", "cls", "--split", "calib", "--out", str(out),
                   "--labels-out", str(labels), "--model", str(SAMPLES / "ppocr_cls.onnx")])
    with np.load(out) as d:
        assert list(d.files) == ["x"] and d["x"].shape == (300, 3, 48, 192)
    lab = np.load(labels)
    assert lab.dtype == np.int64 and lab.shape == (300,)


def test_ppocr_cls_orientation_accuracy():
    acc = ocr_data.evaluate(SAMPLES / "ppocr_cls.onnx", "cls", "eval", limit=100)
    assert acc >= 0.95


def test_ctc_greedy_decode():
    chars = ["blank", "a", "b", " "]
    steps = [1, 1, 0, 2]  # a a blank b -> "ab"
    logits = np.eye(4, dtype=np.float32)[steps][None]
    assert ocr_data.ctc_greedy_decode(logits, chars) == ["ab"]
    # a blank between repeats keeps both; leading/trailing blanks vanish; batch of two
    batch = np.eye(4, dtype=np.float32)[[[0, 1, 0, 1, 3, 2], [2, 2, 2, 0, 0, 0]]]
    assert ocr_data.ctc_greedy_decode(batch, chars) == ["aa b", "b"]


def test_char_accuracy_and_edit_distance():
    assert ocr_data.char_accuracy(["abd"], ["abc"]) == pytest.approx(2 / 3)
    assert ocr_data.char_accuracy(["abc", "xyzxyzxyz"], ["abc", "ab"]) == pytest.approx(0.5)
    assert ocr_data.char_accuracy([" abc "], ["abc"], strip=True) == 1.0
    assert ocr_data.char_accuracy([" abc "], ["abc"], strip=False) == pytest.approx(1 / 3)
    assert ocr_data.edit_distance("kitten", "sitting") == 3
    assert ocr_data.edit_distance("", "abc") == 3
    assert ocr_data.edit_distance("flaw", "lawn") == 2


def test_fetch_is_idempotent_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_ppocr, "MODELS", {"a.onnx": 5, "b.onnx": 3})
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch_ppocr.MEMBER_DIR + "a.onnx", b"12345")
        zf.writestr(fetch_ppocr.MEMBER_DIR + "b.onnx", b"xyz")
    dest = tmp_path / "models"
    fetch_ppocr.fetch(dest, wheel)
    assert (dest / "a.onnx").read_bytes() == b"12345"

    def no_download(_tmp):
        raise AssertionError("downloaded although the models were present")

    monkeypatch.setattr(fetch_ppocr, "_download_wheel", no_download)
    fetch_ppocr.fetch(dest)  # both present with the right size: nothing to do
    (dest / "b.onnx").write_bytes(b"xy")  # truncated copy is replaced
    fetch_ppocr.fetch(dest, wheel)
    assert (dest / "b.onnx").read_bytes() == b"xyz"


@pytest.mark.skipif(not REC_MODEL.exists(), reason="run sample_models/fetch_ppocr.py first")
def test_ppocr_rec_character_accuracy():
    chars = ocr_data.load_characters(REC_MODEL)
    assert len(chars) == 6625 and chars[0] == "blank" and chars[-1] == " "
    assert ocr_data.evaluate(REC_MODEL, "rec", "eval", limit=50) >= 0.9
