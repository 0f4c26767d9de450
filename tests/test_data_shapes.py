"""Data of any shape: a folder of one .npz per sentence (each its own length) goes through every
command that reads data; batches hold one shape each and keep their samples' labels; --data random
refuses dynamic dims it cannot fill, fills them from --input-shape, and draws token ids the
model's embedding tables can look up."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_main
from qtool.data.random_data import apply_input_shapes, parse_input_shapes, random_chunks
from qtool.data.sources import Batch, DataSource, InputInfo, open_data
from qtool.errors import QtoolError
from qtool.metrics.comparison import Comparison

ROOT = Path(__file__).resolve().parents[1]
VOCAB, CLASSES, SENTENCES = 50, 4, 24
INTS = [InputInfo(n, (None, None), np.dtype(np.int64), ("batch", "seq"))
        for n in ("input_ids", "token_type_ids", "attention_mask")]


def _make_synthetic():
    spec = importlib.util.spec_from_file_location("sample_models_make_synthetic_shapes",
                                                  ROOT / "sample_models" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> dict[str, Path]:
    """The token model, a folder of one .npz per sentence (5..12 tokens, in no order; two files
    hold three sentences of one length), and random labels (the float model gets about 1 in 4)."""
    folder = tmp_path_factory.mktemp("text")
    model = _make_synthetic().token_encoder(vocab=VOCAB, classes=CLASSES)
    onnx.checker.check_model(model, full_check=True)
    (folder / "tok.onnx").write_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    sentences = folder / "sentences"
    sentences.mkdir()
    count = 0
    for index in range(SENTENCES - 4):
        n, length = (3 if index in (4, 9) else 1), int(rng.integers(5, 13))
        ids = rng.integers(0, VOCAB, (n, length))
        types = np.broadcast_to((np.arange(length) >= length // 2).astype(np.int64), (n, length))
        np.savez(sentences / f"s{index:03d}.npz", input_ids=ids, token_type_ids=types,
                 attention_mask=np.ones((n, length), np.int64))
        count += n
    labels = rng.integers(0, CLASSES, count)
    np.save(folder / "labels.npy", labels)
    return {"model": folder / "tok.onnx", "data": sentences, "labels": folder / "labels.npy", "root": folder}


def _samples(folder: Path) -> list[dict[str, np.ndarray]]:
    """Every sample of the folder, one by one, in the data's order (sorted files)."""
    out = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        out += [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]
    return out


# ----------------------------------------------------------------------------- bucketing

def test_batches_hold_one_shape_and_every_sample_once_with_its_index(text):
    source = open_data(str(text["data"]), INTS)
    samples = _samples(text["data"])
    batches = list(source.batches(4))
    indices = np.concatenate([b.indices for b in batches])
    assert sorted(indices.tolist()) == list(range(len(samples)))  # none lost, none twice
    for batch in batches:
        assert isinstance(batch, Batch) and 1 <= len(batch.indices) <= 4
        shapes = {array.shape for array in batch.values()}
        assert len(shapes) == 1  # every input and every sample of the batch: one shape
        for row, index in enumerate(batch.indices):  # the data at an index is that sample's
            for name, array in batch.items():
                np.testing.assert_array_equal(array[row:row + 1], samples[index][name])
    assert [b.indices.tolist() for b in source.batches(4)] == [b.indices.tolist() for b in batches]  # deterministic


def test_data_of_one_shape_batches_exactly_as_a_plain_split(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("a", 5), ("b", 3), ("c", 9)):
        np.savez(tmp_path / f"{name}.npz", x=rng.standard_normal((n, 2, 3)).astype(np.float32))
    source = open_data(str(tmp_path), [InputInfo("x", (None, 2, 3), np.dtype(np.float32))])
    batches = list(source.batches(4))
    assert [len(b.indices) for b in batches] == [4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), np.arange(17))
    whole = np.concatenate([np.load(tmp_path / f"{n}.npz")["x"] for n in "abc"])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), whole)


