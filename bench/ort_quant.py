"""Child process of the benchmark: onnxruntime.quantization.quantize_static on an npz.

    python bench/ort_quant.py MODEL.onnx --data calib.npz|DIR --out OUT_qdq.onnx \
        --method minmax|entropy|percentile [--per-channel] [--preprocess] [--batch 16]

QDQ format, QInt8 (symmetric) weights, QUInt8 activations, onnxruntime's defaults otherwise.
Steps, each timed and printed as one JSON line on stdout at the end:

* opset: onnxruntime's per-channel QDQ needs DequantizeLinear with `axis`, i.e. opset >= 13,
  so for --per-channel a model below 13 is first converted with onnx.version_converter (qtool
  does the same conversion itself when it builds its QDQ model).
* --preprocess: onnxruntime.quantization.shape_inference.quant_pre_process (symbolic shape
  inference + onnxruntime graph optimisation + ONNX shape inference); where symbolic shape
  inference fails (PP-OCRv4: "Incomplete symbolic shape inference") it is retried with
  skip_symbolic_shape=True.
* calibration reads the npz in batches of --batch samples (the same batches qtool uses).
  Histogram methods (entropy, percentile) keep every intermediate output of every batch in
  memory before histogramming them; ``CalibStridedMinMax=1`` makes onnxruntime histogram one
  batch at a time instead (its documented way of bounding calibration memory; the histograms
  are merged across batches, so the same samples are used).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class NpzReader:
    """CalibrationDataReader over an npz keyed by input name, or a folder of them read in sorted
    order (e.g. one file per sentence, each with its own sequence length); one item = one batch
    of up to `batch` samples from one file, so samples of different shapes are never joined."""

    def __init__(self, path: Path, input_names: list[str], batch: int) -> None:
        files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
        self.batches: list[dict[str, np.ndarray]] = []
        self.samples = 0
        for file in files:
            with np.load(file) as d:
                # a single-input model may use any key (as qtool accepts)
                arrays = {n: d[n] if n in d.files else d[d.files[0]] for n in input_names}
            count = len(next(iter(arrays.values())))
            self.batches += [{n: np.ascontiguousarray(a[i:i + batch]) for n, a in arrays.items()}
                             for i in range(0, count, batch)]
            self.samples += count
        self.set_range(0, len(self.batches))

    def get_next(self):
        return next(self._it, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--preprocess", action="store_true", help="run quant_pre_process first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-opset", type=int, default=13,
                    help="with --per-channel, convert models below this opset first")
    args = ap.parse_args(argv)
    args.model, args.data, args.out = args.model.resolve(), args.data.resolve(), args.out.resolve()

    t0 = time.perf_counter()
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(NpzReader)
    info: dict = {"import_s": time.perf_counter() - t0}
    tmp = Path(tempfile.mkdtemp(prefix="ortq_"))
    # symbolic_shape_infer drops "sym_shape_infer_temp.onnx" into the working directory when it
    # fails; keep that (and any other stray file) out of the repository.
    os.chdir(tmp)
    model_path = args.model

    t = time.perf_counter()
    model = onnx.load(str(model_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    info["opset_in"] = opset
    if args.per_channel and opset < args.min_opset:
        model = version_converter.convert_version(model, args.min_opset)
        model_path = tmp / "converted.onnx"
        onnx.save(model, str(model_path))
        info["converted_to_opset"] = args.min_opset
    info["convert_s"] = time.perf_counter() - t
    inits = {i.name for i in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in inits]
    del model

    if args.preprocess:
        t = time.perf_counter()
        pre = tmp / "preprocessed.onnx"
        try:
            quant_pre_process(str(model_path), str(pre))
            info["preprocess"] = "full"
        except Exception as exc:  # e.g. "Incomplete symbolic shape inference" on PP-OCRv4
            quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
            info["preprocess"] = f"skip_symbolic_shape ({type(exc).__name__}: {str(exc)[:80]})"
        model_path = pre
        info["preprocess_s"] = time.perf_counter() - t

    reader = NpzReader(args.data, input_names, args.batch)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[args.method]
    extra = {"CalibStridedMinMax": 1} if args.method != "minmax" else {}
    t = time.perf_counter()
    quantize_static(str(model_path), str(args.out), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=args.per_channel, calibrate_method=method, extra_options=extra)
    info["quantize_static_s"] = time.perf_counter() - t
    info["samples"] = reader.samples
    info["total_s"] = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(info))


if __name__ == "__main__":
    sys.exit(main())
