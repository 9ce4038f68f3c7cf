#!/usr/bin/env python3
"""pomme (tract CUDA) vs PyTorch eager fp32 on one NVIDIA GPU, in one run.

Runs ON the GPU machine (it needs torch + torchvision with CUDA there; the
lent machine's image has them). For each model it exports the ONNX file with
PyTorch itself (torchvision architectures, random init after
torch.manual_seed(0); MiniLM-L6's architecture from transformers when it is
installed), then in the same process/run:

* times PyTorch eager fp32 at batch 1 and 8 (TF32 off, CUDA-synchronised
  medians of N iterations after warm-up), twice: with the inputs already on
  the GPU, and host-to-host (inputs copied in, output copied out, which is
  what pomme's numbers always include),
* times `pomme bench MODEL --backend B --device cuda --batch 1,8` for each
  backend B of --backends (tract: tract's CUDA runtime; ort: ONNX Runtime's
  CUDA EP from an onnxruntime-gpu library named by ORT_DYLIB_PATH),
* checks pomme's CUDA output against PyTorch's fp32 output (norm-relative and
  max-relative error),
* measures cold start: the first process with an empty kernel cache
  (XDG_CACHE_HOME in a fresh directory) and a second process over that cache,
* serves MobileNetV2 with `pomme serve` (dynamic batching, max batch 32) and
  drives it with `pomme bench --url --concurrency 1,32 --binary`.

Usage (see BENCHMARKS.md for the exact command used):
    python3 benches/gpu_vs_pytorch.py --pomme /tmp/pomme --out /tmp/gpu \
        [--models mobilenet_v2,resnet18,resnet50,minilm_l6] [--iters 50]

pomme's process inherits NVIDIA_TF32_OVERRIDE (pomme sets it to 0 itself
unless the user set it), so both sides run true fp32.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build(name):
    """(torch module, {input name: (shape without batch, dtype)}, output names)."""
    torch.manual_seed(0)
    if name in ("mobilenet_v2", "resnet18", "resnet50"):
        import torchvision

        m = getattr(torchvision.models, name)(weights=None)
        return m, {"input": ((3, 224, 224), torch.float32)}, ["output"]
    if name == "minilm_l6":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6,
            num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, attn_implementation="eager",
        )

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = BertModel(cfg, add_pooling_layer=False)

            def forward(self, input_ids, attention_mask):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Encoder(), {
            "input_ids": ((128,), torch.int64),
            "attention_mask": ((128,), torch.int64),
        }, ["last_hidden_state"]
    raise SystemExit(f"unknown model {name}")


def make_inputs(spec, batch, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, (shape, dt) in spec.items():
        if dt == torch.int64:
            t = torch.randint(1000, 3000, (batch, *shape), generator=g) if k == "input_ids" \
                else torch.ones((batch, *shape), dtype=torch.int64)
        else:
            t = torch.randn((batch, *shape), generator=g)
        out[k] = t
    return out


def export(model, spec, outputs, path):
    args = tuple(v for v in make_inputs(spec, 2, 0).values())
    dyn = {k: {0: "batch"} for k in spec}
    for o in outputs:
        dyn[o] = {0: "batch"}
    torch.onnx.export(model, args, path, input_names=list(spec), output_names=outputs,
                      dynamic_axes=dyn, opset_version=17, dynamo=False)


def torch_latency(model, spec, batch, iters, host=False):
    """Median and p90 ms of one forward pass. `host=False`: inputs already on
    the GPU, output left there (PyTorch's best case). `host=True`: inputs start
    in (pageable) host memory and the output is copied back, as every request
    to a server, and every `pomme bench` iteration, does."""
    cpu = make_inputs(spec, batch, 1)
    x = {k: v.cuda() for k, v in cpu.items()}

    def once():
        if host:
            return model(*[v.cuda() for v in cpu.values()]).cpu()
        return model(*x.values())

    with torch.inference_mode():
        for _ in range(10):
            once()
        torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            once()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[int(0.9 * (len(ts) - 1))]


def variant(spec):
    """`ort@f16+tf32=true` -> ("ort", ["--precision", "f16", "--backend-option", "tf32=true"]).
    `@f16` asks for pomme's opt-in float16 precision; `+K=V` adds backend options."""
    name, *opts = spec.split("+")
    args = []
    if "@" in name:
        name, precision = name.split("@", 1)
        args += ["--precision", precision]
    for o in opts:
        args += ["--backend-option", o]
    return name, args


def run(cmd, env=None, **kw):
    log("$", " ".join(cmd))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def pomme_bench(pomme, onnx, env, duration, spec):
    backend, opts = variant(spec)
    r = run([pomme, "bench", onnx, "--backend", backend, *opts, "--device", "cuda", "--batch", "1,8",
             "--duration", duration, "--warmup", "2s", "--json"], env=env)
    if r.returncode != 0:
        log(r.stderr[-2000:])
        return {}
    return {row["batch"]: row for row in json.loads(r.stdout)}


def check_outputs(pomme, model, spec, outputs, onnx, work, env, bspec):
    x = make_inputs(spec, 2, 7)
    args = []
    for k, v in x.items():
        p = os.path.join(work, f"in_{k}.npy")
        np.save(p, v.numpy())
        args += ["--input", f"{k}={p}"]
    backend, opts = variant(bspec)
    outdir = os.path.join(work, f"out_{bspec}_" + os.path.basename(onnx))
    r = run([pomme, "infer", onnx, "--backend", backend, *opts, "--device", "cuda", "-o", outdir, *args], env=env)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-500:]}
    with torch.inference_mode():
        ref = model(*[v.cuda() for v in x.values()]).float().cpu().numpy().astype(np.float64)
    got = np.load(os.path.join(outdir, f"{outputs[0]}.npy")).astype(np.float64)
    d = np.abs(got - ref)
    return {
        "norm_rel": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)),
        "max_abs": float(d.max()),
        "max_rel_to_max": float(d.max() / max(np.abs(ref).max(), 1e-30)),
    }


