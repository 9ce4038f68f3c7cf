#!/usr/bin/env python3
"""Direct Python baselines for the Mac proof kit: a warm prediction loop, JSON on stdout.

    python3 scripts/mac/pybench.py coremltools MODEL.mlpackage DEVICE BATCH [--warmup 1] [--duration 10] [--spec NAME=1,3,224,224:float32 | --input NAME=FILE.npy ...]
    python3 scripts/mac/pybench.py ort MODEL.onnx DEVICE BATCH [...]   # onnxruntime's Python API, CoreML EP (CPU EP for cpu)
    python3 scripts/mac/pybench.py coreai MODEL.aimodel DEVICE BATCH    # Core AI's Python API (macOS 27+), function main

DEVICE is cpu, gpu or ane (Core ML compute units cpuOnly, cpuAndGPU, cpuAndNeuralEngine).
Inputs are the given .npy files (their first row, repeated to BATCH rows) or, without
them, pomme bench's synthetic pattern, so every runner times the same values (Core AI:
always the pattern, shaped by the function's descriptors, a dynamic dim taking BATCH). The model is loaded once; the loop times
each call (batch 1: one predict of a dict; batch N: one batch predict of N dicts for
coremltools, one call with an N-row array for ort). Written for macOS and never run on
one; on Linux coremltools cannot predict (it says so and exits 3).
"""
import argparse
import json
import sys
import time

UNITS = {"cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE"}
ORT_UNITS = {"gpu": "CPUAndGPU", "ane": "CPUAndNeuralEngine"}


def pattern(shape, dtype):
    """pomme's Fill::Pattern (pomme_core::synthetic): floats ((i * 7919) % 1000) / 1000 - 0.5, ints 1, 2, 1, ..."""
    import numpy as np

    n = int(np.prod(shape))
    i = np.arange(n)
    if np.issubdtype(dtype, np.integer):
        return (i % 2 + 1).astype(dtype).reshape(shape)
    return (((i * 7919) % 1000) / 1000.0 - 0.5).astype(dtype).reshape(shape)


def loop(call, warmup_s, duration_s):
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        call()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000.0)
    return times, time.perf_counter() - start


def summary(times, elapsed, batch, load_ms, extra):
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from report import percentiles

    s = percentiles(times)
    s.update(batch=batch, load_ms=load_ms, requests_per_s=len(times) / elapsed,
             items_per_s=len(times) * batch / elapsed, **extra)
    return s


def run_coremltools(args, feeds):
    import coremltools as ct

    if sys.platform != "darwin":
        print("pybench: coremltools predicts only on macOS", file=sys.stderr)
        return 3
    t = time.perf_counter()
    model = ct.models.MLModel(args.model, compute_units=getattr(ct.ComputeUnit, UNITS[args.device]))
    load_ms = (time.perf_counter() - t) * 1000.0
    one = {k: v[:1] for k, v in feeds.items()}
    data = one if args.batch == 1 else [one] * args.batch
    times, elapsed = loop(lambda: model.predict(data), args.warmup, args.duration)
    print(json.dumps(summary(times, elapsed, args.batch, load_ms,
                             {"runner": "coremltools", "compute_units": UNITS[args.device],
                              "coremltools": ct.__version__})))
    return 0


def run_ort(args, feeds):
    import onnxruntime as ort

    if args.device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        if "CoreMLExecutionProvider" not in ort.get_available_providers():
            print("pybench: this onnxruntime has no CoreML EP", file=sys.stderr)
            return 3
        providers = [("CoreMLExecutionProvider", {"ModelFormat": "MLProgram",
                                                  "MLComputeUnits": ORT_UNITS[args.device]}),
                     "CPUExecutionProvider"]
    t = time.perf_counter()
    sess = ort.InferenceSession(args.model, providers=providers)
    load_ms = (time.perf_counter() - t) * 1000.0
    import numpy as np

    batch = {k: np.repeat(v[:1], args.batch, axis=0) for k, v in feeds.items()}
    times, elapsed = loop(lambda: sess.run(None, batch), args.warmup, args.duration)
    print(json.dumps(summary(times, elapsed, args.batch, load_ms,
                             {"runner": "ort-py", "providers": sess.get_providers(),
                              "onnxruntime": ort.__version__})))
    return 0


def run_coreai(args):
    """Core AI's Python API (coreai-core on macOS 27+, where it drives CoreAI.framework)."""
    import asyncio

    import numpy as np

    try:
        from coreai.runtime import AIModel, NDArray
    except ImportError as e:
        print(f"pybench: coreai-core is not importable: {e}", file=sys.stderr)
        return 3
    try:
        from coreai.runtime import _use_os_coreai as use_os
    except ImportError:
        use_os = False
    if not use_os:
        print("pybench: coreai-core runs its in-package runtime here, not CoreAI.framework (macOS 27+)",
              file=sys.stderr)
        return 3
    # Only the macOS extension has these (as pomme's Core AI worker imports them).
    from coreai.runtime import ComputeUnitKind, SpecializationOptions

    if args.device == "cpu":
        opts = SpecializationOptions.cpu_only()
    else:
        kind = {"ane": ComputeUnitKind.neural_engine, "gpu": ComputeUnitKind.gpu}[args.device]()
        opts = SpecializationOptions.from_preferred_compute_unit_kind(kind)

    async def go():
        t = time.perf_counter()
        model = await AIModel.load(args.model, opts)
        f = model.load_function("main")
        load_ms = (time.perf_counter() - t) * 1000.0
        d = f.desc
        inputs = {}
        for n in d.input_names:
            desc = d.input_descriptor(n)
            shape = tuple(args.batch if (s is None or int(s) < 0) else int(s) for s in desc.shape)
            inputs[n] = NDArray(pattern(shape, np.dtype(str(desc.dtype))))

        async def call():
            out = await f(inputs, {})
            for v in out.values():
                np.ascontiguousarray(v.numpy())

        t_end = time.perf_counter() + args.warmup
        while time.perf_counter() < t_end:
            await call()
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.duration:
            t = time.perf_counter()
            await call()
            times.append((time.perf_counter() - t) * 1000.0)
        return times, time.perf_counter() - start, load_ms

    times, elapsed, load_ms = asyncio.run(go())
    print(json.dumps(summary(times, elapsed, args.batch, load_ms, {"runner": "coreai-py", "device": args.device})))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runner", choices=["coremltools", "ort", "coreai"])
    ap.add_argument("model")
    ap.add_argument("device", choices=["cpu", "gpu", "ane"])
    ap.add_argument("batch", type=int)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    ap.add_argument("--spec", action="append", default=[], metavar="NAME=D0,D1,..:DTYPE",
                    help="an input made of pomme's synthetic pattern (shape of one row, numpy dtype)")
    args = ap.parse_args(argv)
    if args.runner == "coreai":
        return run_coreai(args)
    import numpy as np

    feeds = {}
    for kv in args.input:
        k, _, path = kv.partition("=")
        feeds[k] = np.load(path)
    for spec in args.spec:
        k, _, rest = spec.partition("=")
        shape, _, dtype = rest.partition(":")
        if k not in feeds:
            feeds[k] = pattern(tuple(int(d) for d in shape.split(",")), np.dtype(dtype or "float32"))
    if not feeds:
        print("pybench: give the inputs (--input NAME=FILE.npy or --spec NAME=1,3,224,224:float32)", file=sys.stderr)
        return 2
    return run_coremltools(args, feeds) if args.runner == "coremltools" else run_ort(args, feeds)


if __name__ == "__main__":
    sys.exit(main())
