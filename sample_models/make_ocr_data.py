"""Render real, labelled text-line images for the PP-OCR sample models (needs Pillow).

Why: quantization needs calibration data and an accuracy metric on *real* inputs. The only
outside data reachable here is what the machine carries, so we render real English text
(snippets of the licence texts in /usr/share/common-licenses) with the DejaVu fonts, with
jitter in face, size, margins, contrast, blur, tilt and noise, and know the ground truth.

Preprocessing mirrors rapidocr_onnxruntime 1.4.4 (ch_ppocr_cls/text_cls.py and
ch_ppocr_rec/text_recognize.py, ``resize_norm_img``): resize to height 48 keeping the aspect
ratio, resized width = min(ceil(48 * w / h), W) with W = 192 (cls) or 320 (rec), bilinear
resize as cv2.INTER_LINEAR does it (half-pixel centres, no antialiasing), then normalise to
[-1, 1] and zero-pad on the right *in normalised space*. We store the resized uint8 pixels
with the pad region set to 0 and the valid width per image, so sample_models/ocr_data.py
(numpy only) reproduces the exact float tensor. Classifier samples with label 1 are rotated
180 degrees before the resize, as a real upside-down crop would be.

Recogniser lines are chosen to fit 48 x 320 without horizontal squashing (aspect <= 6.67):
rapidocr widens the input to the batch's widest line instead, but the committed data uses
one fixed width, and a squashed line is not what the recogniser was trained on.

    python sample_models/make_ocr_data.py [--out sample_models/data/ocr_lines.npz]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
LICENSES = Path("/usr/share/common-licenses")
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
         "DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSerifCondensed.ttf"]
HEIGHT, CLS_W, REC_W = 48, 192, 320
N_CLS, N_REC = 600, 400  # each split in half: first half calibration, second half evaluation
SEED = 20240601


def load_words() -> list[str]:
    """All whitespace-separated words of the licence texts, printable ASCII only, in order."""
    seen, words = set(), []
    for path in sorted(LICENSES.iterdir()):
        real = path.resolve()  # GPL -> GPL-3 etc.: read each text once
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        for w in real.read_text(encoding="utf-8", errors="replace").split():
            if all(33 <= ord(c) <= 126 for c in w):
                words.append(w)
    return words


def text_window(words: list[str], rng: np.random.Generator, lo: int, hi: int) -> str:
    """Consecutive words starting at a random word, between lo and hi characters long."""
    while True:
        i, target = int(rng.integers(len(words))), int(rng.integers(lo, hi + 1))
        out = words[i]
        for w in words[i + 1:i + 40]:
            if len(out) + 1 + len(w) > target:
                break
            out += " " + w
        if lo <= len(out) <= hi:
            return out


class Style:
    """One random rendering style: font, size, margins, colours, degradations."""

    def __init__(self, rng: np.random.Generator):
        self.font_name = FONTS[int(rng.integers(len(FONTS)))]
        self.size = int(rng.integers(18, 41))
        self.font = ImageFont.truetype(str(FONT_DIR / self.font_name), self.size)
        self.mv = float(rng.uniform(0.04, 0.25)) * self.size     # vertical margin
        self.mh = float(rng.uniform(0.1, 0.6)) * self.size       # horizontal margin
        self.bg = float(rng.uniform(175, 250))
        self.grad = float(rng.uniform(-25, 25)) if rng.random() < 0.4 else 0.0
        self.fg = float(rng.uniform(0, 80))
        self.tilt = float(rng.uniform(-1.5, 1.5)) if rng.random() < 0.5 else 0.0
        self.blur = float(rng.uniform(0.3, 0.9)) if rng.random() < 0.3 else 0.0
        self.noise = float(rng.uniform(1.0, 3.0)) if rng.random() < 0.2 else 0.0

    def box(self, text: str) -> tuple[int, int, int]:
        """(width, height, left bearing) of the crop a text detector would hand over."""
        left, _, right, _ = self.font.getbbox(text)
        ascent, descent = self.font.getmetrics()
        return (int(round(right - left + 2 * self.mh)), int(round(ascent + descent + 2 * self.mv)),
                left)

    def render(self, text: str, rng: np.random.Generator) -> np.ndarray:
        w, h, left = self.box(text)
        ramp = self.bg + self.grad * np.linspace(-0.5, 0.5, w)[None, :]
        canvas = np.clip(np.broadcast_to(ramp, (h, w)), 0, 255).astype(np.uint8)
        img = Image.fromarray(canvas, "L")
        ImageDraw.Draw(img).text((self.mh - left, self.mv), text, font=self.font,
                                 fill=int(self.fg), anchor="la")
        if self.tilt:
            img = img.rotate(self.tilt, resample=Image.BILINEAR, fillcolor=int(self.bg))
        if self.blur:
            img = img.filter(ImageFilter.GaussianBlur(self.blur))
        arr = np.asarray(img, dtype=np.float32)
        if self.noise:
            arr = arr + rng.normal(0.0, self.noise, arr.shape)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def resize_linear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.resize(img, (out_w, out_h), interpolation=INTER_LINEAR) for a 2-D uint8 image."""

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(np.int64)
        frac = f - i0
        frac[i0 < 0], i0[i0 < 0] = 0.0, 0
        last = i0 >= n_in - 1
        frac[last], i0[last] = 0.0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), frac

    y0, y1, fy = taps(img.shape[0], out_h)
    x0, x1, fx = taps(img.shape[1], out_w)
    a = img.astype(np.float64)
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
    out = rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_pad(img: np.ndarray, max_w: int) -> tuple[np.ndarray, int]:
    """rapidocr's resize_norm_img geometry: (48 x max_w uint8 with zero pad, valid width)."""
    h, w = img.shape
    ratio = w / float(h)
    rw = max_w if math.ceil(HEIGHT * ratio) > max_w else int(math.ceil(HEIGHT * ratio))
    out = np.zeros((HEIGHT, max_w), np.uint8)
    out[:, :rw] = resize_linear(img, HEIGHT, rw)
    return out, rw


