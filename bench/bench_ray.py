"""Speed-up of calibrate --executor ray on a local Ray cluster, against the in-process run.

    python bench/bench_ray.py build/models/efficientnet_lite0.onnx --samples 64 --workers 2 --repeats 2

Calibrates MODEL (sqnr, default config) on random data three ways, in one process: in-process
with onnxruntime on every core (the default), in-process on one thread (QTOOL_THREADS=1: what
one Ray worker gets), and on a local Ray cluster of --workers CPUs (the cluster is started
first, and one run warms its workers up; that run's time is printed apart). Also one plain float
pass over the same batches, every core, as the unit the times are given in. Checks that the
encodings are byte-identical, prints one JSON line with the best of --repeats of each and
`uptime` (the machine may be shared: compare ratios within one run only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--input-shape", action="append", default=[], help="NAME=1x3xHxW for dynamic inputs")
    args = ap.parse_args(argv)

    import ray

    from qtool.commands.inputs import open_model_data
    from qtool.encodings.write import save_encodings
    from qtool.ir.graph import load_model
    from qtool.parallel.executor import RUNTIME_ENV, LocalExecutor, RayExecutor
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.plan.config import load_config
    from qtool.runtime.sessions import make_session
    from qtool.steps.calibrate import calibrate
    from qtool.steps.calibrate_shards import sharded

    graph = load_model(args.model)
    plan = build_plan(graph, load_config("default"), PlanOptions())
    source = open_model_data(graph, "random", samples=args.samples, input_shapes=tuple(args.input_shape))
    batches = list(source.batches(args.batch))
    folder = Path(tempfile.mkdtemp(prefix="bench_ray_"))

    def float_pass() -> float:
        start = time.perf_counter()
        session = make_session(graph)
        for batch in batches:
            session.run(None, batch)
        return time.perf_counter() - start

    def run(label: str, executor) -> tuple[float, bytes]:
        start = time.perf_counter()
        result = calibrate(graph, plan, lambda: iter(batches), observe=sharded(executor))
        seconds = time.perf_counter() - start
        save_encodings(result.encodings, folder / f"{label}.json")
        return seconds, (folder / f"{label}.json").read_bytes()

    def best(label: str, executor) -> tuple[float, bytes]:
        runs = [run(label, executor) for _ in range(args.repeats)]
        return min(s for s, _ in runs), runs[0][1]

    times: dict[str, float] = {"float_pass": min(float_pass() for _ in range(args.repeats))}
    times["in_process"], reference = best("in_process", LocalExecutor())
    os.environ["QTOOL_THREADS"] = "1"
    times["in_process_1_thread"], one_thread = best("one_thread", LocalExecutor())
    del os.environ["QTOOL_THREADS"]
    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, runtime_env=RUNTIME_ENV)
    times["ray_start"] = time.perf_counter() - start
    executor = RayExecutor()
    times["ray_first_run"], first = run("ray_first", executor)
    times["ray"], remote = best("ray", executor)
    ray.shutdown()
    same = reference == one_thread == first == remote
    ratios = {f"{k}_x_float": round(v / times["float_pass"], 2) for k, v in times.items() if k != "ray_start"}
    print(json.dumps({
        "model": str(args.model), "samples": args.samples, "batch": args.batch, "workers": args.workers,
        "seconds": {k: round(v, 2) for k, v in times.items()}, **ratios,
        "speedup_vs_in_process": round(times["in_process"] / times["ray"], 2),
        "speedup_vs_one_thread": round(times["in_process_1_thread"] / times["ray"], 2),
        "encodings_identical": same, "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }))


if __name__ == "__main__":
    main()
