#!/usr/bin/env python3
"""pomme's ONNX Runtime backend vs ONNX Runtime's own Python API, in one run.

For each intra-op thread count T and batch size B it alternates, round after
round:

* **python**: ``onnxruntime.InferenceSession`` (CPU EP, graph optimisation
  ORT_ENABLE_ALL as pomme's ort backend sets it, ``intra_op_num_threads=T``,
  ``inter_op_num_threads=1``, sequential execution), a fresh session per round,
  ``--warmup`` unmeasured runs, then ``--iters`` timed ``sess.run`` calls;
* **pomme**: ``pomme bench MODEL --backend ort --threads T --batch B
  --concurrency 1 --json`` (a subprocess; ``ORT_DYLIB_PATH`` is pointed at the
  ``libonnxruntime.so`` inside the very onnxruntime package imported here, so
  both sides run the same library build).

Both sides feed the same deterministic input pomme's bench makes
(``((i * 7919) % 1000) / 1000 - 0.5`` over the flattened tensor). The Python
side measures ``sess.run`` alone; pomme's figures are its own bench's
end-to-end ``Runtime::infer`` latencies (admission, queue, worker thread
hand-off, tensor conversion, ORT run, answer), so the ratio is pomme's
whole-request cost over ORT's bare call.

Per cell it prints the median over rounds of each round's p50 and p90, the
spread of the per-round p50s ((max-min)/median) and the ratio
``pomme p50 / python p50`` (median of the per-round ratios, and min-max).

Usage (from the workspace root):

    .venv/bin/python benches/ort_vs_python.py --pomme target/release/pomme \
        --model ../shared/models/mobilenet_v2.onnx --threads 1,2 --batch 1 \
        [--rounds 3] [--iters 200] [--warmup 20] [--json-out FILE]

``--duration`` for pomme's side defaults to the time the Python side took for
``--iters`` runs in the first round (at least 2 s), so both sample a similar
number of requests.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_dylib() -> str:
    capi = Path(ort.__file__).resolve().parent / "capi"
    libs = sorted(glob.glob(str(capi / "libonnxruntime.so*")))
    libs = [p for p in libs if "providers" not in p]
    if not libs:
        sys.exit(f"no libonnxruntime.so* under {capi}")
    # Prefer the fully versioned name (libonnxruntime.so.1.31.1).
    return max(libs, key=len)


def synthetic(shape: list[int]) -> np.ndarray:
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919) % 1000).astype(np.float32) / 1000.0 - 0.5).reshape(shape)


def feeds_for(sess: ort.InferenceSession, batch: int) -> dict:
    feeds = {}
    for inp in sess.get_inputs():
        if inp.type != "tensor(float)":
            sys.exit(f"input {inp.name} is {inp.type}: this script feeds float32 only")
        shape = [
            d if isinstance(d, int) else (batch if k == 0 else 8)
            for k, d in enumerate(inp.shape)
        ]
        feeds[inp.name] = synthetic(shape)
    return feeds


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def python_round(model: str, threads: int, batch: int, warmup: int, iters: int) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = feeds_for(sess, batch)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    t_all = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    wall = time.perf_counter() - t_all
    del sess
    gc.collect()
    return {
        "n": len(times),
        "p50_ms": pct(times, 50),
        "p90_ms": pct(times, 90),
        "p99_ms": pct(times, 99),
        "min_ms": min(times),
        "mean_ms": statistics.fmean(times),
        "wall_s": wall,
    }


def pomme_round(
    pomme: str, model: str, threads: int, batch: int, duration: float, warmup: float, dylib: str
) -> dict:
    env = dict(os.environ, ORT_DYLIB_PATH=dylib, RUST_LOG="warn")
    cmd = [
        pomme, "bench", model, "--backend", "ort", "--threads", str(threads),
        "--batch", str(batch), "--concurrency", "1", "--json",
        "--duration", f"{duration:.3f}s", "--warmup", f"{warmup:.3f}s",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    rows = json.loads(p.stdout)
    if len(rows) != 1:
        sys.exit(f"expected one bench row, got {len(rows)}")
    r = rows[0]
    if r["errors"]:
        sys.exit(f"pomme bench reported {r['errors']} errors")
    return {
        "n": r["requests"],
        "p50_ms": r["p50_ms"],
        "p90_ms": r["p90_ms"],
        "p99_ms": r["p99_ms"],
        "mean_ms": r["mean_ms"],
        "cmd": " ".join(cmd),
    }


def spread(xs: list[float]) -> float:
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pomme", required=True, help="path to the pomme binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    ap.add_argument("--iters", type=int, default=200, help="timed Python runs per round")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured Python runs per round")
    ap.add_argument("--duration", type=float, default=None,
                    help="pomme bench seconds per round (default: match Python's wall time)")
    ap.add_argument("--pomme-warmup", type=float, default=1.0, help="pomme bench warm-up seconds")
    ap.add_argument("--dylib", default=None, help="libonnxruntime.so (default: this onnxruntime's)")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()

    pomme = str(Path(a.pomme).resolve())
    model = str(Path(a.model).resolve())
    dylib = a.dylib or ort_dylib()
    threads = [int(t) for t in a.threads.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    print(f"onnxruntime {ort.__version__} (python {sys.version.split()[0]}), dylib {dylib}")
    print(f"pomme {pomme}; model {model}; rounds {a.rounds}, iters {a.iters}, warmup {a.warmup}")
    print(f"loadavg at start: {loadavg()}", flush=True)

    results = []
    for b in batches:
        for t in threads:
            cell = {"threads": t, "batch": b, "python": [], "pomme": []}
            duration = a.duration
            for r in range(a.rounds):
                # Alternate which side goes first, so drift does not favour one.
                order = ("python", "pomme") if r % 2 == 0 else ("pomme", "python")
                for side in order:
                    if side == "python":
                        res = python_round(model, t, b, a.warmup, a.iters)
                        if duration is None:
                            duration = max(2.0, res["wall_s"])
                    else:
                        d = duration if duration is not None else 5.0
                        res = pomme_round(pomme, model, t, b, d, a.pomme_warmup, dylib)
                    cell[side].append(res)
                    print(f"  T={t} B={b} round {r + 1} {side:<6} p50 {res['p50_ms']:8.3f} ms  "
                          f"p90 {res['p90_ms']:8.3f} ms  n={res['n']}  (load {loadavg()})",
                          flush=True)
            results.append(cell)

    print()
    print(f"loadavg at end: {loadavg()}")
    hdr = (f"{'T':>2} {'B':>2} | {'python p50':>10} {'p90':>8} {'spread':>7} | "
           f"{'pomme p50':>10} {'p90':>8} {'spread':>7} | {'ratio p50':>9} {'min-max':>13}")
    print(hdr)
    print("-" * len(hdr))
    for c in results:
        py50 = [x["p50_ms"] for x in c["python"]]
        po50 = [x["p50_ms"] for x in c["pomme"]]
        py90 = [x["p90_ms"] for x in c["python"]]
        po90 = [x["p90_ms"] for x in c["pomme"]]
        ratios = [po / py for po, py in zip(po50, py50)]
        c["summary"] = {
            "python_p50_ms": statistics.median(py50),
            "python_p90_ms": statistics.median(py90),
            "python_spread": spread(py50),
            "pomme_p50_ms": statistics.median(po50),
            "pomme_p90_ms": statistics.median(po90),
            "pomme_spread": spread(po50),
            "ratio_p50": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        s = c["summary"]
        print(f"{c['threads']:>2} {c['batch']:>2} | {s['python_p50_ms']:10.3f} {s['python_p90_ms']:8.3f} "
              f"{s['python_spread'] * 100:6.1f}% | {s['pomme_p50_ms']:10.3f} {s['pomme_p90_ms']:8.3f} "
              f"{s['pomme_spread'] * 100:6.1f}% | {s['ratio_p50']:9.3f} "
              f"{s['ratio_min']:6.3f}-{s['ratio_max']:.3f}")
    print("spread = (max - min) / median of the per-round p50s; ratio = pomme p50 / python p50 "
          "(median of per-round ratios, min-max)")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(
            {"onnxruntime": ort.__version__, "dylib": dylib, "model": model, "pomme": pomme,
             "rounds": a.rounds, "iters": a.iters, "warmup": a.warmup, "cells": results},
            indent=2))


if __name__ == "__main__":
    main()
