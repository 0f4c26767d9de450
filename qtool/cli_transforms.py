"""CLI commands of the post-training transforms: fold, equalize, bias-correct, adaround.

Split from cli.py to keep each module one screenful of commands; they register on the same
click group and share its option helpers and error handling.
"""

from __future__ import annotations

import click

from qtool.files.atomic import StagedOutputs
from qtool.cli import (Bar, Report, cli, data_options, fold_note, json_option, overrides_option, read_overrides,
                       reporting, shape_options)
from qtool.encodings.formats import ENCODING_VERSIONS
from qtool.encodings.write import save_encodings
from qtool.errors import QtoolError
from qtool.plan.config import load_config
from qtool.steps import RELU6_MODES

# the steps, onnx and onnxruntime are imported in each command's body (see the note in cli.py)


@cli.command("fold")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output .onnx file (the input is never modified).")
@json_option
@reporting
def fold_cmd(model, output):
    """Fold BatchNormalization (and per-channel Mul/Add) into the adjacent Conv/Gemm/MatMul layers.

    Outputs stay equal to the float model's (within float rounding); BNs that cannot be folded
    exactly are left in place and listed with the reason.

    Example: qtool fold model.onnx -o model_folded.onnx
    """
    from qtool.ir.graph import load_model, save_model
    from qtool.steps.fold import fold_batch_norms

    result = fold_batch_norms(load_model(model))
    save_model(result.model, output)
    summary = {"output": output, "folded": result.folded,
               "skipped": [{"node": node, "reason": reason} for node, reason in result.skipped]}
    lines = [f"folded {len(result.folded)} BatchNormalization/Mul/Add nodes into their layers; wrote {output}"]
    lines += [f"  left in place: {node}: {reason}" for node, reason in result.skipped]
    return Report(summary, lines)


@cli.command("equalize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output .onnx file (the input is never modified).")
@click.option("--relu6", "relu6", type=click.Choice(RELU6_MODES), default="replace", show_default=True,
              help="ReLU6 (Clip 0..6): 'replace' by ReLU (AIMET; float outputs change where activations "
                   "exceed 6), 'keep' (the layer pairs it joins are not scaled), or 'bound': ReLU plus a "
                   "per-channel Min at 6/s, exact, and the pairs are scaled.")
@click.option("--keep-relu6", is_flag=True, help="Same as --relu6 keep.")
@click.option("--no-absorb", is_flag=True, help="Skip high-bias absorption (keeps the float outputs exact).")
@click.option("--data", default=None,
              help="Calibration data (see calibrate --data): scales then minimise a model of the weight AND "
                   "activation quantization noise of each pair (one extra float pass), instead of AIMET's "
                   "weights-only rule. For per-tensor activations; no data keeps the rule data-free.")
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True, help="Use at most N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Samples per run.")
@click.option("--preprocess", default=None, help="Image folders: see calibrate --preprocess.")
@shape_options
@click.option("--aimet-scales", is_flag=True,
              help="AIMET's data-free rule even when --data is given (recipes pass their calibration data).")
@click.option("--param-bw", type=click.IntRange(2, 16), default=8, show_default=True,
              help="With --data: the weight bit-width the noise model assumes.")
@click.option("--act-bw", type=click.IntRange(2, 16), default=8, show_default=True,
              help="With --data: the activation bit-width the noise model assumes.")
@json_option
@reporting
def equalize_cmd(model, output, relu6, keep_relu6, no_absorb, data, samples, batch_size, preprocess,
                 aimet_scales, param_bw, act_bw, input_shape=(), vocab_size=None):
    """Cross-layer equalization (white paper 4.3): fold BN, ReLU6 -> ReLU, scale layer pairs, absorb high biases.

    Example: qtool equalize model.onnx -o model_cle.onnx
    (noise-aware: qtool equalize model.onnx --relu6 bound --data calib.npz -o model_cle.onnx)
    """
    from qtool.io import open_model_data
    from qtool.ir.graph import load_model, save_model
    from qtool.steps.equalize import NoiseAwareOptions, equalize

    if keep_relu6 and relu6 not in ("replace", "keep"):
        raise QtoolError(f"--keep-relu6 conflicts with --relu6 {relu6}")
    graph = load_model(model)
    batches, total = None, None
    if data is not None and not aimet_scales:
        source = open_model_data(graph, data, samples=samples, preprocess=preprocess, input_shapes=input_shape,
                                 vocab_size=vocab_size)
        batches, total = (lambda: source.batches(batch_size)), source.count()  # noqa: E731
    result = equalize(graph, relu6="keep" if keep_relu6 else relu6, absorb_bias=not no_absorb, data=batches,
                      noise_options=NoiseAwareOptions(param_bw=param_bw, act_bw=act_bw), total=total,
                      progress=Bar("channel statistics", unit="samples"))
    save_model(result.model, output)
    summary = {"output": output, "folded_batch_norms": result.folded, "relu6_replaced": result.relu6_replaced,
               "pairs_scaled": len(result.pairs), "noise_aware_pairs": result.noise_aware,
               "iterations": result.iterations, "biases_absorbed": result.absorbed,
               "skipped": [{"layer": layer, "reason": reason} for layer, reason in result.skipped]}
    how = f" ({result.noise_aware} noise-aware)" if batches is not None else ""
    lines = [f"folded {result.folded} BN, replaced {result.relu6_replaced} ReLU6 ({relu6}), equalized "
             f"{len(result.pairs)} layer pairs{how} in {result.iterations} iterations, absorbed {result.absorbed} "
             f"high biases; wrote {output}"]
    lines += [f"  not scaled: {layer}: {reason}" for layer, reason in result.skipped]
    return Report(summary, lines)


