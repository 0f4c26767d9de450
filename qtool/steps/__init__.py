"""One module per user-facing job. A step reads nothing from disk and prints nothing: it takes
models, encodings and batches, and returns results; the CLI and recipes do the IO.

Constants the CLI offers as choices live here, not in their (heavier) step modules: building the
command tree then imports no ONNX."""

RELU6_MODES = ("replace", "keep", "bound")  # equalize: what becomes of ReLU6 (see steps.equalize)
