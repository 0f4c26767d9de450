"""Deploy latency: the exported QDQ model against float in onnxruntime's CPU provider, for each
`qtool export --target`, with the accuracy each costs.

For every model with a quantized pair on disk (the demo classifier from `make demo`, the zoo
models from `make bench-zoo`: per-channel recipe, 06-export), export NAME_qdq.onnx five ways:
`qdq` (the plain export) and `--target ort-cpu` with `--fused-activations` float, bounded, auto
(the default: `ort-cpu`) and integer; report the kernel summary of each, its accuracy against the
float model on the first eval samples (the zoo benchmark's headline metric, and the output SQNR),
and the latency of the six models timed interleaved (qtool.runtime.latency: best of N, threads 1
and all cores, batch 1 and --batch). Writes build/bench/deploy/results.json (--work) and its own
section of docs/benchmarks.md between the markers below (bench_zoo.py keeps it).

    python bench/bench_deploy.py [--models demo,effnet] [--repeat 10] [--batch 8] [--no-doc]
    python bench/bench_deploy.py --zoo /tmp/zoo --demo-pair DIR --demo-data DIR --work /tmp/out --no-doc
        # pairs made elsewhere (bench_zoo.py --work /tmp/zoo; the quickstart recipe with --set output=...)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import docs_page  # noqa: E402

WORK = ROOT / "build" / "bench" / "deploy"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_deploy.py: begin (generated, do not edit) -->", "<!-- bench_deploy.py: end -->"
ZOO = ROOT / "build" / "bench" / "zoo"
DEMO_PAIR, DEMO_DATA = ROOT / "build/recipes/ppocr_cls/quickstart/05-export", ROOT / "build/demo"


def models(zoo: Path = ZOO, demo_pair: Path = DEMO_PAIR, demo_data: Path = DEMO_DATA) -> dict:
    """key: (title, folder of NAME.onnx + NAME.encodings, NAME, eval data), from the zoo benchmark's
    work folder and the demo's pair and data folder."""
    return {
        "demo": ("PP-OCR text-orientation classifier (make demo)", demo_pair, "ppocr_cls", demo_data / "cls_eval.npz"),
        "effnet": ("EfficientNet-Lite0", zoo / "effnet/qtool_per-channel/06-export", "efficientnet_lite0",
                   zoo / "effnet/eval.npz"),
        "layout": ("PicoDet layout detector", zoo / "layout/qtool_per-channel/06-export", "layout_cdla",
                   zoo / "layout/eval.npz"),
        "yolo": ("YOLO-style head", zoo / "yolo/qtool_per-channel/06-export", "yolo_head", zoo / "yolo/eval.npz"),
        "det": ("PP-OCRv4 text detector", zoo / "det/qtool_per-channel/06-export", "ch_PP-OCRv4_det_infer",
                zoo / "det/eval.npz"),
        "rec": ("PP-OCRv4 text recogniser", zoo / "rec/qtool_per-channel/06-export", "ch_PP-OCRv4_rec_infer",
                zoo / "rec/eval.npz"),
        "text": ("MiniLM-L3 sentence encoder", zoo / "text/qtool_per-channel/06-export", "text_encoder",
                 zoo / "text/eval"),
    }


MODELS = models()
VARIANTS = {"qdq": {}, "ort-cpu float": {"target": "ort-cpu", "fused_activations": "float"},
            "ort-cpu bounded": {"target": "ort-cpu", "fused_activations": "bounded"},
            "ort-cpu": {"target": "ort-cpu"}, "ort-cpu integer": {"target": "ort-cpu", "fused_activations": "integer"}}
ACCURACY_SAMPLES = 32


def _export(folder: Path, name: str, out: Path, options: dict) -> dict:
    from qtool.commands.export import ExportOptions, export

    report = export(folder / f"{name}.onnx", out, ExportOptions(encodings=str(folder / f"{name}.encodings"),
                                                                 prefix=name, **options))
    return {"path": str(out / f"{name}_qdq.onnx"), "kernels": report.summary["onnxruntime"],
            "rewrites": report.summary.get("rewrites", {})}


