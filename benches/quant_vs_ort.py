#!/usr/bin/env python3
"""Peer comparison: pomme's quantizer vs ONNX Runtime's quantization tools.

For each model it quantizes with

* onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activations;
  per-tensor and per-channel),
* onnxruntime.quantization.quantize_static (QDQ, uint8 activations / int8
  per-channel weights, MinMax calibration on the same data pomme gets),
* pomme (`pomme quantize MODEL --scheme ... -o OUT`): int8 per-channel,
  int8-static, int4 (block 32) — when a pomme binary is found,

then measures every file the same way, with onnxruntime (CPU EP): file size,
accuracy on digits_test.npz (or, for MiniLM, cosine similarity of
sentence_embedding to the float model on the 3 reference sentences) and
median latency. It prints one table per model.

Usage (from the workspace root, with the venv that has onnxruntime):

    .venv/bin/python benches/quant_vs_ort.py [--pomme target/release/pomme]
        [--models ../shared/models] [--minilm] [--repeats 20] [--threads 1]

The pomme binary defaults to target/release/pomme, then target/debug/pomme.
`pip install onnx` is needed by onnxruntime.quantization.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_ms(sess: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def digits_feeds(model: str, x: np.ndarray, sess: ort.InferenceSession) -> dict:
    name = sess.get_inputs()[0].name
    if model == "digits_cnn":
        x = x.reshape(-1, 1, 8, 8)
    return {name: x.astype(np.float32)}


def digits_scores(sess: ort.InferenceSession, feeds: dict) -> np.ndarray:
    outs = sess.run(None, feeds)
    # digits_mlp: (label, probabilities); digits_cnn: (logits,)
    return next(o for o in outs if o.dtype == np.float32 and o.ndim == 2)


class Reader:
    """A CalibrationDataReader over rows of one input."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 64):
        self.items = [{name: x[i : i + batch]} for i in range(0, len(x), batch)]

    def get_next(self):
        return self.items.pop(0) if self.items else None

    def rewind(self):
        pass


