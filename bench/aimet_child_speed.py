"""Job ``speed`` of bench/aimet_child.py (runs INSIDE build/aimet-venv): aimet-onnx's own
calibration time, the row issue 16 compares qtool's default calibration with.

One case per model: ``QuantizationSimModel`` with the tf_enhanced scheme (aimet's histogram
calibration, the one comparable with qtool's `sqnr` default) and per-channel weights (the shipped
``default_config_per_channel.json``), then ``compute_encodings`` over the calibration samples.
onnxruntime gets the machine's threads, as qtool's commands do (the other jobs pin one thread
because they only compare values). The seconds printed on stdout, as one JSON object, are the
sim's construction and ``compute_encodings``, measured in the process so that the parent can
set them against its float pass as it does for qtool's own seconds (the venv's start-up, torch
and aimet imports are in the parent's wall time only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
from aimet_common.defs import QuantScheme
from aimet_onnx import quantsim as aq

from aimet_child_common import CONFIG_DIR, aimet_version, quiet

SPEED_CONFIG = "default_config_per_channel.json"


def job_speed(args) -> None:
    """Each case: {model, calib, samples, batch}; prints {"seconds", "cases": {model: {"build_s",
    "compute_s", ...}}}. The samples go in batches of the size qtool's rows use."""
    results = {}
    for case in json.loads(Path(args.cases).read_text()):
        samples = batches(case["calib"], case.get("samples", args.samples), case.get("batch", 1))
        start = time.perf_counter()
        model = onnx.load(case["model"])
        with quiet():
            sim = aq.QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced,
                                          config_file=str(CONFIG_DIR / SPEED_CONFIG))
        built = time.perf_counter()
        with quiet():
            sim.compute_encodings(samples)
        done = time.perf_counter()
        results[case["model"]] = {"build_s": built - start, "compute_s": done - built,
                                  "seconds": done - start,
                                  "samples": sum(len(next(iter(b.values()))) for b in samples), "batches": len(samples)}
    total = sum(r["seconds"] for r in results.values())
    print(json.dumps({"seconds": total, "cases": results, "aimet_onnx": aimet_version(),
                      "config": SPEED_CONFIG, "quant_scheme": "tf_enhanced"}, sort_keys=True))


def batches(path: str, count: int, batch: int) -> list[dict]:
    """The first `count` samples of an .npz keyed by input name, in batches of `batch`."""
    data = np.load(path)
    n = min(count, min(len(data[k]) for k in data.files))
    return [{k: data[k][i:min(i + batch, n)] for k in data.files} for i in range(0, n, batch)]