def _snapshot(folder: Path, name: str, to: Path) -> Path:
    """A copy of the pair (NAME.onnx, NAME.encodings), so that every variant comes from the same one."""
    import shutil

    to.mkdir(parents=True, exist_ok=True)
    for suffix in (".onnx", ".encodings"):
        shutil.copyfile(folder / f"{name}{suffix}", to / f"{name}{suffix}")
    return to


def _samples(data: Path) -> list[dict[str, np.ndarray]]:
    """The first eval samples, one feed each: from one npz, or a folder of one-sample npz files."""
    if data.is_dir():
        return [dict(np.load(path)) for path in sorted(data.glob("*.npz"))[:ACCURACY_SAMPLES]]
    arrays = dict(np.load(data))
    count = min(ACCURACY_SAMPLES, len(next(iter(arrays.values()))))
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]


def _outputs(path: str, samples: list[dict]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in samples]


def _sqnr(ref: list, test: list) -> float:
    r, t = (np.concatenate([o[0].astype(np.float64).ravel() for o in outs]) for outs in (ref, test))
    noise = float(((r - t) ** 2).sum())
    return round(float(10 * np.log10((r ** 2).sum() / noise)), 2) if noise else float("inf")


def _headline(key: str, ref: list, test: list, samples: list[dict], data: Path) -> tuple[str, float] | None:
    """The zoo benchmark's own metric against float (bench/zoo_models.py), or the demo's accuracy
    (`data`: its eval file, the labels beside it)."""
    if key == "demo":
        labels = np.load(data.parent / "cls_labels.npy")[:len(test)]
        return "accuracy", round(float(np.mean([o[0].argmax() == label for o, label in zip(test, labels)])), 4)
    import zoo_models

    spec = next(spec for spec in zoo_models.SPECS if spec.key == key)
    extra = {}
    if key == "rec":
        common = zoo_models.C
        _, truths = common.ocr_data.load_split("rec", "eval", limit=len(samples))
        extra = {"truths": truths, "chars": common.ocr_data.load_characters(common.REC_MODEL)}
    data = zoo_models.Data(Path(), Path(), samples, extra)
    scores = spec.score(ref, test, data)
    return spec.headline, round(float(scores[spec.headline]), 4)


def bench_model(key: str, repeat: int, batch: int, table: dict | None = None, work: Path = WORK) -> dict | None:
    from qtool.runtime.latency import load_average, thread_counts, time_models

    title, folder, name, data = (table or MODELS)[key]
    if not (folder / f"{name}.encodings").exists() or not data.exists():
        print(f"{key}: no pair at {folder} (run `make demo` / `make bench-zoo` first): skipped")
        return None
    folder = _snapshot(folder, name, work / key / "pair")  # other runs may rewrite the zoo's pairs meanwhile
    samples = _samples(data)
    float_path = str(folder / f"{name}.onnx")
    reference = _outputs(float_path, samples)
    variants = {}
    for label, options in VARIANTS.items():
        row = _export(folder, name, work / key / label.replace(" ", "-"), options)
        outputs = _outputs(row["path"], samples)
        row["sqnr_db"] = _sqnr(reference, outputs)
        row["metric"], row["score"] = _headline(key, reference, outputs, samples, data) or ("", None)
        variants[label] = row
        print(f"{key} {label}: {row['kernels']}; SQNR vs float {row['sqnr_db']} dB, {row['metric']} "
              f"{row['score']}", flush=True)
    from qtool.ir.graph import load_model
    from qtool.runtime.sessions import max_batch

    fixed = max_batch(load_model(float_path))
    sizes = [fixed] if fixed is not None else sorted({1, batch})
    feeds = {size: {k: np.resize(v, (size, *v.shape[1:])) for k, v in samples[0].items()} for size in sizes}
    paths = {"float": float_path, **{label: row["path"] for label, row in variants.items()}}
    load_before = load_average()
    timings = time_models(paths, feeds, thread_counts(), repeat)
    rows = [{"threads": t.threads, "batch": t.batch, "best_ms": t.best_ms, "median_ms": t.median_ms} for t in timings]
    for row in rows:
        print(f"{key} threads {row['threads']} batch {row['batch']}: " + ", ".join(
            f"{label} {ms:.2f} ms ({row['best_ms']['float'] / ms:.2f}x)" for label, ms in row["best_ms"].items()),
            flush=True)
    return {"title": title, "variants": variants, "rows": rows, "load": [load_before, load_average()]}


