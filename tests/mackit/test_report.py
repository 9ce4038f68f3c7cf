"""report.py: placement verdicts, tolerances, ratios, energy, and the report written from canned step outputs."""
import json
import os

import numpy as np
import pytest

import report


def plan(ops, units="cpuAndNeuralEngine"):
    return {"model": "m.mlmodelc", "compute_units": units,
            "ops": [{"op_type": t, "name": f"{t}_{i}", "preferred": d, "supported": [d] if d != "unknown" else [],
                     "cost": c} for i, (t, d, c) in enumerate(ops)]}


# The sample of crates/pomme-coreml/src/placement.rs's tests, as `pomme inspect --placement --json` prints it.
RUST_SAMPLE = [("const", "unknown", None), ("conv", "ane", 0.6), ("conv", "ane", 0.2), ("relu", "ane", 0.05),
               ("gather", "cpu", 0.15)]


def test_percentiles_are_nearest_rank():
    p = report.percentiles(range(1, 101))
    assert (p["p50_ms"], p["p90_ms"], p["p99_ms"], p["requests"]) == (50, 90, 99, 100)
    assert report.percentiles([3.0])["p99_ms"] == 3.0
    assert report.percentiles([])["p50_ms"] is None


def test_placement_share_is_pommes_cost_share_or_op_share():
    v = report.placement_verdict(plan(RUST_SAMPLE), 0.8)
    assert v["basis"] == "estimated cost" and v["placed"] == 4 and v["ops"] == 5
    assert v["ane_share"] == pytest.approx(0.85)  # the Rust test's cost share
    assert v["ok"] is True
    assert [o["op_type"] for o in v["off_ane"]] == ["gather"]
    no_cost = plan([(t, d, None) for t, d, _ in RUST_SAMPLE])
    v = report.placement_verdict(no_cost, 0.8)
    assert v["basis"] == "ops" and v["ane_share"] == pytest.approx(0.75) and v["ok"] is False


def test_failing_placement_prints_the_ops_that_fell_off():
    v = report.placement_verdict(plan(RUST_SAMPLE), 0.99)
    assert v["ok"] is False
    text = report.placement_text(v)
    assert text.startswith("FAIL: 85.0% of the estimated cost on the Neural Engine (min 99%")
    assert "gather" in text and "15.00%" in text and "cpu" in text
    assert report.placement_verdict(plan(RUST_SAMPLE), None)["ok"] is None
    assert report.placement_verdict(plan([]), 0.5)["ok"] is False


def test_placement_command_exit_status(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"model": "x", "placement": plan(RUST_SAMPLE)}))
    assert report.main(["placement", str(f), "0.8"]) == 0
    assert report.main(["placement", str(f), "0.9"]) == 1
    assert "gather_4" in capsys.readouterr().out
    f.write_text(json.dumps({"model": "x", "placement": None}))
    assert report.main(["placement", str(f), "0.8"]) == 3


def test_compare_within_fp16_tolerance():
    tol = {"max_norm_err": 0.05, "min_cosine": 0.998}
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 1000)).astype(np.float32)
    assert report.compare(ref, ref, tol)["ok"]
    assert report.compare(ref, ref.astype(np.float16), tol)["ok"]
    assert report.compare(ref, ref + 0.01, tol)["ok"]
    assert not report.compare(ref, ref + 0.5, tol)["ok"]
    assert not report.compare(ref, -ref, tol)["ok"]
    assert not report.compare(ref, np.full_like(ref, np.nan), tol)["ok"]
    assert not report.compare(ref, ref[:, :10], tol)["ok"]
    assert report.compare(ref, ref.reshape(1000), tol)["ok"]  # same values, squeezed


POWERMETRICS = """Machine model: Mac14,2
*** Sampled system activity (Wed Dec  2 16:00:00 2026 +0000) (1003.51ms elapsed) ***

**** Processor usage ****
CPU Power: 1200 mW
GPU Power: 40 mW
ANE Power: 800 mW
Combined Power (CPU + GPU + ANE): 2040 mW

*** Sampled system activity (Wed Dec  2 16:00:01 2026 +0000) (1001.02ms elapsed) ***
CPU Power: 1000 mW
GPU Power: 60 mW
ANE Power: 1200 mW
Combined Power (CPU + GPU + ANE): 2260 mW
"""
IDLE = """*** Sampled system activity (Wed Dec  2 15:59:00 2026 +0000) (1000.00ms elapsed) ***
CPU Power: 100 mW
GPU Power: 10 mW
ANE Power: 0 mW
"""


