"""Build qtool's bad-input corpus into a folder: small models, data, labels, encodings and metric
files that a user can get wrong, each a `Case` that says which commands it applies to and what
the one-line error must name.

Nothing here is committed as binary: every file is written by this script (seeded, so the
corpus is the same on every run). `tests/test_bad_inputs.py` runs every case through every
command it applies to and asserts exit 2, one stderr line naming the file or key, no traceback,
no output left and inputs unchanged.

    python tests/corpus/build_corpus.py OUT_DIR     # writes the corpus, prints its cases
"""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_models import (SAMPLES, embedding_model, good_data, nan_constant_model, reshape_model,  # noqa: E402
                           seg_model, tiny_model)

DATA_COMMANDS = ("calibrate", "simulate", "equalize", "bias-correct", "adaround", "analyze", "mixed-precision",
                 "info")
MODEL_COMMANDS = DATA_COMMANDS + ("export", "fold", "plot-ranges")
RUNTIME_COMMANDS = ("calibrate", "simulate", "bias-correct", "adaround", "analyze", "mixed-precision", "export")
ENCODINGS_COMMANDS = ("calibrate", "simulate", "bias-correct", "adaround", "analyze", "export")
# equalize reads data only for the layer pairs it scales: models without one do not read it
PAIRLESS_DATA_COMMANDS = tuple(c for c in DATA_COMMANDS if c != "equalize")
LABEL_COMMANDS = ("simulate", "analyze", "mixed-precision")
METRIC_COMMANDS = ("analyze", "mixed-precision")


@dataclass(frozen=True)
class Case:
    """One bad input: `build(folder)` writes it and returns what replaces the good files (keys:
    model, data, encodings, labels, metric, preprocess); `named` must appear in the error line."""

    name: str
    kind: str
    build: Callable[[Path], dict]
    named: str
    commands: tuple[str, ...]


# ----------------------------------------------------------------------------- good base files


def build_base(folder: Path) -> dict:
    """The good files every case starts from; models get a calibrated sibling encodings file."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model": tiny_model(folder / "tiny.onnx"), "data": folder / "tiny.npz", "labels": folder / "labels.npy"}
    np.savez(base["data"], input=good_data())
    np.save(base["labels"], np.arange(SAMPLES, dtype=np.int64) % 5)
    seg_model(folder / "seg.onnx")
    shutil.copy(Path(__file__).resolve().parents[2] / "sample_models" / "two_inputs.onnx", folder / "two.onnx")
    rng = np.random.default_rng(4)
    np.savez(folder / "two.npz", image=rng.standard_normal((4, 3, 16, 16)).astype(np.float32),
             features=rng.standard_normal((4, 8)).astype(np.float32))
    reshape_model(folder / "reshape.onnx")
    np.savez(folder / "reshape.npz", x=np.ones((4, 6), np.float32))
    embedding_model(folder / "emb.onnx")
    embedding_model(folder / "emb-add.onnx", indirect=True)
    np.savez(folder / "ids.npz", ids=np.arange(24, dtype=np.int64).reshape(4, 6) % 10)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    _png(images / "a.png")
    return base


def calibrate_base(folder: Path, run: Callable[[list[str]], int]) -> None:
    """Sibling encodings for the base models (`run` is qtool's CLI: args -> exit code)."""
    for model, data in (("tiny", "tiny.npz"), ("seg", "tiny.npz"), ("reshape", "reshape.npz"), ("two", "two.npz"), ("emb", "ids.npz"),
                        ("emb-add", "ids.npz")):
        staged = folder / "calibrated" / model
        code = run(["calibrate", str(folder / f"{model}.onnx"), "--data", str(folder / data), "--scheme", "minmax",
                    "--config", "w8a8-per-channel", "-o", str(staged)])
        assert code == 0, f"calibrating the corpus base model {model} failed"
        shutil.move(staged.with_suffix(".encodings.json"), folder / f"{model}.encodings.json")
    shutil.rmtree(folder / "calibrated")


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)


# ----------------------------------------------------------------------------- the cases


