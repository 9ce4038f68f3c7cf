"""Served quantization for speed through a real `pomme serve`: a config.toml
with `precision = "int8"` and `[quantization] target = "speed"` is quantized
at load with the integer-kernel scheme for ONNX Runtime (static QDQ for a
convolutional model given calibration data, dynamic INT8 for an MLP), gated
on labelled validation data, cached and served; tritonclient's answers keep
the float model's accuracy. A target that contradicts an explicit scheme is a
load error naming both. Needs digits_cnn/digits_mlp from POMME_TEST_MODELS."""
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient

from conftest import ROOT, start_server, stop_server

MODELS = Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared" / "models"))


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def write(repo: Path, name: str, src: Path, quant: str | None) -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(src, repo / name / "1/model.onnx")
    cfg = 'backends = ["ort"]\nmax_batch_size = 512\n'
    if quant is not None:
        cfg += 'precision = "int8"\n[quantization]\n' + quant
    (repo / name / "config.toml").write_text(cfg)


def infer(client, model: str, x: np.ndarray, output: str) -> np.ndarray:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    res = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(output, binary_data=True)])
    return res.as_numpy(output)


def test_target_speed_is_quantized_with_integer_kernels_and_served(tmp_path):
    needed = [MODELS / f for f in ("digits_cnn.onnx", "digits_mlp.onnx", "digits_test.npz")]
    if not all(p.is_file() for p in needed):
        pytest.skip(f"SKIP: digits models not found under {MODELS} (POMME_TEST_MODELS)")
    d = np.load(MODELS / "digits_test.npz")
    x, y = d["X"].astype(np.float32), d["y"].astype(np.int64)
    data = tmp_path / "data"
    data.mkdir()
    # Calibrate on the first 150 rows, gate on the other 300 (with labels).
    np.savez(data / "cnn_cal.npz", input=x[:150].reshape(-1, 1, 8, 8))
    np.savez(data / "cnn_val.npz", input=x[150:].reshape(-1, 1, 8, 8), y=y[150:])
    np.savez(data / "mlp_val.npz", input=x[150:], y=y[150:])
    repo = tmp_path / "repo"
    cache = {m: tmp_path / f"cache-{m}" for m in ("cnn", "mlp")}
    write(repo, "cnn", MODELS / "digits_cnn.onnx", None)
    write(repo, "cnn_speed", MODELS / "digits_cnn.onnx",
          f'target = "speed"\ncalibration = "{data / "cnn_cal.npz"}"\nvalidation = "{data / "cnn_val.npz"}"\n'
          f'max_accuracy_drop = 1.0\ncache_dir = "{cache["cnn"]}"\n')
    write(repo, "mlp", MODELS / "digits_mlp.onnx", None)
    write(repo, "mlp_speed", MODELS / "digits_mlp.onnx",
          f'target = "speed"\nvalidation = "{data / "mlp_val.npz"}"\nmax_accuracy_drop = 1.0\n'
          f'cache_dir = "{cache["mlp"]}"\n')
    write(repo, "contradiction", MODELS / "digits_mlp.onnx", 'target = "speed"\nscheme = "int8"\n')
    s = start_server(repo)
    try:
        client = httpclient.InferenceServerClient(s["http"])
        for m in ("cnn", "cnn_speed", "mlp", "mlp_speed"):
            assert client.is_model_ready(m), m
        assert not client.is_model_ready("contradiction")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        reason = index["contradiction"]["reason"]
        assert "target" in reason and "scheme" in reason, reason

        # What the server quantized and serves: integer kernels, not weight-only.
        (cnn_file,) = cache["cnn"].glob("*.onnx")
        (mlp_file,) = cache["mlp"].glob("*.onnx")
        assert "int8-static" in cnn_file.name, cnn_file.name
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops(cnn_file)
        assert "int8-dynamic" in mlp_file.name, mlp_file.name
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops(mlp_file)

        # Served answers on all 450 test rows keep the float model's accuracy.
        xc = x.reshape(-1, 1, 8, 8)
        for float_name, speed_name, xs, out in (("cnn", "cnn_speed", xc, "output"),
                                                 ("mlp", "mlp_speed", x, "probabilities")):
            f = infer(client, float_name, xs, out).argmax(1)
            q = infer(client, speed_name, xs, out).argmax(1)
            facc, qacc = (f == y).mean() * 100, (q == y).mean() * 100
            assert facc - qacc <= 1.0, f"{speed_name}: accuracy {qacc:.2f} vs float {facc:.2f}"
            assert (f == q).mean() >= 0.97, f"{speed_name}: top-1 agreement {(f == q).mean():.3f}"
    finally:
        stop_server(s)