def table(results: dict) -> str:
    labels = list(VARIANTS)
    lines = ["| model | threads | batch | float ms | " + " | ".join(f"{label} ms (x)" for label in labels) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in labels) + " |"]
    for result in results.values():
        for row in result["rows"]:
            best = row["best_ms"]
            cells = [f"{best[label]:.2f} ({best['float'] / best[label]:.2f}x)" for label in labels]
            lines.append(f"| {result['title']} | {row['threads']} | {row['batch']} | {best['float']:.2f} | "
                         + " | ".join(cells) + " |")
    lines += ["", "| model | metric (vs float) | " + " | ".join(f"{label}" for label in labels) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in labels) + " |"]
    for result in results.values():
        first = next(iter(result["variants"].values()))
        cells = [f"{v['score']} ({v['sqnr_db']} dB)" for v in result["variants"].values()]
        lines.append(f"| {result['title']} | {first['metric']} (output SQNR) | " + " | ".join(cells) + " |")
    lines += ["", "| model | load | " + " | ".join(f"{label}: kernels" for label in labels) + " |",
              "| --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for result in results.values():
        cells = [v["kernels"].split(": ", 1)[-1] for v in result["variants"].values()]
        lines.append(f"| {result['title']} | {result['load'][0]} -> {result['load'][1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys of " + ", ".join(MODELS))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--zoo", type=Path, default=ZOO, help="bench_zoo.py's work folder (its per-channel pairs)")
    parser.add_argument("--demo-pair", type=Path, default=DEMO_PAIR, help="folder of the demo's exported pair")
    parser.add_argument("--demo-data", type=Path, default=DEMO_DATA, help="folder of cls_eval.npz, cls_labels.npy")
    parser.add_argument("--work", type=Path, default=WORK, help="where the exports and results.json go")
    args = parser.parse_args()
    keys = [key for key in args.models.split(",") if key]
    unknown = [key for key in keys if key not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    start, load = time.time(), os.getloadavg()
    chosen = models(args.zoo, args.demo_pair, args.demo_data)
    results = {key: result for key in keys
               if (result := bench_model(key, args.repeat, args.batch, chosen, args.work)) is not None}
    text = table(results)
    print(text)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc and results:
        header = (f"Generated by `bench/bench_deploy.py` (`make bench-deploy`); run {docs_page.context_line()}; "
                  f"load average {', '.join(f'{v:.2f}' for v in load)} at the start, "
                  f"{(time.time() - start) / 60:.1f} min, best of {args.repeat} interleaved runs. Accuracy against the "
                  f"float model on the first {ACCURACY_SAMPLES} eval samples (the zoo benchmark's headline metric; "
                  f"the demo: accuracy against its labels) and the SQNR of the first output. Exports: `qdq` the "
                  f"plain export, `ort-cpu` = `--target ort-cpu` (`--fused-activations auto`), `ort-cpu float`, "
                  f"`ort-cpu bounded` and `ort-cpu integer` with `--fused-activations float` / `bounded` / "
                  f"`integer` (docs/deploy.md).")
        docs_page.write_section(DOC, BEGIN, END, "## Deploy latency: exported models against float in onnxruntime"
                                f"\n\n{header}\n\n{text}\n")
        print(f"wrote the generated section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
