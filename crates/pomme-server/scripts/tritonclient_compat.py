"""Stock tritonclient (HTTP and gRPC) against a running pomme server serving
the `add_one` fixture (y = x + 1, x: f32[batch, 4]).

    cargo run -p pomme-server --example serve_repo -- --model-repository REPO \
        --http-port 18000 --grpc-port 18001 --metrics-port 18002 &
    python crates/pomme-server/scripts/tritonclient_compat.py 18000 18001
"""
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_port, grpc_port = sys.argv[1], sys.argv[2]
x = np.arange(8, dtype=np.float32).reshape(2, 4)
want = x + 1
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


h = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
check(h.is_server_live(), "http live")
check(h.is_server_ready(), "http ready")
check(h.is_model_ready("add_one"), "http model ready")
meta = h.get_model_metadata("add_one")
check(meta["inputs"][0]["shape"] == [-1, 4], f"http metadata {meta}")
check(h.get_server_metadata()["name"] == "pomme", "server metadata")
for binary in (True, False):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    r = h.infer("add_one", [inp], outputs=[out], request_id="abc")
    check(np.array_equal(r.as_numpy("y"), want), f"http infer binary={binary}")
    check(r.get_response()["id"] == "abc", "http id echoed")
cfg = h.get_model_config("add_one")
check(cfg["name"] == "add_one", f"http config {cfg}")
stats = h.get_inference_statistics("add_one")
check(stats["model_stats"][0]["inference_count"] >= 2, f"http stats {stats}")
try:
    h.infer("nope", [inp])
    check(False, "unknown model must fail")
except Exception as e:  # InferenceServerException
    check("nope" in str(e), f"http error message {e}")

g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
check(g.is_server_live(), "grpc live")
check(g.is_server_ready(), "grpc ready")
check(g.is_model_ready("add_one"), "grpc model ready")
check(list(g.get_model_metadata("add_one").inputs[0].shape) == [-1, 4], "grpc metadata")
ginp = grpcclient.InferInput("x", list(x.shape), "FP32")
ginp.set_data_from_numpy(x)
r = g.infer("add_one", [ginp], outputs=[grpcclient.InferRequestedOutput("y")])
check(np.array_equal(r.as_numpy("y"), want), "grpc infer")
check(g.get_model_config("add_one").config.max_batch_size >= 0, "grpc config")
check(len(g.get_inference_statistics("add_one").model_stats) == 1, "grpc stats")
check(any(m.name == "add_one" for m in g.get_model_repository_index().models), "grpc index")

results = queue.Queue()
g.start_stream(callback=lambda result, error: results.put((result, error)))
for i in range(3):
    g.async_stream_infer("add_one", [ginp], request_id=str(i))
for _ in range(3):
    result, error = results.get(timeout=10)
    check(error is None and np.array_equal(result.as_numpy("y"), want), f"grpc stream {error}")
g.stop_stream()
print(f"{checks} passed, 0 failed")
