"""AIMET encodings formats 1.0.0, 0.6.1 and 2.0.0: what each holds, and what none can.

Writing them is `qtool.encodings.write`, reading (and validating) them `qtool.encodings.read`;
the set of encodings they hold is `qtool.encodings.encoding_set.EncodingSet`.

The encodings file is the half of a quantized model that other tools consume (AIMET's
``load_encodings_to_sim``, QNN converters), so we write exactly what AIMET writes; the field
names and value types follow aimet_onnx (``qc_quantize_op.py`` ``export_encodings``,
``quantsim.py`` ``_export_encodings``) and aimet_torch (``_export_to_1_0_0``):

* 1.0.0 (default): ``activation_encodings``/``param_encodings`` are lists of
  ``{name, dtype: INT|FLOAT, enc_type, bw, is_sym, scale: [..], offset: [..]}``; offsets are on
  the unsigned grid (signed symmetric int8 -> -128), ``is_sym`` is a JSON boolean.
* 0.6.1 (legacy): the same two keys map name -> list of per-channel dicts
  ``{bitwidth, dtype: int|float, is_symmetric: "True"|"False" (strings), min, max, offset, scale}``.
* 2.0.0: one list ``encodings`` of onnx::QuantizeLinear-style entries ``{name, output_dtype,
  y_scale, y_zero_point?, axis?}``. AIMET picks a signed ``output_dtype`` exactly when the
  quantizer is symmetric, and writes ``int{bw}``/``uint{bw}`` for any bit-width (``int6`` too);
  ``y_zero_point = -offset - 2^(b-1)`` for signed dtypes and ``-offset`` for unsigned ones, left
  out when all zero. Float16 quantizers are not quantizers in 2.0.0 and get no entry (AIMET).

What the formats cannot hold:

* The per-channel axis (1.0.0/0.6.1): readers return ``axis=0`` as a placeholder for per-channel
  encodings; call :func:`resolve_axes` with the graph's knowledge (ConvTranspose weights: 1).
  A 0.6.1 per-channel encoding with a single channel reads back as per tensor.
* Param vs activation (2.0.0): decided by ``param_names``; without it, entries with an ``axis``
  are params and the rest activations (AIMET itself filters by its own parameter names).
* Frozen: AIMET has no field. We add ``"frozen": true`` to *integer* entries only when frozen;
  AIMET's affine readers look up the keys they need and ignore others, but its float reader
  compares the whole entry with the float16 template, so float entries never carry it (a float
  cast has nothing calibrated to freeze anyway).
* Per-block and LPBQ encodings are `qtool.quant.blockwise.BlockEncoding`s, written and read in
  2.0.0 only (`qtool.encodings.blocks`); vector encodings and fractional zero points have no
  place in :class:`Encoding`: reading them is a QtoolError rather than a silent approximation.
"""

from __future__ import annotations

import re

ENCODING_VERSIONS = ("1.0.0", "0.6.1", "2.0.0")
# AIMET's spec: files without "version" are 0.4.0; 0.4.0/0.5.0 are 0.6.1's layout (0.4.0 lacks dtype).
LEGACY_VERSIONS = ("0.4.0", "0.5.0")
DTYPE_RE = re.compile(r"(u?)int(\d+)")
