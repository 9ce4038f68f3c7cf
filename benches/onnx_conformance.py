#!/usr/bin/env python3
"""ONNX backend conformance: pomme's engines against ONNX Runtime's Python API.

Runs every backend test case the installed `onnx` wheel ships
(`onnx/backend/test/data/{node,pytorch-converted,pytorch-operator,simple}`:
a model, inputs and expected outputs per case) through

  * `ort-python`  ONNX Runtime's own Python API (CPU EP), the anchor;
  * `pomme`       `pomme infer` without `--backend`: pomme's default choice,
                  the union a user gets (first backend that loads and runs it);
  * `tract`, `ort` `pomme infer --backend tract|ort`, each engine alone;

side by side in one run. Inputs go to pomme as `.npy` files and outputs come
back as `.npy` (`--output-dir`), exactly as a user would run it. A case passes
when every output has the expected dtype, shape and values, compared as ONNX's
own backend runner does (`np.testing.assert_allclose`, rtol 1e-3, atol 1e-7;
strings exactly) — the same rule for every engine.

    .venv/bin/python benches/onnx_conformance.py --pomme target/debug/pomme \
        --json conformance.json --markdown CONFORMANCE-table.md

Needs `onnx` (its wheel carries the cases), `onnxruntime`, `numpy` and
`ml_dtypes` (bfloat16/float8 arrays) in the Python running it; ORT_DYLIB_PATH
must point at the ONNX Runtime library for pomme's `ort` backend.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

import onnx
from onnx import numpy_helper

SUITES = ["node", "pytorch-converted", "pytorch-operator", "simple"]
ENGINES = ["ort-python", "pomme", "tract", "ort"]
RTOL, ATOL = 1e-3, 1e-7

# Failure categories (the table's columns), most specific first.
CATEGORIES = {
    "input-type": "an input is a sequence, optional or map (not a tensor; KServe v2 has none)",
    "dtype": "an input or output dtype outside KServe v2 (float8, int4, complex, ...)",
    "npy": "pomme infer refused an input .npy file",
    "load": "the engine refused the model at load",
    "run": "the engine loaded the model but the inference failed",
    "crash": "the process died (signal)",
    "timeout": "no answer in time",
    "outputs": "an expected output is missing",
    "dtype-mismatch": "an output has another dtype than expected",
    "shape-mismatch": "an output has another shape than expected",
    "values": "values differ beyond rtol 1e-3 / atol 1e-7",
}


def cases_root() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def find_cases(suites, pattern):
    rx = re.compile(pattern) if pattern else None
    out = []
    for suite in suites:
        for d in sorted(glob.glob(os.path.join(cases_root(), suite, "*"))):
            if not os.path.exists(os.path.join(d, "model.onnx")):
                continue
            name = f"{suite}/{os.path.basename(d)}"
            if rx and not rx.search(name):
                continue
            out.append((name, d))
    return out


class NotTensor(Exception):
    pass


def read_pb(path, type_proto):
    """One input_N.pb / output_N.pb as a numpy array (NotTensor for the rest)."""
    if type_proto.HasField("tensor_type"):
        return load_any(path, type_proto)
    raise NotTensor(type_proto.WhichOneof("value"))


def graph_io(model):
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return inputs, list(model.graph.output)


def data_sets(case_dir, model, read=read_pb):
    """[(inputs: [(name, value)], outputs: [(name, value)])], each value as
    `read` makes it (tensors only by default: NotTensor for the rest)."""
    inputs, outputs = graph_io(model)
    sets = []
    for ds in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
        ins = []
        for j, vi in enumerate(inputs):
            p = os.path.join(ds, f"input_{j}.pb")
            if not os.path.exists(p):
                break  # optional trailing inputs left out
            ins.append((vi.name, read(p, vi.type)))
        outs = []
        for j, vi in enumerate(outputs):
            p = os.path.join(ds, f"output_{j}.pb")
            if os.path.exists(p):
                outs.append((vi.name, read(p, vi.type)))
        sets.append((ins, outs))
    return sets


KSERVE_KINDS = set("biuf")


def kserve_dtype(arr) -> bool:
    """Whether pomme's tensors (KServe v2 dtypes) can carry this array."""
    dt = arr.dtype
    if dt == object or dt.kind in "US":
        return True
    if dt.name == "bfloat16":
        return True
    return dt.kind in KSERVE_KINDS and dt.itemsize in (1, 2, 4, 8) and dt.name not in (
        "float128",
    ) and not dt.name.startswith(("float8", "float4", "int4", "uint4", "int2", "uint2"))


