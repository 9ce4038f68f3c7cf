#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/ from the
repository's fixtures (models/, models/coreml/) plus hand-written protocol
examples. gRPC seeds need tritonclient (the test venv): run with
`.venv/bin/python fuzz/make_seeds.py` from the repository root."""

import json
import os
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# ONNX: the shipped models, good and bad.
for p in sorted((ROOT / "models").glob("*.onnx")) + sorted((ROOT / "models/bad").glob("*.onnx")):
    put("onnx_tract", p.parent.name + "_" + p.name, p.read_bytes())

# Core ML: .mlmodel files and the spec inside each .mlpackage.
for p in sorted((ROOT / "models/coreml").glob("*.mlmodel")):
    put("coreml_mlmodel", p.name, p.read_bytes())
for pkg in sorted((ROOT / "models/coreml").glob("*.mlpackage")):
    spec = (pkg / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
    manifest = (pkg / "Manifest.json").read_bytes()
    put("coreml_mlmodel", pkg.stem + "_spec.mlmodel", spec)
    put("coreml_package", pkg.stem, struct.pack("<H", len(manifest)) + manifest + spec)

# HTTP infer bodies: byte 0 = header flag, bytes 1..3 = JSON length (u16 LE).
def http(name, obj, binary=b""):
    j = json.dumps(obj).encode()
    flag = 1 if binary else 0
    put("http_infer", name, bytes([flag]) + struct.pack("<H", len(j)) + j + binary)

http("f32_json", {"id": "1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]})
http("nested", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
http("data_first", {"inputs": [{"data": [1, 2, 3], "name": "x", "shape": [3], "datatype": "INT64"}]})
http("bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}]})
http("bool_fp16", {"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
                              {"name": "h", "datatype": "FP16", "shape": [1], "data": [0.5]}]})
http("params", {"parameters": {"priority": 1, "timeout": 1000000, "binary_data_output": True},
                "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [-3]}]})
http("binary_f32", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]},
     struct.pack("<4f", 1, 2, 3, 4))
http("binary_bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}]},
     struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")

# gRPC ModelInferRequest messages.
try:
    from tritonclient.grpc import service_pb2 as pb
except ImportError:
    pb = None
    print("make_seeds: tritonclient not importable; gRPC seeds not written")
if pb is not None:
    r = pb.ModelInferRequest(model_name="add_one", model_version="1", id="a")
    t = r.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    r.outputs.add(name="y")
    put("grpc_infer", "typed_f32", r.SerializeToString())
    r = pb.ModelInferRequest(model_name="add_one")
    r.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    r.raw_input_contents.append(struct.pack("<4f", 1, 2, 3, 4))
    r.parameters["priority"].uint64_param = 1
    r.parameters["timeout"].int64_param = 1000
    put("grpc_infer", "raw_f32", r.SerializeToString())
    r = pb.ModelInferRequest(model_name="s")
    r.inputs.add(name="s", datatype="BYTES", shape=[2])
    r.raw_input_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")
    put("grpc_infer", "raw_bytes", r.SerializeToString())
    r = pb.ModelInferRequest(model_name="s")
    t = r.inputs.add(name="s", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"ab", b"c"])
    t = r.inputs.add(name="i", datatype="INT32", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    t = r.inputs.add(name="b", datatype="BOOL", shape=[1])
    t.contents.bool_contents.extend([True])
    t = r.inputs.add(name="u", datatype="UINT64", shape=[1])
    t.contents.uint64_contents.extend([7])
    put("grpc_infer", "typed_mixed", r.SerializeToString())

# Model configs: byte 0 = 1 for config.toml, 0 for config.pbtxt (model named "m").
put("model_config", "toml_batching", b"\x01" + b'backends = ["tract"]\nmax_batch_size = 8\nworkers = 2\n'
    b'[dynamic_batching]\nmax_queue_delay_us = 100\npreferred_batch_sizes = [4]\n')
put("model_config", "toml_empty", b"\x01")
put("model_config", "pbtxt_triton", b"\x00" + b'''name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [1000] } ]
dynamic_batching { preferred_batch_size: [8, 16] max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 } priority_levels: 3 default_priority_level: 2 }
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } }
# a comment
parameters { key: "k" value: { string_value: "v\\n\\x41" } }
''')
put("model_config", "pbtxt_min", b'\x00name: "m"\nbackend: "tract"\nmax_batch_size: 0\n')

# Server configs (pomme.toml).
put("server_config", "full", '''http_port = 9000
grpc_port = 9001
metrics_port = 9002
host = "127.0.0.1"
model_control_mode = "explicit"
load_model = ["a"]
shutdown_grace = "5s"
default_timeout = "250ms"
max_concurrency = 4
[limits]
max_json_depth = 10
max_body_bytes = 1048576
''')
put("server_config", "empty", "")
print("seeds written to", SEEDS)
