"""tritonclient over TLS: a `pomme serve` with a self-signed certificate
(made with the openssl CLI) answers tritonclient http with ssl=True and grpc
with ssl=True + root_certificates, and refuses plaintext."""
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, start_server


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    repo = tmp / "repo"
    (repo / "identity" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/identity_f32.onnx", repo / "identity/1/model.onnx")
    (repo / "identity/config.toml").write_text('backends = ["tract"]\n')
    s = start_server(repo, "--tls-cert", str(cert), "--tls-key", str(key), tls_ca=cert)
    s["cert"] = cert
    yield s
    proc = s["proc"]
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def infer(mod, c):
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    inp = mod.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(c.infer("identity", [inp]).as_numpy("y"), x)


def test_tritonclient_http_ssl(tls_server):
    c = httpclient.InferenceServerClient(
        tls_server["http"], ssl=True, ssl_options={"ca_certs": str(tls_server["cert"])}
    )
    assert c.is_server_ready()
    infer(httpclient, c)
    plain = httpclient.InferenceServerClient(tls_server["http"], network_timeout=10)
    with pytest.raises(Exception):
        plain.is_server_live()


def test_tritonclient_grpc_ssl(tls_server):
    c = grpcclient.InferenceServerClient(
        tls_server["grpc"], ssl=True, root_certificates=str(tls_server["cert"])
    )
    assert c.is_server_live()
    infer(grpcclient, c)
    plain = grpcclient.InferenceServerClient(tls_server["grpc"])
    with pytest.raises(Exception):
        plain.is_server_live(client_timeout=10)