@cli.command("bias-correct")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--encodings", default=None, help="Encodings JSON (default: MODEL's sibling .encodings.json).")
@click.option("--data", default=None, help="Calibration data for empirical correction (see calibrate --data).")
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True, help="Use at most N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Samples per run.")
@click.option("--preprocess", default=None, help="Image folders: see calibrate --preprocess.")
@shape_options
@click.option("--analytic", is_flag=True,
              help="Analytic correction where BN statistics precede the layer (kept by fold/equalize); "
                   "empirical elsewhere. Without --data, analytic only.")
@click.option("--iterations", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Empirical passes over the data.")
@click.option("--encoding-version", type=click.Choice(ENCODING_VERSIONS), default="1.0.0", show_default=True,
              help="AIMET encodings format to write.")
@click.option("-o", "--output", required=True, help="Output prefix: writes PREFIX.onnx and PREFIX.encodings.json.")
@json_option
@reporting
def bias_correct_cmd(model, encodings, data, samples, batch_size, preprocess, analytic, iterations,
                     encoding_version, output, input_shape=(), vocab_size=None):
    """Absorb each layer's expected quantization error into its bias (white paper 4.5).

    Example: qtool bias-correct model_cle.onnx --encodings model_cle.encodings.json --data calib.npz -o out/model_bc
    """
    from qtool.io import load_pair, open_model_data, output_prefix
    from qtool.ir.graph import save_model
    from qtool.steps.bias_correction import correct_bias

    if data is None and not analytic:
        raise QtoolError("bias-correct needs --data (empirical) or --analytic (BN statistics)")
    graph, enc_set, enc_source = load_pair(model, encodings)
    batches = None
    if data is not None:
        source = open_model_data(graph, data, samples=samples, preprocess=preprocess, input_shapes=input_shape,
                                 vocab_size=vocab_size)
        batches = lambda: source.batches(batch_size)  # noqa: E731  (one fresh pass each time)
    result = correct_bias(graph, enc_set, batches, analytic=analytic, iterations=iterations,
                          progress=Bar("bias-correct", unit="passes"), source=enc_source)
    prefix = output_prefix(output)
    with StagedOutputs() as out:
        save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(result.encodings, out.path(f"{prefix}.encodings.json"), encoding_version)
    summary = {"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json",
               "empirical": result.empirical, "analytic": result.analytic,
               "skipped": [{"layer": layer, "reason": reason} for layer, reason in result.skipped]}
    lines = [f"corrected {len(result.empirical)} layers empirically ({result.passes} passes) and "
             f"{len(result.analytic)} analytically; wrote {prefix}.onnx and {prefix}.encodings.json"]
    lines += [f"  not corrected: {layer}: {reason}" for layer, reason in result.skipped]
    return Report(summary, lines)


@cli.command("adaround")
@click.argument("model", type=click.Path(dir_okay=False))
@data_options
@click.option("--encodings", default=None,
              help="Encodings to start from (default: calibrate MODEL first with --config/--param-bw/--act-bw).")
@click.option("--config", default="default", show_default=True, help="Runtime config when calibrating first.")
@overrides_option
@click.option("--param-bw", type=click.IntRange(2, 8), default=4, show_default=True, help="Weight bit-width.")
@click.option("--act-bw", type=click.IntRange(2, 16), default=8, show_default=True, help="Activation bit-width.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight granularity.")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Optimisation steps per layer [10000; --fast 2000].")
@click.option("--num-batches", type=click.IntRange(min=1), default=None,
              help="Batches of --batch-size samples to use (default: all of --samples).")
@click.option("--reg-param", type=float, default=0.01, show_default=True, help="Rounding regulariser weight (lambda).")
@click.option("--beta-range", type=(float, float), default=(20.0, 2.0), show_default=True,
              help="Regulariser temperature, annealed from the first to the second value.")
@click.option("--warm-start", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Fraction of iterations with reconstruction loss only.")
@click.option("--rows", type=click.IntRange(min=64), default=None, help="Sampled output positions per layer [4096; --fast 2048].")
@click.option("--layers", default=None, help="Comma-separated layers to adaround (default: all).")
@click.option("--exclude", default=None, help="Comma-separated layers to leave at round-to-nearest.")
@click.option("--fast", is_flag=True, help="Preset: 2000 iterations, 2048 rows per layer.")
@click.option("--encoding-version", type=click.Choice(ENCODING_VERSIONS), default="1.0.0", show_default=True,
              help="AIMET encodings format to write.")
@click.option("-o", "--output", required=True, help="Output prefix: PREFIX.onnx (adarounded weights) + PREFIX.encodings.json.")
@json_option
@reporting
def adaround_cmd(model, data, samples, batch_size, preprocess, seed, input_shape, vocab_size, encodings, config, overrides, param_bw, act_bw, per_channel,
                 iterations, num_batches, reg_param, beta_range, warm_start, rows, layers, exclude, fast, encoding_version, output):
    """Adaptive weight rounding (white paper 4.6): learn up/down rounding per weight, layer by layer.

    Writes the adarounded model and encodings whose weight encodings are frozen (calibrate keeps
    them and recomputes activation encodings only).

    Example: qtool adaround model.onnx --data calib.npz --param-bw 4 -o out/model_w4
    """
    from qtool.io import load_pair, open_model_data, output_prefix
    from qtool.ir.graph import load_model, save_model
    from qtool.plan.build import PlanOptions, build_plan
    from qtool.quant.adaround import AdaRoundParams
    from qtool.steps.adaround import AdaRoundOptions, adaround
    from qtool.steps.calibrate import calibrate

    if num_batches is not None:
        samples = min(samples or num_batches * batch_size, num_batches * batch_size)
    graph = load_model(model)
    source = open_model_data(graph, data, samples=samples, preprocess=preprocess, seed=seed,
                             input_shapes=input_shape, vocab_size=vocab_size)
    plan = build_plan(graph, load_config(config), PlanOptions(act_bw, param_bw, per_channel, overrides=read_overrides(overrides)))
    if encodings:
        graph, start_enc, enc_source = load_pair(model, encodings)
    else:
        start_enc = calibrate(graph, plan, lambda: source.batches(batch_size), total=source.count(),
                              progress=Bar("calibrate")).encodings
        enc_source = f"{model} (calibrated)"
    params = AdaRoundParams(iterations=iterations or (2000 if fast else 10000), reg_param=reg_param,
                            beta_range=tuple(beta_range), warm_start=warm_start, seed=seed)
    options = AdaRoundOptions(params, rows or (2048 if fast else 4096),
                              tuple(n.strip() for n in layers.split(",")) if layers else None,
                              tuple(n.strip() for n in exclude.split(",")) if exclude else ())
    bar = Bar("adaround", unit="layers")
    batch_count = max(source.batch_count(batch_size), 1)  # more than samples / batch size when shapes vary
    result = adaround(graph, start_enc, lambda: source.batches(batch_size), batch_count, options,
                      progress=bar, layer_progress=lambda name, it, n: bar.detail(f"{name} {it}/{n} iterations"),
                      source=enc_source)
    final = calibrate(result.model, plan, lambda: source.batches(batch_size), frozen=result.encodings,
                      total=source.count()).encodings if not encodings else result.encodings
    prefix = output_prefix(output)
    with StagedOutputs() as out:
        save_model(result.model, out.path(f"{prefix}.onnx"))
        save_encodings(final, out.path(f"{prefix}.encodings.json"), encoding_version)
    rows_out = [vars(report) for report in result.layers]
    summary = {"model": f"{prefix}.onnx", "encodings": f"{prefix}.encodings.json", "seconds": round(result.seconds, 2),
               "layers": rows_out, "skipped": [{"layer": n, "reason": r} for n, r in result.skipped]}
    lines = [f"adarounded {len(result.layers)} layers in {result.seconds:.1f}s "
             f"({params.iterations} iterations, {options.rows} rows per layer)"]
    lines += [f"  {r.layer}: reconstruction MSE {r.loss_nearest:.4g} (nearest) -> {r.loss_adaround:.4g}, "
              f"{100 * r.flipped:.1f}% flipped, {r.seconds:.1f}s"
              + (" (learnt rounding was worse: kept nearest)" if r.kept_nearest else "") for r in result.layers]
    lines += [f"  not adarounded: {n}: {r}" for n, r in result.skipped]
    lines.append(f"wrote {prefix}.onnx and {prefix}.encodings.json")
    return Report(summary, lines + fold_note(graph))
