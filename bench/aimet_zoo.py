"""Real models for the AIMET compat bench (``bench/bench_aimet.py --zoo``; opt-in, never in CI).

The models of bench/zoo_models.py (PicoDet layout, YOLO-style head, MiniLM, ViT-S, PP-OCRv4
rec/det, captcha CRNN, EfficientNet-Lite0 when fetched), each folded by ``qtool fold`` first (their
BatchNormalization nodes into the Conv before them: AIMET's own flow folds batch norms before
``QuantizationSimModel``, and qtool's plan and aimet's are compared on the same graph), with the
zoo's own calibration/evaluation data written as one .npz per split (batch 1 per sample, as
bench/aimet_child.py reads them). Fetch them first: ``python3 sample_models/fetch_zoo.py`` and
``python3 sample_models/fetch_efficientnet.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import zoo_models as Z  # noqa: E402  (bench/zoo_models.py)

KEYS = [spec.key for spec in Z.SPECS]
CALIB, EVAL = 8, 4  # samples: aimet's sim of ViT-S or the 640x480 detector is slow on 2 shared cores


def _stacked(source: Path, target: Path, count: int) -> str:
    """One .npz of `count` samples: `source` as it is, or a folder of one .npz per sample (MiniLM's
    sentences, each its own length) cut to the shortest length so that they stack."""
    if source.is_file():
        data = np.load(source)
        np.savez(target, **{k: data[k][:count] for k in data.files})
        return str(target)
    files = sorted(source.glob("*.npz"))[:count]
    feeds = [dict(np.load(f)) for f in files]
    length = min(f["input_ids"].shape[1] for f in feeds)
    np.savez(target, **{k: np.concatenate([f[k][:, :length] for f in feeds]) for k in feeds[0]})
    return str(target)


def prepare(sh, work: Path, keys: list[str]) -> tuple[list[dict], dict[str, dict[str, str]]]:
    """([{name, path, made_by}], {name: {calib, eval, probe}}) for the zoo models named by `keys`."""
    models, data = [], {}
    for spec in Z.SPECS:
        if spec.key not in keys:
            continue
        source = spec.model()
        if not Path(source).is_file():
            print(f"{spec.key}: {source} missing, skipped (fetch it first)")
            continue
        folded = work / "models" / f"{spec.key}.onnx"
        folded.parent.mkdir(parents=True, exist_ok=True)
        sh(["qtool", "fold", source, "-o", folded])
        split = spec.data(work / "zoo_data" / spec.key, CALIB, EVAL)
        folder = work / "data"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"calib": _stacked(Path(split.calib), folder / f"{spec.key}_calib.npz", CALIB),
                 "eval": _stacked(Path(split.eval), folder / f"{spec.key}_eval.npz", EVAL)}
        paths["probe"] = _stacked(Path(split.eval), folder / f"{spec.key}_probe.npz", 1)
        made_by = f"qtool fold {Path(source).name} ({spec.source})"
        models.append({"name": spec.key, "path": str(folded), "made_by": made_by})
        data[spec.key] = paths
    return models, data