def cold_start(pomme, onnx, work, env, bspec):
    backend, opts = variant(bspec)
    cache = tempfile.mkdtemp(prefix="kcache", dir=work)
    e = dict(env, XDG_CACHE_HOME=cache)
    res = {}
    for label in ("first_process", "second_process", "third_process"):
        t0 = time.perf_counter()
        r = run([pomme, "infer", onnx, "--backend", backend, *opts, "--device", "cuda", "-o",
                 os.path.join(work, f"cold_{bspec}_" + label)], env=e)
        wall = time.perf_counter() - t0
        load_ms = None
        if r.returncode == 0:
            try:
                load_ms = json.loads(r.stdout).get("load_ms")
            except ValueError:
                pass
        res[label] = {"wall_s": round(wall, 3), "load_ms": load_ms, "rc": r.returncode}
    return res


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def served(pomme, onnx, work, env, duration, bspec):
    backend, opts = variant(bspec)
    repo = os.path.join(work, f"repo_{bspec}")
    vdir = os.path.join(repo, "mobilenet_v2", "1")
    os.makedirs(vdir, exist_ok=True)
    shutil.copy(onnx, os.path.join(vdir, "model.onnx"))
    text = (f'backends = ["{backend}"]\ndevice = "cuda"\nmax_batch_size = 32\n'
            "[dynamic_batching]\nmax_queue_delay_us = 2000\n")
    if backend == "ort":
        # ONNX Runtime's CUDA EP prepares each new input shape for 0.5-2 s
        # (H100): batches are padded to four sizes, each warmed at load in its
        # own session (the ort backend's shape_sessions). No preferred size
        # between 1 and 8: a batch of 2-7 would leave at once, small and
        # quick, and under load the server then settles on small batches
        # (run 15: mean batch 3.8 with [1,2,4,8,16,32]).
        text += "preferred_batch_sizes = [1, 8, 16, 32]\npad_to_preferred = true\n"
        # Two workers, each with its own sessions and CUDA stream: one batch's
        # gather and host-to-device copy overlap the other's kernels. With one
        # worker its thread was the bottleneck (100 % busy, mean batch 16,
        # ~1800 req/s at c32 in run 18).
        text = "workers = 2\n" + text
    pairs = [opts[i + 1] for i in range(0, len(opts), 2) if opts[i] == "--backend-option"]
    if "--precision" in opts:
        text = f'precision = "{opts[opts.index("--precision") + 1]}"\n' + text
    if pairs:
        text += "[extra]\n" + "".join(
            f'{k} = "{v}"\n' for k, v in (o.split("=", 1) for o in pairs))
    with open(os.path.join(repo, "mobilenet_v2", "config.toml"), "w") as f:
        f.write(text)
    hp, gp, mp = free_port(), free_port(), free_port()
    srv = subprocess.Popen([pomme, "serve", "--model-repository", repo, "--http-port", str(hp),
                            "--grpc-port", str(gp), "--metrics-port", str(mp)], env=env,
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"serve_{bspec}.log"), "w"))
    try:
        import urllib.request
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{hp}/v2/health/ready", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.5)
        else:
            return {"error": "server never became ready"}
        r = run([pomme, "bench", "--url", f"http://127.0.0.1:{hp}", "--model", "mobilenet_v2",
                 "--concurrency", "1,32", "--duration", duration, "--warmup", "2s", "--binary", "--json"], env=env)
        if r.returncode != 0:
            return {"error": r.stderr.strip()[-500:]}
        rows = {row["concurrency"]: row for row in json.loads(r.stdout)["rows"]}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics").read().decode()
        inf = sum(float(l.split()[-1]) for l in metrics.splitlines()
                  if l.startswith("pomme_inference_count_total"))
        exe = sum(float(l.split()[-1]) for l in metrics.splitlines()
                  if l.startswith("pomme_execution_count_total"))
        return {"rows": rows, "mean_batch": inf / exe if exe else None}
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pomme", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="mobilenet_v2,resnet18,resnet50,minilm_l6")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--backends", default="tract",
                    help="pomme backends to time, comma-separated (tract, ort); "
                         "ort needs ORT_DYLIB_PATH naming an onnxruntime-gpu library. "
                         "A variant adds backend options with '+': ort+tf32=true")
    ap.add_argument("--cold-backends", default=None,
                    help="backends (variants) for the cold-start rows (default: --backends)")
    ap.add_argument("--serve-backends", default=None,
                    help="backends (variants) for the served rows (default: --backends)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    env = dict(os.environ)
    backends = a.backends.split(",")
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "models": {}}
    onnx_paths = {}
    for name in a.models.split(","):
        try:
            model, spec, outs = build(name)
        except ImportError as e:
            log(f"SKIP {name}: {e}")
            report["models"][name] = {"skipped": str(e)}
            continue
        model = model.eval()
        onnx = os.path.join(a.out, f"{name}.onnx")
        export(model, spec, outs, onnx)
        onnx_paths[name] = onnx
        model = model.cuda()
        row = {"torch_ms": {}, "torch_host_ms": {}, "pomme_ms": {}, "check": {}}
        for b in (1, 8):
            med, p90 = torch_latency(model, spec, b, a.iters)
            row["torch_ms"][b] = {"p50": round(med, 3), "p90": round(p90, 3)}
            med, p90 = torch_latency(model, spec, b, a.iters, host=True)
            row["torch_host_ms"][b] = {"p50": round(med, 3), "p90": round(p90, 3)}
        for be in backends:
            row["check"][be] = check_outputs(a.pomme, model, spec, outs, onnx, a.out, env, be)
            bench = pomme_bench(a.pomme, onnx, env, a.duration, be)
            row["pomme_ms"][be] = {b: {"p50": r["p50_ms"], "p90": r["p90_ms"]} for b, r in bench.items()}
        report["models"][name] = row
        del model
        torch.cuda.empty_cache()
    cold = (a.cold_backends or a.backends).split(",")
    serve = (a.serve_backends or a.backends).split(",")
    if "mobilenet_v2" in onnx_paths:
        for be in cold:
            report[f"cold_start_mobilenet_v2_{be}"] = cold_start(
                a.pomme, onnx_paths["mobilenet_v2"], a.out, env, be)
        for be in serve if not a.skip_serve else []:
            report[f"served_mobilenet_v2_{be}"] = served(
                a.pomme, onnx_paths["mobilenet_v2"], a.out, env, a.duration, be)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"GPU: {report['gpu']}, torch {report['torch']}")
    print("torch: inputs on the GPU; torch h2h: host inputs, output copied back (as pomme)")
    head = f"{'model':<14}{'batch':>6}{'torch p50 ms':>14}{'torch h2h ms':>14}"
    for be in backends:
        head += f"{be + ' p50 ms':>14}{be + '/torch':>13}{be + '/h2h':>11}"
    print(head)
    for name, row in report["models"].items():
        if "skipped" in row:
            print(f"{name:<14} skipped: {row['skipped']}")
            continue
        for b in (1, 8):
            t = row["torch_ms"].get(b, {}).get("p50")
            h = row["torch_host_ms"].get(b, {}).get("p50")
            line = f"{name:<14}{b:>6}{t if t else '-':>14}{h if h else '-':>14}"
            for be in backends:
                p = row["pomme_ms"].get(be, {}).get(b, {}).get("p50")
                ratio = f"{p / t:.2f}" if t and p else "-"
                ratio_h = f"{p / h:.2f}" if h and p else "-"
                line += f"{p if p else '-':>14}{ratio:>13}{ratio_h:>11}"
            print(line)
        for be in backends:
            print(f"{'':<14} {be} output vs torch fp32: {row['check'][be]}")
    for be in dict.fromkeys(backends + cold + serve):
        key = f"cold_start_mobilenet_v2_{be}"
        if key in report:
            print(f"cold start mobilenet_v2 ({be}):", report[key])
        s = report.get(f"served_mobilenet_v2_{be}")
        if s is None:
            continue
        if "rows" in s:
            c1, c32 = s["rows"].get(1, {}), s["rows"].get(32, {})
            print(f"served mobilenet_v2 ({be}): c1 {c1.get('rps', 0):.1f} req/s p50 {c1.get('p50_ms')} ms; "
                  f"c32 {c32.get('rps', 0):.1f} req/s p50 {c32.get('p50_ms')} ms; "
                  f"ratio {c32.get('rps', 0) / max(c1.get('rps', 1e-9), 1e-9):.2f}; mean batch {s['mean_batch']}")
        else:
            print(f"served mobilenet_v2 ({be}):", s)


if __name__ == "__main__":
    main()
