"""ImageNet-like evaluation data without ImageNet: crops of the photographs in scikit-image.

    python sample_models/imagenet_photos.py --out build/effnet/calib.npz --samples 128 --seed 0
    python sample_models/imagenet_photos.py --out build/effnet/eval.npz --samples 256 --seed 1

Why: ImageNet cannot be downloaded here (PyPI only), but the ``scikit-image`` wheel ships a
few real photographs (an astronaut, a cat, coffee, motorcycles, a rocket, coins, the moon...)
in ``skimage/data``. The wheel is fetched once with ``pip download --no-deps`` into a cache
folder and the images are read straight from the zip with Pillow: scikit-image is never
installed. There are no labels, so these crops measure *agreement with the float model*
(top-1 agreement, output SQNR), not accuracy; that is what a PTQ comparison needs.

Each sample is a random square crop (side = 0.3..1.0 of the image's shorter side, random
position), flipped left-right with probability 1/2, resized to 224x224 (bicubic), RGB,
scaled to [-1, 1] with mean = std = 127.5 (EfficientNet-Lite's preprocessing), NCHW float32.
Grayscale photographs are converted to RGB (three equal channels, as ImageNet's gray images
are); synthetic drawings (logo, phantom, colour chart, chessboards, silhouettes) and images
smaller than 224 px are skipped. Deterministic: the same ``--seed`` gives the same array on
any machine (numpy's PCG64 and Pillow's resampling); use different seeds for calibration and
held-out evaluation sets.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WHEEL_SPEC = "scikit-image==0.26.0"  # pinned: the set of photographs is part of the data
DATA_DIR = "skimage/data/"
# Real photographs only (checked against 0.26.0's skimage/data; micrographs included: they
# are real images, just out of ImageNet's distribution, like some web photos are).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
          "motorcycle_right.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
          "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
          "gravel.png", "clock_motion.png", "cell.png")
SIZE = 224
MIN_SIDE = 224
SCALE = (0.3, 1.0)
MEAN = STD = 127.5


def fetch_wheel(cache: Path) -> Path:
    """The scikit-image wheel in `cache`, downloaded (no dependencies) on first use."""
    wheels = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", WHEEL_SPEC, "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {WHEEL_SPEC} left no wheel in {cache}")
    return wheels[0]


def load_photos(cache: Path) -> list:
    """The photographs as RGB PIL images, in PHOTOS order (gray converted, tiny ones skipped)."""
    from PIL import Image

    images = []
    with zipfile.ZipFile(fetch_wheel(cache)) as zf:
        names = set(zf.namelist())
        for name in PHOTOS:
            if DATA_DIR + name not in names:
                raise SystemExit(f"{name} is not in the scikit-image wheel's {DATA_DIR}")
            with Image.open(io.BytesIO(zf.read(DATA_DIR + name))) as im:
                im.load()
                if min(im.size) < MIN_SIDE:
                    continue
                images.append(im.convert("RGB"))
    return images


def make_crops(images: list, samples: int, seed: int) -> np.ndarray:
    """`samples` random crops/flips of `images` as an (N, 3, 224, 224) float32 array in [-1, 1].
    Images are visited in a shuffled round-robin so that every photograph is used about
    equally often; crop size, position and flip are drawn from numpy's PCG64(seed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((samples, 3, SIZE, SIZE), np.float32)
    order: list[int] = []
    for k in range(samples):
        if not order:
            order = list(rng.permutation(len(images)))
        im = images[order.pop()]
        w, h = im.size
        side = rng.uniform(*SCALE) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        crop = im.resize((SIZE, SIZE), Image.Resampling.BICUBIC,
                         box=(x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop, np.float32)  # H, W, 3 in 0..255
        out[k] = ((arr - MEAN) / STD).transpose(2, 0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output .npz (key 'input')")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "cache",
                    help="where the scikit-image wheel is kept")
    ap.add_argument("--key", default="input", help="array name in the npz (the model input)")
    args = ap.parse_args(argv)
    if args.samples < 1:
        ap.error("--samples must be >= 1")
    images = load_photos(args.cache)
    x = make_crops(images, args.samples, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_name(args.out.name + ".part.npz")
    np.savez(part, **{args.key: x})
    part.replace(args.out)
    print(f"wrote {args.out}: {x.shape} float32 from {len(images)} photographs, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
