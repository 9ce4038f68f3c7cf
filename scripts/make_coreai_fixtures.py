#!/usr/bin/env python3
"""Writes the small Apple Core AI (.aimodel) fixtures in models/coreai/, plus
expected.json and README.md, and checks every fixture with coreai.runtime.

Needs no torch (Python 3.11-3.14; tested on Linux x86_64 only, about 7 s):

    python3 -m venv v && v/bin/pip install coreai-core==1.0.0b3 coreai-onnx==1.2.1 onnx onnxruntime numpy
    v/bin/python scripts/make_coreai_fixtures.py [--out models/coreai]

Fixtures (each a few kB):
  mlp.aimodel           from mlp.onnx (onnx.helper): x f32 [batch,32] -> Relu(x@W1+b1)@W2+b2 -> y f32 [batch,8]
  encoder.aimodel       from encoder.onnx: input_ids i64 [batch,seq] -> embedding(100x16) -> one
                        self-attention block + residual + LayerNorm -> mean over seq -> embedding f32 [batch,16]
                        (Core AI narrows input_ids to int32)
  fp16.aimodel          from fp16.onnx: x f16 [batch,4] -> y = 2*x + 1 (f16)
  bf16.aimodel          coreai.authoring: x bf16 [batch,4] -> y = 2*x + 1 (bf16)
  two_function.aimodel  coreai.authoring: functions b1 (x f32 [1,4]) and b8 (x f32 [8,4]), y = 2*x + 1
  accumulator.aimodel   coreai.authoring, stateful: state acc f32 [1,4]; main(x f32 [1,4]): acc += x; y = acc

Everything is seeded and the asset metadata carries a fixed creation date
(SOURCE_DATE_EPOCH if set), so a rerun with the same package versions writes
byte-identical files.

After writing, every fixture is compiled to .odix (AIModelAsset._write_odix, in a
temporary directory), loaded with coreai.runtime.AIModel.load and run on a fixed
input; the converted ones are compared with onnxruntime on the source ONNX. The
results, the signatures the runtime reports, and a few probes of the runtime's
error behaviour go to expected.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections import OrderedDict
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Annotated

import numpy as np

warnings.filterwarnings("ignore", message=".*float16.*")

import ml_dtypes  # noqa: E402  (a coreai-core dependency)
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

import coreai.authoring as ca  # noqa: E402
import coreai_onnx  # noqa: E402
from coreai._compiler.dialects import coreai as cai_dialect  # noqa: E402
from coreai._compiler.ir import F32Type, RankedTensorType  # noqa: E402
from coreai._compiler.ir import Module as MLIRModule  # noqa: E402
from coreai_onnx._ir import mlir_module_of  # noqa: E402
from coreai.authoring import AIModelAsset, AIProgram, Module, TensorType, Value, graph  # noqa: E402
from coreai.authoring.graph_builder import GraphOp  # noqa: E402
from coreai.runtime import AIModel, AIModelAssetMetadata, NDArray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = "scripts/make_coreai_fixtures.py"
# 2026-12-01T00:00:00Z unless SOURCE_DATE_EPOCH says otherwise.
CREATION_DATE = float(os.environ.get("SOURCE_DATE_EPOCH", "1796083200"))
OPSET = 17
ORT_TOL = 1e-5  # |Core AI - onnxruntime| bound checked for the float32 fixtures


# --------------------------------------------------------------------------- helpers


def canonical_resources(prog: AIProgram) -> AIProgram:
    """Rename dense_resource blobs to resource_0, resource_1, ... in order of use.

    Core AI names weight blobs resource_<random 64-bit number>, different in every
    process, which would make the converted assets' bytecode differ on each run. The
    module is printed, renamed and parsed back (no debug locations are lost: the ONNX
    converter only uses unknown locations)."""
    mod = mlir_module_of(prog)
    names: dict[str, str] = {}
    text = re.sub(r"\bresource_\d+\b", lambda m: names.setdefault(m.group(0), f"resource_{len(names)}"), str(mod))
    return AIProgram._from_mlir_module(MLIRModule.parse(text, context=mod.context))


def save_program(prog: AIProgram, path: Path, name: str, description: str) -> None:
    md = AIModelAssetMetadata()
    md.author = "pomme fixtures"
    md.license = "MIT OR Apache-2.0"
    md.model_description = description
    md.set_custom("fixture", name)
    md.set_custom("generator", GENERATOR)
    asset = prog.save_asset(path, metadata=md)

    def _fix_date(m: AIModelAssetMetadata) -> None:
        m.creation_date = CREATION_DATE

    asset.update_metadata(_fix_date)
    # The runtime writes metadata.json keys in a random order; sort them.
    meta = path / "metadata.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=2, sort_keys=True) + "\n")
    AIModelAsset.load(path).metadata  # still readable


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def make_onnx(nodes, name, inputs, outputs, inits) -> onnx.ModelProto:
    g = oh.make_graph(nodes, name, inputs, outputs, [nh.from_array(a, n) for n, a in inits.items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="pomme " + GENERATOR)
    m.ir_version = 8
    return m


# --------------------------------------------------------------------------- ONNX sources


def onnx_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 64)) / np.sqrt(32)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(64)).astype(np.float32)
    w2 = (rng.standard_normal((64, 8)) / np.sqrt(64)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(8)).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["x", "W1"], ["h0"]),
        oh.make_node("Add", ["h0", "b1"], ["h1"]),
        oh.make_node("Relu", ["h1"], ["h"]),
        oh.make_node("MatMul", ["h", "W2"], ["y0"]),
        oh.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    return make_onnx(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["batch", 32])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["batch", 8])],
        {"W1": w1, "b1": b1, "W2": w2, "b2": b2},
    )


def onnx_encoder() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    vocab, dim = 100, 16
    emb = (0.5 * rng.standard_normal((vocab, dim))).astype(np.float32)
    wq, wk, wv, wo = ((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32) for _ in range(4))
    nodes = [
        oh.make_node("Gather", ["E", "input_ids"], ["h"], axis=0),
        oh.make_node("MatMul", ["h", "Wq"], ["q"]),
        oh.make_node("MatMul", ["h", "Wk"], ["k"]),
        oh.make_node("MatMul", ["h", "Wv"], ["v"]),
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        oh.make_node("MatMul", ["q", "kt"], ["s0"]),
        oh.make_node("Mul", ["s0", "scale"], ["s"]),
        oh.make_node("Softmax", ["s"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "v"], ["a"]),
        oh.make_node("MatMul", ["a", "Wo"], ["o"]),
        oh.make_node("Add", ["h", "o"], ["r"]),
        oh.make_node("LayerNormalization", ["r", "gamma", "beta"], ["n"], axis=-1, epsilon=1e-5),
        oh.make_node("ReduceMean", ["n"], ["embedding"], axes=[1], keepdims=0),
    ]
    return make_onnx(
        nodes,
        "encoder",
        [oh.make_tensor_value_info("input_ids", TP.INT64, ["batch", "seq"])],
        [oh.make_tensor_value_info("embedding", TP.FLOAT, ["batch", dim])],
        {
            "E": emb,
            "Wq": wq,
            "Wk": wk,
            "Wv": wv,
            "Wo": wo,
            "scale": np.array(1 / np.sqrt(dim), np.float32),
            "gamma": (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32),
            "beta": (0.1 * rng.standard_normal(dim)).astype(np.float32),
        },
    )


def onnx_fp16() -> onnx.ModelProto:
    nodes = [oh.make_node("Mul", ["x", "two"], ["t"]), oh.make_node("Add", ["t", "one"], ["y"])]
    return make_onnx(
        nodes,
        "fp16",
        [oh.make_tensor_value_info("x", TP.FLOAT16, ["batch", 4])],
        [oh.make_tensor_value_info("y", TP.FLOAT16, ["batch", 4])],
        {"two": np.array(2, np.float16), "one": np.array(1, np.float16)},
    )


# --------------------------------------------------------------------------- authored programs


def program_two_function() -> AIProgram:
    m = Module.create()
    with m:

        @graph
        def b1(
            x: Annotated[Value, TensorType((1, 4), ca.float32)],
        ) -> Annotated[Value, TensorType((1, 4), ca.float32, name="y")]:
            return ca.add(ca.mul(x, np.full((1, 4), 2, np.float32)), np.full((1, 4), 1, np.float32))

        @graph
        def b8(
            x: Annotated[Value, TensorType((8, 4), ca.float32)],
        ) -> Annotated[Value, TensorType((8, 4), ca.float32, name="y")]:
            return ca.add(ca.mul(x, np.full((8, 4), 2, np.float32)), np.full((8, 4), 1, np.float32))

    return AIProgram(m)


def program_bf16() -> AIProgram:
    bf16 = ml_dtypes.bfloat16
    m = Module.create()
    with m:

        @graph
        def main(
            x: Annotated[Value, TensorType((-1, 4), ca.bfloat16)],
        ) -> Annotated[Value, TensorType((-1, 4), ca.bfloat16, name="y")]:
            return ca.broadcasting_add(ca.broadcasting_mul(x, np.array([2], bf16)), np.array([1], bf16))

    return AIProgram(m)


def program_accumulator() -> AIProgram:
    """A state is a `!coreai.handle<tensor>` graph argument; the graph reads it,
    writes the new value back and must return the final `!coreai.token`. The
    runtime lists handle arguments under state_names and hides the token."""
    m = Module.create()
    with m:
        t = RankedTensorType.get([1, 4], F32Type.get())
        g = GraphOp(
            "main",
            input_types=[t, cai_dialect.HandleType.get(t)],
            result_types=[],
            input_names=["x", "acc"],
        )
        with g.block:
            x, acc = g.arguments
            tok0 = cai_dialect.create_token()
            cur, tok1 = cai_dialect.read_handle(acc, tok0)
            new = cai_dialect.add(cur, x)
            tok2 = cai_dialect.write_handle(acc, new, tok1)
            g.set_outputs_spec_from_dict(OrderedDict([("y", new), ("token", tok2)]))
    return AIProgram(m)


# --------------------------------------------------------------------------- runtime checks


def arr_json(a: np.ndarray) -> dict:
    dt = "bfloat16" if a.dtype == ml_dtypes.bfloat16 else str(a.dtype)
    flat = a.astype(np.float64 if a.dtype.kind == "f" or dt == "bfloat16" else a.dtype).reshape(-1)
    return {"dtype": dt, "shape": list(a.shape), "data": [v.item() for v in flat]}


def describe(model: AIModel) -> dict:
    out = {}
    for fn in model.function_names:
        d = model.load_function(fn).desc
        out[fn] = {
            "inputs": [
                {"name": n, "dtype": d.input_descriptor(n).dtype, "shape": list(d.input_descriptor(n).shape)}
                for n in d.input_names
            ],
            "outputs": [
                {"name": n, "dtype": d.output_descriptor(n).dtype, "shape": list(d.output_descriptor(n).shape)}
                for n in d.output_names
            ],
            "states": [
                {"name": n, "dtype": d.state_descriptor(n).dtype, "shape": list(d.state_descriptor(n).shape)}
                for n in d.state_names
            ],
        }
    return out


def summary_json(asset: AIModelAsset) -> dict:
    s = asset.summary(include_statistics=False)
    return {
        fn: {"inputs": [list(p) for p in s.function_inputs(fn)], "outputs": [list(p) for p in s.function_outputs(fn)]}
        for fn in s.function_names
    }


async def call(model: AIModel, fn: str, inputs: dict[str, np.ndarray], state=None) -> dict[str, np.ndarray]:
    f = model.load_function(fn)
    r = await f({k: NDArray(v) for k, v in inputs.items()}, state or {})
    return {k: np.array(v.numpy(), copy=True) for k, v in r.items()}


def compile_odix(asset_path: Path, out_dir: Path) -> None:
    # Note: the Linux runtime fails to load a compiled directory whose name ends in
    # ".odix" ("Cannot allocate memory"); ".aimodelx" is what executable() uses.
    AIModelAsset.load(asset_path)._write_odix(out_dir)


CHILD_COMPILE = "import sys;from pathlib import Path;from coreai.authoring import AIModelAsset as A;A.load(Path(sys.argv[1]))._write_odix(Path(sys.argv[2]))"

# One bad call per child process: some bad inputs abort the whole process with a Swift
# fatal error instead of raising. argv: compiled dir, function, JSON {"inputs": {name:
# [dtype, shape]}, "state": {...}}; arrays are filled with ones (zeros for integers).
CHILD_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys, numpy as np
    from coreai.runtime import AIModel, NDArray
    def arr(dtype, shape):
        return (np.zeros if np.dtype(dtype).kind in "iu" else np.ones)(shape, np.dtype(dtype))
    async def main():
        m = await AIModel.load(sys.argv[1])
        f = m.load_function(sys.argv[2])
        spec = json.loads(sys.argv[3])
        inputs = {k: NDArray(arr(*v)) for k, v in spec.get("inputs", {}).items()}
        state = {k: NDArray(arr(*v)) for k, v in spec.get("state", {}).items()}
        try:
            r = await f(inputs, state)
            res = {"outcome": "ok", "outputs": {k: [v.dtype, list(v.shape)] for k, v in r.items()}}
        except Exception as e:
            res = {"outcome": "exception", "exception": type(e).__name__, "message": str(e)}
        print("RESULT " + json.dumps(res), flush=True)
    asyncio.run(main())
    """
)

