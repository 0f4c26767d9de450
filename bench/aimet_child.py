"""Runs INSIDE build/aimet-venv (aimet-onnx==2.42.0, torch==2.13.0 CPU): records what AIMET does.

Started by bench/bench_aimet.py, never imported by qtool or its tests (aimet is not one of
qtool's dependencies). One job per run, chosen by --job:

* ``tables`` (bench/aimet_child_tables.py): aimet's quantizer table per model x shipped config,
  with the step of aimet's configuration that set each value;
* ``export``, ``load``, ``diverge`` (bench/aimet_child_roundtrip.py): aimet's own encodings and
  outputs; strict loads of qtool's encodings and the SQNR of aimet's sim with them against qtool's
  QDQ models; where aimet's sim and a QDQ model with the same encodings first part, and the exact
  ties behind it;
* ``speed`` (bench/aimet_child_speed.py): the seconds of aimet's own tf_enhanced calibration, the
  row bench/bench_speed.py sets beside qtool's.

Everything it writes is JSON with sorted keys; the parent turns it into fixtures and the doc.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import aimet_child_roundtrip
import aimet_child_speed
import aimet_child_tables

JOBS = {"tables": aimet_child_tables.job_tables, "export": aimet_child_roundtrip.job_export,
        "load": aimet_child_roundtrip.job_load, "diverge": aimet_child_roundtrip.job_diverge,
        "speed": aimet_child_speed.job_speed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", choices=sorted(JOBS), required=True)
    ap.add_argument("--models", help="tables: JSON list of {name, path, made_by}")
    ap.add_argument("--configs", nargs="*", default=[], help="tables: only these shipped configs (file names)")
    ap.add_argument("--cases", help="export: JSON list of {model, name, config, calib, eval, probe}; "
                                    "load: JSON list of {model, config, encodings, eval, qdq, export_qdq}; "
                                    "diverge: JSON list of {model, config, encodings, qdq, eval}; "
                                    "speed: JSON list of {model, calib, samples, batch}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--versions", nargs="*", default=["1.0.0", "2.0.0"])
    args = ap.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TMPDIR", tmp)
        JOBS[args.job](args)


if __name__ == "__main__":
    main()
