#!/usr/bin/env python3
"""MobileNetV2 over KServe v2 JSON: Seldon MLServer 1.7.1 vs `pomme serve`, same client, same load.

    python3 -m venv .venv-mlserver
    .venv-mlserver/bin/pip install mlserver==1.7.1 onnxruntime==1.31.1 uvloop==0.21.0
    python3 benches/mlserver_vs_pomme.py [--duration 20] [--concurrency 16] [--repeat 3] [--mlserver-workers 1]

Both servers run on this machine in one sitting, both up for the whole run and measured in
alternating rounds (runs of the same configuration vary by tens of percent between sittings
here: compare only within a run).
Both use ONNX Runtime 1.31.1 on the CPU with one intra-op thread per inference worker:

- MLServer: `benches/mlserver_onnx_model.py` (a custom `mlserver.MLModel` over onnxruntime,
  MLServer has no ONNX runtime), `parallel_workers` inference processes (default 1,
  MLServer's own default) and adaptive batching off (MLServer's default) unless
  --mlserver-batch N turns it on (max_batch_size N, max_batch_time 2 ms, like pomme's).
- pomme: backend ort, `--pomme-workers` compute threads (default 2: the machine's cores),
  dynamic batching on (max batch 8, max queue delay 2 ms).

The load is `pomme bench --url … --concurrency 16 --duration 20s --json`: closed loop,
16 keep-alive HTTP/1.1 connections, one pre-serialized KServe v2 JSON body (1.6 MB of
numbers for a 1×3×224×224 FP32 tensor). Prints a Markdown ratio table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchenv import pomme_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenet"


def log(msg: str) -> None:
    print(f"[mlserver_vs_pomme {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_ready(proc: subprocess.Popen, port: int, what: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        if ready(port):
            return time.monotonic() - t0
        time.sleep(0.1)  # polling readiness, not timing anything
    raise RuntimeError(f"{what} not ready after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(pomme: str, port: int, args, label: str, work: Path) -> dict:
    cmd = [pomme, "bench", "--url", f"http://127.0.0.1:{port}", "--model", MODEL,
           "--concurrency", str(args.concurrency), "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s", "--json"]
    log(f"{label}: {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True)
    (work / f"bench-{label}.stderr").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"pomme bench against {label} failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout)["rows"][0]


def proc_cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of the processes and their children so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree(pid: int) -> list[int]:
    """pid and its live descendants (MLServer forks its inference workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                todo += [int(c) for c in Path(t).read_text().split()]
            except OSError:
                pass
    return out


def measured(pomme: str, port: int, proc: subprocess.Popen, args, label: str, work: Path) -> dict:
    pids = tree(proc.pid)
    cpu0, t0 = proc_cpu_seconds(pids), time.monotonic()
    row = bench(pomme, port, args, label, work)
    wall = time.monotonic() - t0
    cpu = proc_cpu_seconds(tree(proc.pid)) - cpu0
    # Over warm-up + measurement, so per request is approximate (requests counted: measured ones).
    row["server_cpu_cores"] = round(cpu / wall, 2)
    # CPU per answered request: what a busy machine cannot hide (cores given x time / requests).
    row["server_cpu_ms_per_ok"] = round(1000 * cpu / max(row["ok"] * wall / args.duration, 1), 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", default=str(ROOT / "target/release/pomme"))
    ap.add_argument("--mlserver-venv", default=str(ROOT / ".venv-mlserver"))
    ap.add_argument("--model-file", default=os.environ.get("POMME_TEST_MODELS", str(ROOT.parent / "shared/models")) + "/mobilenet_v2.onnx")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers")
    ap.add_argument("--mlserver-batch", type=int, default=0, help="MLServer adaptive batching max_batch_size (0: off)")
    ap.add_argument("--pomme-workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="alternating measurement rounds per server")
    ap.add_argument("--base-port", type=int, default=28500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    mlserver = Path(args.mlserver_venv) / "bin/mlserver"
    if not mlserver.exists():
        print(f"error: {mlserver} not found; create it as the docstring says", file=sys.stderr)
        return 2
    if not Path(args.model_file).is_file():
        print(f"error: model not found: {args.model_file}", file=sys.stderr)
        return 2
    env = pomme_env()
    if env is None:
        return 2
    work = Path(args.out or tempfile.mkdtemp(prefix="pomme-vs-mlserver-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}")

    # --- MLServer
    ms_dir = work / "mlserver"
    (ms_dir / MODEL).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "benches/mlserver_onnx_model.py", ms_dir / "mlserver_onnx_model.py")
    ms_http, ms_grpc, ms_metrics = args.base_port, args.base_port + 1, args.base_port + 2
    (ms_dir / "settings.json").write_text(json.dumps({
        "http_port": ms_http, "grpc_port": ms_grpc, "metrics_port": ms_metrics,
        "parallel_workers": args.mlserver_workers, "debug": False}))
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_onnx_model.OnnxModel",
        "parameters": {"uri": str(Path(args.model_file).resolve()), "extra": {"threads": 1}},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}],
    }
    if args.mlserver_batch > 0:
        model_settings.update({"max_batch_size": args.mlserver_batch, "max_batch_time": 0.002})
    (ms_dir / MODEL / "model-settings.json").write_text(json.dumps(model_settings, indent=2))

    # --- pomme
    repo = work / "pomme-repo"
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.model_file, repo / MODEL / "1/model.onnx")
    (repo / MODEL / "config.toml").write_text(
        f'backends = ["ort"]\nmax_batch_size = 8\nworkers = {args.pomme_workers}\nthreads = 1\n'
        '[dynamic_batching]\nmax_queue_delay_us = 2000\n')
    p_http = args.base_port + 10

    ms_env = dict(env)
    ms_env["PATH"] = f"{Path(args.mlserver_venv) / 'bin'}:{env.get('PATH', '')}"
    # Both servers stay up for the whole run and are measured alternately (MLServer, pomme,
    # MLServer, ...), so drifting background load on a shared machine hits both alike; the
    # idle one uses next to no CPU while the other is measured.
    ms = subprocess.Popen([str(mlserver), "start", str(ms_dir)], cwd=ms_dir, env=ms_env,
                          stdout=open(work / "mlserver.log", "w"), stderr=subprocess.STDOUT)
    pm = subprocess.Popen([args.pomme, "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                           "--http-port", str(p_http), "--grpc-port", str(p_http + 1), "--metrics-port", str(p_http + 2)],
                          env=env, stdout=open(work / "pomme.log", "w"), stderr=subprocess.STDOUT)
    runs: dict[str, list[dict]] = {"MLServer": [], "pomme": []}
    try:
        log(f"MLServer ready in {wait_ready(ms, ms_http, 'MLServer'):.1f}s")
        log(f"pomme ready in {wait_ready(pm, p_http, 'pomme serve'):.1f}s")
        for i in range(args.repeat):
            for name, port, proc in (("MLServer", ms_http, ms), ("pomme", p_http, pm)):
                row = measured(args.pomme, port, proc, args, f"{name}-{i + 1}", work)
                row["loadavg_1m_after"] = os.getloadavg()[0]
                runs[name].append(row)
                log(f"{name} round {i + 1}: {row['rps']:.1f} req/s, p99 {row['p99_ms']:.0f} ms, "
                    f"server CPU {row['server_cpu_cores']} cores, load {row['loadavg_1m_after']:.1f}")
    finally:
        stop(ms)
        stop(pm)

    def med(name: str, key: str) -> tuple[float, float, float]:
        v = sorted(r[key] for r in runs[name])
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, v[0], v[-1]

    (work / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    batching = f"adaptive batching max {args.mlserver_batch}" if args.mlserver_batch else "no adaptive batching"
    print(f"\nMobileNetV2, KServe v2 JSON, concurrency {args.concurrency}, {args.duration} s x {args.repeat} alternating rounds, "
          f"{os.cpu_count()} CPUs; MLServer 1.7.1 parallel_workers={args.mlserver_workers}, {batching}; "
          f"pomme ort workers={args.pomme_workers}, dynamic batching max 8 / 2 ms. Median (min-max) over rounds.\n")
    print("| server | req/s | p50 ms | p99 ms | ok (sum) | failed (sum) | server CPU, cores | server CPU ms / request |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda t, d=1: f"{t[0]:.{d}f} ({t[1]:.{d}f}-{t[2]:.{d}f})"  # noqa: E731
    for name in runs:
        ok = sum(r["ok"] for r in runs[name])
        bad = sum(r["errors"] + r["rejected"] + r["timed_out"] for r in runs[name])
        print(f"| {name} | {fmt(med(name, 'rps'))} | {fmt(med(name, 'p50_ms'), 0)} | {fmt(med(name, 'p99_ms'), 0)} | {ok} | {bad} | "
              f"{fmt(med(name, 'server_cpu_cores'), 2)} | {fmt(med(name, 'server_cpu_ms_per_ok'))} |")
    m = {k: med("MLServer", k)[0] for k in ("rps", "p50_ms", "p99_ms")}
    p = {k: med("pomme", k)[0] for k in ("rps", "p50_ms", "p99_ms")}
    m["cpu"], p["cpu"] = med("MLServer", "server_cpu_ms_per_ok")[0], med("pomme", "server_cpu_ms_per_ok")[0]
    print(f"| **pomme / MLServer (medians)** | **{p['rps'] / m['rps']:.2f}×** | {p['p50_ms'] / m['p50_ms']:.2f}× | "
          f"{p['p99_ms'] / m['p99_ms']:.2f}× | | | | {p['cpu'] / m['cpu']:.2f}× |")
    goal = p["rps"] >= 2 * m["rps"] and p["p99_ms"] <= m["p99_ms"]
    print(f"\ngoal (pomme >= 2x MLServer throughput at equal or lower p99): {'met' if goal else 'NOT met'}")
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