PROBES = [
    # key, fixture, function, inputs {name: [dtype, shape]}, state
    ("mlp_wrong_inner_dim", "mlp", "main", {"x": ["float32", [2, 31]]}, {}),
    ("mlp_wrong_rank", "mlp", "main", {"x": ["float32", [32]]}, {}),
    ("mlp_float64_input", "mlp", "main", {"x": ["float64", [2, 32]]}, {}),
    ("mlp_missing_input", "mlp", "main", {}, {}),
    ("mlp_unknown_input", "mlp", "main", {"x": ["float32", [2, 32]], "z": ["float32", [2, 32]]}, {}),
    ("mlp_zero_batch", "mlp", "main", {"x": ["float32", [0, 32]]}, {}),
    ("encoder_int64_input", "encoder", "main", {"input_ids": ["int64", [2, 8]]}, {}),
    ("encoder_float32_input", "encoder", "main", {"input_ids": ["float32", [2, 8]]}, {}),
    ("fp16_float32_input", "fp16", "main", {"x": ["float32", [3, 4]]}, {}),
    ("fp16_wrong_inner_dim", "fp16", "main", {"x": ["float16", [3, 5]]}, {}),
    ("fp16_wrong_rank", "fp16", "main", {"x": ["float16", [1, 3, 4]]}, {}),
    ("fp16_zero_batch", "fp16", "main", {"x": ["float16", [0, 4]]}, {}),
    ("b1_given_batch8", "two_function", "b1", {"x": ["float32", [8, 4]]}, {}),
    ("b1_wrong_rank", "two_function", "b1", {"x": ["float32", [4]]}, {}),
    ("b1_float64_input", "two_function", "b1", {"x": ["float64", [1, 4]]}, {}),
    ("b1_missing_input", "two_function", "b1", {}, {}),
    ("b1_unknown_state", "two_function", "b1", {"x": ["float32", [1, 4]]}, {"s": ["float32", [1, 4]]}),
    ("accumulator_no_state", "accumulator", "main", {"x": ["float32", [1, 4]]}, {}),
    ("accumulator_state_wrong_shape", "accumulator", "main", {"x": ["float32", [1, 4]]}, {"acc": ["float32", [4]]}),
    ("accumulator_state_wrong_dtype", "accumulator", "main", {"x": ["float32", [1, 4]]}, {"acc": ["float64", [1, 4]]}),
    ("accumulator_state_as_input", "accumulator", "main", {"x": ["float32", [1, 4]], "acc": ["float32", [1, 4]]}, {}),
]


