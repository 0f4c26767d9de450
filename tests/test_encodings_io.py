"""Encodings files: round trips, AIMET's field conventions, hand-written files, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from qtool.encodings.encoding_set import EncodingSet, resolve_axes
from qtool.encodings.formats import ENCODING_VERSIONS
from qtool.encodings.read import from_json_dict, load_encodings
from qtool.encodings.write import save_encodings, to_json_dict
from qtool.errors import QtoolError
from qtool.quant.encoding import Encoding, QuantSpec, compute_encoding, float_encoding


def _sample() -> EncodingSet:
    """One of each kind of quantizer the formats must carry."""
    acts = {
        "input": compute_encoding(-1.0, 2.0, QuantSpec(bw=8)),  # asymmetric uint8
        "relu_out": compute_encoding(0.0, 6.0, QuantSpec(bw=8, symmetric=True)),  # unsigned symmetric
        "act4": compute_encoding(-0.5, 3.0, QuantSpec(bw=4)),
        "act16": compute_encoding(-100.0, 7.0, QuantSpec(bw=16)),
        "act16_sym": compute_encoding(-3.0, 9.0, QuantSpec(bw=16, symmetric=True)),
        "act6": compute_encoding(-1.0, 1.0, QuantSpec(bw=6)),
        "half": float_encoding(16),
    }
    params = {
        "conv.weight": Encoding(8, [0.01, 0.02, 0.5], [-128, -128, -128], True, axis=0),
        "fc.weight": compute_encoding(-0.3, 0.7, QuantSpec(bw=8, symmetric=True, strict_symmetric=True)),
        "frozen.weight": Encoding(8, [0.25, 0.125], [-128, -128], True, axis=0, frozen=True),
        "w4": Encoding(4, [0.1], [-8], True),
        "asym_pc": Encoding(8, [0.1, 0.2], [-10, -250], False, axis=0, frozen=True),
    }
    return EncodingSet(acts, params, {"activation_bitwidth": 8, "param_bitwidth": 8, "dtype": "int",
                                      "is_symmetric": True, "per_channel_quantization": True,
                                      "quant_scheme": "post_training_tf"}, ["skip_me"])


def _assert_same(got: dict[str, Encoding], want: dict[str, Encoding]) -> None:
    assert list(sorted(got)) == list(sorted(want))
    for name, enc in want.items():
        assert got[name].same_as(enc), (name, got[name], enc)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1"])
def test_round_trip_legacy_formats(tmp_path, version):
    enc_set = _sample()
    path = tmp_path / "model.encodings"
    save_encodings(enc_set, path, version)
    back = load_encodings(path)
    _assert_same(back.activations, enc_set.activations)
    _assert_same(back.params, enc_set.params)
    assert back.quantizer_args == enc_set.quantizer_args
    assert back.excluded == enc_set.excluded


def test_round_trip_2_0_0(tmp_path):
    enc_set = _sample()
    path = tmp_path / "model.encodings"
    save_encodings(enc_set, path, "2.0.0")
    back = load_encodings(path, param_names=set(enc_set.params))
    # 2.0.0 has no entry for float16 (AIMET treats it as not quantized): everything else is exact.
    want_acts = {n: e for n, e in enc_set.activations.items() if not e.is_float}
    _assert_same(back.activations, want_acts)
    _assert_same(back.params, enc_set.params)
    assert back.quantizer_args == enc_set.quantizer_args
    assert back.excluded == enc_set.excluded


def test_2_0_0_keeps_real_axis_and_guesses_params_from_axis():
    enc_set = EncodingSet({"x": compute_encoding(-1, 1, QuantSpec())},
                          {"deconv.weight": Encoding(8, [0.1, 0.2], [-128, -128], True, axis=1)})
    back = from_json_dict(to_json_dict(enc_set, "2.0.0"))  # no param_names: "axis" means param
    _assert_same(back.params, enc_set.params)
    _assert_same(back.activations, enc_set.activations)


def test_axis_placeholder_and_resolve_axes():
    enc_set = EncodingSet({}, {"deconv.weight": Encoding(8, [0.1, 0.2], [-128, -128], True, axis=1),
                               "bias": Encoding(32, [1e-6], [-(2**31)], True)})
    back = from_json_dict(to_json_dict(enc_set, "1.0.0"))
    assert back.params["deconv.weight"].axis == 0  # 1.0.0 cannot hold the axis
    calls = []
    fixed = resolve_axes(back, lambda name: calls.append(name) or 1)
    assert calls == ["deconv.weight"]  # per-tensor encodings are not asked about
    _assert_same(fixed.params, enc_set.params)
    assert back.params["deconv.weight"].axis == 0  # the input set is not modified


def test_float32_scales_round_trip_bit_exactly():
    rng = np.random.default_rng(0)
    scales = (rng.random(64, dtype=np.float32) * 10.0 ** rng.integers(-8, 3, 64)).astype(np.float32)
    scales = np.maximum(scales, np.float32(1e-30))
    enc = Encoding(8, scales, np.full(64, -128), True, axis=0)
    for version in ENCODING_VERSIONS:
        back = from_json_dict(json.loads(json.dumps(to_json_dict(EncodingSet({}, {"w": enc}), version))),
                              param_names={"w"})
        assert np.array_equal(back.params["w"].scale.view(np.uint32), scales.view(np.uint32)), version


def test_frozen_is_not_stored_on_float_entries():
    enc_set = EncodingSet({"h": float_encoding(16).with_frozen()}, {})
    doc = to_json_dict(enc_set, "1.0.0")
    # AIMET's float reader compares the entry with its float16 template: no extra keys allowed.
    assert doc["activation_encodings"] == [{"name": "h", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16}]
    assert to_json_dict(enc_set, "0.6.1")["activation_encodings"] == {"h": [{"bitwidth": 16, "dtype": "float"}]}
    assert from_json_dict(doc).activations["h"].same_as(float_encoding(16))


# ----------------------------------------------------------------------------- AIMET's field conventions


def test_1_0_0_layout():
    doc = to_json_dict(_sample(), "1.0.0")
    assert doc["version"] == "1.0.0"
    assert doc["producer"]["package"] == "qtool"
    assert doc["excluded_layers"] == ["skip_me"]
    assert doc["quantizer_args"]["quant_scheme"] == "post_training_tf"
    names = [e["name"] for e in doc["param_encodings"]]
    assert names == sorted(names)
    conv = next(e for e in doc["param_encodings"] if e["name"] == "conv.weight")
    assert conv == {"name": "conv.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
                    "scale": [float(np.float32(0.01)), float(np.float32(0.02)), 0.5], "offset": [-128] * 3}
    frozen = next(e for e in doc["param_encodings"] if e["name"] == "frozen.weight")
    assert frozen["frozen"] is True and "frozen" not in conv
    inp = next(e for e in doc["activation_encodings"] if e["name"] == "input")
    assert inp["enc_type"] == "PER_TENSOR" and inp["is_sym"] is False and inp["offset"] == [-85]
    assert all(isinstance(o, int) for e in doc["param_encodings"] for o in e.get("offset", []))


def test_0_6_1_layout():
    doc = to_json_dict(_sample(), "0.6.1")
    assert doc["version"] == "0.6.1" and "producer" not in doc
    conv = doc["param_encodings"]["conv.weight"]
    assert len(conv) == 3
    assert conv[0]["is_symmetric"] == "True" and conv[0]["dtype"] == "int" and conv[0]["bitwidth"] == 8
    assert conv[0]["offset"] == -128
    assert conv[0]["min"] == pytest.approx(-1.28) and conv[0]["max"] == pytest.approx(1.27)
    inp = doc["activation_encodings"]["input"]
    assert inp[0]["is_symmetric"] == "False" and inp[0]["min"] == pytest.approx(-1.0, abs=0.01)


def test_2_0_0_layout():
    doc = to_json_dict(_sample(), "2.0.0")
    assert doc["version"] == "2.0.0" and doc["producer"]["package"] == "qtool"
    entries = {e["name"]: e for e in doc["encodings"]}
    assert list(entries) == sorted(entries)
    assert "half" not in entries  # float16 gets no entry
    # signed symmetric: int8, zero point 0 left out, per-channel axis kept
    assert entries["conv.weight"] == {"name": "conv.weight", "output_dtype": "int8", "axis": 0,
                                      "y_scale": [float(np.float32(0.01)), float(np.float32(0.02)), 0.5]}
    # strict symmetric: offset -127 -> zero point -1; unsigned symmetric: offset 0 -> -128
    assert entries["fc.weight"]["output_dtype"] == "int8" and entries["fc.weight"]["y_zero_point"] == -1
    assert entries["relu_out"]["output_dtype"] == "int8" and entries["relu_out"]["y_zero_point"] == -128
    # asymmetric: unsigned dtype, zp = -offset, scalars per tensor
    assert entries["input"]["output_dtype"] == "uint8" and entries["input"]["y_zero_point"] == 85
    assert isinstance(entries["input"]["y_scale"], float)
    assert entries["act6"]["output_dtype"] == "uint6"  # AIMET writes f"uint{bw}" for any width
    assert entries["act4"]["output_dtype"] == "uint4" and entries["act16"]["output_dtype"] == "uint16"
    assert entries["w4"]["output_dtype"] == "int4" and "y_zero_point" not in entries["w4"]
    assert entries["frozen.weight"]["frozen"] is True


# ----------------------------------------------------------------------------- hand-written files


def _expected_asym() -> tuple[float, int]:
    scale = np.float32(3.0 / 255.0)  # white paper: s = (max - min) / (2^b - 1)
    return scale, int(round(-1.0 / (3.0 / 255.0)))  # offset = round(min / s) = -85


def _check_hand_written(enc_set: EncodingSet) -> None:
    scale, offset = _expected_asym()
    act = enc_set.activations["x"]
    assert offset == -85
    assert act.bw == 8 and not act.symmetric and act.axis is None
    assert act.scale[0] == scale and act.offset[0] == offset
    assert act.min[0] == pytest.approx(-1.0, abs=float(scale)) and act.max[0] == pytest.approx(2.0, abs=float(scale))
    w = enc_set.params["w"]
    # symmetric int8, absmax 1.27: s = 1.27 / 127 = 0.01, offset -128 on the unsigned grid
    assert w.symmetric and not w.strict and w.offset.tolist() == [-128, -128]
    assert w.scale.tolist() == [np.float32(0.01), np.float32(0.02)] and w.axis == 0
    assert w.min[0] == pytest.approx(-1.28) and w.max[0] == pytest.approx(1.27)
    strict = enc_set.params["s"]
    assert strict.strict and strict.qmax == 254 and strict.max[0] == pytest.approx(-strict.min[0])
    assert enc_set.activations["h"].same_as(float_encoding(16))


HAND_WRITTEN = {
    "1.0.0": {
        "version": "1.0.0",
        "activation_encodings": [
            {"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
             "scale": [0.011764705882352941], "offset": [-85]},
            {"name": "h", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16},
        ],
        "param_encodings": [
            {"name": "w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
             "scale": [0.01, 0.02], "offset": [-128.0, -128.0]},  # aimet_onnx writes float offsets
            {"name": "s", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": True,
             "scale": [0.01], "offset": [-127]},
        ],
        "excluded_layers": [],
        "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 8, "dtype": "int",
                           "is_symmetric": True, "per_channel_quantization": True, "quant_scheme": "post_training_tf"},
    },
    "0.6.1": {
        "version": "0.6.1",
        "activation_encodings": {
            "x": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.0, "max": 2.0,
                   "offset": -85.0, "scale": 0.011764705882352941}],
            "h": [{"bitwidth": 16, "dtype": "float"}],
        },
        "param_encodings": {
            "w": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -1.28, "max": 1.27,
                   "offset": -128, "scale": 0.01},
                  {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -2.56, "max": 2.54,
                   "offset": -128, "scale": 0.02}],
            "s": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -1.27, "max": 1.27,
                   "offset": -127, "scale": 0.01}],
        },
        "excluded_layers": [],
    },
    "2.0.0": {
        "version": "2.0.0",
        "encodings": [
            {"name": "x", "output_dtype": "uint8", "y_scale": 0.011764705882352941, "y_zero_point": 85},
            {"name": "h", "output_dtype": "float16"},
            {"name": "w", "output_dtype": "int8", "y_scale": [0.01, 0.02], "axis": 0},
            {"name": "s", "output_dtype": "int8", "y_scale": 0.01, "y_zero_point": -1},
        ],
    },
}


@pytest.mark.parametrize("version", ENCODING_VERSIONS)
def test_hand_written_file(tmp_path, version):
    path = tmp_path / f"hand_{version}.encodings"
    path.write_text(json.dumps(HAND_WRITTEN[version]))
    _check_hand_written(load_encodings(path, param_names={"w", "s"}))


def test_file_without_version_is_aimet_0_4_0():
    doc = {"activation_encodings": {"x": [{"bitwidth": 8, "is_symmetric": "False", "min": -1.0, "max": 2.0,
                                           "offset": -85, "scale": 0.011764705882352941}]},
           "param_encodings": {}}
    enc = from_json_dict(doc).activations["x"]
    assert enc.offset.tolist() == [-85] and enc.scale[0] == _expected_asym()[0]


def test_2_0_0_signed_container_with_odd_zero_point_is_asymmetric():
    doc = {"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": 0.1, "y_zero_point": 5}]}
    enc = from_json_dict(doc).activations["x"]
    assert not enc.symmetric and enc.offset.tolist() == [-133]  # q_u = q_s + 128 -> offset = -zp - 128


# ----------------------------------------------------------------------------- cross-format


def test_cross_format_1_0_0_to_2_0_0(tmp_path):
    enc_set = _sample()
    first, second = tmp_path / "a.encodings", tmp_path / "b.encodings"
    save_encodings(enc_set, first, "1.0.0")
    loaded = load_encodings(first)
    save_encodings(loaded, second, "2.0.0")
    again = load_encodings(second, param_names=set(loaded.params))
    _assert_same(again.params, enc_set.params)
    _assert_same(again.activations, {n: e for n, e in enc_set.activations.items() if not e.is_float})


def test_cross_format_0_6_1_to_1_0_0_is_byte_identical(tmp_path):
    enc_set = _sample()
    save_encodings(enc_set, tmp_path / "old.encodings", "0.6.1")
    save_encodings(load_encodings(tmp_path / "old.encodings"), tmp_path / "a.encodings")
    save_encodings(enc_set, tmp_path / "b.encodings")
    assert (tmp_path / "a.encodings").read_bytes() == (tmp_path / "b.encodings").read_bytes()


# ----------------------------------------------------------------------------- determinism and atomicity


@pytest.mark.parametrize("version", ENCODING_VERSIONS)
def test_two_saves_are_byte_identical(tmp_path, version):
    enc_set = _sample()
    reordered = EncodingSet(dict(reversed(enc_set.activations.items())), dict(reversed(enc_set.params.items())),
                            dict(reversed(enc_set.quantizer_args.items())), list(enc_set.excluded))
    save_encodings(enc_set, tmp_path / "a.encodings", version)
    save_encodings(reordered, tmp_path / "b.encodings", version)
    save_encodings(enc_set, tmp_path / "a.encodings", version)  # overwrite in place
    data = (tmp_path / "a.encodings").read_bytes()
    assert data == (tmp_path / "b.encodings").read_bytes()
    assert data.endswith(b"}\n") and b"\n  \"" in data  # indent=2
    assert sorted(os.listdir(tmp_path)) == ["a.encodings", "b.encodings"]  # no temp files left


def test_save_creates_missing_folders_like_every_other_output(tmp_path):
    path = tmp_path / "new" / "m.encodings"
    save_encodings(_sample(), path)
    assert path.is_file() and os.listdir(path.parent) == ["m.encodings"]


def test_save_where_a_file_blocks_the_folder_names_the_path(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    path = tmp_path / "blocker" / "m.encodings"
    with pytest.raises(QtoolError, match="m.encodings.*cannot write"):
        save_encodings(_sample(), path)


# ----------------------------------------------------------------------------- errors


def _error_for(tmp_path, text: str, **kwargs) -> str:
    path = tmp_path / "broken.encodings"
    path.write_text(text)
    with pytest.raises(QtoolError) as info:
        load_encodings(path, **kwargs)
    message = str(info.value)
    assert "broken.encodings" in message and "\n" not in message
    return message


def test_error_bad_json(tmp_path):
    assert "not valid JSON" in _error_for(tmp_path, '{"version": "1.0.0", ')


def test_error_unknown_version(tmp_path):
    assert "'9.9.9'" in _error_for(tmp_path, json.dumps({"version": "9.9.9"}))


@pytest.mark.parametrize("version", ENCODING_VERSIONS)
def test_error_missing_scale(tmp_path, version):
    doc = json.loads(json.dumps(HAND_WRITTEN[version]))
    if version == "1.0.0":
        del doc["activation_encodings"][0]["scale"]
    elif version == "0.6.1":
        del doc["activation_encodings"]["x"][0]["scale"]
    else:
        del doc["encodings"][0]["y_scale"]
    message = _error_for(tmp_path, json.dumps(doc))
    assert "scale' is missing" in message and "'x'" in message


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": "False",
          "scale": [0.1], "offset": [0]}, "'is_sym' must be true or false"),
        ({"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
          "scale": ["0.1"], "offset": [0]}, "'scale' must be a number"),
        ({"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
          "scale": [0.0], "offset": [0]}, "positive"),
        ({"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
          "scale": [0.1], "offset": [3]}, "contain zero"),
        ({"name": "x", "dtype": "INT", "enc_type": "PER_BLOCK", "bw": 4, "is_sym": True,
          "scale": [0.1], "offset": [-8], "block_size": 32}, "PER_BLOCK"),
        ({"dtype": "INT"}, "'name' is missing"),
    ],
)
def test_error_ill_typed_1_0_0_fields(tmp_path, entry, words):
    doc = {"version": "1.0.0", "activation_encodings": [entry], "param_encodings": []}
    assert words in _error_for(tmp_path, json.dumps(doc))


def test_error_missing_file(tmp_path):
    with pytest.raises(QtoolError, match="absent.encodings"):
        load_encodings(tmp_path / "absent.encodings")


def test_error_2_0_0_vector_without_axis(tmp_path):
    doc = {"version": "2.0.0", "encodings": [{"name": "w", "output_dtype": "int8", "y_scale": [0.1, 0.2]}]}
    assert "'axis' is missing" in _error_for(tmp_path, json.dumps(doc))


def test_error_duplicate_name(tmp_path):
    entry = {"name": "x", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16}
    doc = {"version": "1.0.0", "activation_encodings": [entry], "param_encodings": [entry]}
    assert "both" in _error_for(tmp_path, json.dumps(doc))


def test_unknown_version_on_write():
    with pytest.raises(QtoolError, match="3.0.0"):
        to_json_dict(EncodingSet(), "3.0.0")