class _Lengths(DataSource):
    """One sample per chunk, each of its own length: counts how many chunks were read."""

    def __init__(self, lengths: list[int], samples: int | None = None) -> None:
        super().__init__("lengths", [], [InputInfo("x", (None, None), np.dtype(np.float32))], samples=samples)
        self.lengths, self.read = lengths, 0

    def chunks(self):
        for length in self.lengths:
            self.read += 1
            yield {"x": np.full((1, length), float(length), np.float32)}


def test_pending_samples_stay_bounded_when_every_sample_has_its_own_length():
    source = _Lengths(list(range(1, 1001)))
    read_at_first_batch = None
    total = 0
    for batch in source.batches(8, max_pending=16):
        read_at_first_batch = read_at_first_batch or source.read
        assert len({a.shape for a in batch.values()}) == 1
        total += len(batch.indices)
    assert read_at_first_batch <= 17 and total == 1000  # out early, nothing lost


def test_buckets_fill_and_flush_in_order_of_first_appearance():
    source = _Lengths([3, 5, 3, 5, 7, 3])
    batches = [(b["x"].shape[1], b.indices.tolist()) for b in source.batches(2)]
    assert batches == [(3, [0, 2]), (5, [1, 3]), (7, [4]), (3, [5])]
    limited = _Lengths([3, 5, 3, 5, 7, 3], samples=3)
    assert [b.indices.tolist() for b in limited.batches(2)] == [[0, 2], [1]]


def test_labels_follow_their_samples_through_the_comparison():
    labels = np.array([0, 1, 2, 3])
    comparison = Comparison(labels=labels)
    ref = np.eye(4, dtype=np.float32)[[3, 1]]  # predicts 3 for sample 3, 1 for sample 1
    comparison.update("y", ref, ref, np.array([3, 1]))
    comparison.update("y", np.eye(4, dtype=np.float32)[[0, 2]], np.eye(4, dtype=np.float32)[[0, 2]], np.array([0, 2]))
    assert comparison.report()["y"]["float_accuracy"] == 1.0
    with pytest.raises(QtoolError, match="4 labels"):
        comparison.update("y", ref, ref, np.array([4, 1]))


