"""The zoo benchmark's own pieces: the YOLO-style head, the tokenizer, the detection metric and
the quantize_static reader over a folder of variable-length samples.

Fast and offline: no wheel is downloaded (the real models are the benchmark's business).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "sample_models"))

import make_yolo_head  # noqa: E402
import ort_quant  # noqa: E402
import zoo_data  # noqa: E402
import zoo_models  # noqa: E402


def _sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - test) ** 2)))


@pytest.fixture(scope="module")
def yolo() -> bytes:
    return make_yolo_head.make(classes=3).SerializeToString()


def test_yolo_head_is_deterministic_and_keeps_the_yolov8_layout(yolo):
    assert make_yolo_head.make(classes=3).SerializeToString() == yolo
    sess = ort.InferenceSession(yolo, providers=["CPUExecutionProvider"])
    for h, w in ((64, 96), (160, 128)):  # dynamic H/W: anchors = stride-8 cells + stride-16 cells
        x = np.random.default_rng(0).uniform(0, 1, (2, 3, h, w)).astype(np.float32)
        out = sess.run(None, {"images": x})[0]
        assert out.shape == (2, 4 + 3, (h // 8) * (w // 8) + (h // 16) * (w // 16))
        assert out[:, :4].min() >= 0 and out[:, :4].max() <= make_yolo_head.BOX_SCALE
        assert out[:, 4:].min() >= 0 and out[:, 4:].max() <= 1


def test_yolo_head_one_grid_over_its_output_kills_the_class_scores(yolo):
    """The failure the model exists to reproduce: one 8-bit grid over [boxes in pixels | scores]
    has a step of ~1.25, so the scores' SQNR collapses while the boxes' and the pooled stay high."""
    sess = ort.InferenceSession(yolo, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": make_yolo_head.synthetic_images(2, 160)})[0].astype(np.float64)
    scale = (out.max() - out.min()) / 255
    q = np.round((out - out.min()) / scale) * scale + out.min()
    assert _sqnr(out[:, 4:], q[:, 4:]) < 10
    assert _sqnr(out[:, :4], q[:, :4]) > 30 and _sqnr(out, q) > 30


def test_wordpiece_matches_bert_uncased_rules(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "un", "##aff", "##able", ",", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = zoo_data.WordPiece(tmp_path / "vocab.txt", max_len=16)
    ids = tok.encode("Hello, WORLDS! ünaffable xyz")
    # [CLS] hello , world ##s ! un ##aff ##able [UNK] [SEP]: lower case, accents stripped,
    # punctuation split, longest match first, a word no piece covers is one [UNK]
    assert ids.tolist() == [2, 4, 10, 5, 6, 11, 7, 8, 9, 1, 3]
    assert ids.dtype == np.int64
    assert zoo_data.WordPiece(tmp_path / "vocab.txt", max_len=4).encode("hello world hello").tolist() == [2, 4, 5, 3]


def test_detection_f1_matches_by_class_and_iou():
    box = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    ref = [(box, np.array([0, 1]), np.array([0.9, 0.8]))]
    # one exact match, one right box with the wrong class, one extra box
    test = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
             np.array([0, 0, 1]), np.array([0.9, 0.8, 0.7]))]
    got = zoo_models.detection_f1(ref, test)
    assert got["det_f1"] == pytest.approx(2 * 1 / (2 + 3))
    shifted = [(box + np.array([0, 0, 5, 0], np.float32), np.array([0, 1]), np.array([0.9, 0.8]))]
    # widening by 5 px gives IoU 10/15 = 0.67 >= 0.5: both still match
    assert zoo_models.detection_f1(ref, shifted)["det_f1"] == 1.0
    assert zoo_models.detection_f1([(box[:0], np.array([]), np.array([]))] * 2,
                                   [(box[:0], np.array([]), np.array([]))] * 2)["det_f1"] == 1.0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]], np.float32)
    assert zoo_models.nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def test_ort_reader_never_joins_samples_of_different_shapes(tmp_path):
    folder = tmp_path / "sentences"
    folder.mkdir()
    for k, length in enumerate((5, 9, 5)):
        ids = np.arange(length, dtype=np.int64)[None]
        np.savez(folder / f"s{k}.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    reader = ort_quant.NpzReader(folder, ["input_ids", "attention_mask"], batch=16)
    got = [reader.get_next() for _ in range(len(reader))]
    assert reader.get_next() is None and reader.samples == 3
    assert [b["input_ids"].shape for b in got] == [(1, 5), (1, 9), (1, 5)]
    assert all(set(b) == {"input_ids", "attention_mask"} for b in got)
    single = tmp_path / "x.npz"
    np.savez(single, anything=np.zeros((20, 3), np.float32))  # a single-input model may use any key
    assert [b["x"].shape for b in ort_quant.NpzReader(single, ["x"], batch=16).batches] == [(16, 3), (4, 3)]


def test_sentences_are_distinct_seeded_and_varied():
    first = zoo_data.sentences(50, 0)
    assert first == zoo_data.sentences(50, 0) and first != zoo_data.sentences(50, 1)
    assert len(set(first)) == 50
    words = [len(s.split()) for s in first]
    assert min(words) >= 4 and max(words) <= 60 and max(words) - min(words) > 10
