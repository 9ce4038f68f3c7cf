#!/usr/bin/env python3
"""Served float vs served int8 (`precision = "int8"`, `[quantization] target = "speed"`).

One `pomme serve` holds, for each model, the float file and the same file
declared int8 with target speed (so the server quantizes it at load with the
integer-kernel scheme for ONNX Runtime, gates it on validation data and
caches it), both on the ort backend with the same batching and workers. The
load is `pomme bench --url … --binary` at the given concurrency, float and
int8 measured in alternating rounds. Accuracy is measured on the file the
server cached (the one it serves) against float, on a fixed set neither the
quantizer nor its gate saw:

* resnet18: calibration 16 generated images (N(0,1), seed 7), gate 32
  (seed 8, top-1 disagreement budget 1 point), measured 100 (seed 9); one
  image per request.
* minilm_l6: gate 64 sentences (seed 2, min cosine 0.99), measured 256
  (seed 1); one sentence per request (a 12-token sentence).

    ORT_DYLIB_PATH=… .venv/bin/python benches/served_quant.py --pomme target/release/pomme \\
        [--models ../shared/models] [--only resnet18,minilm_l6] [--concurrency 16] \\
        [--duration 15] [--rounds 2] [--workers 2] [--smooth 0.8]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import pomme_env  # noqa: E402
from quant_vs_ort import WordPiece, run_batched, sentences, session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[served_quant {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_model(repo: Path, name: str, src: Path, workers: int, quant: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(src, repo / name / "1/model.onnx")
    cfg = (f'backends = ["ort"]\nmax_batch_size = 8\nworkers = {workers}\nthreads = 1\n'
           '[dynamic_batching]\nmax_queue_delay_us = 2000\n')
    if quant:
        cfg = cfg.replace('threads = 1\n', 'threads = 1\nprecision = "int8"\n') + quant
    (repo / name / "config.toml").write_text(cfg)


def bench(pomme: str, port: int, model: str, inputs: list[str], args, work: Path) -> dict:
    cmd = [pomme, "bench", "--url", f"http://127.0.0.1:{port}", "--model", model, "--binary",
           "--concurrency", str(args.concurrency), "--duration", f"{args.duration}s", "--warmup", "2s", "--json"]
    for i in inputs:
        cmd += ["-i", i]
    log(" ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"pomme bench {model} failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout)["rows"][0]


def cached_file(cache: Path) -> Path:
    files = [Path(p) for p in glob.glob(str(cache / "*.onnx"))]
    if len(files) != 1:
        raise RuntimeError(f"expected one quantized file in {cache}, found {files}")
    return files[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--models", type=Path,
                    default=Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared" / "models")))
    ap.add_argument("--only", default="resnet18,minilm_l6")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smooth", default=None, help="[quantization] smooth for MiniLM: 0.8, true, false (default: unset, what target speed does)")
    ap.add_argument("--port", type=int, default=28700)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = pomme_env()
    if env is None:
        return 2
    work = Path(args.out or tempfile.mkdtemp(prefix="pomme-served-quant-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    only = args.only.split(",")
    plans = []  # (model, inputs for bench, accuracy function(float path, quant path) -> str)

    if "resnet18" in only:
        src = args.models / "resnet18.onnx"
        img = lambda n, seed: np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)  # noqa: E731
        d = work / "resnet18-data"
        d.mkdir(exist_ok=True)
        np.savez(d / "calib.npz", input=img(16, 7))
        np.savez(d / "gate.npz", input=img(32, 8))
        np.save(d / "one.npy", img(1, 9))
        write_model(repo, "resnet18", src, args.workers)
        write_model(repo, "resnet18_int8", src, args.workers,
                    '[quantization]\ntarget = "speed"\n'
                    f'calibration = "{d / "calib.npz"}"\nvalidation = "{d / "gate.npz"}"\n'
                    f'max_accuracy_drop = 1.0\ncache_dir = "{work / "cache-resnet18"}"\n')
        eval_x = img(100, 9)

        def resnet_acc(f: Path, q: Path) -> str:
            ft = run_batched(session(f, 2), {"input": eval_x}, "output", 10).argmax(1)
            qt = run_batched(session(q, 2), {"input": eval_x}, "output", 10).argmax(1)
            return f"top-1 agreement {(ft == qt).mean() * 100:.1f} % on 100 held-out images"

        plans.append(("resnet18", [f"input={d / 'one.npy'}"], src, work / "cache-resnet18", resnet_acc))

    if "minilm_l6" in only:
        src = args.models / "minilm_l6.onnx"
        tok = WordPiece(args.models / "minilm_vocab.txt")
        d = work / "minilm-data"
        d.mkdir(exist_ok=True)
        gids, gmask = tok(sentences(64, seed=2))
        np.savez(d / "gate.npz", input_ids=gids, attention_mask=gmask)
        ids, mask = tok(["A young engineer carefully repairs a broken bicycle in the rain."])
        np.save(d / "ids.npy", ids)
        np.save(d / "mask.npy", mask)
        smooth = f"smooth = {args.smooth}\n" if args.smooth else ""
        write_model(repo, "minilm", src, args.workers)
        write_model(repo, "minilm_int8", src, args.workers,
                    f'[quantization]\ntarget = "speed"\nvalidation = "{d / "gate.npz"}"\nmin_cosine = 0.99\n'
                    f'{smooth}cache_dir = "{work / "cache-minilm"}"\n')
        eids, emask = tok(sentences(256, seed=1))

        def minilm_acc(f: Path, q: Path) -> str:
            feeds = {"input_ids": eids, "attention_mask": emask}
            fe = run_batched(session(f, 2), feeds, "sentence_embedding", 32)
            qe = run_batched(session(q, 2), feeds, "sentence_embedding", 32)
            cos = (fe * qe).sum(1) / (np.linalg.norm(fe, axis=1) * np.linalg.norm(qe, axis=1))
            return f"min cosine {cos.min():.5f} (mean {cos.mean():.5f}) on 256 held-out sentences"

        plans.append(("minilm", [f"input_ids={d / 'ids.npy'}", f"attention_mask={d / 'mask.npy'}"], src,
                      work / "cache-minilm", minilm_acc))

    port = args.port
    log_path = work / "pomme.log"
    t0 = time.monotonic()
    proc = subprocess.Popen([args.pomme, "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                             "--http-port", str(port), "--grpc-port", str(port + 1), "--metrics-port", str(port + 2)],
                            env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pomme serve exited {proc.returncode}: see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("pomme serve not ready in 900 s")
            time.sleep(0.2)  # polling readiness, not timing anything
        log(f"ready after {time.monotonic() - t0:.0f} s (includes quantizing at load); log {log_path}")
        print(f"load average before: {os.getloadavg()}")
        print("\n| model | served | req/s c={0} (rounds) | p50 ms | p99 ms | ratio int8/float | accuracy of the served int8 file |".format(args.concurrency))
        print("|---|---|---|---|---|---|---|")
        for model, inputs, src, cache, acc in plans:
            runs: dict[str, list[dict]] = {model: [], f"{model}_int8": []}
            for _ in range(args.rounds):
                for name in runs:
                    runs[name].append(bench(args.pomme, port, name, inputs, args, work))
            med = {n: statistics.median(r["rps"] for r in rs) for n, rs in runs.items()}
            accuracy = acc(src, cached_file(cache))
            for name, rs in runs.items():
                tp = [r["rps"] for r in rs]
                best = min(rs, key=lambda r: abs(r["rps"] - med[name]))
                ratio = f"**{med[name] / med[model]:.2f}×**" if name != model else "1.00×"
                print(f"| {model} | {'int8 (target speed)' if name != model else 'float'} | {med[name]:.1f} "
                      f"({', '.join(f'{x:.1f}' for x in tp)}) | {best['p50_ms']:.1f} | {best['p99_ms']:.1f} | {ratio} | "
                      f"{accuracy if name != model else ''} |")
        print(f"load average after: {os.getloadavg()}")
        with open(log_path) as f:
            for line in f:
                if "quantiz" in line.lower():
                    print("server log:", line.rstrip()[:400])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
