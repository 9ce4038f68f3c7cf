#!/usr/bin/env python3
"""Memory sizing data for docs/DEPLOY.md: resident memory of `pomme serve` per model and backend.

    python3 deploy/sizing.py [--pomme target/release/pomme] mobilenet_v2 resnet18 ...

For each model (from POMME_TEST_MODELS, default ../shared/models) and backend (ort, tract),
serves it alone (2 compute workers, 1 intra-op thread, dynamic batching max 8), reads
VmRSS once ready, then sends 8 concurrent clients x 16 KServe v2 JSON requests (batch 1)
and reads the peak (VmHWM). Prints a Markdown table with the memory-budget charge
(`pomme_memory_budget_used_bytes`) beside them. Standard library only.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_mib(pid: int) -> dict:
    return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS", "VmHWM"))}


def measure(pomme: str, models: Path, model: str, backend: str, workers: int, env: dict, port: int) -> str:
    repo = Path(tempfile.mkdtemp(prefix="pomme-sizing-"))
    (repo / "m/1").mkdir(parents=True)
    shutil.copy(models / f"{model}.onnx", repo / "m/1/model.onnx")
    (repo / "m/config.toml").write_text(
        f'backends = ["{backend}"]\nmax_batch_size = 8\nworkers = {workers}\nthreads = 1\n'
        "[dynamic_batching]\nmax_queue_delay_us = 2000\n")
    p = subprocess.Popen([pomme, "serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--http-port", str(port),
                          "--grpc-port", str(port + 1), "--metrics-port", str(port + 2)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if p.poll() is not None:
                return f"| {model} | | {backend} | {workers} | failed to start (exit {p.returncode}) | | |"
            time.sleep(0.1)  # polling readiness
        after_load = status_mib(p.pid)["VmRSS"]
        try:
            meta = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/m"))
        except urllib.error.HTTPError as e:
            return f"| {model} | | {backend} | {workers} | not served (HTTP {e.code} on metadata: the backend did not load it) | | | |"
        inputs = []
        for i in meta["inputs"]:
            shape = [1 if d < 0 else d for d in i["shape"]]
            shape = [128 if (d < 0 and k > 0) else s for k, (d, s) in enumerate(zip(i["shape"], shape))]
            n = 1
            for d in shape:
                n *= d
            inputs.append({"name": i["name"], "datatype": i["datatype"], "shape": shape,
                           "data": [1] * n if i["datatype"].startswith(("INT", "UINT")) else [0.5] * n})
        body = json.dumps({"inputs": inputs}).encode()

        errors = []

        def client():
            for _ in range(16):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/m/infer", data=body,
                                             headers={"content-type": "application/json"})
                try:
                    urllib.request.urlopen(req).read()
                except urllib.error.HTTPError as e:
                    errors.append(f"HTTP {e.code}: {e.read().decode(errors='replace')[:160]}")

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            return f"| {model} | | {backend} | {workers} | inference failed ({len(errors)}x): {errors[0]} | | |"
        peak = status_mib(p.pid)["VmHWM"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics").read().decode()
        charge = next(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("pomme_memory_budget_used_bytes"))
        size = (models / f"{model}.onnx").stat().st_size
        return (f"| {model} | {size / 2**20:.1f} | {backend} | {workers} | {charge / 2**20:.1f} | {after_load:.0f} | {peak:.0f} | "
                f"{len(body) / 2**20:.2f} |")
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=28700)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    models = Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared/models"))
    env = dict(os.environ)
    if "ORT_DYLIB_PATH" not in env:
        libs = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*")))
        if libs:
            env["ORT_DYLIB_PATH"] = libs[0]
    print("| model | file MiB | backend | workers | budget charge MiB | RSS after load MiB | peak RSS, 8 JSON clients MiB | JSON body MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for backend in ("ort", "tract"):
            print(measure(args.pomme, models, model, backend, args.workers, env, args.port), flush=True)


if __name__ == "__main__":
    main()