def to_npy_array(arr):
    """What `pomme infer --input` reads: strings as numpy `U` (or `S` for bytes)."""
    if arr.dtype == object:
        items = arr.ravel().tolist()
        if all(isinstance(x, bytes) for x in items):
            try:
                return np.array([x.decode() for x in items], dtype=str).reshape(arr.shape) if items else np.zeros(arr.shape, dtype="U1")
            except UnicodeDecodeError:
                return np.array(items, dtype=bytes).reshape(arr.shape)
        return np.array([str(x) for x in items], dtype=str).reshape(arr.shape) if items else np.zeros(arr.shape, dtype="U1")
    return arr


def compare(expected, got):
    """None when they agree, else (category, detail)."""
    for name, ref in expected:
        if name not in got:
            return "outputs", f"output '{name}' missing (got {sorted(got)})"
        out = got[name]
        if ref.dtype == object or ref.dtype.kind in "US":
            r = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in ref.ravel().tolist()], dtype=object).reshape(ref.shape)
            if out.dtype.kind not in "USO":
                return "dtype-mismatch", f"'{name}': expected strings, got {out.dtype}"
            o = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in out.ravel().tolist()], dtype=object).reshape(out.shape)
            if r.shape != o.shape:
                return "shape-mismatch", f"'{name}': expected {r.shape}, got {o.shape}"
            if not np.array_equal(r, o):
                return "values", f"'{name}': strings differ"
            continue
        if out.dtype != ref.dtype:
            return "dtype-mismatch", f"'{name}': expected {ref.dtype}, got {out.dtype}"
        if out.shape != ref.shape:
            return "shape-mismatch", f"'{name}': expected {ref.shape}, got {out.shape}"
        try:
            if ref.dtype.name == "bfloat16":
                np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), rtol=RTOL, atol=ATOL)
            else:
                np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
        except AssertionError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith(("Max", "Mismatched"))]
            return "values", f"'{name}': " + "; ".join(lines[:2])
    return None


def run_ort_python(model_path, sets):
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any refusal is a "load" failure
        return "load", one_line(str(e))
    names = [o.name for o in sess.get_outputs()]
    for ins, outs in sets:
        try:
            res = sess.run(None, {n: a for n, a in ins})
        except Exception as e:  # noqa: BLE001
            return "run", one_line(str(e))
        got = {n: np.asarray(v) for n, v in zip(names, res)}
        bad = compare(outs, got)
        if bad:
            return bad
    return None


def sanitize(name):
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_-." else "_" for c in name)


def load_npy(path):
    arr = np.load(path, allow_pickle=False)
    if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:
        import ml_dtypes

        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def run_pomme(pomme, backend, model_path, sets, work, timeout, env):
    for k, (ins, outs) in enumerate(sets):
        d = tempfile.mkdtemp(dir=work)
        args = [pomme, "infer", model_path, "--output-dir", os.path.join(d, "out")]
        if backend:
            args += ["--backend", backend]
        for j, (name, arr) in enumerate(ins):
            p = os.path.join(d, f"in{j}.npy")
            np.save(p, to_npy_array(arr), allow_pickle=False)
            args += ["--input", f"{name}={p}"]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return "timeout", f"> {timeout} s"
        if r.returncode < 0:
            return "crash", f"signal {-r.returncode}: {last_line(r.stderr)}"
        if r.returncode != 0:
            return classify(last_line(r.stderr)), last_line(r.stderr)
        summary = json.loads(r.stdout)
        got = {}
        for o in summary["outputs"]:
            got[o["name"]] = load_npy(o["file"])
        bad = compare(outs, got)
        if bad:
            return bad
    return None


def classify(msg):
    """The stage `pomme infer` failed at, from its one-line error."""
    if msg.startswith("error: cannot load"):
        return "load"
    if ".npy" in msg.split(":")[1] if msg.count(":") > 1 else False:
        return "npy"
    return "run"


def one_line(s):
    s = " ".join(s.split())
    return s[:300]


def last_line(s):
    lines = [ln for ln in s.strip().splitlines() if ln.strip()]
    return one_line(lines[-1]) if lines else "(no message)"


def run_case(name, case_dir, engines, pomme, work, timeout, env):
    model_path = os.path.join(case_dir, "model.onnx")
    res = {"case": name}
    try:
        model = onnx.load(model_path)
        sets = data_sets(case_dir, model)
    except NotTensor as e:
        for eng in engines:
            if eng == "ort-python":
                continue
            res[eng] = ["input-type", f"a {e} input"]
        model = None
        sets = None
    if sets is not None:
        odd = [a for ins, outs in sets for _, a in ins + outs if not kserve_dtype(a)]
        for eng in engines:
            if eng == "ort-python":
                continue
            if odd:
                res[eng] = ["dtype", f"{odd[0].dtype} tensor"]
                continue
            r = run_pomme(pomme, None if eng == "pomme" else eng, model_path, sets, work, timeout, env)
            res[eng] = list(r) if r else "pass"
    if "ort-python" in engines:
        try:
            # The anchor reads every input kind ONNX Runtime's Python API does.
            sets_any = sets if sets is not None else ort_sets(case_dir)
            r = run_ort_python(model_path, sets_any)
        except Exception as e:  # noqa: BLE001
            r = ("input-type", one_line(str(e)))
        if r and sets is not None and any(not kserve_dtype(a) for ins, outs in sets for _, a in ins + outs):
            r = ("dtype", r[1])  # the same category as pomme's, for the table
        res["ort-python"] = list(r) if r else "pass"
    return res


