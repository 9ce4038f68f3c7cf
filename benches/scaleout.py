#!/usr/bin/env python3
"""Scale-out proof on one machine: N `pomme serve` replicas behind nginx, a real Prometheus.

    python3 benches/scaleout.py [--pomme target/release/pomme] [--duration 15] [--concurrency 8]

What it does (standard library only; needs Debian's `nginx` and `prometheus`, and
ONNX Runtime for the `ort` backend, found through ORT_DYLIB_PATH or ./.venv):

1. Builds a model repository with MobileNetV2 (ort backend, 1 compute worker, 1 intra-op
   thread, dynamic batching): each replica is sized like a pod with a 1-CPU request.
2. Starts 2 replicas on loopback ports, nginx in front (HTTP upstream with keep-alive and
   retry of idempotent inference on connection errors/503; gRPC upstream through
   `grpc_pass`), and Prometheus scraping every replica's /metrics each second.
3. Drives them with `pomme bench --url` (KServe v2 JSON body): 1 replica behind nginx,
   2 replicas behind nginx, 2 replicas over gRPC; then two failover runs with 2 replicas:
   one replica SIGKILLed mid-run then restarted (crash), and one SIGTERMed mid-run then
   restarted (rolling update, drain). It reports errors during each run and the recovery
   time (restart -> ready, restart -> first request served by the new process).
4. Asks Prometheus's HTTP API that the expected pomme series exist for every replica.

Prints a Markdown table and writes everything to --out (JSON). The machine is shared by the
load generator, nginx, Prometheus and the replicas: scaling is bounded by its cores.
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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import pomme_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenet"


def log(msg: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def wait_until(pred, timeout: float, what: str, step: float = 0.05) -> float:
    """Polls `pred` until true; returns the seconds it took. Polling a condition, not a fixed sleep."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class Replica:
    def __init__(self, idx: int, args, repo: Path, work: Path, env: dict):
        self.idx = idx
        self.http = args.base_port + 10 * idx
        self.grpc = self.http + 1
        self.metrics = self.http + 2
        self.args, self.repo, self.work, self.env = args, repo, work, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> float:
        """Starts the process; returns the seconds until /v2/health/ready answered 200."""
        self.starts += 1
        logf = open(self.work / f"replica{self.idx}.{self.starts}.log", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.args.pomme, "serve", "--model-repository", str(self.repo), "--host", "127.0.0.1",
             "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
             "--shutdown-grace", "10s"],
            stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        wait_until(lambda: self.ready() or self.proc.poll() is not None, 60, f"replica {self.idx} ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"replica {self.idx} exited with {self.proc.returncode}; see {logf.name}")
        return time.monotonic() - t0

    def ready(self) -> bool:
        return http_get(f"http://127.0.0.1:{self.http}/v2/health/ready", 0.5)[0] == 200

    def successes(self) -> float:
        code, body = http_get(f"http://127.0.0.1:{self.metrics}/metrics", 0.5)
        if code != 200:
            return -1
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("pomme_request_success_total{") and f'model="{MODEL}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> float:
        """Sends `sig`; returns the seconds until the process exited."""
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - t0


NGINX_CONF = """\
# Written by benches/scaleout.py.
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  client_max_body_size 64m;
  # Whole KServe JSON bodies (MobileNetV2: 1.6 MB) stay in memory, and a buffered body
  # is what lets nginx resend a request to the other replica when one fails.
  client_body_buffer_size 4m;
  upstream pomme_one {{ server 127.0.0.1:{h0}; keepalive 64; }}
  upstream pomme_http {{ {http_servers} keepalive 64; }}
  upstream pomme_grpc {{ {grpc_servers} keepalive 64; }}
  upstream pomme_grpc_one {{ server 127.0.0.1:{g0}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_one};
    location / {{
      proxy_pass http://pomme_one;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{nginx_http};
    location / {{
      proxy_pass http://pomme_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Inference is idempotent: retry on the other replica when one refuses or dies
      # (connection error) or is draining (503), at most once.
      proxy_next_upstream error timeout http_503 non_idempotent;
      proxy_next_upstream_tries 2;
      proxy_connect_timeout 1s;
    }}
  }}
  server {{
    listen 127.0.0.1:{nginx_grpc_one} http2;
    location / {{ grpc_pass grpc://pomme_grpc_one; }}
  }}
  server {{
    # `listen ... http2` (not `http2 on;`): Debian 12's nginx is 1.22.
    listen 127.0.0.1:{nginx_grpc} http2;
    location / {{
      grpc_pass grpc://pomme_grpc;
      # Only connection-level failures can be retried: a gRPC UNAVAILABLE status travels
      # in trailers of an HTTP 200, which nginx does not inspect.
      grpc_next_upstream error timeout non_idempotent;
      grpc_next_upstream_tries 2;
      grpc_connect_timeout 1s;
    }}
  }}
}}
"""

PROM_CONF = """\
# Written by benches/scaleout.py.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pomme
    static_configs:
      - targets: [{targets}]
"""


def bench(args, url: str, duration: int, label: str, work: Path) -> dict:
    cmd = [args.pomme, "bench", "--url", url, "--model", MODEL, "--concurrency", str(args.concurrency),
           "--duration", f"{duration}s", "--warmup", "1s", "--json"]
    log(f"{label}: {' '.join(cmd)}")
    load_before = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True)
    (work / f"bench-{label}.stderr").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"pomme bench failed ({label}): {p.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(p.stdout)
    row = doc["rows"][0]
    row["label"], row["url"], row["loadavg_before"] = label, url, load_before
    return row


