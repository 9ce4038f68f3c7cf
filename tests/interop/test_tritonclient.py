"""Triton's official Python client (tritonclient, from PyPI) against a real
`pomme serve`, over HTTP and gRPC."""
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def http(server):
    return httpclient.InferenceServerClient(server["http"])


@pytest.fixture(scope="module")
def grpc(server):
    return grpcclient.InferenceServerClient(server["grpc"])


@pytest.fixture(params=["http", "grpc"])
def client(request, http, grpc):
    return (request.param, httpclient if request.param == "http" else grpcclient,
            http if request.param == "http" else grpc)


def test_health(client):
    _, _, c = client
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("add_one")
    assert not c.is_model_ready("no_such_model")


def test_metadata(client):
    kind, _, c = client
    meta = c.get_server_metadata()
    name = meta["name"] if kind == "http" else meta.name
    assert name == "pomme"
    m = c.get_model_metadata("add_one")
    if kind == "http":
        assert m["inputs"][0]["name"] == "x"
        assert m["inputs"][0]["datatype"] == "FP32"
        assert m["inputs"][0]["shape"] == [-1, 4]
    else:
        assert m.inputs[0].name == "x"
        assert m.inputs[0].datatype == "FP32"
        assert list(m.inputs[0].shape) == [-1, 4]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_fp32(client, binary):
    kind, mod, c = client
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = mod.InferInput("x", [2, 4], "FP32")
    if kind == "http":
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [mod.InferRequestedOutput("y", binary_data=binary)]
    else:
        inp.set_data_from_numpy(x)
        out = [mod.InferRequestedOutput("y")]
    r = c.infer("add_one", [inp], outputs=out)
    np.testing.assert_array_equal(r.as_numpy("y"), x + 1)


def test_triton_pbtxt_model(client):
    kind, mod, c = client
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    inp = mod.InferInput("x", [3, 16], "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer("identity", [inp])
    np.testing.assert_array_equal(r.as_numpy("y"), x)


def test_bytes(client):
    kind, mod, c = client
    s = np.array([[b"pomme", b""], [b"\xc3\xa9t\xc3\xa9", b"hello world"]], dtype=np.object_)
    inp = mod.InferInput("s", [2, 2], "BYTES")
    inp.set_data_from_numpy(s)
    r = c.infer("strings", [inp])
    got = r.as_numpy("t")
    assert got.shape == (2, 2)
    assert [bytes(v) for v in got.ravel()] == [bytes(v) for v in s.ravel()]


def test_unknown_model_and_bad_shape(client):
    kind, mod, c = client
    x = np.zeros((1, 5), dtype=np.float32)
    inp = mod.InferInput("x", [1, 5], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        c.infer("no_such_model", [inp])
    assert "no_such_model" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        c.infer("add_one", [inp])
    assert "shape" in str(e.value)
    # The server still serves.
    ok = mod.InferInput("x", [1, 4], "FP32")
    ok.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    assert c.infer("add_one", [ok]).as_numpy("y")[0, 0] == 2.0


def test_statistics(client):
    kind, mod, c = client
    x = mod.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    c.infer("add_one", [x])
    stats = c.get_inference_statistics("add_one")
    if kind == "http":
        s = stats["model_stats"][0]
        assert s["name"] == "add_one"
        assert int(s["inference_count"]) >= 1
        assert int(s["inference_stats"]["success"]["count"]) >= 1
    else:
        s = stats.model_stats[0]
        assert s.name == "add_one"
        assert s.inference_count >= 1
        assert s.inference_stats.success.count >= 1


def test_repository_load_unload(client):
    kind, mod, c = client
    index = c.get_model_repository_index()
    names = {m["name"] for m in index} if kind == "http" else {m.name for m in index.models}
    assert {"add_one", "identity", "strings"} <= names
    c.unload_model("identity")
    assert not c.is_model_ready("identity")
    c.load_model("identity")
    assert c.is_model_ready("identity")


def test_metrics_endpoint(server):
    with urllib.request.urlopen(f"http://{server['metrics']}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "pomme_request_success_total" in text
    assert "pomme_inference_count_total" in text
