"""Turn the benchmark's rows into ratios and a markdown report (bench/out/results.md).

Pairings used for "qtool vs quantize_static": same weight granularity, the primary onnxruntime
row (per-tensor on the model as shipped, per-channel after quant_pre_process); qtool minmax is
compared with ORT MinMax, qtool sqnr (AIMET tf_enhanced) with ORT Entropy, the closest
onnxruntime counterpart (both pick a clipped activation range from a histogram). Accuracy
differences use the QuantSim numbers (session.disable_quant_qdq=1) on both sides, so the
comparison is of the encodings, not of onnxruntime's integer kernels.
"""

from __future__ import annotations

import math

COUNTERPART = {"minmax": "minmax", "sqnr": "entropy", "auto": "entropy"}  # histogram schemes vs ORT Entropy
TARGETS = {"time_vs_float": 1.5, "rss_ratio": 1.2}


def _ok(row: dict | None) -> bool:
    return bool(row) and row.get("failure") is None


def _find(rows: list[dict], **want) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def _div(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _sub(a, b):
    return a - b if a is not None and b is not None else None


def ratios(results: dict) -> dict:
    """{"qtool": one dict per qtool row, "memory": the scaling ratios}: explicit ratios and
    accuracy differences (fractions; the report prints percentage points)."""
    rows = results["rows"]
    per_row: list[dict] = []
    for task in ("rec", "cls"):
        flt = _find(rows, model=task, tool="float")
        for q in (r for r in rows if r.get("model") == task and r.get("tool") == "qtool"):
            entry = {"model": task, "qtool": q["method"], "failure": q.get("failure")}
            per_row.append(entry)
            if not _ok(q) or not flt:
                continue
            entry.update(time_vs_float_step=_div(q.get("calib_inner_s"), flt.get("calib_inner_s")),
                         time_vs_float_wall=_div(q.get("calib_wall_s"), flt.get("calib_wall_s")),
                         acc_minus_float=_sub(q.get("acc_sim"), flt.get("acc_sim")),
                         target_time_vs_float=TARGETS["time_vs_float"] if q["scheme"] == "minmax" else None)
            gran = q["granularity"].replace(" folded", "")  # folding is qtool's pre-processing step
            ort = _find(rows, model=task, tool="ort", granularity=gran, primary=True,
                        scheme=COUNTERPART[q["scheme"]])
            if ort is not None:
                entry["ort"] = ort["method"]
                if _ok(ort):
                    entry.update(time_vs_ort_wall=_div(q.get("calib_wall_s"), ort.get("calib_wall_s")),
                                 acc_minus_ort_sim=_sub(q.get("acc_sim"), ort.get("acc_sim")),
                                 acc_minus_ort_int=_sub(q.get("acc_int"), ort.get("acc_int")))
                else:
                    entry["ort_failure"] = ort.get("failure")
            best = max((r for r in rows if r.get("model") == task and r.get("tool") == "ort" and _ok(r)
                        and r.get("granularity") == gran and r.get("acc_sim") is not None),
                       key=lambda r: r["acc_sim"], default=None)
            if best is not None:
                entry.update(best_ort=best["method"], acc_minus_best_ort_sim=_sub(q.get("acc_sim"), best["acc_sim"]))
    memory = {}
    mem = results.get("memory")
    if mem and mem.get("rss_ratio") is not None:
        small, large = mem["runs"]
        memory = {"samples": [small["samples"], large["samples"]], "rss_ratio": mem["rss_ratio"],
                  "time_ratio": mem["time_ratio"], "target_rss_ratio": TARGETS["rss_ratio"]}
    return {"qtool": per_row, "memory": memory}


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _num(v, fmt: str = "{:.1f}") -> str:
    return "" if v is None else fmt.format(v)


def _x(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _pp(v) -> str:
    return "" if v is None else f"{100 * v:+.2f}"


def _status(r: dict) -> str:
    if r.get("failure"):
        err = r.get("error") or ""
        return f"FAILED: {r['failure']}" + (f" ({err[:120]})" if err else "")
    notes = []
    if (r.get("repeats") or 1) > 1:
        notes.append(f"best of {r['repeats']}")
    for key in ("error_sim", "error_int"):
        if r.get(key):
            notes.append(f"{key[6:]}: {r[key][:100]}")
    if r.get("sim_int_agree") is not None:
        notes.append(f"sim/int same output {100 * r['sim_int_agree']:.0f}%")
    if r.get("primary") is False:
        notes.append("extra row")
    return "; ".join(notes)


def table(rows: list[dict], task: str) -> list[str]:
    """Markdown table of one model's rows."""
    acc = "char acc %" if task == "rec" else "orientation acc %"
    head = (f"| method | calib samples | calib wall s | calib step s | peak RSS MiB | {acc} QuantSim | "
            f"{acc} int kernels | Δ float pp | output SQNR dB |" + (" acc stripped % |" if task == "rec" else "")
            + " notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    float_acc = next((r.get("acc_sim") for r in rows if r.get("tool") == "float"), None)
    for r in rows:
        delta = _sub(r.get("acc_sim"), float_acc) if r.get("tool") != "float" else None
        cells = [r["method"], str(r.get("samples", "")), _num(r.get("calib_wall_s")), _num(r.get("calib_inner_s")),
                 _num(r.get("peak_rss_mb"), "{:.0f}"), _pct(r.get("acc_sim")), _pct(r.get("acc_int")),
                 "" if delta is None else f"{100 * delta:+.2f}",
                 _num(r.get("sqnr_sim_db"), "{:.2f}")]
        if task == "rec":
            cells.append(_pct(r.get("acc_strip_sim")))
        cells.append(_status(r))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """The whole report: setup line, one table per model, memory scaling, ratios."""
    m = results["meta"]
    out = [f"PTQ benchmark ({m['date']}, {m['cpus']} CPUs, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, "
           f"{m['qtool']} at {m.get('git', '?')}; batch {m['batch_size']}{', --quick' if m['quick'] else ''}; "
           f"load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_now'][0]:.1f} at end).", "",
           f"Recogniser metric: {m['rec_metric']}. Classifier metric: {m['cls_metric']}. "
           "QuantSim = the QDQ model run with session.disable_quant_qdq=1; int kernels = default onnxruntime "
           "(for qtool: the `qtool export` NAME_qdq.onnx). Output SQNR: QuantSim output vs float output on "
           "the eval split.", ""]
    names = {"rec": "PP-OCRv4 recogniser (ch_PP-OCRv4_rec_infer.onnx)",
             "cls": "PP-OCR text-direction classifier (sample_models/ppocr_cls.onnx)"}
    for task in ("rec", "cls"):
        rows = [r for r in results["rows"] if r.get("model") == task]
        if rows:
            out += [f"### {names[task]}", ""] + table(rows, task) + [""]
    mem = results.get("memory")
    if mem:
        out += ["### Memory scaling: `qtool calibrate --scheme minmax`, streamed npz chunks", "",
                "| samples | wall s | calibrate step s | peak RSS MiB | status |", "|---|---|---|---|---|"]
        if mem.get("failure"):
            out.append(f"| | | | | FAILED: {mem['failure']} |")
        for r in mem["runs"]:
            out.append(f"| {r['samples']} | {_num(r['wall_s'])} | {_num(r['inner_s'])} | "
                       f"{_num(r['peak_rss_mb'], '{:.0f}')} | {r['failure'] or 'ok'} |")
        out.append("")
    rat = results.get("ratios") or {}
    if rat.get("qtool"):
        out += ["### Ratios (qtool against the float pass and against quantize_static)", "",
                "Time ratios: calibrate step (qtool's own `seconds`) / float session+pass, and process wall "
                "times; ORT counterpart: same granularity, MinMax for minmax, Entropy for sqnr. "
                "Accuracy differences in percentage points, QuantSim unless marked int.", "",
                "| model | qtool | calib / float (step) | calib / float (wall) | vs ORT | calib / ORT (wall) | "
                "Δacc vs float | Δacc vs ORT | Δacc vs ORT int | best ORT same granularity | Δacc vs best ORT |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in rat["qtool"]:
            if e.get("failure"):
                out.append(f"| {e['model']} | {e['qtool']} | FAILED: {e['failure']} |" + " |" * 8)
                continue
            step = _x(e.get("time_vs_float_step"))
            if e.get("target_time_vs_float") is not None and e.get("time_vs_float_step") is not None:
                ok = e["time_vs_float_step"] <= e["target_time_vs_float"]
                step += f" (target ≤ {e['target_time_vs_float']}: {'met' if ok else 'NOT met'})"
            ort = e.get("ort", "") + (f" (FAILED: {e['ort_failure']})" if e.get("ort_failure") else "")
            out.append(f"| {e['model']} | {e['qtool']} | {step} | {_x(e.get('time_vs_float_wall'))} | {ort} | "
                       f"{_x(e.get('time_vs_ort_wall'))} | {_pp(e.get('acc_minus_float'))} | "
                       f"{_pp(e.get('acc_minus_ort_sim'))} | {_pp(e.get('acc_minus_ort_int'))} | "
                       f"{e.get('best_ort', '')} | {_pp(e.get('acc_minus_best_ort_sim'))} |")
        out.append("")
    m_r = rat.get("memory")
    if m_r:
        ok = m_r["rss_ratio"] <= m_r["target_rss_ratio"]
        out += [f"Memory: peak RSS {m_r['samples'][1]} / {m_r['samples'][0]} samples = {m_r['rss_ratio']:.2f}x "
                f"(target ≤ {m_r['target_rss_ratio']}: {'met' if ok else 'NOT met'}); wall time "
                f"{m_r['time_ratio']:.2f}x.", ""]
    return "\n".join(out)