def failover(args, replicas, url, label, sig, work, duration) -> dict:
    """Runs the bench for `duration` s; at 1/3 signals replica 1, restarts it once it exited."""
    events: dict = {"signal": signal.Signals(sig).name}
    victim = replicas[1]

    def chaos():
        time.sleep(duration / 3 + 1)  # 1 s of warm-up, then a third of the run
        t_sig = time.monotonic()
        events["exit_s"] = round(victim.stop(sig), 3)
        t_restart = time.monotonic()
        events["ready_s"] = round(victim.start(), 3)
        wait_until(lambda: victim.successes() > 0, 30, "restarted replica serving", step=0.02)
        events["first_served_s"] = round(time.monotonic() - t_restart, 3)
        events["down_total_s"] = round(time.monotonic() - t_sig, 3)

    nginx_log = work / "nginx-error.log"
    seen = nginx_log.read_text().count("\n") if nginx_log.exists() else 0
    t_start = time.time()
    th = threading.Thread(target=chaos)
    th.start()
    row = bench(args, url, duration, label, work)
    th.join()
    # Requests nginx had to resend to the other replica (it logs each upstream failure).
    lines = nginx_log.read_text().splitlines()[seen:] if nginx_log.exists() else []
    events["nginx_upstream_failures_logged"] = sum("upstream" in ln for ln in lines)
    # Per-replica throughput, 1 s resolution, from Prometheus: the dip and the recovery.
    try:
        q = "sum by (instance) (rate(pomme_request_success_total[2s]))"
        code, body = http_get(f"http://127.0.0.1:{args.prom_port}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": q, "start": t_start, "end": time.time(), "step": "1"}), 5)
        events["per_replica_rps"] = {s["metric"]["instance"]: [round(float(v), 1) for _, v in s["values"]]
                                     for s in json.loads(body)["data"]["result"]} if code == 200 else f"HTTP {code}"
    except (ValueError, KeyError) as e:
        events["per_replica_rps"] = f"query failed: {e}"
    row["failover"] = events
    return row


def prom_query(port: int, q: str) -> list:
    code, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q}), 5)
    if code != 200:
        raise RuntimeError(f"prometheus query {q!r}: HTTP {code}")
    return json.loads(body)["data"]["result"]


