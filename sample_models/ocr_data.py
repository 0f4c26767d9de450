"""Turn the committed OCR line images into model-ready tensors, and score OCR outputs.

Why a separate, numpy-only module: qtool's tests and examples need calibration/evaluation
arrays for the real PP-OCR models without Pillow or OpenCV. sample_models/data/ocr_lines.npz
holds the already-resized uint8 pixels plus each image's valid width; this module applies
rapidocr's normalisation ((x / 255 - 0.5) / 0.5, three identical channels) and zeroes the
pad region *after* normalising, exactly as rapidocr's resize_norm_img does.

CLI (writes an npz keyed by the model's input name, default "x"):

    python sample_models/ocr_data.py --task cls|rec --split calib|eval --out FILE.npz \
        [--labels-out FILE.npy] [--model MODEL.onnx] [--evaluate]

--labels-out: int64 labels for cls (0 upright, 1 rotated 180), a unicode string array for rec.
--evaluate: also run --model with onnxruntime and print the float accuracy.

The recogniser's character table is the model's metadata_props["character"] (one per line)
with rapidocr's CTCLabelDecode additions: index 0 is the CTC blank, a space is appended.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "ocr_lines.npz"
SPLITS = ("calib", "eval")


def _split_slice(n: int, split: str) -> slice:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return slice(0, n // 2) if split == "calib" else slice(n // 2, n)


def normalize(images: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) + valid widths -> float32 (N, 3, H, W) in [-1, 1], pad region 0."""
    x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    pad = np.arange(x.shape[-1])[None, :] >= np.asarray(widths)[:, None]   # (N, W)
    x = np.where(pad[:, None, :], np.float32(0.0), x)  # +0.0 exactly, never -0.0
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))


def load_split(task: str, split: str, path: Path = DATA, limit: int | None = None):
    """(inputs float32 NCHW, targets) for one split.

    targets: int64 labels for task "cls", list of ground-truth strings for task "rec".
    """
    if task not in ("cls", "rec"):
        raise ValueError(f"task must be 'cls' or 'rec', got {task!r}")
    with np.load(path) as d:
        images, widths = d[f"{task}_images"], d[f"{task}_widths"]
        sl = _split_slice(len(images), split)
        targets = d["cls_labels"][sl].astype(np.int64) if task == "cls" else \
            [str(t) for t in d["rec_texts"][sl]]
        images, widths = images[sl], widths[sl]
    if limit is not None:
        images, widths, targets = images[:limit], widths[:limit], targets[:limit]
    return normalize(images, widths), targets


def load_characters(model_path: str | Path) -> list[str]:
    """CTC table as rapidocr builds it: ["blank", *metadata "character" lines, " "]."""
    import onnx  # only needed here; the rest of the module is numpy-only

    model = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise KeyError(f"{model_path}: no 'character' in metadata_props")
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_greedy_decode(logits: np.ndarray, characters: list[str]) -> list[str]:
    """Best-path CTC decoding, as rapidocr's CTCLabelDecode: argmax per step, merge
    repeats, drop the blank (index 0). logits: (N, T, C) scores or probabilities;
    characters: the full table, characters[0] being the blank placeholder."""
    idx = np.asarray(logits).argmax(axis=-1)
    if idx.ndim == 1:
        idx = idx[None]
    keep = np.ones(idx.shape, bool)
    keep[:, 1:] = idx[:, 1:] != idx[:, :-1]
    keep &= idx != 0
    return ["".join(characters[i] for i in row[k]) for row, k in zip(idx, keep)]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance; one row of the DP at a time, vectorised over b."""
    if not a or not b:
        return max(len(a), len(b))
    bb = np.frombuffer(b.encode("utf-32-le"), np.uint32)
    prev = np.arange(len(b) + 1)
    for i, ch in enumerate(a, 1):
        sub = prev[:-1] + (bb != ord(ch))
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, sub)
        # insertions chain left to right: cur[j] = min(cur[j], cur[j-1] + 1), i.e. a
        # running minimum of (cur[j] - j) plus j.
        cur = np.minimum.accumulate(cur - np.arange(len(cur))) + np.arange(len(cur))
        prev = cur
    return int(prev[-1])


def char_accuracy(preds: list[str], truths: list[str], strip: bool = False) -> float:
    """Mean over lines of max(0, 1 - edit_distance(pred, truth) / len(truth)).

    The default is the raw metric (the float PP-OCRv4 recogniser scores ~95.7% on our eval split).
    strip=True compares with leading/trailing whitespace removed (~99.6%): the recogniser often reads a
    crop's blank margins as spaces (" the source" for "the source"); that is not a reading
    error, and counted as one it is most of the float model's error. (PaddleOCR's own
    RecMetric goes further and ignores every space.)
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} ground truths")
    if not truths:
        return float("nan")
    if strip:
        preds, truths = [p.strip() for p in preds], [t.strip() for t in truths]
    scores = [max(0.0, 1.0 - edit_distance(p, t) / max(len(t), 1)) for p, t in zip(preds, truths)]
    return float(np.mean(scores))


