#!/usr/bin/env python3
"""Soak: `pomme serve` under about twice the load it can take, for a long time.

Starts `pomme serve` on loopback with one model (default: the shipped
`identity_f32`, tract) behind a deliberately small admission limit and queue,
measures what it can do (`pomme bench --url` at --base-concurrency), then runs
the same closed-loop client at twice that concurrency for --duration seconds
in one piece, sampling the server's resident memory (/proc/PID/status VmRSS)
every --sample seconds. Reports:

* every request accounted for: sent = ok + rejected (429) + timed out (504)
  + other errors, exactly (pomme bench awaits requests in flight at the end),
* resident memory: after warm-up, at the end, growth in percent (goal < 5 %),
* p50 / p99 / max latency of the accepted requests.

    python3 benches/soak.py [--pomme target/release/pomme] [--duration 600]
        [--model models/identity_f32.onnx] [--max-concurrency 4] [--base-concurrency 8]
        [--rate-multiple 2 --soak-concurrency 32]

With --rate-multiple the soak load is paced (`pomme bench --rate`) at that
multiple of the measured capacity instead of closed loop, where refused
requests come straight back and the offered load runs far above 2x.

Exit status 1 when the accounting does not add up or memory grew by 5 % or more
after the load settled (--settle seconds in; growth from the pre-load baseline
is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench(pomme: str, port: int, model: str, conc: int, secs: int, warmup: int,
          rate: float | None = None) -> dict:
    cmd = [pomme, "bench", "--url", f"http://127.0.0.1:{port}", "--model", model,
           "--concurrency", str(conc), "--duration", f"{secs}s", "--warmup", f"{warmup}s",
           "--binary", "--json"]
    if rate:
        cmd += ["--rate", f"{rate:.0f}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["rows"][0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--model", default=str(ROOT / "models/identity_f32.onnx"))
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--sample", type=int, default=10)
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--base-concurrency", type=int, default=8)
    ap.add_argument("--port", type=int, default=28700)
    ap.add_argument("--rate-multiple", type=float, default=0.0,
                    help="pace the soak load at this multiple of the measured capacity "
                         "(pomme bench --rate; open loop up to the clients); 0: closed loop")
    ap.add_argument("--settle", type=int, default=60,
                    help="seconds into the soak after which memory must stay flat: growth is "
                         "judged from the first sample at or after this point (the load's own "
                         "connections and buffers are allocated before it)")
    ap.add_argument("--soak-concurrency", type=int, default=0,
                    help="clients of the soak load (default: 2 x --base-concurrency)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pomme-soak-"))
    name = "soak"
    (work / "repo" / name / "1").mkdir(parents=True)
    shutil.copy(a.model, work / "repo" / name / "1" / "model.onnx")
    # A small queue with a queue timeout: excess load is refused (429) or times
    # out (504) instead of piling up.
    (work / "repo" / name / "config.toml").write_text(
        'backends = ["tract"]\nmax_batch_size = 8\nworkers = 1\n'
        "[dynamic_batching]\nmax_queue_delay_us = 200\nmax_queue_size = 16\n"
        "default_queue_timeout_us = 50000\n")
    env = dict(os.environ, POMME_MAX_CONCURRENCY=str(a.max_concurrency), POMME_LOG="warn")
    srv = subprocess.Popen(
        [a.pomme, "serve", "--model-repository", str(work / "repo"), "--http-port", str(a.port),
         "--grpc-port", str(a.port + 1), "--metrics-port", str(a.port + 2)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{a.port}/v2/health/ready", timeout=1).status == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline:
                print("server never became ready; see", work / "serve.log", file=sys.stderr)
                return 1
            time.sleep(0.2)
        cap = bench(a.pomme, a.port, name, a.base_concurrency, 10, 2)
        print(f"capacity at concurrency {a.base_concurrency}: {cap['rps']:.0f} req/s "
              f"(p50 {cap['p50_ms']} ms, p99 {cap['p99_ms']} ms)", flush=True)
        rss0 = rss_kib(srv.pid)
        samples = [(0.0, rss0)]
        stop = threading.Event()

        def sampler():
            t0 = time.time()
            while not stop.wait(a.sample):
                samples.append((time.time() - t0, rss_kib(srv.pid)))

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        conc = a.soak_concurrency or 2 * a.base_concurrency
        rate = a.rate_multiple * cap["rps"] if a.rate_multiple > 0 else None
        if rate:
            print(f"soak load paced at {rate:.0f} req/s = {a.rate_multiple} x capacity", flush=True)
        row = bench(a.pomme, a.port, name, conc, a.duration, 0, rate)
        stop.set()
        th.join()
        rss1 = rss_kib(srv.pid)
        samples.append((a.duration, rss1))
        accounted = row["ok"] + row["rejected"] + row["timed_out"] + row["errors"]
        growth = 100.0 * (rss1 - rss0) / max(rss0, 1)
        settled = next((r for t, r in samples if t >= a.settle), rss0)
        settled_growth = 100.0 * (rss1 - settled) / max(settled, 1)
        peak = max(r for _, r in samples)
        offered = f", paced at {rate:.0f} req/s" if rate else ", closed loop"
        print(f"soak {a.duration} s at concurrency {conc}{offered} "
              f"(admission limit {a.max_concurrency}, queue 16, queue timeout 50 ms):")
        print(f"  sent {row['sent']} = ok {row['ok']} + rejected {row['rejected']} + timed out "
              f"{row['timed_out']} + errors {row['errors']}  -> {'exact' if accounted == row['sent'] else 'MISMATCH'}")
        print(f"  offered {row['sent'] / a.duration:.0f} req/s; ok {row['rps']:.0f} req/s; accepted p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms")
        print(f"  RSS after warm-up {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"growth {growth:+.2f} %; from {a.settle} s on ({settled / 1024:.1f} MiB) {settled_growth:+.2f} %")
        print("  RSS samples (s, MiB):", ", ".join(f"{t:.0f}:{r / 1024:.1f}" for t, r in samples[:: max(1, len(samples) // 12)]))
        ok = accounted == row["sent"] and settled_growth < 5.0
        return 0 if ok else 1
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(20)
        except subprocess.TimeoutExpired:
            srv.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
