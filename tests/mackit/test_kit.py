"""scripts/mac/kit.sh on Linux: the Mac steps say why they cannot run, the rest runs and a report comes out."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import MAC, ROOT

# The system's sh (dash on Debian) and bash in POSIX mode.
SHELLS = [["sh"]] + ([["bash", "--posix"]] if shutil.which("bash") else [])


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_kit_runs_on_linux_and_writes_a_report(tmp_path, shell):
    if sys.platform == "darwin":
        pytest.skip("on a Mac the kit runs for real")
    out = tmp_path / "report"
    env = dict(os.environ, POMME_KIT_VENV=sys.prefix)
    env.pop("POMME", None)
    r = subprocess.run(shell + [os.path.join(MAC, "kit.sh"), "--quick", "--out", str(out), "--models",
                        "mobilenet_v2 stateful"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((out / "mac-report.json").read_text())
    steps = {s["step"]: s for s in rep["log"]}
    assert steps["platform"]["status"] == "skip" and "needs macOS" in steps["platform"]["message"]
    assert steps["models"]["status"] == "ok"
    for step in ("build", "swift-direct", "mobilenet_v2", "served mobilenet_v2", "coreai"):
        assert steps[step]["status"] == "skip" and steps[step]["message"], step
    assert rep["verdict"] == "nothing checked"
    assert [m["name"] for m in rep["models"]] == ["mobilenet_v2", "stateful"]
    assert (out / "models" / "mobilenet_v2" / "model.onnx").exists()
    assert "mac-report.md" in r.stdout


def test_kit_refuses_unknown_arguments():
    r = subprocess.run(["sh", os.path.join(MAC, "kit.sh"), "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr


def test_pybench_ort_on_the_cpu(small_models):
    model = os.path.join(small_models, "encoder", "model.onnx")
    r = subprocess.run([sys.executable, os.path.join(MAC, "pybench.py"), "ort", model, "cpu", "8", "--warmup", "0.1",
                        "--duration", "0.3", "--spec", "input_ids=1,8:int32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["runner"] == "ort-py" and s["batch"] == 8 and s["requests"] > 0
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]


def test_pybench_pattern_is_pommes():
    import pybench

    import numpy as np
    f = pybench.pattern((2, 3), np.float32)
    assert f.ravel()[1] == np.float32((7919 % 1000) / 1000 - 0.5)
    assert pybench.pattern((4,), np.int32).tolist() == [1, 2, 1, 2]


@pytest.mark.parametrize("script", ["make_models.py", "report.py", "pybench.py"])
def test_scripts_parse_as_python_3_9(script):
    """The Command Line Tools' python3 on macOS is 3.9: the kit's scripts must not need newer grammar."""
    import ast

    with open(os.path.join(MAC, script)) as f:
        ast.parse(f.read(), feature_version=(3, 9))


def test_kit_plumbing_with_a_pomme_build(tmp_path):
    """With POMME_BIN (a pomme build), the kit on Linux runs ONNX Runtime on the CPU: pomme infer,
    pomme bench (batch 1 and 8) beside onnxruntime's Python API, and pomme serve under pomme bench --url.
    That checks the kit's command lines and the report's reading of pomme's JSON, nothing Apple-specific."""
    pomme = os.environ.get("POMME_BIN")
    if not pomme or sys.platform == "darwin":
        pytest.skip("set POMME_BIN to a pomme binary (scripts/test.sh does, after cargo test)")
    out = tmp_path / "report"
    env = dict(os.environ, POMME_KIT_VENV=sys.prefix, POMME=pomme, POMME_KIT_PORT="18700")
    # A Python with Apple's coreai-core (CI's .venv) lets the kit serve Core AI's stateful fixture.
    coreai_py = os.environ.get("POMME_COREAI_PYTHON") or os.path.join(ROOT, ".venv", "bin", "python")
    has_coreai = os.path.exists(coreai_py) and subprocess.run(
        [coreai_py, "-c", "import coreai.runtime"], capture_output=True).returncode == 0
    if has_coreai:
        env["POMME_COREAI_PYTHON"] = coreai_py
    else:
        env.pop("POMME_COREAI_PYTHON", None)
    r = subprocess.run(["sh", os.path.join(MAC, "kit.sh"), "--quick", "--duration", "1", "--out", str(out),
                        "--models", "mobilenet_v2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rep = json.loads((out / "mac-report.json").read_text())
    fails = [s for s in rep["log"] if s["status"] == "fail"]
    assert r.returncode == 0 and not fails, r.stdout + r.stderr
    runners = {(x["runner"], x["device"], x["batch"]) for x in rep["latency"]}
    assert runners == {("pomme-ort", "cpu", 1), ("pomme-ort", "cpu", 8), ("ort-py", "cpu", 1), ("ort-py", "cpu", 8)}
    for x in rep["latency"]:
        assert x["requests"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"], x
    row = [x for x in rep["latency"] if x["runner"] == "pomme-ort" and x["batch"] == 1][0]
    assert row["direct"] == "ort-py" and row["ratio_vs_direct"] > 0
    outputs = {c["check"]: c["ok"] for c in rep["checks"]}
    assert outputs == {"outputs mobilenet_v2 pomme-ort.cpu vs numpy fp32 reference": True}
    assert [s["concurrency"] for s in rep["served"]] == [1, 8, 32]
    assert all(s["ok"] > 0 and s["served_as"].startswith("ort/cpu") for s in rep["served"])
    steps = {s["step"]: s["status"] for s in rep["log"]}
    if has_coreai:
        import numpy as np

        assert steps["served sequence coreai_accumulator"] == "ok"
        y = np.load(out / "steps" / "outputs" / "coreai_accumulator" / "served.cpu" / "y_steps.npy")
        x = np.array([[1, 2, 3, 4]], np.float32)
        np.testing.assert_allclose(y, np.stack([x, 2 * x, 3 * x]))  # the state carried across the sequence
    else:
        assert steps["served sequence"] == "skip"


def test_the_kit_calls_direct_swift_with_units_it_knows():
    """kit.sh's units_of names must be the compute units Direct.swift's switch accepts."""
    import re

    kit = open(os.path.join(MAC, "kit.sh")).read()
    swift = open(os.path.join(MAC, "Direct.swift")).read()
    body = kit[kit.index("units_of() {"):]
    body = body[:body.index("\n}\n")]
    units = re.findall(r"echo (\w+)", body)
    assert units == ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]
    for u in units:
        assert f'case "{u}": config.computeUnits = .{u}' in swift


def test_every_coreml_fixture_is_inferred_with_its_own_input():
    """The kit's fixture list names every model of models/coreml with an input the model has
    (the default function's for a multifunction package), and every dtype the generator knows."""
    import re

    text = open(os.path.join(MAC, "kit.sh")).read()
    block = re.search(r"for fx in (.*?); do", text, re.S).group(1)
    entries = block.replace("\\\n", " ").split()
    fixtures = os.path.join(ROOT, "models", "coreml")
    expected = json.loads(open(os.path.join(fixtures, "expected.json")).read())
    files = {f for f in os.listdir(fixtures) if f.endswith((".mlmodel", ".mlpackage"))}
    listed = set()
    for e in entries:
        file, name, shape, dtype, *opt = e.split(":")
        listed.add(file)
        info = expected[file]
        inputs = info["inputs"] or next(f["inputs"] for f in info["functions"]
                                        if f["name"] == info["default_function"])
        assert name in [i["name"] for i in inputs], e
        assert all(d.isdigit() for d in shape.split(",")), e
        assert dtype in ("float32", "float64", "uint8", "int64"), e
        assert opt in ([], ["image_layout=nchw"]), e
    assert listed == files, sorted(files ^ listed)