def make_cls(words, rng, used: set[str]):
    images, widths, labels, texts = [], [], [], []
    half = N_CLS // 2
    split_labels = [rng.permutation(np.repeat([0, 1], half // 2)) for _ in range(2)]
    for label in np.concatenate(split_labels):
        text = text_window(words, rng, 10, 40)
        while text in used:
            text = text_window(words, rng, 10, 40)
        used.add(text)
        line = Style(rng).render(text, rng)
        if label == 1:
            line = line[::-1, ::-1]  # 180 degrees, before resize/pad like a real crop
        img, w = resize_pad(line, CLS_W)
        images.append(img), widths.append(w), labels.append(int(label)), texts.append(text)
    return np.stack(images), np.array(widths, np.int16), np.array(labels, np.uint8), texts


def make_rec(words, rng, used: set[str], n: int = N_REC):
    """`n` recogniser lines whose texts are not in `used` (bench/bench_qat.py renders fresh ones)."""
    images, widths, texts = [], [], []
    while len(texts) < n:
        style = Style(rng)
        text = text_window(words, rng, 10, 40)
        while True:  # drop trailing words until the line fits 48 x 320 unsquashed
            w, h, _ = style.box(text)
            if HEIGHT * w / h <= REC_W or " " not in text:
                break
            text = text.rsplit(" ", 1)[0]
        if len(text) < 10 or HEIGHT * w / h > REC_W or text in used:
            continue
        used.add(text)
        img, width = resize_pad(style.render(text, rng), REC_W)
        images.append(img), widths.append(width), texts.append(text)
    return np.stack(images), np.array(widths, np.int16), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "data" / "ocr_lines.npz")
    ap.add_argument("--png", type=Path, help="also write a contact sheet PNG to look at")
    args = ap.parse_args()
    words, rng, used = load_words(), np.random.default_rng(SEED), set()
    cls_images, cls_widths, cls_labels, cls_texts = make_cls(words, rng, used)
    rec_images, rec_widths, rec_texts = make_rec(words, rng, used)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, cls_images=cls_images, cls_widths=cls_widths, cls_labels=cls_labels,
        cls_texts=np.array(cls_texts), rec_images=rec_images, rec_widths=rec_widths,
        rec_texts=np.array(rec_texts))
    print(f"{args.out}  {args.out.stat().st_size} bytes: cls {cls_images.shape} "
          f"(labels 1: {int(cls_labels.sum())}), rec {rec_images.shape}, "
          f"rec text length {min(map(len, rec_texts))}-{max(map(len, rec_texts))}")
    if args.png:
        sheet = np.concatenate([np.concatenate(list(cls_images[:16]), 0),
                                np.concatenate(list(rec_images[:16]), 0)], 1)
        Image.fromarray(sheet, "L").save(args.png)


if __name__ == "__main__":
    main()
