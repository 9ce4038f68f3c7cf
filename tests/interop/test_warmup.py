"""Triton's `model_warmup` through a real `pomme serve`: a config.pbtxt with
zero, random and file samples loads (ready only after the warm-up, whose
time is in the metrics); a sample that cannot run leaves the model
unavailable with the reason in the repository index; the same in config.toml."""
import shutil
import struct
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from conftest import ROOT, start_server, stop_server



def test_model_warmup_from_config(tmp_path):
    repo = tmp_path / "repo"
    for name in ("warm", "cold", "warm_toml"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/add_one.onnx", repo / name / "1/model.onnx")
    (repo / "warm/warmup").mkdir()
    (repo / "warm/warmup/x.bin").write_bytes(struct.pack("<4f", 1, 2, 3, 4))
    (repo / "warm/config.pbtxt").write_text(
        """name: "warm"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  { name: "zeros" batch_size: 8 count: 2
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } },
  { name: "random" batch_size: 1
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } } },
  { name: "file" batch_size: 4
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } } }
]
"""
    )
    # A sample whose shape the model cannot take: the load fails.
    (repo / "cold/config.pbtxt").write_text(
        """name: "cold"
platform: "onnxruntime_onnx"
max_batch_size: 8
model_warmup [ { name: "bad" batch_size: 1
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 5 ] zero_data: true } } } ]
"""
    )
    (repo / "warm_toml/config.toml").write_text(
        'backends = ["tract"]\nmax_batch_size = 4\n\n[[warmup]]\nname = "r"\nbatch_size = 4\ncount = 2\ninputs.x = { data = "random" }\n'
    )
    s = start_server(repo)
    try:
        client = httpclient.InferenceServerClient(s["http"])
        assert client.is_model_ready("warm")
        assert client.is_model_ready("warm_toml")
        assert not client.is_model_ready("cold")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["cold"]["state"] == "UNAVAILABLE"
        assert "model_warmup 'bad'" in index["cold"]["reason"], index["cold"]
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        i = httpclient.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(x)
        assert np.array_equal(client.infer("warm", [i]).as_numpy("y"), x + 1)
        metrics = urllib.request.urlopen(f"http://{s['metrics']}/metrics").read().decode()
        for name in ("warm", "warm_toml"):
            line = [
                ln for ln in metrics.splitlines()
                if ln.startswith(f'pomme_model_warmup_duration_seconds{{model="{name}"')
            ]
            assert line and float(line[0].split()[-1]) > 0, (name, line)
    finally:
        stop_server(s)
