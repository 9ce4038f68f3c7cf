#!/usr/bin/env python3
"""The Mac proof kit's report: verdicts from the pieces each step of scripts/mac/kit.sh wrote.

    python3 scripts/mac/report.py env OUT                 # OUT/steps/env.json: chip, OS build, versions
    python3 scripts/mac/report.py placement FILE MIN      # verdict + the ops off the Neural Engine; exit 1 below MIN, 3 without a plan
    python3 scripts/mac/report.py write OUT               # OUT/mac-report.json + OUT/mac-report.md; exit 1 on a failed check
    python3 scripts/mac/report.py field MANIFEST FIELD MODEL  # what kit.sh needs of a model (min, bench, npy-outputs, onnx, ref-inputs, spec)

Standard library only, apart from numpy for output comparisons (imported when needed).
What `write` reads under OUT (every piece is optional: a missing one is reported
as not run, with the reason the kit logged in steps/log.tsv):

  models/manifest.json                          from make_models.py
  steps/env.json                                from `report.py env`
  steps/log.tsv                                 one line per step: STEP<TAB>ok|fail|skip<TAB>message
  steps/placement/MODEL.json                    `pomme inspect --placement --json`
  steps/bench/RUNNER.MODEL.DEVICE.bBATCH.json   RUNNER: pomme (Core ML backend), swift (Direct.swift),
                                                coremltools, pomme-ort (ort + CoreML EP), ort-py
                                                (onnxruntime's Python API, CoreML EP); DEVICE: cpu|gpu|ane
  steps/outputs/MODEL/RUNNER.DEVICE/NAME.npy    `pomme infer -o` on the model's reference input
  steps/served/MODEL.json                       `pomme bench --url --json`
  steps/outputs/stateful/served.DEVICE/         y_steps.npy: one sequence of three requests (sequence.py)
  steps/energy/RUNNER.MODEL.DEVICE.bBATCH.txt   powermetrics' text during that bench; energy/idle.txt at rest

The logic (percentiles, placement verdict, tolerances, ratios, energy) is plain
functions, tested on Linux by tests/mackit.
"""
import json
import os
import platform
import re
import subprocess
import sys

# pomme / direct at batch 1 (p50): the goal.
RATIO_GOAL = 1.05
DEVICES = ("cpu", "gpu", "ane")
COMPUTE_UNITS = {"cpu": "cpuOnly", "gpu": "cpuAndGPU", "ane": "cpuAndNeuralEngine"}
RUNNERS = {
    "pomme": "pomme bench --backend coreml",
    "swift": "Direct.swift (MLModel.prediction loop)",
    "coremltools": "coremltools MLModel.predict",
    "pomme-ort": "pomme bench --backend ort (CoreML EP)",
    "ort-py": "onnxruntime Python (CoreML EP)",
    "pomme-coreai": "pomme bench --backend coreai (Swift shim)",
    "pomme-coreai-py": "pomme bench --backend coreai (Python bridge, coreai-core)",
    "coreai-py": "coreai-core's Python API (CoreAI.framework)",
}
# The direct baseline each pomme runner is divided by.
DIRECT = {"pomme": "swift", "pomme-ort": "ort-py", "pomme-coreai": "coreai-py", "pomme-coreai-py": "coreai-py"}


# --- plain functions ---------------------------------------------------------------------------


