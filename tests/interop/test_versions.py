"""Model versions through Triton's official client: a Triton-style repository
whose config.pbtxt selects two of three versions (`version_policy`), served by
a real `pomme serve`; each selected version answers by `model_version`, the
others are not found, over HTTP and gRPC."""
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, start_server


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    repo = tmp_path_factory.mktemp("versions") / "repo"
    # Version 1 adds one to 4 floats; versions 2 and 3 copy 16.
    for v, model in [(1, "add_one.onnx"), (2, "identity_f32.onnx"), (3, "identity_f32.onnx")]:
        (repo / "vm" / str(v)).mkdir(parents=True)
        shutil.copy(ROOT / "models" / model, repo / "vm" / str(v) / "model.onnx")
    (repo / "vm/config.pbtxt").write_text(
        'name: "vm"\nbackend: "tract"\nversion_policy: { specific: { versions: [1, 2] } }\n'
    )
    s = start_server(repo)
    yield s
    proc = s["proc"]
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_versions_route(versioned, kind):
    mod = httpclient if kind == "http" else grpcclient
    c = mod.InferenceServerClient(versioned[kind])
    assert c.is_model_ready("vm", "1")
    assert c.is_model_ready("vm", "2")
    assert not c.is_model_ready("vm", "3")
    meta = c.get_model_metadata("vm")
    versions = meta["versions"] if kind == "http" else list(meta.versions)
    assert versions == ["1", "2"]

    def run(version, width):
        x = np.arange(width, dtype=np.float32).reshape(1, width)
        inp = mod.InferInput("x", [1, width], "FP32")
        inp.set_data_from_numpy(x)
        return x, c.infer("vm", [inp], model_version=version)

    x, r = run("1", 4)
    np.testing.assert_array_equal(r.as_numpy("y"), x + 1)
    x, r = run("2", 16)
    np.testing.assert_array_equal(r.as_numpy("y"), x)
    # No version: the newest selected one.
    x, r = run("", 16)
    np.testing.assert_array_equal(r.as_numpy("y"), x)
    for v in ["3", "7"]:
        with pytest.raises(InferenceServerException) as e:
            run(v, 16)
        assert "version" in str(e.value)
        if kind == "grpc":
            assert "NOT_FOUND" in str(e.value.status())
        else:
            assert e.value.status() == "404" or "404" in str(e.value.status())
