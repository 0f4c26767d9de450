"""Child process of the benchmark: one plain onnxruntime float pass over an npz.

    python bench/float_pass.py MODEL.onnx --data calib.npz [--batch 16]

Prints one JSON line: seconds for session creation + all batches (``seconds``, the reference
for qtool's calibration overhead), and the batch count. Default session options, so this is
the cost of simply running the float model over the calibration samples once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    with np.load(args.data) as d:
        x = d[d.files[0]]
    start = time.perf_counter()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    session_s = time.perf_counter() - start
    for i in range(0, len(x), args.batch):
        sess.run(None, {name: x[i:i + args.batch]})
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "session_s": session_s, "samples": len(x),
                      "batches": -(-len(x) // args.batch)}))


if __name__ == "__main__":
    main()
