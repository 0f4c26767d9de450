"""Block-wise 4-bit weights on the zoo's transformer encoders: RTN against GPTQ per block size,
model sizes, and onnxruntime latency of the MatMulNBits export against the float model.

For each model (MiniLM-L3 sentence encoder `text`, ViT-S saliency `vit`; bench/zoo_models.py has
their data and metrics) and each weight granularity (per channel, blocks of 32 / 64 / 128 inputs;
`--config w4-weight-only`, symmetric 4-bit MatMul weights, activations float), it calibrates with
`--weight-rounding nearest` and `gptq` on the calibration samples, simulates on held-out samples
(the QDQ model as `qtool simulate` runs it) and scores against the float model: the headline is
the mean cosine of the outputs (text: mean-pooled embeddings; vit: the heatmap). It then exports
the block-32 GPTQ pair as MatMulNBits and times it against the float model in one interleaved
run (best of N, 1 thread and all cores, batch 1), next to the file sizes.

    python bench/bench_blockwise.py            # full run: rewrites the table in docs/blockwise.md
    python bench/bench_blockwise.py --quick    # smoke run (fewer samples), bench/out/ only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import docs_page  # noqa: E402
import zoo_models  # noqa: E402

from qtool.commands.inputs import load_pair  # noqa: E402
from qtool.commands.registry import COMMANDS  # noqa: E402
from qtool.commands.report import quiet  # noqa: E402
from qtool.ir.qdq import build_qdq_model  # noqa: E402
from qtool.runtime.latency import load_average, time_models  # noqa: E402
from qtool.runtime.sessions import make_session  # noqa: E402

OUT = C.ROOT / "bench" / "out" / "blockwise"
DOC = C.ROOT / "docs" / "blockwise.md"
BEGIN, END = "<!-- bench_blockwise: begin -->", "<!-- bench_blockwise: end -->"
GRANULARITIES = (None, 32, 64, 128)  # None: per channel
SAMPLES = {"text": (128, 100), "vit": (64, 48)}  # (calibration, held-out)


def _run(model, feeds: list[dict]) -> list[list[np.ndarray]]:
    session = make_session(model, simulate=True)
    return [session.run(None, feed) for feed in feeds]


def _calibrate(spec, model: Path, data, prefix: Path, block: int | None, rounding: str, n_cal: int) -> float:
    options = {"data": str(data.calib), "config": "w4-weight-only", "weight_rounding": rounding,
               "samples": n_cal, "encoding_version": "2.0.0"}
    if block:
        options["weight_block_size"] = block
    if spec.qtool_batch:
        options["batch_size"] = spec.qtool_batch
    start = time.perf_counter()
    COMMANDS["calibrate"](model, prefix, progress=quiet, **options)
    return time.perf_counter() - start


def bench_model(key: str, quick: bool) -> dict:
    spec = next(s for s in zoo_models.SPECS if s.key == key)
    n_cal, n_eval = (16, 16) if quick else SAMPLES[key]
    work = OUT / key
    work.mkdir(parents=True, exist_ok=True)
    model = spec.model()
    data = spec.data(work / "data", n_cal, n_eval)
    float_graph = load_pair_free(model)
    reference = _run(float_graph, data.feeds)
    rows = []
    for block in GRANULARITIES:
        for rounding in ("nearest", "gptq"):
            prefix = work / f"w4_{block or 'pc'}_{rounding}"
            seconds = _calibrate(spec, model, data, prefix, block, rounding, n_cal)
            graph, encodings, source = load_pair(f"{prefix}.onnx", None)
            test = _run(build_qdq_model(graph, encodings, source=source), data.feeds)
            scores = spec.score(reference, test, data)
            rows.append({"block": block, "rounding": rounding, "seconds": round(seconds, 1),
                         **{k: round(float(v), 5) for k, v in scores.items()}})
            print(key, block or "per-channel", rounding, rows[-1], flush=True)
    best = work / "w4_32_gptq"
    exports = {}
    for target in ("qdq", "matmulnbits"):
        folder = work / f"export_{target}"
        COMMANDS["export"](f"{best}.onnx", folder, target=target, encoding_version="2.0.0")
        exports[target] = folder / "model_qdq.onnx"
    nbits_graph = load_pair_free(exports["matmulnbits"])
    nbits_out = [make_session(nbits_graph).run(None, feed) for feed in data.feeds]
    nbits_scores = spec.score(reference, nbits_out, data)
    feed = data.feeds[0]
    if key == "vit":
        feed = {k: v[:1] for k, v in feed.items()}
    timings = time_models({"float": str(model), "matmulnbits": str(exports["matmulnbits"])}, {1: feed},
                          [1, __import__("os").cpu_count() or 1], 5 if quick else 20)
    sizes = {"float_mb": model.stat().st_size / 1e6, "matmulnbits_mb": exports["matmulnbits"].stat().st_size / 1e6,
             "dq_int4_mb": exports["qdq"].stat().st_size / 1e6}
    return {"model": spec.title, "key": key, "samples": [n_cal, n_eval], "headline": spec.headline, "rows": rows,
            "matmulnbits_scores": {k: round(float(v), 5) for k, v in nbits_scores.items()},
            "sizes": {k: round(v, 2) for k, v in sizes.items()},
            "latency": [{"threads": t.threads, "float_ms": t.best_ms["float"], "matmulnbits_ms": t.best_ms["matmulnbits"],
                         "ratio": round(t.best_ms["matmulnbits"] / t.best_ms["float"], 2)} for t in timings],
            "load": load_average()}


def load_pair_free(path: Path):
    from qtool.ir.graph import load_model

    return load_model(path)


def table(results: list[dict]) -> str:
    lines = ["| model | weights | cosine RTN | cosine GPTQ | SQNR RTN / GPTQ (dB) | GPTQ time (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for res in results:
        by = {(r["block"], r["rounding"]): r for r in res["rows"]}
        for block in GRANULARITIES:
            rtn, gptq = by[(block, "nearest")], by[(block, "gptq")]
            name = "per channel" if block is None else f"block {block}"
            lines.append(f"| {res['model']} | W4 {name} | {rtn['cosine']:.4f} | {gptq['cosine']:.4f} | "
                         f"{rtn['sqnr_db']:.1f} / {gptq['sqnr_db']:.1f} | {gptq['seconds']:.0f} |")
    lines += ["", "| model | float | W4 block 32 as DequantizeLinear (int4) | as MatMulNBits | cosine of the "
              "MatMulNBits export | latency MatMulNBits / float, 1 thread | all cores | load |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        lat = {t["threads"]: t for t in res["latency"]}
        one, many = lat[min(lat)], lat[max(lat)]
        lines.append(f"| {res['model']} | {res['sizes']['float_mb']:.1f} MB | {res['sizes']['dq_int4_mb']:.1f} MB | "
                     f"{res['sizes']['matmulnbits_mb']:.1f} MB | {res['matmulnbits_scores']['cosine']:.4f} | "
                     f"{one['ratio']:.2f}x ({one['matmulnbits_ms']:.1f} / {one['float_ms']:.1f} ms) | "
                     f"{many['ratio']:.2f}x | {res['load']} |")
    samples = "; ".join(f"{r['model']}: {r['samples'][0]} calibration, {r['samples'][1]} held-out samples"
                        for r in results)
    return (f"Run: {docs_page.context_line()}. {samples}.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="text,vit")
    args = parser.parse_args()
    results = [bench_model(key, args.quick) for key in args.models.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    print(text)
    if not args.quick and args.models == "text,vit":
        docs_page.write_section(DOC, BEGIN, END, text)


if __name__ == "__main__":
    main()
