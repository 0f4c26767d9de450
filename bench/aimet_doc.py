"""Markdown for docs/aimet_compat.md from the compat bench's results (bench/bench_aimet.py).

Only the part between the BEGIN/END markers is generated; the written analysis below it is kept.
"""

from __future__ import annotations

from pathlib import Path

from aimet_report import BEGIN, END, TARGETS


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _names(items: list, limit: int = 12) -> str:
    shown = [i if isinstance(i, str) else f"{i[0]} ({i[1]} vs {i[2]})" for i in items[:limit]]
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(f"`{s}`" for s in shown) + more


def _aimet_table(meta: dict, models: list[str], tables: dict) -> list[str]:
    lines = ["| config | hw_version | supergroup_pass_list | " + " | ".join(models) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in models) + " |"]
    for config in meta["configs"]:
        cells = []
        hw, passes = "", ""
        for model in models:
            t = tables.get((model, config))
            if t is None:
                cells.append("error: " + _cell(meta["errors"].get(f"{model}/{config[:-5]}", "?")))
                continue
            hw, passes = t["hw_version"] or "-", ", ".join(t["supergroup_pass_list"]) or "-"
            c = t["counts"]
            cells.append(f"{c['enabled']}/{c['quantizers']} ({c['per_channel']} pc, {len(t['fused_supergroups'])} fused, "
                         f"{len(t['supergroups_matched'])} sg)")
        lines.append(f"| {config} | {hw} | {passes} | " + " | ".join(cells) + " |")
    return lines


