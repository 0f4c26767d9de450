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
             "| bit-width | symmetric | per-channel | param vs activation |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (model, config), c in sorted(comparisons.items()):
        accepted = "yes" if c["accepted"] else "no"
        if not c["compared"]:
            lines.append(f"| {model} | {config} | {accepted} | {len(c['refused'])} | {c['aimet_enabled']} | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {model} | {config} | {accepted} | {len(c['refused'])} | {c['aimet_enabled']} | {c['qtool']} | "
                     f"{len(c['only_aimet'])} | {len(c['only_qtool'])} | {len(c['bitwidth'])} | {len(c['symmetric'])} | "
                     f"{len(c['per_channel'])} | {len(c['kind'])} |")
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
                               ("param vs activation (aimet vs qtool)", "kind")):
                if c[key]:
                    lines.append(f"* {title}: {_names(c[key])}")
            lines.append("")
    return lines


def _load_section(loads: dict) -> list[str]:
    lines = []
    for version in ("1.0.0", "2.0.0"):
        r = loads[version]
        lines += [f"**qtool's {version} encodings** (`qtool calibrate --config default` + `qtool export "
                  f"--encoding-version {version}`) into `QuantizationSimModel(config_file=default_config.json)`:",
                  "", "`load_encodings_to_sim(sim, encodings, strict=True)`: "
                  + ("loaded." if r["strict"]["ok"] else "refused:"), ""]
        if not r["strict"]["ok"]:
            text = r["strict"]["error"]
            lines += ["```", text if len(text) < 3000 else text[:3000] + f"\n... ({len(text)} characters in all)", "```", ""]
        relaxed = r["relaxed"]
        lines.append(f"With the names aimet has no tensor for dropped ({_names(relaxed['dropped_names']) or 'none'}) and "
                     f"`strict=False`: **{relaxed['mismatches']} quantizers mismatch**:")
        lines.append("")
        for setting, names in relaxed["by_setting"].items():
            lines.append(f"* {setting}: {len(names)} ({_names(names, 8)})")
        lines.append("")
        for key, label in (("sqnr_db_aimet_sim_with_qtool_encodings_vs_qtool_qdq",
                            "aimet's sim with qtool's encodings (relaxed load) vs qtool's QDQ model"),
                           ("sqnr_db_qtool_qdq_from_aimet_encodings_vs_aimet_sim",
                            "qtool's QDQ model from aimet's exported encodings vs aimet's sim")):
            if key in r:
                lines.append(f"* SQNR, {label}: **{r[key]:.1f} dB** (32 held-out classifier lines)")
        lines.append("")
    if loads.get("reverse_error"):
        lines += ["`qtool simulate MODEL --encodings <aimet's default_config 1.0.0 export>` refused: `"
                  + _cell(loads["reverse_error"]) + "`", ""]
    if loads.get("reverse_workaround"):
        lines += [f"With {loads['reverse_workaround']}: "
                  + ("qtool accepts it (SQNR above)." if not loads.get("reverse_workaround_error")
                     else "still refused: `" + _cell(loads["reverse_workaround_error"]) + "`"), ""]
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
    strict = {v: loads[v]["strict"] for v in ("1.0.0", "2.0.0")}
    summary = [f"aimet-onnx {versions['aimet-onnx']} / torch {versions['torch']} vs qtool {versions['qtool']}",
               f"configs qtool accepts (of {len(configs)}): " + ", ".join(f"{m} {n}" for m, n in accepted.items())]
    for config in TARGETS:
        for m in models:
            c = comparisons.get((m, config))
            if c and c["compared"]:
                summary.append(f"{config} {m}: only aimet {len(c['only_aimet'])}, only qtool {len(c['only_qtool'])}, "
                               f"bw {len(c['bitwidth'])}, sym {len(c['symmetric'])}, per-channel {len(c['per_channel'])}")
    for v, s in strict.items():
        summary.append(f"strict load of qtool {v} encodings: " + ("ok" if s["ok"] else s["error"].splitlines()[0][:300]))
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
          "### 4. Round trip: aimet loading qtool's encodings", "", *_load_section(loads),
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