def _write(name: str, payload: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(payload)
        return folder / name
    return make


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _huge_header() -> bytes:
    """An .npy whose header claims 10^9 samples of 3x8x8 float32 but holds one."""
    return _header_only((10**9, 3, 8, 8)) + good_data(1).tobytes()


def _bad_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.npy", b"\x93NUMPY garbage that is no header")
    return buffer.getvalue()


def _crc_broken() -> bytes:
    """A compressed .npz whose deflated data is damaged after the array header."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, input=good_data())
    raw = bytearray(buffer.getvalue())
    start = raw.index(b"input.npy") + len("input.npy") + 200
    for i in range(start, start + 64):
        raw[i] ^= 0x5A
    return bytes(raw)


def _data(name: str, payload: Callable[[], bytes], named: str | None = None,
          commands: tuple[str, ...] = DATA_COMMANDS, **extra) -> Case:
    filename = name.replace("_", "-") + (".npy" if name.startswith("npy") else ".npz")
    return Case(name, "data", lambda f: {"data": _write(filename, payload())(f), **{k: f / v for k, v in extra.items()}},
                named or filename, commands)


def _folder_with_subdir(folder: Path) -> dict:
    target = folder / "with-subdir"
    (target / "more.npz").mkdir(parents=True, exist_ok=True)
    np.savez(target / "a.npz", input=good_data())
    return {"data": target}


def _image_folder(name: str, payload: bytes) -> Callable[[Path], dict]:
    def make(folder: Path) -> dict:
        target = folder / f"images-{name}"
        target.mkdir(exist_ok=True)
        _png(target / "a.png")
        (target / f"b-{name}.png").write_bytes(payload)
        return {"data": target, "preprocess": "size=8x8"}
    return make


def _preprocess(name: str, spec: str, named: str) -> Case:
    return Case(name, "preprocess", lambda f: {"data": f / "images", "preprocess": spec}, named, DATA_COMMANDS)


def _labels(name: str, array, named: str | None = None, suffix: str = ".npy", model: str | None = None) -> Case:
    filename = f"labels-{name.replace('_', '-')}{suffix}"

    def make(folder: Path) -> dict:
        payload = array if isinstance(array, bytes) else _npy_bytes(np.asarray(array), allow_pickle=True)
        out = {"labels": _write(filename, payload)(folder)}
        return {**out, "model": folder / model} if model else out
    return Case(name, "labels", make, named or filename, LABEL_COMMANDS)


def _metric(name: str, body: str, function: str = "score", named: str | None = None) -> Case:
    filename = f"metric_{name}.py"

    def make(folder: Path) -> dict:
        (folder / filename).write_text(body)
        return {"metric": f"{folder / filename}:{function}"}
    return Case(f"metric_{name}", "metric", make, named or filename, METRIC_COMMANDS)


def _model_case(name: str, make: Callable[[Path], Path], named: str, commands=MODEL_COMMANDS,
                sibling_encodings: bool = False) -> Case:
    def build(folder: Path) -> dict:
        path = make(folder)
        if sibling_encodings:
            shutil.copy(folder / "tiny.encodings.json", path.with_suffix(".encodings.json"))
        return {"model": path}
    return Case(name, "model", build, named, commands)


def _encodings(name: str, edit: Callable[[dict], None], named: str = None) -> Case:
    filename = f"enc-{name.replace('_', '-')}.encodings.json"

    def build(folder: Path) -> dict:
        import json

        doc = json.loads((folder / "tiny.encodings.json").read_text())
        edit(doc)
        (folder / filename).write_text(json.dumps(doc))
        return {"encodings": folder / filename}
    return Case(name, "encodings", build, named or filename, ENCODINGS_COMMANDS)


def _param(doc: dict, name: str) -> dict:
    return next(e for e in doc["param_encodings"] if e["name"] == name)


def _short_channels(doc: dict) -> None:
    entry = _param(doc, "conv1.weight")
    entry["scale"], entry["offset"] = entry["scale"][:3], entry["offset"][:3]


def _per_channel_activation(doc: dict) -> None:
    entry = next(e for e in doc["activation_encodings"] if e["name"] == "r1")
    entry.update(enc_type="PER_CHANNEL", scale=entry["scale"] * 4, offset=entry["offset"] * 4)


def _legacy_short(folder: Path) -> Path:
    """The base encodings in AIMET 0.6.1 form, conv2.weight with a channel too many."""
    from qtool.encodings.read import load_encodings
    from qtool.encodings.write import save_encodings

    enc = load_encodings(folder / "tiny.encodings.json")
    weight = enc.params["conv2.weight"]
    enc.params["conv2.weight"] = type(weight)(weight.bw, np.append(weight.scale, weight.scale[:1]),
                                              np.append(weight.offset, weight.offset[:1]), weight.symmetric,
                                              weight.dtype, weight.axis, weight.frozen)
    path = folder / "enc-0.6.1-long.encodings.json"
    save_encodings(enc, path, "0.6.1")
    return path


def _npz_dir_as_text(folder: Path) -> dict:
    (folder / "notes.npz").write_text("input,1,2,3\n" * 10)
    return {"data": folder / "notes.npz"}


CASES: list[Case] = [
    # data files
    _data("npz_truncated", lambda: _npz_bytes(input=good_data())[:300]),
    _data("npz_empty", lambda: b""),
    Case("npz_text", "data", _npz_dir_as_text, "notes.npz", DATA_COMMANDS),
    _data("npz_pickled", lambda: _npz_bytes(input=np.array([{"a": 1}] * SAMPLES, dtype=object))),
    _data("npz_bad_member", _bad_member),
    _data("npz_crc_broken", _crc_broken),
    _data("npz_scalar", lambda: _npz_bytes(input=np.float32(1.0))),
    _data("npz_zero_samples", lambda: _npz_bytes(input=np.zeros((0, 3, 8, 8), np.float32))),
    _data("npz_wrong_key", lambda: _npz_bytes(image=good_data(), extra=good_data()), named="'input'"),
    _data("npz_wrong_shape", lambda: _npz_bytes(input=np.zeros((SAMPLES, 3, 4, 4), np.float32))),
    _data("npz_strings", lambda: _npz_bytes(input=np.array(["a"] * SAMPLES))),
    _data("npz_all_nan", lambda: _npz_bytes(input=np.full((SAMPLES, 3, 8, 8), np.nan, np.float32)), named="'input'"),
    _data("npz_inf", lambda: _npz_bytes(input=np.where(good_data() > 2.5, np.inf, good_data())), named="'input'"),
    _data("npz_empty_array", lambda: _npz_bytes(x=np.zeros((4, 0), np.float32)), named="'x'",
          model="reshape.onnx"),
    _data("npz_two_counts", lambda: _npz_bytes(image=np.ones((4, 3, 16, 16), np.float32),
                                               features=np.ones((3, 8), np.float32)), model="two.onnx"),
    _data("npz_two_wrong_key", lambda: _npz_bytes(image=np.ones((4, 3, 16, 16), np.float32),
                                                  feats=np.ones((4, 8), np.float32)), named="'features'", model="two.onnx"),
    _data("npy_truncated", lambda: _npy_bytes(good_data())[:1000]),
    _data("npy_empty", lambda: b""),
    _data("npy_text", lambda: b"1.0 2.0 3.0\n" * 40),
    _data("npy_pickled", lambda: _npy_bytes(np.array([{"a": 1}] * SAMPLES, dtype=object), allow_pickle=True)),
    _data("npy_huge_header", _huge_header),
    _data("npy_scalar", lambda: _npy_bytes(np.float32(1.0))),
    _data("npy_negative_dim", lambda: _header_only((-4, 3, 8, 8)) + bytes(64)),
    _data("npz_complex", lambda: _npz_bytes(input=good_data().astype(np.complex64)), named="'input'"),
    _data("npz_float_ids", lambda: _npz_bytes(ids=np.full((4, 6), 1.5, np.float32)), named="'ids'",
          commands=PAIRLESS_DATA_COMMANDS, model="emb.onnx"),
    _data("npy_zero_samples", lambda: _npy_bytes(np.zeros((0, 3, 8, 8), np.float32))),
    Case("folder_with_subdir", "data", _folder_with_subdir, "more.npz", DATA_COMMANDS),
    Case("folder_empty", "data", lambda f: {"data": (f / "empty-folder").mkdir(exist_ok=True) or f / "empty-folder"},
         "empty-folder", DATA_COMMANDS),
    Case("data_missing", "data", lambda f: {"data": f / "missing.npz"}, "missing.npz", DATA_COMMANDS),
    Case("data_csv", "data", lambda f: {"data": _write("calib.csv", b"1,2,3\n")(f)}, "calib.csv", DATA_COMMANDS),
    Case("runtime_reshape", "data", lambda f: {"model": f / "reshape.onnx", "data": _write(
        "rows-of-4.npz", _npz_bytes(x=np.ones((4, 4), np.float32)))(f)}, "reshape",
         PAIRLESS_DATA_COMMANDS),
    _data("npz_ids_beyond_table", lambda: _npz_bytes(ids=np.full((4, 6), 12, np.int64)), named="'ids'",
          commands=PAIRLESS_DATA_COMMANDS, model="emb.onnx"),
    Case("runtime_gather", "data", lambda f: {"model": f / "emb-add.onnx", "data": _write(
        "ids-beyond-table.npz", _npz_bytes(ids=np.full((4, 6), 12, np.int64)))(f)}, "gather",
         PAIRLESS_DATA_COMMANDS),
    # images and --preprocess
    Case("image_corrupt", "data", _image_folder("corrupt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "b-corrupt.png",
         DATA_COMMANDS),
    Case("image_text", "data", _image_folder("text", b"not an image at all\n"), "b-text.png", DATA_COMMANDS),
    _preprocess("preprocess_size_word", "size=abc", "size"),
    _preprocess("preprocess_size_zero", "size=0x0", "size"),
    _preprocess("preprocess_mean_word", "mean=grey", "mean"),
    _preprocess("preprocess_mean_two", "mean=1/2", "mean"),
    _preprocess("preprocess_std_zero", "std=0", "std"),
    _preprocess("preprocess_layout", "layout=CHW", "layout"),
    _preprocess("preprocess_key", "colour=RGB", "colour"),
    _preprocess("preprocess_shape", "size=16x16", "input"),
    # labels
    _labels("short", np.arange(SAMPLES - 2) % 5),
    _labels("long", np.arange(SAMPLES + 3) % 5),
    _labels("matrix", np.zeros((SAMPLES, 2), np.int64)),
    _labels("float", np.linspace(0, 1, SAMPLES)),
    _labels("out_of_range", np.full(SAMPLES, 7, np.int64)),
    _labels("negative", np.full(SAMPLES, -1, np.int64)),
    _labels("pickled", np.array([1] * SAMPLES, dtype=object)),
    _labels("truncated", _npy_bytes(np.arange(SAMPLES, dtype=np.int64))[:100]),
    _labels("text", b"one\ntwo\nthree\n", suffix=".txt"),
    _labels("empty", b"", suffix=".txt"),
    _labels("archive", _npz_bytes(labels=np.zeros(SAMPLES, np.int64)), suffix=".npy"),
    _labels("not_classifier", np.zeros(SAMPLES, np.int64), named="'out'", model="seg.onnx"),
    # user metrics
    _metric("raises", "def score(outputs, reference, labels):\n    return 1 / 0\n", named="ZeroDivisionError"),
    _metric("nan", "def score(outputs, reference, labels):\n    return float('nan')\n"),
    _metric("string", "def score(outputs, reference, labels):\n    return 'good'\n"),
    _metric("syntax", "def score(outputs, reference, labels)\n    return 1\n"),
    _metric("import", "import no_such_module_for_qtool\n"),
    _metric("missing_function", "def other(outputs, reference, labels):\n    return 1.0\n", function="score"),
    # models
    _model_case("model_nan_weight", lambda f: tiny_model(f / "nan-weight.onnx", weight_fault=np.nan), "conv1.weight"),
    _model_case("model_inf_weight", lambda f: tiny_model(f / "inf-weight.onnx", weight_fault=np.inf), "conv1.weight"),
    _model_case("model_custom_op", lambda f: tiny_model(f / "custom-op.onnx", custom_op=True), "com.example",
                commands=RUNTIME_COMMANDS, sibling_encodings=True),
    _model_case("model_nan_constant", lambda f: nan_constant_model(f / "nan-constant.onnx"), "offset"),
    _model_case("model_truncated", lambda f: _write("cut.onnx", (f / "tiny.onnx").read_bytes()[:700])(f), "cut.onnx"),
    _model_case("model_empty", lambda f: _write("empty.onnx", b"")(f), "empty.onnx"),
    _model_case("model_text", lambda f: _write("text.onnx", b"ir_version: 8\n" * 30)(f), "text.onnx"),
    # encodings
    _encodings("short_channels", _short_channels, named="conv1.weight"),
    _encodings("per_channel_activation", _per_channel_activation, named="r1"),
    _encodings("unknown_tensor", lambda d: _param(d, "fc.weight").update(name="fc.weights"), named="fc.weights"),
    _encodings("nan_scale", lambda d: _param(d, "fc.weight").update(scale=[float("nan")] * 5), named="fc.weight"),
    Case("encodings_0_6_1_short", "encodings", lambda f: {"encodings": _legacy_short(f)}, "conv2.weight",
         ENCODINGS_COMMANDS),
    _encodings("bitwidth", lambda d: _param(d, "fc.weight").update(bw=1), named="fc.weight"),
    _encodings("not_a_list", lambda d: d.update(param_encodings={"a": 1}), named="param_encodings"),
    Case("encodings_empty", "encodings", lambda f: {"encodings": _write("empty.encodings.json", b"")(f)},
         "empty.encodings.json", ENCODINGS_COMMANDS),
    Case("encodings_folder", "encodings",
         lambda f: {"encodings": (f / "enc-folder").mkdir(exist_ok=True) or f / "enc-folder"}, "enc-folder",
         ENCODINGS_COMMANDS),
]


def build(folder: Path, run: Callable[[list[str]], int]) -> dict[str, dict]:
    """Write the base files and every case into `folder`; case name -> its files."""
    build_base(folder)
    calibrate_base(folder, run)
    return {case.name: case.build(folder) for case in CASES}


if __name__ == "__main__":
    from qtool.cli import main

    def _run(args: list[str]) -> int:
        try:
            main(args)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/corpus")
    built = build(out, _run)
    for case in CASES:
        print(f"{case.kind:11} {case.name:28} {', '.join(case.commands)}")
    print(f"{len(CASES)} cases in {out}")