def percentiles(samples_ms):
    """p50/p90/p99 (nearest rank) and mean of a list of latencies in ms."""
    v = sorted(float(x) for x in samples_ms)
    if not v:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "requests": 0}

    def q(p):
        k = max(0, min(len(v) - 1, int(-(-p * len(v) // 1)) - 1))
        return v[k]

    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "mean_ms": sum(v) / len(v), "requests": len(v)}


def placement_verdict(plan, min_share):
    """Core ML's compute plan (pomme's PlacementReport as JSON) against a minimum Neural Engine share.

    The share is computed as pomme computes it: of estimated cost when the plan has costs,
    else of placed ops (ops with a preferred device; Core ML gives none for constants).
    """
    ops = plan.get("ops", [])
    placed = [o for o in ops if o.get("preferred") not in (None, "unknown")]
    costs = [o.get("cost") for o in placed if o.get("cost") is not None]
    total_cost = sum(costs)
    use_cost = bool(costs) and total_cost > 0
    on_ane = [o for o in placed if o["preferred"] == "ane"]
    if not placed:
        share = 0.0
    elif use_cost:
        share = sum(o.get("cost") or 0.0 for o in on_ane) / total_cost
    else:
        share = len(on_ane) / len(placed)
    off = [o for o in placed if o["preferred"] != "ane"]
    by_type = {}
    for o in off:
        t = by_type.setdefault(o["op_type"], {"count": 0, "cost": 0.0, "devices": {}})
        t["count"] += 1
        t["cost"] += o.get("cost") or 0.0
        t["devices"][o["preferred"]] = t["devices"].get(o["preferred"], 0) + 1
    return {
        "compute_units": plan.get("compute_units"),
        "ops": len(ops),
        "placed": len(placed),
        "basis": "estimated cost" if use_cost else "ops",
        "ane_share": share,
        "min_ane_share": min_share,
        "ok": None if min_share is None else share + 1e-12 >= min_share,
        "off_ane": [{"op_type": o["op_type"], "name": o.get("name", ""), "preferred": o["preferred"],
                     "supported": o.get("supported", []),
                     "cost": o.get("cost")} for o in off],
        "off_ane_by_type": by_type,
    }


def placement_text(v):
    """One verdict line and the per-op table of the ops that fell off the Neural Engine."""
    need = "no minimum" if v["min_ane_share"] is None else f"min {v['min_ane_share'] * 100:.0f}%"
    mark = {True: "OK", False: "FAIL", None: "INFO"}[v["ok"]]
    lines = [f"{mark}: {v['ane_share'] * 100:.1f}% of the {v['basis']} on the Neural Engine ({need}; "
             f"{v['placed']} placed ops, compute units {v['compute_units']})"]
    if v["off_ane"]:
        lines.append(f"  {'op type':<24}{'name':<36}{'planned on':<12}{'supported':<16}{'cost':>8}")
        for o in v["off_ane"]:
            cost = "-" if o["cost"] is None else f"{o['cost'] * 100:.2f}%"
            lines.append(f"  {o['op_type']:<24}{o['name'][:35]:<36}{o['preferred']:<12}"
                         f"{','.join(o['supported']) or '-':<16}{cost:>8}")
    return "\n".join(lines)


def compare(ref, got, tolerance):
    """One output against its reference: max |a - b|, that relative to max |ref|, cosine, verdict."""
    import numpy as np

    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    if a.shape != b.shape:
        b_sq = b.reshape(a.shape) if a.size == b.size else None
        if b_sq is None:
            return {"ok": False, "why": f"shape {list(b.shape)} vs {list(a.shape)}"}
        b = b_sq
    if not np.all(np.isfinite(b)):
        return {"ok": False, "why": "non-finite values", "max_abs": None}
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    norm_err = max_abs / scale if scale > 0 else max_abs
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    ok = norm_err <= tolerance["max_norm_err"] and cosine >= tolerance["min_cosine"]
    return {"ok": bool(ok), "max_abs": max_abs, "norm_err": norm_err, "cosine": cosine}


def ratio(num, den):
    if num is None or den is None or den <= 0:
        return None
    return num / den


def parse_powermetrics(text):
    """Samples of (cpu, gpu, ane) power in mW from `powermetrics --samplers cpu_power,gpu_power,ane_power`."""
    samples, cur = [], {}
    pat = re.compile(r"^(CPU|GPU|ANE) Power:\s*([0-9.]+)\s*mW", re.M)
    for line in text.splitlines():
        if line.startswith("*** Sampled system activity"):
            if cur:
                samples.append(cur)
            cur = {}
            continue
        m = pat.match(line.strip())
        if m:
            cur[m.group(1).lower() + "_mw"] = float(m.group(2))
    if cur:
        samples.append(cur)
    return [s for s in samples if s]


def mean_power(samples):
    keys = ("cpu_mw", "gpu_mw", "ane_mw")
    if not samples:
        return None
    return {k: sum(s.get(k, 0.0) for s in samples) / len(samples) for k in keys}


def energy_per_inference(busy, idle, items_per_s):
    """mJ per inference (one item) from mean power while busy, above idle when idle is known."""
    if busy is None or not items_per_s:
        return None
    total = sum(busy.values())
    above = total - (sum(idle.values()) if idle else 0.0)
    return {"power_mw": total, "above_idle_mw": above if idle else None,
            "mj_per_inference": total / items_per_s, "mj_above_idle": (above / items_per_s) if idle else None,
            **{k: v for k, v in busy.items()}}


# --- reading the pieces ------------------------------------------------------------------------


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_log(out):
    rows = []
    try:
        with open(os.path.join(out, "steps", "log.tsv")) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) == 3:
                    rows.append({"step": parts[0], "status": parts[1], "message": parts[2]})
    except OSError:
        pass
    return rows


def bench_stats(doc):
    """Latency figures from one bench file: pomme's JSON rows, or the direct runners' one object."""
    if doc is None:
        return None
    if isinstance(doc, list):
        if not doc:
            return None
        doc = doc[0]
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "requests", "items_per_s", "requests_per_s", "errors",
            "load_ms", "batch")
    s = {k: doc.get(k) for k in keys if k in doc}
    if s.get("items_per_s") is None and s.get("mean_ms") and s.get("batch"):
        s["items_per_s"] = 1000.0 * s["batch"] / s["mean_ms"]
    return s


def collect(out):
    steps = os.path.join(out, "steps")
    manifest = _load(os.path.join(out, "models", "manifest.json")) or {"models": []}
    rep = {
        "schema": "pomme-mac-report/1",
        "env": _load(os.path.join(steps, "env.json")) or {},
        "devices": _load(os.path.join(steps, "devices.json")),
        "log": read_log(out),
        "models": [],
        "latency": [],
        "speedup": [],
        "served": [],
        "energy": [],
        "checks": [],
    }
    idle = mean_power(parse_powermetrics(_text(os.path.join(steps, "energy", "idle.txt"))))
    for m in manifest["models"]:
        name = m["name"]
        entry = {"name": name, "parameters": m.get("parameters"), "small": m.get("small"),
                 "inputs": m.get("inputs"), "min_ane_share": m.get("min_ane_share")}
        plan = _load(os.path.join(steps, "placement", name + ".json"))
        if plan is not None:
            plan = plan.get("placement", plan)
        if plan:
            v = placement_verdict(plan, m.get("min_ane_share"))
            entry["placement"] = v
            if v["ok"] is not None:
                rep["checks"].append({"check": f"placement {name}", "ok": v["ok"],
                                      "detail": f"{v['ane_share'] * 100:.1f}% on the ANE (min "
                                                f"{v['min_ane_share'] * 100:.0f}%, {v['basis']})"})
        entry["outputs"] = compare_outputs(out, m)
        for c in entry["outputs"]:
            rep["checks"].append({"check": f"outputs {name} {c['runner']}.{c['device']} vs {c['against']}",
                                  "ok": c["ok"], "detail": c.get("why") or
                                  f"norm err {c['worst_norm_err']:.2e}, cosine {c['worst_cosine']:.6f}"})
        rep["models"].append(entry)
        latency_rows(out, name, rep, idle)
        served = _load(os.path.join(steps, "served", name + ".json"))
        if served:
            served_as = _text(os.path.join(steps, "served", name + ".backend")).strip() or "coreml/ane"
            for r in served.get("rows", []):
                rep["served"].append({"model": name, "served_as": served_as, "protocol": served.get("protocol"), **r})
    # Groups the kit wrote outside the manifest: models/coreml fixtures and Core AI assets.
    known = {m["name"] for m in manifest["models"]}
    extra = set()
    for sub, pat in (("outputs", r"^(.+)$"), ("bench", r"^[a-z-]+\.(.+)\.(?:cpu|gpu|ane)\.b\d+\.json$")):
        d = os.path.join(steps, sub)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            m = re.match(pat, f)
            if m and m.group(1) not in known:
                extra.add(m.group(1))
    for name in sorted(extra):
        entry = {"name": name, "extra": True, "outputs": compare_outputs(out, {"name": name})}
        for c in entry["outputs"]:
            rep["checks"].append({"check": f"outputs {name} {c['runner']}.{c['device']} vs {c['against']}",
                                  "ok": c["ok"], "detail": c.get("why") or
                                  f"norm err {c['worst_norm_err']:.2e}, cosine {c['worst_cosine']:.6f}"})
        rep["models"].append(entry)
        latency_rows(out, name, rep, idle)
    for r in rep["latency"]:
        if r["batch"] == 1 and r["runner"] == "pomme" and r.get("ratio_vs_swift") is not None:
            rep["checks"].append({"check": f"overhead {r['model']} {r['device']} b1", "ok": r["ratio_vs_swift"] <= RATIO_GOAL,
                                  "detail": f"pomme / direct Swift p50 = {r['ratio_vs_swift']:.3f} (goal <= {RATIO_GOAL})"})
    for s in rep["log"]:
        if s["status"] == "fail":
            rep["checks"].append({"check": f"step {s['step']}", "ok": False, "detail": s["message"]})
    rep["passed"] = all(c["ok"] for c in rep["checks"])
    rep["verdict"] = ("nothing checked" if not rep["checks"] else
                      "all checks passed" if rep["passed"] else "some checks FAILED")
    return rep


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _label_values(a):
    """Non-numeric outputs (a classifier's label, its probabilities as a dictionary)
    as numbers where they hold a JSON dictionary of numbers, else None."""
    try:
        vals = []
        for x in a.ravel().tolist():
            x = x.decode() if isinstance(x, bytes) else x
            d = json.loads(x)
            vals += [float(d[k]) for k in sorted(d)]
        return vals
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def compare_files(ref_path, got_path, tol):
    """compare() of two .npy files; non-numeric outputs are compared as dictionaries of
    numbers or exactly; a file that cannot be read is not compared (ok None)."""
    import numpy as np

    try:
        a, b = np.load(ref_path), np.load(got_path)
    except (OSError, ValueError) as e:
        return {"ok": None, "why": f"not compared: {e}"}
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        return compare(a, b, tol)
    va, vb = _label_values(a), _label_values(b)
    if va is not None and vb is not None and len(va) == len(vb):
        return compare(np.array(va), np.array(vb), tol)
    same = a.shape == b.shape and a.tolist() == b.tolist()
    return {"ok": same, "why": None if same else "labels differ", "norm_err": 0.0 if same else 1.0,
            "cosine": 1.0 if same else 0.0}


def compare_outputs(out, m):
    """Each RUNNER.DEVICE output directory of a model against a reference:
    pomme.cpu (Core ML on the CPU) against the numpy float32 reference; another runner's
    cpu against pomme.cpu (the same function in another format or engine); a gpu or ane
    directory against its own runner's cpu, else pomme.cpu."""
    import numpy as np

    base = os.path.join(out, "steps", "outputs", m["name"])
    mdir = os.path.join(out, "models", m["name"])
    tol = m.get("tolerance") or {"max_norm_err": 0.05, "min_cosine": 0.998}
    if not os.path.isdir(base):
        return []

    def npys(d):
        p = os.path.join(base, d)
        return {f[:-4]: os.path.join(p, f) for f in os.listdir(p) if f.endswith(".npy")} if os.path.isdir(p) else {}

    numpy_ref = {k: os.path.join(mdir, v) for k, v in (m.get("reference") or {}).get("outputs", {}).items()}
    results = []
    for d in sorted(os.listdir(base)):
        runner, _, device = d.partition(".")
        if d == "pomme.cpu":
            against, refs = "numpy fp32 reference", numpy_ref
        elif device == "cpu":
            against, refs = ("pomme.cpu", npys("pomme.cpu")) if npys("pomme.cpu") else ("numpy fp32 reference",
                                                                                     numpy_ref)
        elif npys(f"{runner}.cpu"):
            against, refs = f"{runner}.cpu", npys(f"{runner}.cpu")
        else:
            against, refs = "pomme.cpu", npys("pomme.cpu")
        got_dir = os.path.join(base, d)
        # An output the reference run lacks (a sequence's y_steps) is compared with numpy's.
        extra = {k: v for k, v in numpy_ref.items() if k not in refs and os.path.exists(os.path.join(got_dir, k + ".npy"))}
        if extra:
            if not refs or against == "numpy fp32 reference":
                against = "numpy fp32 reference"
            else:
                against = f"{against} (numpy for {', '.join(sorted(extra))})"
            refs = {**refs, **extra}
        if not refs:
            continue
        per, ok, why = [], True, None
        for out_name, ref_path in sorted(refs.items()):
            got_path = os.path.join(got_dir, out_name + ".npy")
            if not os.path.exists(got_path) or not os.path.exists(ref_path):
                continue
            c = compare_files(ref_path, got_path, tol)
            c["output"] = out_name
            if c["ok"] is None:
                continue
            per.append(c)
            if not c["ok"]:
                ok = False
                why = why or (c.get("why") or f"{out_name}: norm err {c['norm_err']:.2e}, cosine {c['cosine']:.6f}")
        if not per:
            continue
        results.append({
            "runner": runner, "device": device, "against": against, "ok": ok, "why": why, "tolerance": tol,
            "outputs": per,
            "worst_norm_err": max((c.get("norm_err") or 0.0) for c in per),
            "worst_cosine": min((c.get("cosine") if c.get("cosine") is not None else 0.0) for c in per),
        })
    return results


def latency_rows(out, name, rep, idle):
    bench = os.path.join(out, "steps", "bench")
    files = sorted(os.listdir(bench)) if os.path.isdir(bench) else []
    found = {}
    for f in files:
        m = re.match(r"^([a-z-]+)\.(.+)\.(cpu|gpu|ane)\.b(\d+)\.json$", f)
        if not m or m.group(2) != name:
            continue
        stats = bench_stats(_load(os.path.join(bench, f)))
        if stats:
            found[(m.group(1), m.group(3), int(m.group(4)))] = stats
    batches = sorted({k[2] for k in found})
    for batch in batches:
        for device in DEVICES:
            swift = found.get(("swift", device, batch))
            ct = found.get(("coremltools", device, batch))
            ortpy = found.get(("ort-py", device, batch))
            for runner in RUNNERS:
                s = found.get((runner, device, batch))
                if not s:
                    continue
                row = {"model": name, "batch": batch, "device": device, "runner": runner, **s}
                if runner in DIRECT:
                    base = found.get((DIRECT[runner], device, batch))
                    row["direct"] = DIRECT[runner]
                    row["ratio_vs_direct"] = ratio(s.get("p50_ms"), base and base.get("p50_ms"))
                if runner == "pomme":
                    row["ratio_vs_swift"] = ratio(s.get("p50_ms"), swift and swift.get("p50_ms"))
                    row["ratio_vs_coremltools"] = ratio(s.get("p50_ms"), ct and ct.get("p50_ms"))
                if runner == "pomme-ort":
                    row["ratio_vs_ort_py"] = ratio(s.get("p50_ms"), ortpy and ortpy.get("p50_ms"))
                rep["latency"].append(row)
                pm = os.path.join(out, "steps", "energy", f"{runner}.{name}.{device}.b{batch}.txt")
                if os.path.exists(pm):
                    e = energy_per_inference(mean_power(parse_powermetrics(_text(pm))), idle, s.get("items_per_s"))
                    if e:
                        rep["energy"].append({"model": name, "runner": runner, "device": device, "batch": batch, **e})
        for runner in RUNNERS:
            cpu, ane, gpu = (found.get((runner, d, batch)) for d in ("cpu", "ane", "gpu"))
            if cpu and (ane or gpu):
                rep["speedup"].append({
                    "model": name, "batch": batch, "runner": runner,
                    "ane_vs_cpu": ratio(cpu.get("p50_ms"), ane and ane.get("p50_ms")),
                    "gpu_vs_cpu": ratio(cpu.get("p50_ms"), gpu and gpu.get("p50_ms")),
                })


# --- markdown ----------------------------------------------------------------------------------


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def render_md(rep):
    env = rep["env"]
    out = ["# pomme on Apple hardware: proof kit report", ""]
    out.append(f"**Verdict: {rep['verdict']}** "
               f"({sum(c['ok'] for c in rep['checks'])} of {len(rep['checks'])} checks passed)")
    out += ["", "## Machine", ""]
    for k in ("chip", "model", "memory_gb", "os", "os_build", "pomme", "rustc", "swiftc", "xcode", "python",
              "coremltools", "onnxruntime", "numpy", "kit_commit"):
        if env.get(k) is not None:
            out.append(f"- {k}: {env[k]}")
    for b in (rep.get("devices") or {}).get("backends", []):
        devs = ", ".join(str(d.get("kind", d)) if isinstance(d, dict) else str(d) for d in b.get("devices") or [])
        out.append(f"- pomme backend {b.get('backend')}: {json.dumps(b.get('availability'))}"
                   + (f" ({devs})" if devs else ""))
    out += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    for c in rep["checks"]:
        out.append(f"| {c['check']} | {'pass' if c['ok'] else '**FAIL**'} | {c['detail']} |")
    out += ["", "## Placement (Core ML compute plan, compute units cpuAndNeuralEngine)", ""]
    out += ["| model | parameters | ANE share | basis | minimum | result |", "|---|---|---|---|---|---|"]
    for m in rep["models"]:
        v = m.get("placement")
        if m.get("extra"):
            continue
        if not v:
            out.append(f"| {m['name']} | {m.get('parameters') or '-'} | not run | | | |")
            continue
        res = {True: "pass", False: "**FAIL**", None: "-"}[v["ok"]]
        out.append(f"| {m['name']} | {m.get('parameters') or '-'} | {v['ane_share'] * 100:.1f}% | {v['basis']} | "
                   f"{_f(v['min_ane_share'], '{:.0%}')} | {res} |")
    for m in rep["models"]:
        v = m.get("placement")
        if v and v["off_ane"]:
            out += ["", f"Ops of {m['name']} planned off the Neural Engine:", "", "```", placement_text(v), "```"]
    out += ["", "## Warm latency (ms; pomme / direct = p50 ratio, goal <= "
            f"{RATIO_GOAL} at batch 1)", ""]
    out += ["| model | batch | device | runner | p50 | p90 | p99 | items/s | pomme / direct | pomme / coremltools |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["latency"]:
        rd = f"{_f(r.get('ratio_vs_direct'), '{:.3f}x')} ({r['direct']})" if r["runner"] in DIRECT else ""
        out.append(f"| {r['model']} | {r['batch']} | {r['device']} | {r['runner']} | {_f(r.get('p50_ms'))} | "
                   f"{_f(r.get('p90_ms'))} | {_f(r.get('p99_ms'))} | {_f(r.get('items_per_s'), '{:.1f}')} | "
                   f"{rd} | {_f(r.get('ratio_vs_coremltools'), '{:.3f}x') if r['runner'] == 'pomme' else ''} |")
    out.append("")
    out.append("Runners: " + "; ".join(f"{k}: {v}" for k, v in RUNNERS.items()) + ". The overhead checks are "
               "pomme (Core ML) / Swift at batch 1; the other ratios are reported, not checked.")
    out += ["", "## Neural Engine and GPU speed-up over the CPU (p50)", "",
            "| model | batch | runner | ANE / CPU | GPU / CPU |", "|---|---|---|---|---|"]
    for s in rep["speedup"]:
        out.append(f"| {s['model']} | {s['batch']} | {s['runner']} | {_f(s['ane_vs_cpu'], '{:.2f}x')} | "
                   f"{_f(s['gpu_vs_cpu'], '{:.2f}x')} |")
    out += ["", "## Outputs against the CPU (float16 tolerances)", "",
            "| model | runner.device | against | worst norm err | worst cosine | tolerance | result |",
            "|---|---|---|---|---|---|---|"]
    for m in rep["models"]:
        for c in m.get("outputs", []):
            t = c["tolerance"]
            out.append(f"| {m['name']} | {c['runner']}.{c['device']} | {c['against']} | {_f(c['worst_norm_err'], '{:.2e}')} | "
                       f"{_f(c['worst_cosine'], '{:.6f}')} | err <= {t['max_norm_err']}, cos >= {t['min_cosine']} | "
                       f"{'pass' if c['ok'] else '**FAIL**'} |")
    out += ["", "## Served (pomme serve, Core ML on the ANE, pomme bench --url)", "",
            "| model | served as | protocol | concurrency | batch | ok | errors | req/s | p50 | p99 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["served"]:
        out.append(f"| {r['model']} | {r.get('served_as', '-')} | {r.get('protocol', '-')} | {r.get('concurrency')} | {r.get('batch')} | {r.get('ok')} | "
                   f"{(r.get('errors') or 0) + (r.get('rejected') or 0) + (r.get('timed_out') or 0)} | "
                   f"{_f(r.get('rps'), '{:.1f}')} | {_f(r.get('p50_ms'))} | {_f(r.get('p99_ms'))} |")
    out += ["", "## Energy (powermetrics; mJ per inference)", ""]
    if rep["energy"]:
        out += ["| model | runner | device | batch | power mW | above idle mW | mJ / inference | mJ above idle |",
                "|---|---|---|---|---|---|---|---|"]
        for e in rep["energy"]:
            out.append(f"| {e['model']} | {e['runner']} | {e['device']} | {e['batch']} | {_f(e['power_mw'], '{:.0f}')} | "
                       f"{_f(e['above_idle_mw'], '{:.0f}')} | {_f(e['mj_per_inference'])} | {_f(e['mj_above_idle'])} |")
    else:
        out.append("Not measured (powermetrics needs root: run `sudo -v` just before the kit).")
    out += ["", "## Steps", "", "| step | status | message |", "|---|---|---|"]
    for s in rep["log"]:
        out.append(f"| {s['step']} | {s['status']} | {s['message']} |")
    return "\n".join(out) + "\n"


def write(out):
    rep = collect(out)
    with open(os.path.join(out, "mac-report.json"), "w") as f:
        json.dump(rep, f, indent=2)
        f.write("\n")
    md = render_md(rep)
    with open(os.path.join(out, "mac-report.md"), "w") as f:
        f.write(md)
    return rep, md


# --- the kit's questions about the manifest ----------------------------------------------------


def manifest_field(manifest_path, field, name):
    """One field of a model's manifest entry, as kit.sh splits it into words. Paths are
    relative to the working directory (the repository when the kit asks)."""
    with open(manifest_path) as f:
        m = {e["name"]: e for e in json.load(f)["models"]}[name]
    d = os.path.relpath(os.path.join(os.path.dirname(manifest_path), name))
    if field == "min":
        return "-" if m["min_ane_share"] is None else str(m["min_ane_share"])
    if field == "bench":
        return "yes" if m["bench"] else "no"
    if field == "npy-outputs":
        return "yes" if m.get("npy_outputs", True) else "no"
    if field == "onnx":
        return os.path.join(d, m["onnx"]) if m["onnx"] else ""
    if field == "ref-inputs":
        return " ".join(f"--input {k}={os.path.join(d, v)}" for k, v in m["reference"]["inputs"].items())
    if field == "spec":
        np_type = {"FP32": "float32", "INT32": "int32", "FP16": "float16", "U8": "uint8"}
        return " ".join(f"--spec {i['name']}={','.join(map(str, i['shape']))}:{np_type[i['dtype']]}"
                        for i in m["inputs"])
    raise KeyError(field)


# --- environment -------------------------------------------------------------------------------


def _run(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(pomme=None):
    e = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version()}
    if sys.platform == "darwin":
        e["chip"] = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        e["model"] = _run(["sysctl", "-n", "hw.model"])
        mem = _run(["sysctl", "-n", "hw.memsize"])
        e["memory_gb"] = round(int(mem) / 2 ** 30, 1) if mem and mem.isdigit() else None
        e["os"] = _run(["sw_vers", "-productVersion"])
        e["os_build"] = _run(["sw_vers", "-buildVersion"])
        e["perf_cores"] = _run(["sysctl", "-n", "hw.perflevel0.physicalcpu"])
        e["eff_cores"] = _run(["sysctl", "-n", "hw.perflevel1.physicalcpu"])
        e["xcode"] = (_run(["xcodebuild", "-version"]) or "").replace("\n", " ") or None
        e["swiftc"] = ((_run(["swiftc", "--version"]) or "").splitlines() or [None])[0]
        e["sdk"] = _run(["xcrun", "--sdk", "macosx", "--show-sdk-version"])
    else:
        e["os"] = f"{platform.system()} {platform.release()}"
    e["rustc"] = _run(["rustc", "--version"])
    if pomme:
        e["pomme"] = _run([pomme, "--version"])
    for mod in ("coremltools", "onnxruntime", "numpy", "onnx"):
        try:
            e[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (any import failure: not installed here)
            e[mod] = None
    e["kit_commit"] = _run(["git", "rev-parse", "--short", "HEAD"])
    return e


def main(argv):
    if len(argv) >= 2 and argv[0] == "env":
        os.makedirs(os.path.join(argv[1], "steps"), exist_ok=True)
        with open(os.path.join(argv[1], "steps", "env.json"), "w") as f:
            json.dump(env_info(argv[2] if len(argv) > 2 else None), f, indent=2)
            f.write("\n")
        return 0
    if len(argv) == 3 and argv[0] == "placement":
        plan = _load(argv[1])
        if plan is None:
            print(f"no placement report in {argv[1]}")
            return 3
        plan = plan.get("placement", plan)
        if plan is None:
            print("pomme printed no compute plan (Core ML gives one on macOS 14.4+)")
            return 3
        v = placement_verdict(plan, None if argv[2] == "-" else float(argv[2]))
        print(placement_text(v))
        return 0 if v["ok"] is not False else 1
    if len(argv) == 4 and argv[0] == "field":
        print(manifest_field(argv[1], argv[2], argv[3]))
        return 0
    if len(argv) == 2 and argv[0] == "write":
        rep, md = write(argv[1])
        print(md)
        return 0 if rep["passed"] else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