def _diff_table(comparisons: dict) -> list[str]:
    lines = ["| model | config | qtool accepts | refused keys | aimet enabled | qtool | only aimet | only qtool "
             "| bit-width | symmetric | per-channel | param vs activation | fixed range | ties |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (model, config), c in sorted(comparisons.items()):
        accepted = "yes" if c["accepted"] else "no"
        if not c["compared"]:
            lines.append(f"| {model} | {config} | {accepted} | {len(c['refused'])} | {c['aimet_enabled']} "
                         "| - | - | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {model} | {config} | {accepted} | {len(c['refused'])} | {c['aimet_enabled']} | {c['qtool']} | "
                     f"{len(c['only_aimet'])} | {len(c['only_qtool'])} | {len(c['bitwidth'])} | {len(c['symmetric'])} | "
                     f"{len(c['per_channel'])} | {len(c['kind'])} | {len(c['fixed_range'])} | "
                     f"{'differ' if c['ties'] else 'same'} |")
    return lines


def _class_section(comparisons: dict, models: list[str]) -> list[str]:
    lines = []
    for config in TARGETS:
        lines += [f"### Under `{config}`", ""]
        for model in models:
            c = comparisons.get((model, config))
            if not c or not c["compared"]:
                continue
            lines.append(f"**{model}**: {len(c['only_aimet'])} only in aimet, {len(c['only_qtool'])} only in qtool, "
                         f"{c['settings_differ']} settings differ.")
            lines.append("")
            for title, key in (("only in aimet, by kind (source)", "only_aimet_classes"),
                               ("only in qtool, by what aimet does there (`kind: step that disabled it` or why none) [op type]",
                                "only_qtool_classes")):
                if c[key]:
                    lines.append(f"* {title}: " + "; ".join(f"{k}: {v}" for k, v in c[key].items()))
            for title, key in (("only in aimet", "only_aimet"), ("only in qtool", "only_qtool"),
                               ("bit-width (aimet vs qtool)", "bitwidth"), ("symmetric (aimet vs qtool)", "symmetric"),
                               ("per-channel axis (aimet vs qtool)", "per_channel"),
                               ("param vs activation (aimet vs qtool)", "kind"),
                               ("fixed range (aimet vs qtool)", "fixed_range"), ("tied groups (aimet vs qtool)", "ties")):
                if c[key]:
                    lines.append(f"* {title}: {_names(c[key])}")
            lines.append("")
    return lines


def _db(value) -> str:
    return "-" if value is None else ("inf" if value == float("inf") else f"{value:.1f}")


def _strict(load: dict) -> str:
    return "yes" if load["strict"]["ok"] else "**no**"


def _pair(load: dict, key: str) -> str:
    return " / ".join(_db(load[v].get(key)) for v in ("1.0.0", "2.0.0"))


def _back(reverse: dict, key: str) -> str:
    return " / ".join(_db(reverse[v].get(key)) if "error" not in reverse[v] else "refused" for v in ("1.0.0", "2.0.0"))


def _diverge(found: dict) -> str:
    """The diverge job's answer, both directions: the quantizers where aimet's sim and the QDQ model
    first part (their inputs still equal), and how many of those differences the two roundings
    explain (aimet: offset added in float32 before rounding, halves up; onnxruntime: halves to even)."""
    parts = []
    for direction in ("forward", "reverse"):
        d = found.get(direction)
        if d is None:
            continue
        born = d["born"]
        first = ", ".join(f"{b['tensor']} ({b['differ']} differ, {b['rounded_apart']} rounded apart)" for b in born[:3])
        parts.append(f"{direction}: {d['quantizers_differ']}/{d['quantizers_compared']} quantizers differ; "
                     f"{len(born)} first parts, {d['born_explained']} explained by the rounding"
                     + (f" [{first}{', ...' if len(born) > 3 else ''}]" if born else "")
                     + f"; {d['rounded_apart']} values rounded apart of {d['values']}"
                     + (f"; weight integers differ in {len(d.get('weights_differ', {}))} of {d['weights_compared']} weights "
                        f"({sum(d['weights_differ'].values())} values)" if "weights_compared" in d else ""))
    return "; ".join(parts)


def _round_trip_table(loads: dict) -> list[str]:
    lines = ["| model | config | strict load | aimet sim, qtool's file vs qtool QDQ | aimet's QDQ export of that "
             "sim vs qtool QDQ | aimet sim vs its own QDQ export | qtool QDQ from aimet's file vs aimet sim | "
             "vs aimet's QDQ export | aimet sim vs qtool export QDQ (int32 biases) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (model, config), r in sorted(loads.items()):
        load, back = r["load"], r["reverse"]
        strict = " / ".join(_strict(load[v]) for v in ("1.0.0", "2.0.0"))
        lines.append(f"| {model} | {config} | {strict} | {_pair(load, 'sqnr_db_vs_qdq')} | "
                     f"{_pair(load, 'sqnr_db_aimet_qdq_vs_qdq')} | {_pair(load, 'sqnr_db_aimet_qdq_vs_sim')} | "
                     f"{_back(back, 'sqnr_db')} | {_back(back, 'sqnr_db_vs_aimet_qdq')} | "
                     f"{_pair(load, 'sqnr_db_vs_export_qdq')} |")
    return lines


def _load_section(loads: dict) -> list[str]:
    lines = ["For each model and config: `qtool calibrate MODEL --config <aimet's config file>` (16 calibration "
             "samples), `qtool export --encoding-version V`, then aimet: `QuantizationSimModel(MODEL, "
             "config_file=<the same file>)` and `load_encodings_to_sim(sim, <qtool's file>, strict=True)`; SQNR of "
             "that sim's outputs against qtool's QDQ model of the same pair, on 32 held-out samples (the classifier's "
             "real lines, Gaussian inputs for the others). Reverse: aimet's own `sim.export` (its sim calibrated "
             "on the same 16 samples) given to `qtool simulate MODEL --encodings`, and qtool's QDQ model against "
             "aimet's sim; and both against aimet's own QDQ export of its sim (`sim.to_onnx_qdq()`, run by "
             "onnxruntime as qtool's QDQ models are). Each cell: qtool's or aimet's 1.0.0 file / 2.0.0 file, in dB; "
             "\"inf\": every output value equal.", "", *_round_trip_table(loads), ""]
    for (model, config), r in sorted(loads.items()):
        for version in ("1.0.0", "2.0.0"):
            load = r["load"][version]
            if not load["strict"]["ok"]:
                text = load["strict"]["error"]
                lines += [f"**{model}, {config}, qtool's {version} file**: refused:", "", "```",
                          text if len(text) < 3000 else text[:3000] + f"\n... ({len(text)} characters in all)", "```", ""]
                relaxed = load.get("relaxed", {})
                for setting, names in relaxed.get("by_setting", {}).items():
                    lines.append(f"* {setting}: {len(names)} ({_names(names, 8)})")
                lines.append("")
            if "error" in r["reverse"][version]:
                lines += [f"**{model}, {config}**: `qtool simulate --encodings <aimet's {version} export>` refused: `"
                          + _cell(r["reverse"][version]["error"]) + "`", ""]
    return lines


def _schema_section(probes: dict) -> list[str]:
    lines = ["| key (aimet-onnx schema) | value | shipped configs using it | qtool today |", "| --- | --- | ---: | --- |"]
    for k in probes["keys"]:
        lines.append(f"| `{k['key']}` | `{_cell(k['schema'])}` | {k['shipped_configs_using_it']} | {_cell(k['qtool'])} |")
    lines += ["", "Names the shipped configs use (all of them put in one config, each refused one removed in turn):", ""]
    for label, r in probes["names"].items():
        refused = ", ".join(f"`{x}`" for x in r["refused"]) or "none"
        lines.append(f"* {label}: {r['shipped']} distinct, qtool refuses {len(r['refused'])}: {refused}")
    return lines


def _refusal_section(comparisons: dict, configs: list[str], model: str) -> list[str]:
    lines = ["| config | qtool's error (as shipped) | every refused key, removed in turn until qtool accepts |",
             "| --- | --- | --- |"]
    for config in configs:
        c = comparisons.get((model, config))
        if c is None:
            continue
        error = _cell(c["error"].split(": error: ", 1)[-1].split(": ", 1)[-1]) if c["error"] else "accepted"
        refused = ", ".join(f"`{r['removed']}`" for r in c["refused"]) or "-"
        lines.append(f"| {config} | {error} | {refused} |")
    return lines


def render_markdown(versions: dict, meta: dict, tables: dict, comparisons: dict, loads: dict, probes: dict,
                    models: list[str]) -> tuple[str, str]:
    """(the generated markdown, a plain-text summary for stdout)."""
    configs = meta["configs"]
    accepted = {m: sum(1 for c in configs if comparisons.get((m, c), {}).get("accepted")) for m in models}
    summary = [f"aimet-onnx {versions['aimet-onnx']} / torch {versions['torch']} vs qtool {versions['qtool']}",
               f"configs qtool accepts (of {len(configs)}): " + ", ".join(f"{m} {n}" for m, n in accepted.items())]
    totals = {m: sum(comparisons[(m, c)].get("differences", 0) for c in configs if (m, c) in comparisons) for m in models}
    summary.append(f"placement differences summed over all {len(configs)} configs: "
                   + ", ".join(f"{m} {n}" for m, n in totals.items()))
    for config in TARGETS:
        for m in models:
            c = comparisons.get((m, config))
            if c and c["compared"]:
                summary.append(f"{config} {m}: only aimet {len(c['only_aimet'])}, only qtool {len(c['only_qtool'])}, "
                               f"bw {len(c['bitwidth'])}, sym {len(c['symmetric'])}, per-channel {len(c['per_channel'])}, "
                               f"fixed range {len(c['fixed_range'])}, ties {'differ' if c['ties'] else 'same'}")
    for (model, config), r in sorted(loads.items()):
        load = r["load"]
        strict = ", ".join(f"{v} " + ("ok" if load[v]["strict"]["ok"] else load[v]["strict"]["error"].splitlines()[0][:200])
                           for v in ("1.0.0", "2.0.0"))
        back = _back(r["reverse"], "sqnr_db") + " dB"
        summary.append(f"round trip {config} {model}: strict load {strict}; aimet sim with qtool's encodings vs qtool "
                       f"QDQ {_pair(load, 'sqnr_db_vs_qdq')} dB (1.0.0 / 2.0.0; aimet's own QDQ export vs qtool QDQ "
                       f"{_pair(load, 'sqnr_db_aimet_qdq_vs_qdq')}); qtool QDQ from aimet's encodings vs aimet sim "
                       f"{back} (vs aimet's QDQ export {_back(r['reverse'], 'sqnr_db_vs_aimet_qdq')})")
        if r.get("same_weights"):
            same = r["same_weights"]
            summary.append(f"  aimet's QDQ export vs qtool's QDQ with aimet's weight integers {_db(same['sqnr_db'])} dB "
                           f"({same['weight_values_changed']} weight values rounded apart by numpy and QuantizeLinear)")
        if r.get("diverge"):
            summary.append(f"  where aimet's sim and qtool's QDQ part: {_diverge(r['diverge'])}")
    md = [BEGIN, "", "## Measured (generated)", "",
          f"aimet-onnx {versions['aimet-onnx']} (torch {versions['torch']}, onnxruntime {versions['onnxruntime']}, "
          f"onnx {versions['onnx']}, in build/aimet-venv) against qtool {versions['qtool']}. Models: "
          + ", ".join(f"`{m}`" for m in models) + " (tests/fixtures/aimet/README.md says how each is made). "
          "Regenerate with `make bench-aimet`; the recorded tables are tests/fixtures/aimet/.", "",
          "### Summary", "", "```", *summary, "```", "",
          "### 1. What aimet-onnx creates, per shipped config",
          "", "Enabled/all quantizers, per-channel ones, nodes fused into supergroup functions, supergroups matched "
          "(int8/int8, min-max).", "", *_aimet_table(meta, models, tables), "",
          "### 2. qtool against aimet, per model x config", "",
          "Where qtool refuses the config, its plan is the one it makes from the config with every refused key "
          "removed (section 6). Counts are quantizers (tensor names); settings are compared on the quantizers both "
          "enable.", "", *_diff_table(comparisons), "",
          "### 3. The differences, by class", "", *_class_section(comparisons, models),
          "### 4. Round trips: aimet loading qtool's encodings, qtool simulating aimet's", "", *_load_section(loads),
          "### 5. aimet-onnx's config schema: what qtool's loader does with each key", "",
          "Each key put alone into a minimal config (`defaults.ops.is_output_quantized`, `defaults.params`, "
          "empty sections) and given to `qtool info`; `<op>` is Relu, `<param>` is weight.", "",
          *_schema_section(probes), "",
          "### 6. Every key qtool refuses, per shipped config", "", *_refusal_section(comparisons, configs, models[-1]),
          "", END]
    return "\n".join(md) + "\n", "\n".join(summary)


def write_doc(path: Path, generated: str) -> None:
    """Replace the generated part of `path`, keeping everything outside the markers."""
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        path.write_text(head + generated.rstrip("\n") + tail)
    else:
        path.write_text("# qtool and aimet-onnx: compatibility\n\n" + generated + "\n## Analysis\n\n(written by hand)\n")


def zoo_table(runs: list[dict]) -> str:
    """One markdown row per model x config from the results.json of `bench_aimet.py --zoo` runs: the
    checks of issue 15 (placement differences, strict loads, SQNR both ways) and the controls that
    say why an SQNR is finite (aimet's QDQ export, the same with aimet's weight integers, and the
    first differences the two roundings explain)."""
    lines = ["| model | config | aimet quantizers (enabled) | placement differences | strict load 1.0.0 / 2.0.0 "
             "| aimet sim (qtool's encodings) vs qtool QDQ | qtool QDQ (aimet's encodings) vs aimet sim "
             "| aimet's QDQ export vs qtool QDQ | the same, aimet's weight integers | first differences explained "
             "by the rounding (forward; reverse) | qtool QDQ vs float |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for run in runs:
        for key, c in sorted(run["comparisons"].items()):
            r = run["loads"].get(key, {})
            load = r.get("load", {})
            strict = " / ".join(("ok" if load[v]["strict"]["ok"] else "refused") if v in load else "-"
                                for v in ("1.0.0", "2.0.0"))
            first = load.get("1.0.0", {})
            same = r.get("same_weights") or {}
            explained = "; ".join(f"{d['born_explained']} of {len(d['born'])}" for d in
                                  (r.get("diverge", {}).get(x) for x in ("forward", "reverse")) if d is not None)
            model, config = key.split("/", 1)
            back = r.get("reverse", {}).get("1.0.0", {}).get("sqnr_db")
            lines.append(f"| {model} | {config} | {c['aimet_enabled']} | {c.get('differences', '-')} | {strict} "
                         f"| {_db(first.get('sqnr_db_vs_qdq'))} | {_db(back)} | {_db(first.get('sqnr_db_aimet_qdq_vs_qdq'))} "
                         f"| {_db(same.get('sqnr_db'))} | {explained or '-'} "
                         f"| {_db(r.get('qdq_vs_float_db'))} |")
    return "\n".join(lines) + "\n"
