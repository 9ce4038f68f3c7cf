#!/usr/bin/env python3
"""What batching can gain at most on this CPU: ONNX Runtime alone, no server.

Runs a model (default: MobileNetV2 from ../shared/models) with onnxruntime's
own Python API (CPU EP, sequential executor, inter-op threads 1) at several
batch sizes and thread counts and prints images/s per batch size and the gain
over batch 1 with the same threads. A served model cannot gain more from
dynamic batching than this engine-only ratio (the server adds decoding,
concatenation and scheduling on the same cores), so it is the ceiling for a
"batched vs unbatched throughput" target.

Each cell: the median of --repeats timed runs of session.run after --warmup
runs, on one fixed N(0,1) input per batch size, the batch sizes taking turns
run by run; images/s = batch / median.
Spinning (session.intra_op.allow_spinning / session.inter_op.allow_spinning)
is a parameter: pomme turns it off by default, ORT's default is on.

Usage (from the workspace root):

    .venv/bin/python benches/batch_ceiling.py [--model ../shared/models/mobilenet_v2.onnx]
        [--batches 1,2,4,8,16] [--threads 1,2] [--spin off,on] [--repeats 30] [--warmup 5]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int, spin: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    flag = "1" if spin else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", flag)
    so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def input_for(sess: ort.InferenceSession, batch: int) -> dict:
    feeds = {}
    rng = np.random.default_rng(0)
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        shape[0] = batch
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def medians_ms(sess: ort.InferenceSession, batches: list[int], warmup: int,
               repeats: int) -> dict[int, float]:
    """Median ms per batch size. The batch sizes take turns (round-robin), so
    a slow spell of the machine (other tenants, other processes) weighs on
    every batch size alike instead of on whichever ran during it."""
    feeds = {b: input_for(sess, b) for b in batches}
    for b in batches:
        for _ in range(warmup):
            sess.run(None, feeds[b])
    times: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):
        for b in batches:
            t = time.perf_counter()
            sess.run(None, feeds[b])
            times[b].append((time.perf_counter() - t) * 1e3)
    return {b: statistics.median(v) for b, v in times.items()}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_model = os.path.normpath(
        os.path.join(here, "..", "..", "shared", "models", "mobilenet_v2.onnx")
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("POMME_TEST_MODELS", "") and
                    os.path.join(os.environ["POMME_TEST_MODELS"], "mobilenet_v2.onnx") or default_model)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--spin", default="off,on")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    spins = [s.strip() == "on" for s in a.spin.split(",")]

    print(f"model {a.model}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    rows = []
    for spin in spins:
        for t in threads:
            sess = session(a.model, t, spin)
            base = None
            for b, ms in medians_ms(sess, batches, a.warmup, a.repeats).items():
                ips = b / ms * 1e3
                base = base or ips
                rows.append({"spin": spin, "threads": t, "batch": b, "median_ms": ms,
                             "images_per_s": ips, "gain_vs_b1": ips / base})
    print("| spin | threads | batch | median ms | images/s | vs batch 1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['spin'] else 'off'} | {r['threads']} | {r['batch']} | "
              f"{r['median_ms']:.2f} | {r['images_per_s']:.1f} | {r['gain_vs_b1']:.2f}× |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
