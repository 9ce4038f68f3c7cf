"""Idle unload and the memory guard through a real `pomme serve`.

A model with `unload_after_idle` leaves memory once no request came for that
long: the index says why, a request is refused with the reason, or (with
`reload_on_request`) loads it again and is answered. A model the system's
available memory cannot hold (here: a reserve larger than any machine)
fails to load with the figures instead of the process being killed."""
import shutil
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, start_server, stop_server



def add_one(client, name):
    x = np.ones((1, 4), dtype=np.float32)
    i = httpclient.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(x)
    return client.infer(name, [i]).as_numpy("y")


def wait_until(cond, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_idle_models_unload_and_reload_on_request(tmp_path):
    repo = tmp_path / "repo"
    for name in ("lazy", "sleepy", "busy"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models/add_one.onnx", repo / name / "1/model.onnx")
    (repo / "lazy/config.toml").write_text('unload_after_idle = "300ms"\nreload_on_request = true\n')
    (repo / "sleepy/config.pbtxt").write_text(
        'name: "sleepy"\nparameters { key: "unload_after_idle" value { string_value: "300ms" } }\n'
    )
    s = start_server(repo)
    try:
        c = httpclient.InferenceServerClient(s["http"])
        for name in ("lazy", "sleepy", "busy"):
            assert np.array_equal(add_one(c, name), np.full((1, 4), 2, np.float32))

        def index():
            return {m["name"]: m for m in c.get_model_repository_index()}

        wait_until(lambda: index()["lazy"].get("state") == "UNAVAILABLE", "lazy to unload")
        wait_until(lambda: index()["sleepy"].get("state") == "UNAVAILABLE", "sleepy to unload")
        assert "unload_after_idle" in index()["sleepy"]["reason"]
        assert "the next request loads it" in index()["lazy"]["reason"]
        assert not c.is_model_ready("sleepy")
        assert c.is_model_ready("busy"), "a model without the setting stays"
        with pytest.raises(InferenceServerException) as e:
            add_one(c, "sleepy")
        assert "unloaded after 300ms without requests" in str(e.value)
        # reload_on_request: the request waits for the load and is answered.
        assert np.array_equal(add_one(c, "lazy"), np.full((1, 4), 2, np.float32))
        assert c.is_model_ready("lazy")
    finally:
        stop_server(s)


def test_memory_guard_refuses_a_load_with_the_figures(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/add_one.onnx", repo / "m/1/model.onnx")
    s = start_server(repo, "--memory-reserve-mb", str(1 << 40))
    try:
        c = httpclient.InferenceServerClient(s["http"])
        assert not c.is_model_ready("m")
        (row,) = c.get_model_repository_index()
        assert row["state"] == "UNAVAILABLE"
        assert "MiB of memory is available" in row["reason"], row
    finally:
        stop_server(s)
    s = start_server(repo, "--memory-reserve-mb", str(1 << 40), "--memory-guard", "false")
    try:
        assert httpclient.InferenceServerClient(s["http"]).is_model_ready("m")
    finally:
        stop_server(s)
