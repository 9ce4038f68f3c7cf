#!/usr/bin/env python3
"""Ensemble overhead: one request to a two-step pipeline (Triton's ensemble)
versus the client calling the two steps one after the other, side by side in
one run against one `pomme serve`, with tritonclient over HTTP (binary
tensors) and gRPC. Prints median / p90 latency per call pattern, interleaved
in rounds so drift hits both alike.

    .venv/bin/python benches/ensemble_overhead.py --pomme target/release/pomme [--n 2000]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = """name: "plus_two"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "a" input_map { key: "x" value: "IN" } output_map { key: "y" value: "MID" } },
  { model_name: "b" input_map { key: "x" value: "MID" } output_map { key: "y" value: "OUT" } }
] }
"""


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--n", type=int, default=2000, help="calls per pattern and protocol")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    repo = tmp / "repo"
    for m in ("a", "b"):
        (repo / m / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/add_one.onnx", repo / m / "1/model.onnx")
        (repo / m / "config.toml").write_text('backends = ["tract"]\n')
    (repo / "plus_two/1").mkdir(parents=True)
    (repo / "plus_two/config.pbtxt").write_text(ENSEMBLE)
    http_p, grpc_p, met_p = port(), port(), port()
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([args.pomme, "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                             "--http-port", str(http_p), "--grpc-port", str(grpc_p), "--metrics-port", str(met_p)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, POMME_LOG="warn"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_p}/v2/health/ready", timeout=1).status == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                sys.exit("pomme serve did not get ready")
            time.sleep(0.05)
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        for proto, mod, client in (("http", httpclient, httpclient.InferenceServerClient(f"127.0.0.1:{http_p}")),
                                   ("grpc", grpcclient, grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_p}"))):
            def call(model, name, data, out):
                i = mod.InferInput(name, [1, 4], "FP32")
                i.set_data_from_numpy(data, **({"binary_data": True} if mod is httpclient else {}))
                o = [mod.InferRequestedOutput(out, **({"binary_data": True} if mod is httpclient else {}))]
                return client.infer(model, [i], outputs=o).as_numpy(out)

            def ensemble():
                return call("plus_two", "IN", x, "OUT")

            def by_hand():
                mid = call("a", "x", x, "y")
                return call("b", "x", mid, "y")

            assert np.array_equal(ensemble(), by_hand())
            times = {"ensemble": [], "client calls both steps": []}
            for _ in range(200):
                ensemble(), by_hand()
            for _ in range(args.n):
                for label, f in (("ensemble", ensemble), ("client calls both steps", by_hand)):
                    t = time.perf_counter()
                    f()
                    times[label].append((time.perf_counter() - t) * 1e6)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, v in times.items():
                v.sort()
                print(f"{proto:5s} {k:24s} median {med[k]:8.1f} us  p90 {v[int(len(v) * 0.9)]:8.1f} us")
            print(f"{proto:5s} ensemble / client calls: {med['ensemble'] / med['client calls both steps']:.2f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