def test_powermetrics_energy_per_inference():
    s = report.parse_powermetrics(POWERMETRICS)
    assert s == [{"cpu_mw": 1200, "gpu_mw": 40, "ane_mw": 800}, {"cpu_mw": 1000, "gpu_mw": 60, "ane_mw": 1200}]
    busy = report.mean_power(s)
    assert busy == {"cpu_mw": 1100, "gpu_mw": 50, "ane_mw": 1000}
    idle = report.mean_power(report.parse_powermetrics(IDLE))
    e = report.energy_per_inference(busy, idle, items_per_s=1000.0)
    assert e["power_mw"] == 2150 and e["above_idle_mw"] == 2040
    assert e["mj_per_inference"] == pytest.approx(2.15)  # 2150 mW / 1000 per s = 2.15 mJ
    assert e["mj_above_idle"] == pytest.approx(2.04)
    assert report.energy_per_inference(busy, None, 1000.0)["mj_above_idle"] is None
    assert report.parse_powermetrics("") == []


def pomme_row(p50, batch=1, device="ane"):
    """One row of `pomme bench --json` (crates/pomme-cli/src/bench.rs, Row)."""
    return [{"backend": "coreml", "device": device, "batch": batch, "concurrency": 1, "requests": 1000, "errors": 0,
             "requests_per_s": 1000 / p50, "items_per_s": 1000 * batch / p50, "p50_ms": p50, "p90_ms": p50 * 1.1,
             "p99_ms": p50 * 1.5, "mean_ms": p50}]


