"""Core AI models served by a real `pomme serve`, through Apple's Linux
runtime (coreai-core in this venv), called with Triton's official clients:
metadata, HTTP and gRPC inference against ONNX Runtime on the source ONNX,
INT64 ids narrowed (and refused out of range), fp16, a b1/b8 function
family, state across a sequence, and an engine killed mid-service coming
back. Needs coreai-core; CI installs it (scripts/setup.sh)."""
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, start_server

coreai = pytest.importorskip("coreai.runtime")
ort = pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

FIX = ROOT / "models/coreai"


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    for name, config in [
        ("mlp", 'max_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = 500\n'),
        ("encoder", ""),
        ("fp16", ""),
        ("two_function", "max_batch_size = 16\n"),
        ("accumulator", ""),
        ("b1_only", '[extra]\nfunction = "b1"\n'),
    ]:
        src = FIX / ("two_function.aimodel" if name == "b1_only" else f"{name}.aimodel")
        (repo / name / "1").mkdir(parents=True)
        shutil.copytree(src, repo / name / "1" / "model.aimodel")
        (repo / name / "config.toml").write_text(config)
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coreai")
    s = start_server(
        make_repo(tmp),
        "--cache-dir", str(tmp / "cache"),
        "--coreai-python", sys.executable,
    )
    yield s
    s["proc"].send_signal(signal.SIGTERM)
    s["proc"].wait(timeout=30)


def reference(onnx_name, feeds):
    sess = ort.InferenceSession(str(FIX / onnx_name), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_metadata_shows_the_runtime_signature(server):
    c = httpclient.InferenceServerClient(server["http"])
    md = c.get_model_metadata("encoder")
    assert md["platform"] or True
    (inp,) = md["inputs"]
    assert inp["name"] == "input_ids" and inp["datatype"] == "INT32"
    assert inp["shape"] == [-1, -1]
    md = c.get_model_metadata("two_function")
    assert md["inputs"][0]["shape"] == [-1, 4]
    md = c.get_model_metadata("b1_only")
    assert md["inputs"][0]["shape"] == [1, 4]


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_mlp_matches_onnx_runtime(server, proto):
    client = (httpclient if proto == "http" else grpcclient)
    c = client.InferenceServerClient(server[proto])
    x = np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)
    i = client.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    y = c.infer("mlp", [i]).as_numpy("y")
    (want,) = reference("mlp.onnx", {"x": x})
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["INT64", "INT32"])
def test_encoder_takes_int64_ids_narrowed(server, dtype):
    c = grpcclient.InferenceServerClient(server["grpc"])
    ids = np.array([[1, 5, 7, 9], [3, 2, 0, 99]], dtype=np.int64)
    i = grpcclient.InferInput("input_ids", list(ids.shape), dtype)
    i.set_data_from_numpy(ids.astype(np.int64 if dtype == "INT64" else np.int32))
    got = c.infer("encoder", [i]).as_numpy("embedding")
    (want,) = reference("encoder.onnx", {"input_ids": ids})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_out_of_range_int64_is_a_400(server):
    c = httpclient.InferenceServerClient(server["http"])
    ids = np.array([[1, 2**40]], dtype=np.int64)
    i = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
    i.set_data_from_numpy(ids)
    with pytest.raises(InferenceServerException) as e:
        c.infer("encoder", [i])
    assert "outside INT32's range" in str(e.value)
    assert e.value.status() in ("400", 400, None) or "400" in str(e.value.status())


def test_fp16_end_to_end(server):
    c = httpclient.InferenceServerClient(server["http"])
    x = np.array([[0.5, -1.25, 3.0, 8.0]], dtype=np.float16)
    i = httpclient.InferInput("x", [1, 4], "FP16")
    i.set_data_from_numpy(x)
    y = c.infer("fp16", [i]).as_numpy("y")
    assert y.dtype == np.float16
    (want,) = reference("fp16.onnx", {"x": x})
    np.testing.assert_array_equal(y, want)


def test_function_family_serves_any_batch(server):
    c = grpcclient.InferenceServerClient(server["grpc"])
    for rows in (1, 5, 8, 13):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        i = grpcclient.InferInput("x", [rows, 4], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_array_equal(c.infer("two_function", [i]).as_numpy("y"), 2 * x + 1)


def test_stateful_model_config_has_a_sequence_batcher(server):
    cfg = httpclient.InferenceServerClient(server["http"]).get_model_config("accumulator")
    assert "sequence_batching" in cfg, cfg
    assert "sequence_batching" not in httpclient.InferenceServerClient(server["http"]).get_model_config("mlp")
    g = grpcclient.InferenceServerClient(server["grpc"]).get_model_config("accumulator")
    assert g.config.HasField("sequence_batching"), g


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_state_follows_the_sequence(server, proto):
    client = (httpclient if proto == "http" else grpcclient)
    c = client.InferenceServerClient(server[proto])

    def step(seq, v, start=False, end=False):
        i = client.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(np.full((1, 4), v, np.float32))
        r = c.infer("accumulator", [i], sequence_id=seq, sequence_start=start, sequence_end=end)
        return float(r.as_numpy("y")[0, 0])

    base = 100 if proto == "http" else 200
    assert step(base + 1, 1.0, start=True) == 1.0
    assert step(base + 2, 10.0, start=True) == 10.0
    assert step(base + 1, 2.0) == 3.0
    assert step(base + 2, 1.0, end=True) == 11.0
    assert step(base + 1, 3.0, end=True) == 6.0
    with pytest.raises(InferenceServerException):
        i = client.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(np.ones((1, 4), np.float32))
        c.infer("accumulator", [i])  # no sequence_id


def engine_pids(server_pid):
    """The server's Core AI engine processes (python children)."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(p) for p in children)
    return [p for p in pids if "python" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]


def test_a_killed_engine_is_restarted(server):
    c = httpclient.InferenceServerClient(server["http"])
    x = np.ones((1, 32), np.float32)

    def call():
        i = httpclient.InferInput("x", [1, 32], "FP32")
        i.set_data_from_numpy(x)
        return c.infer("mlp", [i]).as_numpy("y")

    before = call()
    pids = engine_pids(server["proc"].pid)
    assert pids, "no engine processes found"
    for p in pids:
        os.kill(p, signal.SIGKILL)
    # Dead engines are replaced (and a call that met one retried): no error.
    np.testing.assert_array_equal(call(), before)
    assert server["proc"].poll() is None
    assert c.is_server_live() and c.is_model_ready("mlp")
    after = engine_pids(server["proc"].pid)
    assert not set(after) & set(pids)
