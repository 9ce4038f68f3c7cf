"""KServe's own Python SDK (the `kserve` package: InferenceRESTClient with
protocol v2, InferenceGRPCClient) against a real `pomme serve`: health (which
reads the Open Inference Protocol's JSON bodies), model readiness and
inference over REST and gRPC. Runs in .venv-kserve (scripts/setup.sh), whose
grpcio/protobuf differ from tritonclient's; elsewhere it skips, unless
POMME_REQUIRE_KSERVE=1."""
import asyncio
import os
import shutil
import signal

import numpy as np
import pytest

from conftest import ROOT, start_server

if os.environ.get("POMME_REQUIRE_KSERVE") == "1":
    import kserve  # noqa: F401  (fail, do not skip)
kserve = pytest.importorskip("kserve")
from kserve import (  # noqa: E402
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("kserve") / "repo"
    (repo / "add_one" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/add_one.onnx", repo / "add_one/1/model.onnx")
    (repo / "add_one/config.toml").write_text('backends = ["tract"]\nmax_batch_size = 8\n')
    s = start_server(repo)
    yield s
    s["proc"].send_signal(signal.SIGTERM)
    s["proc"].wait(timeout=30)


def request():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    i = InferInput(name="x", shape=[2, 4], datatype="FP32")
    i.set_data_from_numpy(x)
    return x, InferRequest(model_name="add_one", infer_inputs=[i])


def test_rest_v2(server):
    async def run():
        c = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        base = f"http://{server['http']}"
        try:
            assert await c.is_server_live(base) is True
            assert await c.is_server_ready(base) is True
            assert await c.is_model_ready(base, "add_one") is True
            x, req = request()
            r = await c.infer(base, req, model_name="add_one")
            np.testing.assert_array_equal(r.outputs[0].as_numpy(), x + 1)
        finally:
            await c.close()

    asyncio.run(run())


def test_grpc(server):
    async def run():
        c = InferenceGRPCClient(server["grpc"])
        try:
            assert await c.is_server_live() is True
            assert await c.is_server_ready() is True
            assert await c.is_model_ready("add_one") is True
            x, req = request()
            r = await c.infer(req)
            np.testing.assert_array_equal(r.outputs[0].as_numpy(), x + 1)
        finally:
            await c.close()

    asyncio.run(run())