def input_name(model_path: str | Path | None) -> str:
    """Name of the model's first graph input that is not an initializer ("x" without one)."""
    if model_path is None:
        return "x"
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def evaluate(model_path: str | Path, task: str, split: str = "eval",
             limit: int | None = None, batch: int = 50, path: Path = DATA) -> float:
    """Float accuracy of an ONNX model on one split (needs onnxruntime): orientation
    accuracy for cls (output is softmax over ['0', '180']), character accuracy for rec."""
    import onnxruntime as ort

    x, targets = load_split(task, split, path, limit)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    if task == "cls":
        return float((np.concatenate(outs).argmax(axis=1) == targets).mean())
    chars = load_characters(model_path)
    preds = [p for o in outs for p in ctc_greedy_decode(o, chars)]
    return char_accuracy(preds, targets)


REC_MODEL = Path(__file__).resolve().parents[1] / "build" / "models" / "ch_PP-OCRv4_rec_infer.onnx"
_REC_CACHE: dict[str, object] = {}


def rec_char_accuracy(outputs: dict, reference: dict, labels) -> float:
    """A `qtool analyze/mixed-precision --metric sample_models/ocr_data.py:rec_char_accuracy`
    metric: character accuracy (%) of the recogniser's outputs on the first samples of the eval
    split (the ones `--split eval` wrote, in order). CTC table from $QTOOL_REC_MODEL or REC_MODEL."""
    import os

    if "chars" not in _REC_CACHE:
        _REC_CACHE["chars"] = load_characters(os.environ.get("QTOOL_REC_MODEL", REC_MODEL))
        _REC_CACHE["texts"] = load_split("rec", "eval")[1]
    logits = next(iter(outputs.values()))
    preds = ctc_greedy_decode(logits, _REC_CACHE["chars"])
    return 100.0 * char_accuracy(preds, _REC_CACHE["texts"][: len(preds)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=("cls", "rec"), required=True)
    ap.add_argument("--split", choices=SPLITS, required=True)
    ap.add_argument("--out", type=Path, required=True, help="npz keyed by the input name")
    ap.add_argument("--labels-out", type=Path)
    ap.add_argument("--model", type=Path, help="read the input name from this ONNX model")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--evaluate", action="store_true", help="run --model and print accuracy")
    args = ap.parse_args(argv)
    x, targets = load_split(args.task, args.split, args.data)
    name = input_name(args.model)
    np.savez(args.out, **{name: x})
    print(f"{args.out}: {name} {x.shape} {x.dtype} range [{x.min():.3f}, {x.max():.3f}]")
    if args.labels_out:
        arr = np.asarray(targets, np.int64) if args.task == "cls" else np.array(targets)
        np.save(args.labels_out, arr)
        print(f"{args.labels_out}: {arr.shape} {arr.dtype}")
    if args.evaluate:
        if not args.model:
            ap.error("--evaluate needs --model")
        metric = "orientation accuracy" if args.task == "cls" else "character accuracy"
        print(f"{args.model} {args.split} {metric}: "
              f"{evaluate(args.model, args.task, args.split, path=args.data):.4f}")


if __name__ == "__main__":
    main()