def direct(p50, runner="swift", batch=1):
    return {"runner": runner, "batch": batch, "requests": 900, "p50_ms": p50, "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.4, "mean_ms": p50, "items_per_s": 1000 * batch / p50, "load_ms": 120.0}


@pytest.fixture()
def canned(tmp_path):
    """A kit output directory as a Mac run would leave it (figures made up)."""
    out = tmp_path / "mac-report"
    steps = out / "steps"
    for d in ("placement", "bench", "outputs", "served", "energy"):
        (steps / d).mkdir(parents=True)
    models = out / "models"
    (models / "mobilenet_v2" / "ref").mkdir(parents=True)
    (models / "encoder" / "ref").mkdir(parents=True)
    (models / "stateful" / "ref").mkdir(parents=True)
    tol = {"max_norm_err": 0.05, "min_cosine": 0.998}
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 1000)).astype(np.float32)
    np.save(models / "mobilenet_v2" / "ref" / "output.logits.npy", logits)
    manifest = {"models": [
        {"name": "mobilenet_v2", "parameters": 3470760, "min_ane_share": 0.8, "tolerance": tol, "bench": True,
         "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "dtype": "FP32"}],
         "reference": {"inputs": {}, "outputs": {"logits": "ref/output.logits.npy"}}},
        {"name": "stateful", "parameters": 256, "min_ane_share": None, "tolerance": tol, "bench": False,
         "inputs": [], "reference": {"inputs": {}, "outputs": {"y_steps": "ref/output.y_steps.npy"}}},
        {"name": "encoder", "parameters": 22407168, "min_ane_share": 0.6, "tolerance": tol, "bench": True,
         "inputs": [], "reference": {"inputs": {}, "outputs": {}}},
    ]}
    (models / "manifest.json").write_text(json.dumps(manifest))
    (steps / "env.json").write_text(json.dumps({"chip": "Apple M2", "os": "15.1", "os_build": "24B83"}))
    (steps / "devices.json").write_text(json.dumps({"backends": [
        {"backend": "coreml", "formats": ["coreml"], "availability": "Available", "devices": [{"kind": "ane"}]}],
        "cuda_feature": False}))
    (steps / "log.tsv").write_text("platform\tok\tApple M2\nserved mobilenet_v2\tok\tconcurrency 1, 8, 32\n")
    (steps / "placement" / "mobilenet_v2.json").write_text(json.dumps(
        {"model": "x", "placement": plan([("conv", "ane", 0.9), ("linear", "ane", 0.05), ("reduce_mean", "cpu", 0.05)])}))
    (steps / "placement" / "encoder.json").write_text(json.dumps(
        {"model": "x", "placement": plan([("linear", "ane", 0.5), ("gather", "cpu", 0.3), ("softmax", "gpu", 0.2)])}))
    b = steps / "bench"
    for dev, p in (("cpu", 4.0), ("gpu", 2.0), ("ane", 1.0)):
        (b / f"pomme.mobilenet_v2.{dev}.b1.json").write_text(json.dumps(pomme_row(p * 1.02, 1, dev)))
        (b / f"swift.mobilenet_v2.{dev}.b1.json").write_text(json.dumps(direct(p)))
        (b / f"coremltools.mobilenet_v2.{dev}.b1.json").write_text(json.dumps(direct(p * 1.3, "coremltools")))
        (b / f"pomme.mobilenet_v2.{dev}.b8.json").write_text(json.dumps(pomme_row(p * 6, 8, dev)))
        (b / f"swift.mobilenet_v2.{dev}.b8.json").write_text(json.dumps(direct(p * 5.5, batch=8)))
    (b / "pomme.encoder.ane.b1.json").write_text(json.dumps(pomme_row(2.2)))
    (b / "swift.encoder.ane.b1.json").write_text(json.dumps(direct(2.0)))
    (b / "pomme-ort.mobilenet_v2.ane.b1.json").write_text(json.dumps(pomme_row(1.5)))
    (b / "ort-py.mobilenet_v2.ane.b1.json").write_text(json.dumps(direct(1.45, "ort-py")))
    (steps / "energy" / "idle.txt").write_text(IDLE)
    (steps / "energy" / "pomme.mobilenet_v2.ane.b1.txt").write_text(POWERMETRICS)
    o = steps / "outputs" / "mobilenet_v2"
    for dev, noise in (("cpu", 0.0), ("gpu", 1e-3), ("ane", 5e-3)):
        (o / f"pomme.{dev}").mkdir(parents=True)
        np.save(o / f"pomme.{dev}" / "logits.npy", logits + noise * rng.standard_normal(logits.shape).astype(np.float32))
    for d, noise in (("pomme-ort.cpu", 1e-4), ("pomme-ort.ane", 4e-3)):
        (o / d).mkdir()
        np.save(o / d / "logits.npy", logits + noise * rng.standard_normal(logits.shape).astype(np.float32))
    st = steps / "outputs" / "stateful"
    y_steps = np.stack([k * np.ones((1, 16), np.float32) for k in (1, 2, 3)])
    np.save(models / "stateful" / "ref" / "output.y_steps.npy", y_steps)
    (st / "served.ane").mkdir(parents=True)
    np.save(st / "served.ane" / "y_steps.npy", y_steps + 1e-3)
    (st / "served.gpu").mkdir(parents=True)
    np.save(st / "served.gpu" / "y_steps.npy", np.stack([y_steps[0]] * 3))  # the state did not carry
    ca = steps / "outputs" / "coreai_mlp"
    for d in ("pomme-coreai.cpu", "pomme-coreai.ane"):
        (ca / d).mkdir(parents=True)
        np.save(ca / d / "y.npy", np.arange(8, dtype=np.float32))
    fx = steps / "outputs" / "fixture_nn_dense"
    for dev, v in (("cpu", [0.2, 0.3, 0.5]), ("ane", [0.2, 0.3, 0.5]), ("gpu", [0.9, 0.05, 0.05])):
        (fx / f"pomme.{dev}").mkdir(parents=True)
        np.save(fx / f"pomme.{dev}" / "probs.npy", np.array(v, np.float32))
    (steps / "served" / "mobilenet_v2.json").write_text(json.dumps({
        "url": "http://127.0.0.1:18000", "model": "mobilenet_v2", "protocol": "http", "binary": False,
        "duration_s": 5.0, "warmup_s": 2.0, "rows": [
            {"concurrency": c, "batch": 1, "sent": 100 * c, "ok": 100 * c, "rejected": 0, "timed_out": 0, "errors": 0,
             "rps": 900.0 * min(c, 4), "p50_ms": 1.1 * c, "p90_ms": 1.3 * c, "p99_ms": 2.0 * c, "max_ms": 3.0 * c}
            for c in (1, 8, 32)]}))
    return out