def test_accuracy_on_the_bucketed_folder_equals_sample_by_sample(text, capsys):
    session = ort.InferenceSession(str(text["model"]), providers=["CPUExecutionProvider"])
    predicted = np.array([session.run(["logits"], s)[0].argmax() for s in _samples(text["data"])])
    labels = np.load(text["labels"])
    expected = float(np.mean(predicted == labels))
    assert 0.05 < expected < 0.95  # labels and predictions both vary: a misalignment would show
    out = text["root"] / "acc"
    assert run_main(["calibrate", text["model"], "--data", text["data"], "-o", out / "tok"], capsys)[0] == 0
    rows = {}
    for batch_size in (1, 4, 16):
        code, stdout, err = run_main(["simulate", out / "tok.onnx", "--data", text["data"], "--labels", text["labels"],
                                      "--batch-size", batch_size, "--json"], capsys)
        assert code == 0, err
        rows[batch_size] = json.loads(stdout)["outputs"]["logits"]
    assert rows[4]["float_accuracy"] == pytest.approx(expected) and rows[16]["float_accuracy"] == pytest.approx(expected)
    assert rows[4]["quant_accuracy"] == rows[1]["quant_accuracy"] == rows[16]["quant_accuracy"]
    code, stdout, err = run_main(["analyze", out / "tok.onnx", "--data", text["data"], "--labels", text["labels"],
                                  "--batch-size", 4, "--json", "-o", out / "report"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["summary"]["float"] == pytest.approx(100 * expected)


# ----------------------------------------------------------------------------- every command

def test_every_data_reading_command_runs_on_a_folder_of_unequal_lengths(text, capsys):
    model, data, out = text["model"], text["data"], text["root"] / "all"

    def ok(*args):
        code, stdout, err = run_main([*args, "--json"], capsys)
        assert code == 0, err
        return json.loads(stdout)

    calibrated = ok("calibrate", model, "--data", data, "--batch-size", 4, "-o", out / "cal" / "tok")
    assert calibrated["samples"] == SENTENCES
    ok("calibrate", model, "--data", data, "--batch-size", 4, "--scheme", "auto", "--auto-samples", 6,
       "-o", out / "auto" / "tok")
    simulated = ok("simulate", out / "cal" / "tok.onnx", "--data", data, "--batch-size", 4)
    assert simulated["samples"] == SENTENCES
    for name in ("logits", "hidden"):
        assert 20.0 < simulated["outputs"][name]["sqnr_db"] < 80.0
    equalized = ok("equalize", model, "--data", data, "--batch-size", 4, "-o", out / "eq.onnx")
    assert equalized["noise_aware_pairs"] == 1
    corrected = ok("bias-correct", out / "cal" / "tok.onnx", "--data", data, "--batch-size", 4, "-o", out / "bc" / "tok")
    assert len(corrected["empirical"]) == 3
    rounded = ok("adaround", model, "--data", data, "--batch-size", 4, "--iterations", 30, "--rows", 64,
                 "--param-bw", 8, "-o", out / "ada" / "tok")
    assert len(rounded["layers"]) == 3 and all(np.isfinite(r["loss_adaround"]) for r in rounded["layers"])
    report = ok("analyze", out / "cal" / "tok.onnx", "--data", data, "--batch-size", 4, "-o", out / "report")
    assert report["fp32_sanity"]["passed"]
    layer_sqnr = json.loads((out / "report" / "report.json").read_text())["layer_sqnr"]
    assert layer_sqnr and all(row["sqnr_db"] is None or np.isfinite(row["sqnr_db"]) for row in layer_sqnr)  # None: exact
    mixed = ok("mixed-precision", model, "--data", data, "--batch-size", 4, "--candidates", "w8a8,w8a16",
               "--metric", "sqnr", "-o", out / "mp")
    assert mixed["samples"] == SENTENCES and np.isfinite(mixed["final_metric"])


def test_a_recipe_runs_on_the_folder_and_passes_its_gate(text, capsys):
    recipe = text["root"] / "recipe.yaml"
    recipe.write_text(f"""\
model: {text["model"]}
output: {text["root"] / "recipe_out"}
data:
  calibration: {text["data"]}
  batch_size: 4
steps:
  - equalize: {{}}
  - calibrate: {{}}
  - bias_correct: {{}}
  - simulate: {{}}
expect:
  min_sqnr_db: 20
""")
    code, _, err = run_main(["run", recipe], capsys)
    assert code == 0, err


# ----------------------------------------------------------------------------- --data random

def _dynamic_conv(path: Path, dims=("N", 3, "H", "W")) -> Path:
    """x (N, 3, H, W) -> Conv 3x3 -> Relu -> GlobalAveragePool: the PP-OCR / YOLO input shape."""
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_random_data_refuses_a_dynamic_dim_in_one_line_and_runs_with_input_shape(tmp_path, capsys):
    model = _dynamic_conv(tmp_path / "dyn.onnx")
    code, _, err = run_main(["calibrate", model, "--data", "random", "-o", tmp_path / "a"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "input 'x' has dynamic dim 2 ('H')" in lines[-1] and "--input-shape x=1x3x<H>x<W>" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    code, out, err = run_main(["calibrate", model, "--data", "random", "--input-shape", "x=1x3x24x40",
                               "--samples", "4", "-o", tmp_path / "a", "--json"], capsys)
    assert code == 0, err and json.loads(out)["samples"] == 4
    code, _, err = run_main(["calibrate", model, "--data", "random", "--input-shape", "x=1x4x24x40", "-o",
                             tmp_path / "b"], capsys)
    assert code == 2 and "dim 1 of input 'x' is 3" in err and not (tmp_path / "b.onnx").exists()
    code, _, err = run_main(["simulate", model, "--bypass", "--data", "random", "--input-shape", "y=1x4",
                             "-o", tmp_path / "c.onnx"], capsys)
    assert code == 2 and "no input 'y'" in err


def test_paddles_question_mark_dims_are_not_a_shared_name(tmp_path, capsys):
    """Paddle exports name every unknown dim '?': H and W are not one dim, and '?' names nothing."""
    model = _dynamic_conv(tmp_path / "paddle.onnx", ("?", 3, "?", "?"))
    code, _, err = run_main(["calibrate", model, "--data", "random", "-o", tmp_path / "a"], capsys)
    assert code == 2 and "input 'x' has dynamic dim 2 (give it with --input-shape x=1x3x<dim2>x<dim3>)" in err
    code, _, err = run_main(["calibrate", model, "--data", "random", "--input-shape", "x=1x3x16x40", "--samples", "2",
                             "-o", tmp_path / "a"], capsys)
    assert code == 0, err


def test_random_shapes_come_out_as_given(tmp_path):
    info = InputInfo("x", (None, 3, None, None), np.dtype(np.float32), ("N", None, "H", "W"))
    (filled,) = apply_input_shapes([info], parse_input_shapes(["x=8x3x24x40"]))
    assert filled.shape == (None, 3, 24, 40)  # the batch dim stays the batch size's
    source = open_data("random", [info], samples=5, input_shapes={"x": (1, 3, 24, 40)})
    assert [b["x"].shape for b in source.batches(4)] == [(4, 3, 24, 40), (1, 3, 24, 40)]
    with pytest.raises(QtoolError, match="NAME=D1xD2"):
        parse_input_shapes(["x:1x3"])


def test_random_token_ids_stay_inside_the_vocabulary(text, tmp_path, capsys):
    from qtool.ir.graph import load_model
    from qtool.runtime.sessions import input_infos

    infos = input_infos(load_model(text["model"]))
    assert {i.name: i.vocab for i in infos} == {"input_ids": VOCAB, "token_type_ids": 2, "attention_mask": None}
    # one --input-shape fills the 'seq' dim of all three inputs
    filled = apply_input_shapes(infos, {"input_ids": (1, 9)})
    chunk = next(random_chunks(filled, 64, 0, None))
    assert all(a.shape == (16, 9) and a.dtype == np.int64 for a in chunk.values())
    assert chunk["input_ids"].max() < VOCAB and len(np.unique(chunk["input_ids"])) > VOCAB // 2
    assert set(np.unique(chunk["token_type_ids"])) == {0, 1}
    assert np.all(chunk["attention_mask"] == 1)
    capped = next(random_chunks(filled, 16, 0, 10))
    assert capped["input_ids"].max() < 10 and capped["token_type_ids"].max() < 2
    code, out, err = run_main(["calibrate", text["model"], "--data", "random", "--input-shape", "input_ids=1x9",
                               "-o", tmp_path / "r", "--json"], capsys)
    assert code == 0, err
    code, _, err = run_main(["calibrate", text["model"], "--data", "random", "-o", tmp_path / "s"], capsys)
    assert code == 2 and "input 'input_ids' has dynamic dim 1 ('seq')" in err


def test_integer_inputs_without_a_table_get_zeros_with_a_warning(caplog):
    import logging

    from qtool.data.random_data import check_random_inputs

    info = InputInfo("positions", (None, 6), np.dtype(np.int64))
    with caplog.at_level(logging.WARNING):
        check_random_inputs([info], None)
    assert "'positions'" in caplog.text and "zeros" in caplog.text
    assert not np.any(next(random_chunks([info], 4, 0, None))["positions"])
    assert next(random_chunks([info], 4, 0, 7))["positions"].max() < 7


def test_a_recipe_passes_input_shapes_and_vocab_size_to_random_data(text, capsys):
    recipe = text["root"] / "random.yaml"
    recipe.write_text(f"""\
model: {text["model"]}
output: {text["root"] / "random_out"}
data:
  calibration: random
  samples: 8
  input_shapes: {{input_ids: 1x7}}
  vocab_size: 20
steps:
  - calibrate: {{}}
  - simulate: {{}}
""")
    code, _, err = run_main(["run", recipe], capsys)
    assert code == 0, err
    stamp = json.loads((text["root"] / "random_out" / "01-calibrate" / "run.json").read_text())
    assert "input_ids=1x7" in json.dumps(stamp) and '"vocab_size": 20' in json.dumps(stamp)
    bad = text["root"] / "bad.yaml"
    bad.write_text(recipe.read_text().replace("1x7", "1xseven"))
    code, _, err = run_main(["run", bad], capsys)
    assert code == 2 and "input_shapes" in err
