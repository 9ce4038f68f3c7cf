"""Starts a real `pomme serve` on free loopback ports over a model repository
built from the models shipped in the repo (one with config.toml, one with a
Triton config.pbtxt, one BYTES model)."""
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / "add_one" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/add_one.onnx", repo / "add_one/1/model.onnx")
    (repo / "add_one/config.toml").write_text(
        'backends = ["tract"]\nmax_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = 500\n'
    )
    # A Triton-style model directory, served as it is.
    (repo / "identity" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/identity_f32.onnx", repo / "identity/1/model.onnx")
    (repo / "identity/config.pbtxt").write_text(
        """name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
    )
    (repo / "strings" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/identity_bytes.onnx", repo / "strings/1/model.onnx")
    (repo / "strings/config.toml").write_text('backends = ["tract"]\n')
    return repo


def start_server(repo: Path, *extra: str, tls_ca: Path | None = None) -> dict:
    """Starts `pomme serve` over `repo` on free loopback ports and waits until
    it is ready; returns the addresses and the process. With `tls_ca` (the
    server was given `--tls-cert`/`--tls-key`) readiness is asked over HTTPS
    trusting that certificate."""
    binary = os.environ.get("POMME_BIN", str(ROOT / "target/debug/pomme"))
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    scheme, context = "http", None
    if tls_ca is not None:
        scheme, context = "https", ssl.create_default_context(cafile=str(tls_ca))
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("pomme serve exited: " + proc.stdout.read())
        try:
            url = f"{scheme}://127.0.0.1:{http}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("pomme serve not ready within 60 s")
        time.sleep(0.05)
    return {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "metrics": f"127.0.0.1:{metrics}", "proc": proc}


def stop_server(s: dict) -> None:
    """Stops a server from `start_server` (SIGTERM, then SIGKILL after 30 s)."""
    s["proc"].terminate()
    try:
        s["proc"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        s["proc"].kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("pomme"))
    s = start_server(repo, "--model-control-mode", "explicit", "--load-model", "add_one,identity,strings")
    yield s
    proc = s["proc"]
    proc.terminate()
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, f"pomme serve exited {code} on SIGTERM"