def test_report_from_canned_steps(canned):
    rep, md = report.write(str(canned))
    assert (canned / "mac-report.json").exists() and (canned / "mac-report.md").exists()
    checks = {c["check"]: c for c in rep["checks"]}
    assert checks["placement mobilenet_v2"]["ok"] is True
    assert checks["placement encoder"]["ok"] is False  # 50% < 60%
    assert checks["overhead mobilenet_v2 ane b1"]["ok"] is True  # 1.02
    assert checks["overhead encoder ane b1"]["ok"] is False  # 1.10
    assert checks["outputs mobilenet_v2 pomme.cpu vs numpy fp32 reference"]["ok"] is True
    assert checks["outputs mobilenet_v2 pomme.ane vs pomme.cpu"]["ok"] is True
    assert checks["outputs mobilenet_v2 pomme-ort.cpu vs pomme.cpu"]["ok"] is True  # ONNX = mlpackage
    assert checks["outputs mobilenet_v2 pomme-ort.ane vs pomme-ort.cpu"]["ok"] is True
    assert checks["outputs coreai_mlp pomme-coreai.ane vs pomme-coreai.cpu"]["ok"] is True
    assert "outputs coreai_mlp pomme-coreai.cpu vs pomme.cpu" not in checks  # nothing to compare it with
    assert checks["outputs fixture_nn_dense pomme.ane vs pomme.cpu"]["ok"] is True
    assert checks["outputs stateful served.ane vs numpy fp32 reference"]["ok"] is True
    assert checks["outputs stateful served.gpu vs numpy fp32 reference"]["ok"] is False
    assert checks["outputs fixture_nn_dense pomme.gpu vs pomme.cpu"]["ok"] is False
    assert rep["passed"] is False and rep["verdict"] == "some checks FAILED"
    row = [r for r in rep["latency"] if r["model"] == "mobilenet_v2" and r["runner"] == "pomme"
           and r["device"] == "ane" and r["batch"] == 1][0]
    assert row["ratio_vs_swift"] == pytest.approx(1.02)
    assert row["ratio_vs_coremltools"] == pytest.approx(1.02 / 1.3)
    ort = [r for r in rep["latency"] if r["runner"] == "pomme-ort"][0]
    assert ort["ratio_vs_ort_py"] == pytest.approx(1.5 / 1.45)
    sp = [s for s in rep["speedup"] if s["runner"] == "pomme" and s["batch"] == 1 and s["model"] == "mobilenet_v2"][0]
    assert sp["ane_vs_cpu"] == pytest.approx(4.0) and sp["gpu_vs_cpu"] == pytest.approx(2.0)
    assert [r["concurrency"] for r in rep["served"]] == [1, 8, 32]
    e = rep["energy"][0]
    assert (e["model"], e["device"], e["runner"]) == ("mobilenet_v2", "ane", "pomme")
    assert e["mj_per_inference"] == pytest.approx(2150 / (1000 / 1.02))
    for heading in ("## Machine", "## Placement", "## Warm latency", "## Neural Engine and GPU speed-up",
                    "## Outputs against the CPU", "## Served", "## Energy", "## Steps"):
        assert heading in md
    assert "Apple M2" in md and "24B83" in md and "pomme backend coreml" in md
    assert "| mobilenet_v2 | 1 | ane | pomme | 1.020 |" in md
    assert "Ops of encoder planned off the Neural Engine" in md and "gather" in md
    assert json.loads((canned / "mac-report.json").read_text())["schema"] == "pomme-mac-report/1"


def test_write_exit_status(canned, capsys):
    assert report.main(["write", str(canned)]) == 1
    assert "some checks FAILED" in capsys.readouterr().out
    for f in ("placement/encoder.json", "bench/pomme.encoder.ane.b1.json"):
        os.remove(canned / "steps" / f)
    import shutil
    shutil.rmtree(canned / "steps" / "outputs" / "fixture_nn_dense" / "pomme.gpu")
    shutil.rmtree(canned / "steps" / "outputs" / "stateful" / "served.gpu")
    assert report.main(["write", str(canned)]) == 0


def test_empty_run_checks_nothing(tmp_path):
    rep, md = report.write(str(tmp_path))
    assert rep["verdict"] == "nothing checked" and "Not measured" in md


def test_a_failed_step_fails_the_report(canned):
    with open(canned / "steps" / "log.tsv", "a") as f:
        f.write("build\tfail\tcargo build failed\n")
    rep, _ = report.write(str(canned))
    assert {"check": "step build", "ok": False, "detail": "cargo build failed"} in rep["checks"]


def test_non_numeric_outputs(tmp_path):
    tol = {"max_norm_err": 0.05, "min_cosine": 0.998}
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    np.save(a, np.array([b"class_3"]))
    np.save(b, np.array([b"class_3"]))
    np.save(c, np.array([b"class_4"]))
    assert report.compare_files(a, b, tol)["ok"] is True
    assert report.compare_files(a, c, tol)["ok"] is False
    np.save(a, np.array(['{"class_0": 0.25, "class_1": 0.75}']))
    np.save(b, np.array(['{"class_0": 0.251, "class_1": 0.749}']))
    assert report.compare_files(a, b, tol)["ok"] is True
    np.save(c, np.array([{"x": 1}], dtype=object))  # pickled: not read, not compared
    assert report.compare_files(a, c, tol)["ok"] is None
