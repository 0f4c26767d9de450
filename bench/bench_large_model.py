"""Peak memory of qtool's commands on a generated model of a chosen size (docs/large_models.md).

Writes a stack of MatMul/Gemm layers with its weights in external data
(sample_models/make_large_model.py), then runs calibrate, simulate, export, adaround (and the
other commands that write models) each in its own process, sampling /proc/self/status every
10 ms from a thread of that process: peak resident memory in all (VmHWM), and its two parts at
their peaks: anonymous memory (the heap: what qtool and onnxruntime allocate) and file-backed
pages (the memory-mapped weights, which the kernel can drop and read again at any time).

    python bench/bench_large_model.py --size 2.2G [--folder build/large] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))

from make_large_model import default_width, make_large_model, parse_size, write_data  # noqa: E402

# runs qtool's CLI in this process while a thread records the peaks of /proc/self/status
PROBE = r"""
import json, sys, threading, time
peaks = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        for key in peaks:
            peaks[key] = max(peaks[key], int(fields[key].split()[0]))
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
from qtool.cli.main import main
start = time.perf_counter()
try:
    try:
        main(sys.argv[2:])
    except SystemExit as exc:
        if exc.code:
            raise
finally:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peaks["VmHWM"] = int(fields["VmHWM"].split()[0])
    peaks["seconds"] = time.perf_counter() - start
    open(sys.argv[1], "w").write(json.dumps(peaks))
"""

COMMANDS = [
    ("calibrate", ["calibrate", "m.onnx", "--data", "d.npz", "--scheme", "minmax", "-o", "out/cal"]),
    ("simulate", ["simulate", "out/cal.onnx", "--data", "d.npz", "-o", "out/sim.onnx"]),
    ("export", ["export", "out/cal.onnx", "-o", "out/exp"]),
    ("adaround", ["adaround", "m.onnx", "--data", "d.npz", "--iterations", "5", "--samples", "8", "-o", "out/ada"]),
    ("fold", ["fold", "m.onnx", "-o", "out/fold.onnx"]),
    ("bias-correct", ["bias-correct", "out/cal.onnx", "--data", "d.npz", "-o", "out/bc"]),
]


def measure(folder: Path, args: list[str]) -> dict:
    result = folder / "peaks.json"
    result.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(result), *args], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"qtool {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2.2G"))
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "large")
    parser.add_argument("--only", help="comma-separated commands (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the model and outputs")
    args = parser.parse_args()
    folder = args.folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "out").mkdir(parents=True)
    start = time.perf_counter()
    make_large_model(folder / "m.onnx", args.size)
    write_data(folder / "d.npz", default_width(args.size))
    size = (folder / "m.onnx.data").stat().st_size
    print(f"model: {size / 2**30:.2f} GiB of weights, written in {time.perf_counter() - start:.0f} s")
    print("| command | seconds | peak RSS | of which anonymous (peak) | file-backed (peak) | anonymous / S |")
    print("|---|---:|---:|---:|---:|---:|")
    only = set(args.only.split(",")) if args.only else None
    try:
        for name, command in COMMANDS:
            if only and name not in only:
                continue
            peaks = measure(folder, command)
            gib = {k: peaks[k] * 1024 / 2**30 for k in ("VmHWM", "RssAnon", "RssFile")}
            print(f"| {name} | {peaks['seconds']:.0f} | {gib['VmHWM']:.2f} GiB | {gib['RssAnon']:.2f} GiB | "
                  f"{gib['RssFile']:.2f} GiB | {peaks['RssAnon'] * 1024 / size:.2f} |", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