def ort_variants(model_path: Path, out: Path, calib: dict | None) -> list[tuple[str, Path | str]]:
    """Quantizes with onnxruntime's tools. Returns (label, path or error)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    res: list[tuple[str, Path | str]] = []
    for per_channel in (False, True):
        label = f"ort dynamic int8{' per-channel' if per_channel else ''}"
        p = out / f"{model_path.stem}.ort_dynamic{'_pc' if per_channel else ''}.onnx"
        try:
            quantize_dynamic(str(model_path), str(p), weight_type=QuantType.QInt8, per_channel=per_channel)
            res.append((label, p))
        except Exception as e:  # noqa: BLE001 - report, keep going
            res.append((label, f"failed: {str(e).splitlines()[0]}"))
    if calib is not None:
        name, x = next(iter(calib.items()))
        p = out / f"{model_path.stem}.ort_static.onnx"
        try:
            quantize_static(
                str(model_path),
                str(p),
                Reader(name, x),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            res.append(("ort static QDQ int8", p))
        except Exception as e:  # noqa: BLE001
            res.append(("ort static QDQ int8", f"failed: {str(e).splitlines()[0]}"))
    return res


def pomme_variants(pomme: Path | None, model_path: Path, out: Path, calib_npz: Path | None) -> list[tuple[str, Path | str]]:
    if pomme is None:
        return []
    runs = [("pomme int8 per-channel", ["--scheme", "int8", "--per-channel"], "int8")]
    if calib_npz is not None:
        runs.append(
            (
                "pomme int8-static",
                ["--scheme", "int8-static", "--per-channel", "--calibration", str(calib_npz)],
                "int8s",
            )
        )
    runs.append(("pomme int4 b32", ["--scheme", "int4", "--block-size", "32"], "int4"))
    res: list[tuple[str, Path | str]] = []
    for label, args, tag in runs:
        p = out / f"{model_path.stem}.pomme_{tag}.onnx"
        cmd = [str(pomme), "quantize", str(model_path), *args, "-o", str(p)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not p.is_file():
            msg = (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}").splitlines()
            res.append((label, f"failed: {msg[-1] if msg else ''}"))
        else:
            res.append((label, p))
    return res


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n## {title}\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))


def bench_digits(model: str, models: Path, pomme: Path | None, out: Path, repeats: int, threads: int) -> None:
    npz = models / "digits_test.npz"
    data = np.load(npz)
    x, y = data["X"], data["y"]
    fpath = models / f"{model}.onnx"
    fsess = session(fpath, threads)
    feeds = digits_feeds(model, x, fsess)
    fscores = digits_scores(fsess, feeds)
    facc = float((fscores.argmax(1) == y).mean() * 100)
    fsize = fpath.stat().st_size
    flat = latency_ms(fsess, feeds, repeats)
    rows = [["float", f"{fsize}", "1.000", f"{facc:.2f}", "0.00", "100.00", f"{flat:.3f}", "1.00"]]
    variants = ort_variants(fpath, out, {fsess.get_inputs()[0].name: next(iter(feeds.values()))})
    variants += pomme_variants(pomme, fpath, out, npz)
    for label, p in variants:
        if isinstance(p, str):
            rows.append([label, p, "", "", "", "", "", ""])
            continue
        try:
            s = session(p, threads)
            sc = digits_scores(s, feeds)
        except Exception as e:  # noqa: BLE001
            rows.append([label, f"ort cannot run it: {str(e).splitlines()[0][:80]}", "", "", "", "", "", ""])
            continue
        acc = float((sc.argmax(1) == y).mean() * 100)
        agree = float((sc.argmax(1) == fscores.argmax(1)).mean() * 100)
        lat = latency_ms(s, feeds, repeats)
        size = p.stat().st_size
        rows.append(
            [label, f"{size}", f"{size / fsize:.3f}", f"{acc:.2f}", f"{facc - acc:.2f}", f"{agree:.2f}", f"{lat:.3f}", f"{lat / flat:.2f}"]
        )
    table(
        f"{model} (450 test rows, batch 450, onnxruntime CPU, {threads} thread(s), median of {repeats})",
        ["method", "bytes", "size ratio", "acc %", "drop pts", "top-1 agree %", "ms", "latency ratio"],
        rows,
    )


def bench_minilm(models: Path, pomme: Path | None, out: Path, repeats: int, threads: int) -> None:
    fpath = models / "minilm_l6.onnx"
    ref = models / "reference" / "minilm_l6"
    if not fpath.is_file():
        print("\nminilm_l6.onnx not found: skipped")
        return
    feeds = {
        "input_ids": np.load(ref / "input.input_ids.npy"),
        "attention_mask": np.load(ref / "input.attention_mask.npy"),
    }
    fsess = session(fpath, threads)

    def emb(s):
        names = [o.name for o in s.get_outputs()]
        return s.run(None, feeds)[names.index("sentence_embedding")]

    fe = emb(fsess)
    fsize = fpath.stat().st_size
    flat = latency_ms(fsess, feeds, repeats)
    rows = [["float", f"{fsize}", "1.000", "1.00000", f"{flat:.2f}", "1.00"]]
    # Static calibration on 3 sentences would be meaningless: dynamic and weight-only only.
    variants = [v for v in ort_variants(fpath, out, None)]
    if pomme is not None:
        variants += [v for v in pomme_variants(pomme, fpath, out, None) if "int8" in v[0]]
    for label, p in variants:
        if isinstance(p, str):
            rows.append([label, p, "", "", "", ""])
            continue
        try:
            s = session(p, threads)
            qe = emb(s)
        except Exception as e:  # noqa: BLE001
            rows.append([label, f"ort cannot run it: {str(e).splitlines()[0][:80]}", "", "", "", ""])
            continue
        cos = (fe * qe).sum(1) / (np.linalg.norm(fe, axis=1) * np.linalg.norm(qe, axis=1))
        lat = latency_ms(s, feeds, repeats)
        size = p.stat().st_size
        rows.append([label, f"{size}", f"{size / fsize:.3f}", f"{cos.min():.5f}", f"{lat:.2f}", f"{lat / flat:.2f}"])
    table(
        f"minilm_l6 (3 reference sentences, seq 17, onnxruntime CPU, {threads} thread(s), median of {repeats})",
        ["method", "bytes", "size ratio", "min cos(sentence_embedding)", "ms", "latency ratio"],
        rows,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", type=Path, help="pomme binary (default: target/release/pomme, then target/debug/pomme)")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared" / "models")))
    ap.add_argument("--out", type=Path, help="where quantized files go (default: a temporary directory)")
    ap.add_argument("--minilm", action="store_true", help="also MiniLM-L6 (slow: ~90 MB quantized several times)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    # onnxruntime.quantization logs a "consider pre-processing" warning per call.
    logging.getLogger().setLevel(logging.ERROR)

    pomme = args.pomme
    if pomme is None:
        pomme = next((p for p in (ROOT / "target/release/pomme", ROOT / "target/debug/pomme") if p.is_file()), None)
    if pomme is not None and not pomme.is_file():
        print(f"pomme binary {pomme} not found", file=sys.stderr)
        return 2
    print(f"onnxruntime {ort.__version__}; pomme: {pomme or 'not found (pomme rows skipped)'}; models: {args.models}")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for model in ("digits_mlp", "digits_cnn"):
            bench_digits(model, args.models, pomme, out, args.repeats, args.threads)
        if args.minilm:
            bench_minilm(args.models, pomme, out, max(5, args.repeats // 4), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
