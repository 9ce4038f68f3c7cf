"""Triton's ensembles through a real `pomme serve`, checked with tritonclient:
a `platform: "ensemble"` config.pbtxt (and the same as `[[pipeline.step]]`
in config.toml) chains add_one twice (y = x + 2) over HTTP and gRPC; the
ensemble and each step count in statistics; a cycle is a load error."""
import shutil

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, start_server, stop_server

ENSEMBLE = """name: "plus_two"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    { model_name: "add_one" model_version: -1 input_map { key: "x" value: "IN" } output_map { key: "y" value: "MID" } },
    { model_name: "add_one_too" model_version: -1 input_map { key: "x" value: "MID" } output_map { key: "y" value: "OUT" } }
  ]
}
"""

TOML = """[[input]]
name = "IN"
dtype = "FP32"
dims = [-1, 4]
[[output]]
name = "OUT"
dtype = "FP32"
dims = [-1, 4]
[[pipeline.step]]
model = "add_one"
inputs = { x = "IN" }
outputs = { y = "MID" }
[[pipeline.step]]
model = "plus_two"
inputs = { IN = "MID" }
outputs = { OUT = "OUT" }
"""

CYCLE = """name: "loop"
platform: "ensemble"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "add_one" input_map { key: "x" value: "B" } output_map { key: "y" value: "A" } },
  { model_name: "add_one" input_map { key: "x" value: "A" } output_map { key: "y" value: "B" } },
  { model_name: "add_one" input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } }
] }
"""


def test_ensembles_chain_served_models(tmp_path):
    repo = tmp_path / "repo"
    for name in ("add_one", "add_one_too"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/add_one.onnx", repo / name / "1/model.onnx")
    for name, cfg, text in (
        ("plus_two", "config.pbtxt", ENSEMBLE),
        ("plus_three", "config.toml", TOML),  # a pipeline whose step is a pipeline
        ("loop", "config.pbtxt", CYCLE),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / cfg).write_text(text)
    s = start_server(repo)
    try:
        http = httpclient.InferenceServerClient(s["http"])
        grpc = grpcclient.InferenceServerClient(s["grpc"])
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for mod, client in ((httpclient, http), (grpcclient, grpc)):
            for name, plus in (("plus_two", 2), ("plus_three", 3)):
                i = mod.InferInput("IN", [2, 4], "FP32")
                i.set_data_from_numpy(x)
                out = client.infer(name, [i]).as_numpy("OUT")
                assert np.array_equal(out, x + plus), (name, out)
        assert http.is_model_ready("plus_two")
        meta = http.get_model_metadata("plus_two")
        assert [t["name"] for t in meta["inputs"]] == ["IN"], meta
        stats = {s["name"]: s for s in http.get_inference_statistics()["model_stats"]}
        assert stats["plus_two"]["inference_stats"]["success"]["count"] == 4  # 2 direct + 2 inside plus_three
        assert stats["plus_three"]["inference_stats"]["success"]["count"] == 2
        assert stats["add_one"]["inference_stats"]["success"]["count"] == 6
        assert stats["add_one_too"]["inference_stats"]["success"]["count"] == 4
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["loop"]["state"] == "UNAVAILABLE", index["loop"]
        assert "cycle" in index["loop"]["reason"], index["loop"]
    finally:
        stop_server(s)