def prom_checks(args, replicas) -> list[dict]:
    instances = {f"127.0.0.1:{r.metrics}" for r in replicas}
    checks = []
    for q in ['up{job="pomme"} == 1',
              f'pomme_model_ready{{model="{MODEL}"}} == 1',
              f'pomme_request_success_total{{model="{MODEL}"}} > 0',
              f'pomme_inference_count_total{{model="{MODEL}"}} > 0',
              f'pomme_request_duration_seconds_bucket{{model="{MODEL}",le="+Inf"}} > 0',
              f'pomme_batch_size_count{{model="{MODEL}"}} > 0',
              f'pomme_pending_requests{{model="{MODEL}"}}',
              'pomme_requests_in_flight',
              'pomme_max_concurrency']:
        found = {s["metric"].get("instance") for s in prom_query(args.prom_port, q)}
        checks.append({"query": q, "instances": sorted(found), "ok": instances <= found})
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--model-file", default=os.environ.get("POMME_TEST_MODELS", str(ROOT.parent / "shared/models")) + "/mobilenet_v2.onnx")
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    ap.add_argument("--failover-duration", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--base-port", type=int, default=28100)
    ap.add_argument("--prom-port", type=int, default=29090)
    ap.add_argument("--out", default=None, help="directory for logs and results.json (default: a temp dir)")
    args = ap.parse_args()

    for tool in ("nginx", "prometheus"):
        if not shutil.which(tool):
            print(f"error: `{tool}` not found (apt-get install -y nginx prometheus)", file=sys.stderr)
            return 2
    if not Path(args.model_file).is_file():
        print(f"error: model not found: {args.model_file}", file=sys.stderr)
        return 2
    env = pomme_env()
    if env is None:
        return 2
    env.setdefault("POMME_LOG", "warn")

    work = Path(args.out or tempfile.mkdtemp(prefix="pomme-scaleout-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.model_file, repo / MODEL / "1" / "model.onnx")
    (repo / MODEL / "config.toml").write_text(
        'backends = ["ort"]\nmax_batch_size = 8\nworkers = 1\nthreads = 1\n'
        '[dynamic_batching]\nmax_queue_delay_us = 2000\n')
    log(f"work dir {work}")

    replicas = [Replica(i, args, repo, work, env) for i in range(2)]
    nginx_one, nginx_http, nginx_grpc = args.base_port + 80, args.base_port + 81, args.base_port + 82
    nginx_grpc_one = args.base_port + 83
    procs: list[subprocess.Popen] = []
    results: dict = {"machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                     "concurrency": args.concurrency, "duration_s": args.duration, "runs": []}
    try:
        for r in replicas:
            log(f"replica {r.idx}: ready in {r.start():.2f}s (http {r.http}, grpc {r.grpc}, metrics {r.metrics})")
        conf = NGINX_CONF.format(
            work=work, h0=replicas[0].http, g0=replicas[0].grpc, nginx_grpc_one=nginx_grpc_one, nginx_one=nginx_one, nginx_http=nginx_http, nginx_grpc=nginx_grpc,
            http_servers=" ".join(f"server 127.0.0.1:{r.http} max_fails=1 fail_timeout=2s;" for r in replicas),
            grpc_servers=" ".join(f"server 127.0.0.1:{r.grpc} max_fails=1 fail_timeout=2s;" for r in replicas))
        (work / "nginx.conf").write_text(conf)
        t = subprocess.run(["nginx", "-t", "-p", str(work), "-c", str(work / "nginx.conf")], capture_output=True, text=True)
        if t.returncode != 0:
            raise RuntimeError(f"nginx config: {t.stderr.strip().splitlines()[0]}")
        procs.append(subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=open(work / "nginx.stderr", "w")))
        wait_until(lambda: http_get(f"http://127.0.0.1:{nginx_http}/v2/health/ready")[0] == 200, 10, "nginx")
        (work / "prometheus.yml").write_text(PROM_CONF.format(targets=", ".join(f'"127.0.0.1:{r.metrics}"' for r in replicas)))
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{args.prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w")))
        wait_until(lambda: http_get(f"http://127.0.0.1:{args.prom_port}/-/ready")[0] == 200, 30, "prometheus")
        log("nginx and prometheus up")

        runs = results["runs"]
        runs.append(bench(args, f"http://127.0.0.1:{replicas[0].http}", args.duration, "1 replica, direct", work))
        runs.append(bench(args, f"http://127.0.0.1:{nginx_one}", args.duration, "1 replica, nginx", work))
        runs.append(bench(args, f"http://127.0.0.1:{nginx_http}", args.duration, "2 replicas, nginx", work))
        runs.append(bench(args, f"grpc://127.0.0.1:{nginx_grpc_one}", args.duration, "1 replica, nginx gRPC", work))
        runs.append(bench(args, f"grpc://127.0.0.1:{nginx_grpc}", args.duration, "2 replicas, nginx gRPC", work))
        runs.append(failover(args, replicas, f"http://127.0.0.1:{nginx_http}", "2 replicas, SIGKILL one mid-run",
                             signal.SIGKILL, work, args.failover_duration))
        runs.append(failover(args, replicas, f"http://127.0.0.1:{nginx_http}", "2 replicas, SIGTERM one mid-run",
                             signal.SIGTERM, work, args.failover_duration))
        time.sleep(3)  # let Prometheus take a few more 1 s scrapes of the restarted replica
        results["prometheus"] = prom_checks(args, replicas)
    finally:
        for r in replicas:
            r.stop(signal.SIGTERM, 15)
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    (work / "results.json").write_text(json.dumps(results, indent=2))

    base_http = next(r for r in results["runs"] if r["label"] == "1 replica, nginx")["rps"]
    base_grpc = next(r for r in results["runs"] if r["label"] == "1 replica, nginx gRPC")["rps"]
    print(f"\nMobileNetV2 (ort, 1 worker x 1 thread per replica), concurrency {args.concurrency}, {args.duration} s runs "
          f"({args.failover_duration} s for failover), {os.cpu_count()} CPUs shared by the load generator, nginx, "
          f"Prometheus and the replicas. HTTP rows: KServe v2 JSON body; gRPC rows: ModelInferRequest with typed contents.\n")
    print(f"1-minute load average before the runs: {min(r['loadavg_before'] for r in results['runs']):.1f}-"
          f"{max(r['loadavg_before'] for r in results['runs']):.1f}\n")
    print("| run | req/s | vs 1 replica (same protocol, via nginx) | p50 ms | p99 ms | sent | ok | rejected | timed out | errors | failover |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        fo = r.get("failover")
        fo_s = (f"{fo['signal']}: exited {fo['exit_s']} s, restarted ready in {fo['ready_s']} s, "
                f"serving {fo['first_served_s']} s after restart; nginx logged "
                f"{fo['nginx_upstream_failures_logged']} upstream failures" if fo else "")
        base = base_grpc if "gRPC" in r["label"] else base_http
        print(f"| {r['label']} | {r['rps']:.1f} | {r['rps'] / base:.2f}× | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['sent']} | {r['ok']} | {r['rejected']} | {r['timed_out']} | {r['errors']} | {fo_s} |")
    print("\nPrometheus (scraping each replica every 1 s):")
    all_ok = True
    for c in results["prometheus"]:
        all_ok &= c["ok"]
        print(f"- {'ok  ' if c['ok'] else 'MISSING'} `{c['query']}` on {', '.join(c['instances']) or 'no instance'}")
    print(f"\nresults: {work / 'results.json'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