def ort_sets(case_dir):
    """Sequence/optional inputs too, as ONNX Runtime's Python API takes them."""
    sets = data_sets(case_dir, onnx.load(os.path.join(case_dir, "model.onnx")), read=load_any)
    if any(not isinstance(a, np.ndarray) for _, o in sets for _, a in o):
        raise NotTensor("sequence/optional output (compared only as tensors here)")
    return sets


def load_any(path, tp):
    data = open(path, "rb").read()
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        t = onnx.TensorProto()
        t.ParseFromString(data)
        return numpy_helper.to_array(t)
    if kind == "sequence_type":
        s = onnx.SequenceProto()
        s.ParseFromString(data)
        return numpy_helper.to_list(s)
    if kind == "optional_type":
        o = onnx.OptionalProto()
        o.ParseFromString(data)
        return numpy_helper.to_optional(o)
    raise NotTensor(kind)


def summarize(results, engines):
    total = len(results)
    rows = []
    for eng in engines:
        cats = collections.Counter()
        passed = 0
        for r in results:
            v = r.get(eng)
            if v == "pass":
                passed += 1
            elif v:
                cats[v[0]] += 1
        rows.append({"engine": eng, "passed": passed, "total": total, "failures": dict(cats)})
    return rows


def markdown(rows, results, meta):
    cats = [c for c in CATEGORIES if any(c in r["failures"] for r in rows)]
    out = []
    out.append(f"onnx {meta['onnx']} backend cases ({', '.join(meta['suites'])}; {meta['cases']} cases), "
               f"onnxruntime {meta['onnxruntime']}, {meta['machine']}, {meta['date']}, {meta['seconds']:.0f} s.\n")
    out.append("| engine | passed | % | " + " | ".join(cats) + " |")
    out.append("|---|---:|---:|" + "---:|" * len(cats))
    for r in rows:
        pct = 100.0 * r["passed"] / max(1, r["total"])
        out.append(f"| {r['engine']} | {r['passed']} / {r['total']} | {pct:.1f} | "
                   + " | ".join(str(r["failures"].get(c, 0)) for c in cats) + " |")
    out.append("")
    for c in cats:
        out.append(f"- **{c}**: {CATEGORIES[c]}")
    if "pomme" in meta["engines"] and "ort-python" in meta["engines"]:
        only_pomme = [r["case"] for r in results if r.get("pomme") == "pass" and r.get("ort-python") != "pass"]
        only_ort = [r["case"] for r in results if r.get("ort-python") == "pass" and r.get("pomme") != "pass"]
        out.append("")
        out.append(f"pomme passes {len(only_pomme)} cases ONNX Runtime's Python API fails; "
                   f"ONNX Runtime passes {len(only_ort)} that pomme fails.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pomme", default=os.environ.get("POMME_BIN", "target/debug/pomme"))
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--filter", default="", help="regex on 'suite/case'")
    ap.add_argument("--limit", type=int, default=0, help="first N cases only")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", help="write per-case results here")
    ap.add_argument("--markdown", help="write the summary table here")
    args = ap.parse_args()

    suites = args.suites.split(",")
    engines = args.engines.split(",")
    cases = find_cases(suites, args.filter)
    if args.limit:
        cases = cases[: args.limit]
    if not cases:
        sys.exit(f"no cases under {cases_root()} for suites {suites}")
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "error")
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="pomme-conformance-") as work:
        with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
            futs = {ex.submit(run_case, n, d, engines, args.pomme, work, args.timeout, env): n for n, d in cases}
            for i, f in enumerate(cf.as_completed(futs), 1):
                results.append(f.result())
                if i % 100 == 0 or i == len(cases):
                    print(f"{i}/{len(cases)} cases", file=sys.stderr, flush=True)
    results.sort(key=lambda r: r["case"])
    import onnxruntime
    import platform

    meta = {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "suites": suites,
        "engines": engines,
        "cases": len(cases),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.time() - started,
    }
    rows = summarize(results, engines)
    md = markdown(rows, results, meta)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": rows, "cases": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
