"""Triton's response cache through a real `pomme serve`, checked with
tritonclient over HTTP and gRPC: a repeat is a cache hit (statistics and
Prometheus both count it), another input is a miss, the config shows the
cache, and a model without it never counts either."""
import shutil
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, start_server, stop_server


def test_response_cache_hits_and_misses(tmp_path):
    repo = tmp_path / "repo"
    for name in ("cached", "cached_toml", "plain"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/add_one.onnx", repo / name / "1/model.onnx")
    (repo / "cached/config.pbtxt").write_text(
        'name: "cached"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\nresponse_cache { enable: true }\n'
    )
    (repo / "cached_toml/config.toml").write_text('backends = ["tract"]\nresponse_cache = true\n')
    s = start_server(repo, "--response-cache-mb", "1")
    try:
        http = httpclient.InferenceServerClient(s["http"])
        grpc = grpcclient.InferenceServerClient(s["grpc"])

        def infer(mod, client, name, v):
            x = np.full((1, 4), v, dtype=np.float32)
            i = mod.InferInput("x", [1, 4], "FP32")
            i.set_data_from_numpy(x)
            out = client.infer(name, [i]).as_numpy("y")
            assert np.array_equal(out, x + 1)

        for name in ("cached", "cached_toml", "plain"):
            infer(httpclient, http, name, 1.0)  # miss
            infer(grpcclient, grpc, name, 1.0)  # hit (same bytes, other protocol)
            infer(httpclient, http, name, 1.0)  # hit
            infer(httpclient, http, name, 2.0)  # miss
        for name in ("cached", "cached_toml"):
            st = http.get_inference_statistics(name)["model_stats"][0]
            assert st["inference_stats"]["cache_hit"]["count"] == 2, st
            assert st["inference_stats"]["cache_miss"]["count"] == 2, st
            assert st["inference_stats"]["success"]["count"] == 4, st
            assert st["execution_count"] == 2, st
            g = grpc.get_inference_statistics(name, as_json=True)["model_stats"][0]
            assert int(g["inference_stats"]["cache_hit"]["count"]) == 2, g
            assert http.get_model_config(name)["response_cache"] == {"enable": True}
            assert grpc.get_model_config(name).config.response_cache.enable
        st = http.get_inference_statistics("plain")["model_stats"][0]
        assert st["inference_stats"]["cache_hit"]["count"] == 0
        assert st["execution_count"] == 4
        metrics = urllib.request.urlopen(f"http://{s['metrics']}/metrics").read().decode()
        assert 'pomme_cache_hits_total{model="cached",version="1"} 2' in metrics
        assert 'pomme_cache_misses_total{model="cached_toml",version="1"} 2' in metrics
        assert "pomme_cache_entries 4" in metrics
        assert "pomme_cache_budget_bytes 1048576" in metrics
    finally:
        stop_server(s)