def run_probe(compiled: Path, fn: str, inputs: dict, state: dict) -> dict:
    spec = json.dumps({"inputs": inputs, "state": state})
    r = subprocess.run([sys.executable, "-c", CHILD_PROBE, str(compiled), fn, spec], capture_output=True, text=True, timeout=120)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("ODIE ")]
    return {"outcome": "process_abort", "returncode": r.returncode, "stderr_last_line": lines[-1] if lines else ""}


async def verify(out: Path, onnx_models: dict[str, onnx.ModelProto], tmp: Path) -> dict:
    fixtures: dict = {}
    probes: dict = {}
    rng = np.random.default_rng(1234)

    async def load(name: str) -> AIModel:
        d = tmp / f"{name}.aimodelx"
        d.mkdir()
        compile_odix(out / f"{name}.aimodel", d)
        return await AIModel.load(d)

    def record(name, source, how, model, cases):
        asset = AIModelAsset.load(out / f"{name}.aimodel")
        fixtures[name] = {
            "path": f"{name}.aimodel",
            "source_onnx": source,
            "made_with": how,
            "functions": describe(model),
            "summary": summary_json(asset),
            "cases": cases,
        }

    async def ort_case(name, model, fn, inputs, coreai_inputs=None):
        got = await call(model, fn, coreai_inputs or inputs)
        sess = ort.InferenceSession(onnx_models[name].SerializeToString(), providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
        err = max(float(np.abs(got[k].astype(np.float32) - ref[k].astype(np.float32)).max()) for k in got)
        print(f"  {name}/{fn} {[v.shape for v in inputs.values()]}: max |coreai - onnxruntime| = {err:.3g}")
        tol = ORT_TOL if all(v.dtype == np.float32 for v in got.values()) else 0.0
        assert err <= tol, f"{name}: coreai differs from onnxruntime by {err}"
        return {
            "function": fn,
            "inputs": {k: arr_json(v) for k, v in (coreai_inputs or inputs).items()},
            "outputs": {k: arr_json(v) for k, v in got.items()},
            "max_abs_err_vs_onnxruntime": err,
        }

    # mlp -------------------------------------------------------------------------------
    m = await load("mlp")
    x = (rng.integers(-8, 8, size=(2, 32)) / 4).astype(np.float32)
    cases = [await ort_case("mlp", m, "main", {"x": x}), await ort_case("mlp", m, "main", {"x": x[:1]})]
    record("mlp", "mlp.onnx", "coreai-onnx convert", m, cases)
    # (a) compile in another process, load here.
    d = tmp / "mlp.child.aimodelx"
    d.mkdir()
    subprocess.run([sys.executable, "-c", CHILD_COMPILE, str(out / "mlp.aimodel"), str(d)], check=True, capture_output=True)
    m2 = await AIModel.load(d)
    same = np.array_equal((await call(m2, "main", {"x": x}))["y"], (await call(m, "main", {"x": x}))["y"])
    assert same
    probes["compiled_in_other_process"] = {
        "fixture": "mlp",
        "outcome": "loads with AIModel.load and gives identical outputs",
        "files": sorted(p.name for p in d.iterdir()),
    }
    try:
        m.load_function("nope")
        probes["load_function_unknown"] = {"outcome": "ok"}
    except Exception as e:  # noqa: BLE001
        probes["load_function_unknown"] = {"outcome": "exception", "exception": type(e).__name__, "message": str(e)}

    # encoder ---------------------------------------------------------------------------
    m = await load("encoder")
    ids = rng.integers(0, 100, size=(2, 8)).astype(np.int64)
    cases = [
        await ort_case("encoder", m, "main", {"input_ids": ids}, {"input_ids": ids.astype(np.int32)}),
        await ort_case("encoder", m, "main", {"input_ids": ids[:1, :5]}, {"input_ids": ids[:1, :5].astype(np.int32)}),
    ]
    record("encoder", "encoder.onnx", "coreai-onnx convert", m, cases)

    # fp16 ------------------------------------------------------------------------------
    m = await load("fp16")
    x16 = (np.arange(12).reshape(3, 4) / 8 - 0.5).astype(np.float16)
    record("fp16", "fp16.onnx", "coreai-onnx convert", m, [await ort_case("fp16", m, "main", {"x": x16})])

    # bf16 ------------------------------------------------------------------------------
    m = await load("bf16")
    xb = (np.arange(12).reshape(3, 4) / 8 - 0.5).astype(ml_dtypes.bfloat16)
    got = await call(m, "main", {"x": xb})
    want = (xb.astype(np.float32) * 2 + 1).astype(ml_dtypes.bfloat16)
    err = float(np.abs(got["y"].astype(np.float32) - want.astype(np.float32)).max())
    print(f"  bf16/main [3,4]: max |coreai - numpy| = {err:.3g}")
    assert got["y"].dtype == ml_dtypes.bfloat16 and err == 0.0
    record("bf16", None, "coreai.authoring", m, [{"function": "main", "inputs": {"x": arr_json(xb)}, "outputs": {"y": arr_json(got["y"])}, "max_abs_err_vs_numpy": err}])

    # two_function ----------------------------------------------------------------------
    m = await load("two_function")
    cases = []
    for fn, b in (("b1", 1), ("b8", 8)):
        xi = (np.arange(b * 4).reshape(b, 4) / 4 - 1).astype(np.float32)
        got = await call(m, fn, {"x": xi})
        err = float(np.abs(got["y"] - (2 * xi + 1)).max())
        print(f"  two_function/{fn} [{b},4]: max |coreai - numpy| = {err:.3g}")
        assert err == 0.0
        cases.append({"function": fn, "inputs": {"x": arr_json(xi)}, "outputs": {"y": arr_json(got["y"])}, "max_abs_err_vs_numpy": err})
    record("two_function", None, "coreai.authoring", m, cases)

    # accumulator -----------------------------------------------------------------------
    m = await load("accumulator")
    xa = np.array([[1.0, -2.0, 0.5, 4.0]], np.float32)
    backing = np.zeros((1, 4), np.float32)
    st = NDArray(backing)
    f = m.load_function("main")
    calls = []
    first_y = None
    for i in range(3):
        r = await f({"x": NDArray(xa)}, {"acc": st})
        y = r["y"].numpy()
        if first_y is None:
            first_y = y
        assert np.array_equal(y, (i + 1) * xa) and np.array_equal(st.numpy(), (i + 1) * xa), (i, y, st.numpy())
        calls.append({"outputs": {k: arr_json(v.numpy()) for k, v in r.items()}, "state_after": {"acc": arr_json(st.numpy())}})
    print(f"  accumulator/main: y after 3 calls = {calls[-1]['outputs']['y']['data']}")
    record(
        "accumulator",
        None,
        "coreai.authoring (raw coreai dialect: handle argument, read_handle/write_handle)",
        m,
        [
            {
                "function": "main",
                "inputs": {"x": arr_json(xa)},
                "initial_state": {"acc": arr_json(np.zeros((1, 4), np.float32))},
                "calls": calls,
                "state_semantics": {
                    "state_ndarray_updated_in_place": bool(np.array_equal(st.numpy(), 3 * xa)),
                    "numpy_array_behind_state_ndarray_untouched": bool(np.array_equal(backing, np.zeros((1, 4)))),
                    "state_among_outputs": "acc" in calls[0]["outputs"],
                    "first_output_unchanged_by_later_calls": bool(np.array_equal(first_y, xa)),
                },
            }
        ],
    )

    # error behaviour, one child process per bad call -----------------------------------
    for key, name, fn, inputs, state in PROBES:
        res = run_probe(tmp / f"{name}.aimodelx", fn, inputs, state)
        probes[key] = {"fixture": name, "function": fn, "inputs": inputs, "state": state, **res}
        detail = res.get("message") or res.get("stderr_last_line") or res.get("outputs")
        print(f"  probe {key}: {res['outcome']}: {detail}")
    return {"fixtures": fixtures, "runtime_probes": probes}


# --------------------------------------------------------------------------- main

README = """\
# Core AI fixtures

Small Apple Core AI assets (`.aimodel` directories: `main.mlirb` MLIR bytecode with the
weights, `main.hash` = SHA-256 of it, `metadata.json`) for pomme's tests. Generated by
`scripts/make_coreai_fixtures.py` (no torch needed); do not edit by hand:

    python3 -m venv v && v/bin/pip install coreai-core==1.0.0b3 coreai-onnx==1.2.1 onnx onnxruntime numpy
    v/bin/python scripts/make_coreai_fixtures.py      # --out models/coreai is the default

Made with {versions}.

| fixture | made with | functions and signature (as `coreai.runtime` reports it; -1 = dynamic) |
|---|---|---|
{rows}

- `mlp.onnx`, `encoder.onnx`, `fp16.onnx` are the ONNX sources (opset 17, IR 8, weights
  from numpy `default_rng(0)` / `default_rng(1)`); the script converts them with
  `coreai_onnx.convert(...).save_asset(...)` and checks Core AI against onnxruntime
  (float32: max abs error <= 1e-5; fp16: exact).
- `encoder`: Core AI narrows the ONNX `int64` input to `int32`; callers must pass int32.
- `accumulator` is stateful: the state `acc` is an `NDArray` passed as the second argument,
  `await f({{"x": x}}, {{"acc": acc}})`; the runtime updates it in place and does not return it
  among the outputs. It is authored directly in the coreai dialect (a
  `!coreai.handle<tensor<1x4xf32>>` graph argument, `read_handle`/`write_handle`).
- `two_function` has two fixed-shape functions `b1` and `b8` in one asset.

`expected.json` has, per fixture, the runtime signature (`functions`), the
`AIModelAsset.summary()` strings (`summary`), fixed test inputs with the outputs Core AI
gave (`cases`; flat row-major `data`; for the accumulator the outputs and state after each
of 3 calls), and under `runtime_probes` the exact exceptions the Linux runtime raises for
bad calls (wrong shape/dtype, missing input, int64 ids, missing state, ...).

To run one on Linux: compile once with `AIModelAsset.load(p)._write_odix(dir)` (or use
`async with AIModelAsset.load(p).executable() as m:`), then `await AIModel.load(dir)`,
inside a running asyncio loop. Seen with the Linux runtime (details in `runtime_probes`):

- A directory compiled in one process loads fine in another. Do not name it `*.odix`:
  `AIModel.load` then fails with "Cannot allocate memory" (`*.aimodelx` is fine).
- Functions with only static dims check inputs and states before running:
  `RuntimeError("x has an invalid shape: [8, 4], expected: [1, 4]")`,
  `"x has an invalid scalar type: float64, expected: float32"`.
- Functions with a dynamic dim do not reliably check: a wrong dtype, rank or static dim
  either raises a kernel error (`RuntimeError("(loc: unknown, error: KernelError(...
  Expected inputs to have the same type.")))`) or **aborts the process** with a Swift
  fatal error (signal, exit -4), as does a zero-sized batch. Validate before calling.
- int64 ids for the encoder's int32 input are not refused up front; they fail in the
  first kernel with the KernelError above.
- A missing input raises `RuntimeError("x")`; an unknown one `"z is not a declared input
  of this function."`; a missing state `"Missing state view for acc."`.
"""


def sig_text(fn: str, s: dict) -> str:
    def one(e):
        return f"`{e['name']}` {e['dtype']} {e['shape']}"

    parts = [", ".join(one(e) for e in s["inputs"]) + " → " + ", ".join(one(e) for e in s["outputs"])]
    if s["states"]:
        parts.append("state " + ", ".join(one(e) for e in s["states"]))
    return f"`{fn}`: " + "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "models" / "coreai"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    onnx_models = {"mlp": onnx_mlp(), "encoder": onnx_encoder(), "fp16": onnx_fp16()}
    descriptions = {
        "mlp": "MLP 32->64->8 with ReLU, from mlp.onnx",
        "encoder": "toy encoder: embedding(100x16), one self-attention block, LayerNorm, mean over seq; from encoder.onnx",
        "fp16": "y = 2*x + 1 in float16, from fp16.onnx",
        "bf16": "y = 2*x + 1 in bfloat16",
        "two_function": "functions b1 ([1,4]) and b8 ([8,4]): y = 2*x + 1",
        "accumulator": "stateful: acc += x; y = acc",
    }
    print(f"writing to {out}")
    for name, model in onnx_models.items():
        save_onnx(model, out / f"{name}.onnx")
        save_program(canonical_resources(coreai_onnx.convert(model)), out / f"{name}.aimodel", name, descriptions[name])
    save_program(program_bf16(), out / "bf16.aimodel", "bf16", descriptions["bf16"])
    save_program(program_two_function(), out / "two_function.aimodel", "two_function", descriptions["two_function"])
    save_program(program_accumulator(), out / "accumulator.aimodel", "accumulator", descriptions["accumulator"])

    print("verifying with coreai.runtime")
    with tempfile.TemporaryDirectory(prefix="coreai-fixtures-") as tmp:
        result = asyncio.run(verify(out, onnx_models, Path(tmp)))

    versions = OrderedDict(
        (p, pkg_version(p)) for p in ("coreai-core", "coreai-onnx", "onnx", "onnxruntime", "numpy", "ml_dtypes")
    )
    versions["python"] = platform.python_version()
    doc = OrderedDict(
        generator=GENERATOR,
        versions=versions,
        note="dtype strings and shapes are what coreai.runtime's descriptors report (-1 = dynamic dim); "
        "data is flat row-major; runtime_probes were observed with the in-package Linux runtime",
    )
    doc.update(result)
    (out / "expected.json").write_text(json.dumps(doc, indent=1) + "\n")

    order = ["mlp", "encoder", "fp16", "bf16", "two_function", "accumulator"]
    rows = []
    for name in order:
        fx = result["fixtures"][name]
        how = f"`{fx['source_onnx']}` → coreai-onnx" if fx["source_onnx"] else "coreai.authoring"
        sigs = "<br>".join(sig_text(fn, s) for fn, s in fx["functions"].items())
        rows.append(f"| `{name}.aimodel` | {how} | {sigs} |")
    ver = ", ".join(f"{k} {v}" for k, v in versions.items())
    (out / "README.md").write_text(README.format(versions=ver, rows="\n".join(rows)))

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for p in sorted(out.iterdir()):
        size = sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size
        print(f"  {p.name:24s} {size / 1024:7.1f} kB")
    print(f"  total {total / 1024:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
