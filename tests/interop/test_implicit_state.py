"""Implicit state for an ONNX model (Triton's sequence batcher `state`)
through a real `pomme serve`, with tritonclient's sequence parameters over
HTTP and gRPC: the server carries `state_out` into `state_in` from one
request of a sequence to the next, sequences are independent, a restart
resets, the state tensors are neither asked for nor returned, more live
sequences than `max_sequences` get 429 / RESOURCE_EXHAUSTED."""
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, start_server, stop_server

PBTXT = """name: "acc"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  state [ { input_name: "state_in" output_name: "state_out" data_type: TYPE_FP32 dims: [ 4 ] } ]
}
parameters { key: "max_sequences" value { string_value: "2" } }
"""

TOML = """backends = ["tract"]
[sequence]
max_sequences = 2
idle_timeout = "1m"
[[sequence.state]]
input = "state_in"
output = "state_out"
dtype = "FP32"
dims = [4]
"""


def step(mod, client, name, v, seq, start=False, end=False):
    x = np.full((1, 4), v, dtype=np.float32)
    i = mod.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(x)
    r = client.infer(name, [i], sequence_id=seq, sequence_start=start, sequence_end=end)
    return float(r.as_numpy("y")[0, 0])


def test_implicit_state_is_carried_per_sequence(tmp_path):
    repo = tmp_path / "repo"
    for name, cfg, text in (("acc", "config.pbtxt", PBTXT), ("acc_toml", "config.toml", TOML)):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/accumulate.onnx", repo / name / "1/model.onnx")
        (repo / name / cfg).write_text(text)
    s = start_server(repo)
    try:
        http = httpclient.InferenceServerClient(s["http"])
        grpc = grpcclient.InferenceServerClient(s["grpc"])
        for name in ("acc", "acc_toml"):
            meta = http.get_model_metadata(name)
            assert [t["name"] for t in meta["inputs"]] == ["x"], meta
            assert [t["name"] for t in meta["outputs"]] == ["y"], meta
            assert step(httpclient, http, name, 1, 7, start=True) == 1
            assert step(grpcclient, grpc, name, 10, 8, start=True) == 10  # another sequence
            assert step(grpcclient, grpc, name, 2, 7) == 3
            assert step(httpclient, http, name, 5, 8) == 15
            # Two live sequences: a third is refused until one ends.
            with pytest.raises(InferenceServerException) as e:
                step(httpclient, http, name, 1, 9, start=True)
            assert "max_sequences" in str(e.value) and "429" in str(e.value.status()), e.value
            with pytest.raises(InferenceServerException) as e:
                step(grpcclient, grpc, name, 1, 9, start=True)
            assert "RESOURCE_EXHAUSTED" in str(e.value.status()), e.value
            assert step(httpclient, http, name, 3, 7, end=True) == 6
            assert step(httpclient, http, name, 1, 9, start=True, end=True) == 1
            # Ended: a further step is a 400 naming the fix; a restart resets.
            with pytest.raises(InferenceServerException) as e:
                step(httpclient, http, name, 1, 7)
            assert "sequence_start" in str(e.value)
            assert step(httpclient, http, name, 4, 7, start=True) == 4
            # Without sequence parameters: refused with the reason.
            x = httpclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            with pytest.raises(InferenceServerException) as e:
                http.infer(name, [x])
            assert "sequence" in str(e.value)
            step(httpclient, http, name, 0, 7, end=True)
            step(httpclient, http, name, 0, 8, end=True)
        assert "sequence_batching" in http.get_model_config("acc")
    finally:
        stop_server(s)
