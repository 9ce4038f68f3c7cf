#!/usr/bin/env python3
"""Peer comparison: pomme's quantizer (speed and size targets) vs ONNX Runtime's.

For each model it writes

* float (the file as given),
* ONNX Runtime's quantizer: ``quantize_dynamic`` (int8 weights, dynamic
  activations; per-tensor and per-channel) and, where calibration makes
  sense, ``quantize_static`` (QDQ, uint8 activations / int8 per-channel
  weights, MinMax calibration on the same data pomme gets),
* pomme ``--target speed`` (the integer-kernel scheme pomme picks for ONNX
  Runtime: int8-dynamic for MatMul models, int8-static QDQ for convolutional
  ones, int4-nbits) and ``--target size`` (weight-only int8 / int4), with
  pomme's accuracy gate (``--auto-exclude`` with ``--max-accuracy-drop`` or
  ``--min-cosine`` on a gate set distinct from the measured set),

then measures every file the same way with onnxruntime (CPU EP), for each
thread count: file size, accuracy and median latency.

* digits_mlp / digits_cnn: accuracy on digits_test.npz (450 rows) and top-1
  agreement with float; latency of one batch of 450.
* resnet18: calibrated on 16 generated images (N(0,1), seed 7), gated on 32
  (seed 8); top-1 agreement with float on a fixed set of 100 (seed 9, never
  seen by either quantizer); latency at batch 1.
* minilm_l6: 256 deterministic sentences (seeded templates, tokenized with
  minilm_vocab.txt by the WordPiece tokenizer below); worst cosine of
  sentence_embedding to float over all 256; pomme's gate uses 64 other
  sentences; latency of a batch of 8 sentences.

Usage (from the workspace root):

    .venv/bin/python benches/quant_vs_ort.py --pomme target/debug/pomme \\
        --models ../shared/models [--only minilm_l6,resnet18] \\
        [--threads 1 2] [--repeats 20]

The pomme binary's own speed does not matter here (it only writes files), so
a debug build serves. ONNX Runtime for pomme's validation: ORT_DYLIB_PATH.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- running


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
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


def run_batched(sess: ort.InferenceSession, feeds: dict, out: str, batch: int) -> np.ndarray:
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(feeds.values())))
    parts = []
    for i in range(0, n, batch):
        parts.append(sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[names.index(out)])
    return np.concatenate(parts)


# --------------------------------------------------------------------------- tokenizer


class WordPiece:
    """Uncased BERT WordPiece (the shared models' make_models.py tokenizer, ASCII subset)."""

    def __init__(self, vocab: Path):
        with open(vocab, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out = []
        for w in text.split():
            cur = ""
            for ch in w:
                if unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~":
                    if cur:
                        out.append(cur)
                    out.append(ch)
                    cur = ""
                else:
                    cur += ch
            if cur:
                out.append(cur)
        return out

    def _ids(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.vocab["[UNK]"]]
        return ids

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [[101] + [i for w in self._words(t) for i in self._ids(w)][:126] + [102] for t in texts]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask


SUBJECTS = ["The quick brown fox", "A young engineer", "My neighbour's cat", "The city council", "An old fisherman",
            "The research team", "A small startup", "Our football club", "The orchestra", "A curious child",
            "The new model", "This compiler", "The hospital", "A tired traveller", "The museum"]
VERBS = ["jumps over", "writes about", "argues with", "quietly watches", "carefully repairs", "celebrates",
         "ignores", "studies", "paints", "visits", "compares", "quantizes", "benchmarks", "sells", "explains"]
OBJECTS = ["the lazy dog", "a broken bicycle", "the stock market", "machine-learning models on CPUs",
           "the history of Rome", "fresh bread and cheese", "an unexpected storm", "the latest smartphone",
           "a mountain of paperwork", "the river at night", "integer matrix multiplication", "its own reflection",
           "the election results", "a cup of green tea", "the satellite images"]
TAILS = ["", " yesterday.", " every morning.", " before the deadline.", " with great care.", " in the rain.",
         ", which surprised everyone.", " for the third time this week.", "?", "!", " and then goes home.",
         " because nobody else would."]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
        if rng.random() < 0.3:
            s += f" {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
        out.append(s)
    return out


# --------------------------------------------------------------------------- quantizers


class Reader:
    """A CalibrationDataReader over rows of one input."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 16):
        self.items = [{name: x[i : i + batch]} for i in range(0, len(x), batch)]

    def get_next(self):
        return self.items.pop(0) if self.items else None

    def rewind(self):
        pass


def ort_variants(model_path: Path, out: Path, calib: dict | None, dynamic: bool = True) -> list[tuple[str, Path | str]]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    res: list[tuple[str, Path | str]] = []
    for per_channel in (False, True) if dynamic else ():
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
            quantize_static(str(model_path), str(p), Reader(name, x), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            res.append(("ort static QDQ int8", p))
        except Exception as e:  # noqa: BLE001
            res.append(("ort static QDQ int8", f"failed: {str(e).splitlines()[0]}"))
    return res


def pomme_run(pomme: Path, model_path: Path, out: Path, label: str, tag: str, args: list[str]) -> tuple[str, Path | str]:
    p = out / f"{model_path.stem}.pomme_{tag}.onnx"
    cmd = [str(pomme), "quantize", str(model_path), *args, "-o", str(p)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or not p.is_file():
        msg = (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}").splitlines()
        return (label, f"failed: {msg[-1] if msg else ''}")
    kept = [ln.split()[2] for ln in r.stdout.splitlines() if ln.strip().startswith("float ")]
    print(f"  {label}: {' '.join(cmd[1:])} ({dt:.0f} s; kept float: {len(kept)})", file=sys.stderr)
    return (label, p)


def pomme_variants(pomme: Path | None, model_path: Path, out: Path, gate: list[str], calib: Path | None,
                   int4: bool, smooth: bool = False) -> list[tuple[str, Path | str]]:
    if pomme is None:
        return []
    cal = ["--calibration", str(calib)] if calib else []
    runs = [
        ("pomme speed int8", "speed8", ["--scheme", "int8", "--target", "speed", "--engine", "ort", *cal, *gate]),
        ("pomme size int8", "size8", ["--scheme", "int8", "--target", "size", "--per-channel", *gate]),
    ]
    if smooth:
        # --target speed smooths int8-dynamic by default; the row without it shows what it buys.
        runs.insert(1, ("pomme speed int8 --smooth off", "speed8n",
                        ["--scheme", "int8", "--target", "speed", "--engine", "ort", "--smooth", "off", *cal, *gate]))
    if int4:
        runs += [
            ("pomme speed int4", "speed4", ["--scheme", "int4", "--target", "speed", "--engine", "ort", *gate]),
            ("pomme size int4", "size4", ["--scheme", "int4", "--target", "size", *gate]),
        ]
    return [pomme_run(pomme, model_path, out, label, tag, args) for label, tag, args in runs]


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- tables


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))
    sys.stdout.flush()


def measure(title: str, fpath: Path, variants, evaluate, lat_feeds: dict, threads: list[int], repeats: int,
            acc_header: list[str]) -> None:
    """evaluate(sess) -> list of accuracy cells; latency at each thread count."""
    files = [("float", fpath)] + variants
    header = ["method", "bytes", "size ratio", *acc_header]
    for t in threads:
        header += [f"ms {t}t", f"ratio {t}t"]
    rows = []
    flat = {}
    for label, p in files:
        if isinstance(p, str):
            rows.append([label, p] + [""] * (len(header) - 2))
            continue
        try:
            cells = evaluate(session(p, threads[0]))
        except Exception as e:  # noqa: BLE001
            rows.append([label, f"ort cannot run it: {str(e).splitlines()[0][:80]}"] + [""] * (len(header) - 2))
            continue
        size = p.stat().st_size
        row = [label, f"{size}", f"{size / fpath.stat().st_size:.3f}", *cells]
        for t in threads:
            lat = latency_ms(session(p, t), lat_feeds, repeats)
            if label == "float":
                flat[t] = lat
            row += [f"{lat:.3f}", f"{lat / flat[t]:.2f}"]
        rows.append(row)
    table(title, header, rows)


# --------------------------------------------------------------------------- models


def bench_digits(model: str, models: Path, pomme, out: Path, repeats: int, threads: list[int]) -> None:
    npz = models / "digits_test.npz"
    data = np.load(npz)
    x, y = data["X"].astype(np.float32), data["y"]
    if model == "digits_cnn":
        x = x.reshape(-1, 1, 8, 8)
    fpath = models / f"{model}.onnx"
    fsess = session(fpath, 1)
    name = fsess.get_inputs()[0].name
    feeds = {name: x}

    def scores(s):
        outs = s.run(None, feeds)
        return next(o for o in outs if o.dtype == np.float32 and o.ndim == 2)

    fscores = scores(fsess)
    facc = float((fscores.argmax(1) == y).mean() * 100)
    calib = save_npz(out / f"{model}_calib.npz", **{name: x})
    variants = ort_variants(fpath, out, {name: x}, dynamic=True)
    gate = ["--validate", str(npz), "--max-accuracy-drop", "1", "--auto-exclude"]
    variants += pomme_variants(pomme, fpath, out, gate, calib, int4=False)

    def evaluate(s):
        sc = scores(s)
        acc = float((sc.argmax(1) == y).mean() * 100)
        agree = float((sc.argmax(1) == fscores.argmax(1)).mean() * 100)
        return [f"{acc:.2f}", f"{facc - acc:.2f}", f"{agree:.2f}"]

    measure(f"{model} (450 test rows, batch 450)", fpath, variants, evaluate, feeds, threads, repeats,
            ["acc %", "drop pts", "top-1 agree %"])


def bench_resnet(models: Path, pomme, out: Path, repeats: int, threads: list[int]) -> None:
    fpath = models / "resnet18.onnx"
    if not fpath.is_file():
        print("\nresnet18.onnx not found: skipped")
        return
    img = lambda n, seed: np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)  # noqa: E731
    calib_x, gate_x, eval_x = img(16, 7), img(32, 8), img(100, 9)
    fsess = session(fpath, 2)
    name = fsess.get_inputs()[0].name
    calib = save_npz(out / "resnet18_calib.npz", **{name: calib_x})
    gate_npz = save_npz(out / "resnet18_gate.npz", **{name: gate_x})
    ftop = run_batched(fsess, {name: eval_x}, "output", 10).argmax(1)
    variants = ort_variants(fpath, out, {name: calib_x}, dynamic=True)
    gate = ["--validate", str(gate_npz), "--max-accuracy-drop", "1", "--auto-exclude"]
    variants += pomme_variants(pomme, fpath, out, gate, calib, int4=False)
    if pomme is not None:
        # Every layer int8, as ORT's quantizer does it: the like-for-like speed comparison.
        variants.append(pomme_run(pomme, fpath, out, "pomme speed int8, no gate", "speed8all",
                                  ["--scheme", "int8", "--target", "speed", "--engine", "ort",
                                   "--calibration", str(calib)]))

    def evaluate(s):
        top = run_batched(s, {name: eval_x}, "output", 10).argmax(1)
        return [f"{(top == ftop).mean() * 100:.1f}"]

    measure("resnet18 (top-1 agreement on 100 generated images; latency at batch 1)", fpath, variants, evaluate,
            {name: eval_x[:1]}, threads, repeats, ["top-1 agree %"])


def bench_minilm(models: Path, pomme, out: Path, repeats: int, threads: list[int]) -> None:
    fpath = models / "minilm_l6.onnx"
    if not fpath.is_file():
        print("\nminilm_l6.onnx not found: skipped")
        return
    tok = WordPiece(models / "minilm_vocab.txt")
    ids, mask = tok(sentences(256, seed=1))
    gids, gmask = tok(sentences(64, seed=2))
    gate_npz = save_npz(out / "minilm_gate.npz", input_ids=gids, attention_mask=gmask)
    feeds = {"input_ids": ids, "attention_mask": mask}
    fe = run_batched(session(fpath, 2), feeds, "sentence_embedding", 32)
    variants = ort_variants(fpath, out, None, dynamic=True)
    gate = ["--validate", str(gate_npz), "--min-cosine", "0.99", "--auto-exclude"]
    variants += pomme_variants(pomme, fpath, out, gate, None, int4=True, smooth=True)

    def evaluate(s):
        qe = run_batched(s, feeds, "sentence_embedding", 32)
        cos = (fe * qe).sum(1) / (np.linalg.norm(fe, axis=1) * np.linalg.norm(qe, axis=1))
        return [f"{cos.min():.5f}", f"{cos.mean():.5f}"]

    lat = {"input_ids": ids[:8], "attention_mask": mask[:8]}
    width = int(mask[:8].sum(1).max())
    lat = {k: v[:, :width] for k, v in lat.items()}
    measure(f"minilm_l6 (cosine over 256 sentences; latency of 8 sentences, seq {width})", fpath, variants,
            evaluate, lat, threads, max(5, repeats // 2), ["min cos", "mean cos"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pomme", type=Path, help="pomme binary (default: target/release/pomme, then target/debug/pomme)")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared" / "models")))
    ap.add_argument("--out", type=Path, help="where quantized files go (default: a temporary directory)")
    ap.add_argument("--only", default="digits_mlp,digits_cnn,resnet18,minilm_l6", help="comma-separated models")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
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
    print(f"load average before: {os.getloadavg()}")
    only = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for model in ("digits_mlp", "digits_cnn"):
            if model in only:
                bench_digits(model, args.models, pomme, out, args.repeats, args.threads)
        if "resnet18" in only:
            bench_resnet(args.models, pomme, out, args.repeats, args.threads)
        if "minilm_l6" in only:
            bench_minilm(args.models, pomme, out, args.repeats, args.threads)
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
