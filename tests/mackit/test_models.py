"""make_models.py: the Core ML and ONNX versions compute the numpy reference's function."""
import json
import math
import os

import numpy as np
import pytest

import make_models as mm
import report

BENCHED = ["mobilenet_v2", "resnet50", "encoder"]


def manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return {e["name"]: e for e in json.load(f)["models"]}


def test_manifest_lists_every_model_with_its_policy(small_models):
    m = manifest(small_models)
    assert sorted(m) == sorted(mm.NAMES)
    assert m["mobilenet_v2"]["min_ane_share"] == 0.8
    assert m["resnet50"]["min_ane_share"] == 0.8
    assert m["stateful"]["min_ane_share"] is None
    for name, e in m.items():
        assert os.path.isdir(os.path.join(small_models, name, e["mlpackage"]))
        assert (e["onnx"] is not None) == (name in BENCHED)
        assert e["bench"] == (name in BENCHED)
        for f in list(e["reference"]["inputs"].values()) + list(e["reference"]["outputs"].values()):
            assert os.path.exists(os.path.join(small_models, name, f))


@pytest.mark.parametrize("name", BENCHED)
def test_onnx_runs_in_onnxruntime_and_matches_numpy(small_models, name):
    import onnxruntime as ort

    e = manifest(small_models)[name]
    d = os.path.join(small_models, name)
    sess = ort.InferenceSession(os.path.join(d, e["onnx"]), providers=["CPUExecutionProvider"])
    feeds = {k: np.load(os.path.join(d, v)) for k, v in e["reference"]["inputs"].items()}
    for out, got in zip(sess.get_outputs(), sess.run(None, feeds)):
        ref = np.load(os.path.join(d, e["reference"]["outputs"][out.name]))
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))
        assert float(np.abs(ref).std()) > 1e-2, "outputs of order one, not vanishing"
    # The batch dimension is dynamic: three rows give three copies of the answer.
    three = {k: np.concatenate([v] * 3) for k, v in feeds.items()}
    got3 = sess.run(None, three)[0]
    np.testing.assert_allclose(got3[2], got3[0], rtol=1e-6, atol=1e-6)


def spec_of(path):
    import coremltools as ct

    return ct.models.MLModel(path, skip_model_load=True).get_spec()


def program_ops(spec):
    ops = {}

    def walk(block):
        for op in block.operations:
            ops[op.type] = ops.get(op.type, 0) + 1
            for b in op.blocks:
                walk(b)

    for f in spec.mlProgram.functions.values():
        walk(f.block_specializations[f.opset])
    return ops


@pytest.mark.parametrize("name", BENCHED)
def test_coreml_is_an_fp16_ml_program_with_the_onnx_structure(small_models, name):
    import onnx

    e = manifest(small_models)[name]
    d = os.path.join(small_models, name)
    spec = spec_of(os.path.join(d, e["mlpackage"]))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion >= 7  # macOS 13
    assert [i.name for i in spec.description.input] == [i["name"] for i in e["inputs"]]
    assert [tuple(i.type.multiArrayType.shape) for i in spec.description.input] == \
        [tuple(i["shape"]) for i in e["inputs"]]
    assert [o.name for o in spec.description.output] == [o["name"] for o in e["outputs"]]
    ops = program_ops(spec)
    # fp16 compute: the float32 inputs are cast to float16 inside the program.
    assert ops.get("cast", 0) >= 1, ops
    weights = [t for t in os.listdir(os.path.join(d, e["mlpackage"], "Data", "com.apple.CoreML", "weights"))]
    assert weights
    onnx_ops = {}
    for n in onnx.load(os.path.join(d, e["onnx"])).graph.node:
        onnx_ops[n.op_type] = onnx_ops.get(n.op_type, 0) + 1
    if name != "encoder":
        assert ops["conv"] == onnx_ops["Conv"]
    else:
        assert ops["layer_norm"] == onnx_ops["LayerNormalization"]
        assert ops["softmax"] == onnx_ops["Softmax"]
        assert spec.description.input[0].type.multiArrayType.dataType == 131104  # INT32


def test_image_classifier_has_an_image_input_and_a_classifier_output(small_models):
    e = manifest(small_models)["image_classifier"]
    spec = spec_of(os.path.join(small_models, "image_classifier", e["mlpackage"]))
    inp = spec.description.input[0]
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    assert inp.type.imageType.width == e["config"]["res"]
    assert spec.description.predictedFeatureName == "classLabel"
    # The reference input is what pomme takes for an image (its signature: U8 height x width x 3).
    res = e["config"]["res"]
    assert e["inputs"] == [{"name": "image", "shape": [res, res, 3], "dtype": "U8",
                            "kind": "RGB image (height x width x 3, uint8), as pomme takes it"}]
    assert e["npy_outputs"] is False
    assert report.manifest_field(os.path.join(small_models, "manifest.json"), "npy-outputs", "image_classifier") == "no"
    assert {o.name for o in spec.description.output} == {"classLabel", "classLabel_probs"}


def test_stateful_model_has_a_state(small_models):
    e = manifest(small_models)["stateful"]
    spec = spec_of(os.path.join(small_models, "stateful", e["mlpackage"]))
    assert spec.specificationVersion >= 9  # macOS 15: states
    assert [s.name for s in spec.description.state] == ["acc"]
    ops = program_ops(spec)
    assert ops.get("read_state", 0) >= 1 and (ops.get("write_state", 0) + ops.get("coreml_update_state", 0)) == 1, ops
    steps = np.load(os.path.join(small_models, "stateful", "ref", "output.y_steps.npy"))
    np.testing.assert_allclose(steps[1], 2 * steps[0], rtol=1e-6)


class F16(mm.Numpy):
    """The numpy network with every op's inputs and outputs rounded to float16."""


def _round(x):
    return x.astype(np.float16).astype(np.float32) if isinstance(x, np.ndarray) and x.dtype == np.float32 else x


for _name in [n for n in dir(mm.Numpy) if not n.startswith("_")]:
    def _wrap(orig):
        def f(self, *a, **kw):
            return _round(orig(self, *[_round(x) for x in a], **kw))
        return f
    setattr(F16, _name, _wrap(getattr(mm.Numpy, _name)))


@pytest.mark.parametrize("name", BENCHED)
def test_fp16_tolerance_admits_fp16_rounding_and_refuses_another_network(name):
    cfg = mm.SMALL[name]
    inputs = mm.ref_inputs(name, cfg)
    ref = mm.forward(name, mm.Numpy(), mm.Params(), inputs, cfg)
    half = mm.forward(name, F16(), mm.Params(), inputs, cfg)
    other = mm.forward(name, mm.Numpy(), mm.Params(seed=1), inputs, cfg)
    tol = mm.POLICY[name]["tolerance"]
    for k in ref:
        assert report.compare(ref[k], half[k], tol)["ok"], k
        assert not report.compare(ref[k], other[k], tol)["ok"], k


class Shapes:
    """Shapes only, so the full-size networks can be counted without computing them."""

    def conv(self, x, w, b, stride=1, pad=0, groups=1, name=None):
        n, _, h, wd = x
        k = w.shape[2]
        return (n, w.shape[0], (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1)

    def relu(self, x, name=None):
        return x

    relu6 = gelu = softmax = relu

    def add(self, a, b, name=None):
        return a

    def mul(self, a, s, name=None):
        return a

    def max_pool(self, x, name=None):
        return (x[0], x[1], (x[2] - 1) // 2 + 1, (x[3] - 1) // 2 + 1)

    def global_pool(self, x, name=None):
        return x[:2]

    def linear(self, x, w, b, name=None):
        return tuple(x[:-1]) + (w.shape[0],)

    def embed(self, ids, table, name=None):
        return tuple(ids) + (table.shape[1],)

    def layer_norm(self, x, g, b, eps=1e-5, name=None):
        return x

    def reshape(self, x, shape, name=None):
        return tuple(x[0] if d == -1 else d for d in shape)

    def transpose(self, x, perm, name=None):
        return tuple(x[p] for p in perm)

    def matmul(self, a, b, transpose_b=False, name=None):
        return tuple(a[:-1]) + ((b[-2],) if transpose_b else (b[-1],))

    def mean_tokens(self, x, name=None):
        return (x[0], x[2])


class ZeroParams(mm.Params):
    def normal(self, name, shape, std):
        key = (name, tuple(shape))
        self.cache.setdefault(key, np.zeros(shape, np.float32))
        return self.cache[key]


@pytest.mark.parametrize("name,params,out", [
    ("mobilenet_v2", 3.47e6, (1, 1000)),  # torchvision's 3.50 M less its batch norms
    ("resnet50", 25.5e6, (1, 1000)),  # torchvision's 25.56 M less its batch norms
    ("encoder", 22.4e6, (1, 384)),  # all-MiniLM-L6-v2: 22.7 M with token types and pooler
])
def test_full_size_models_are_realistic(name, params, out):
    cfg = mm.FULL[name]
    p = ZeroParams()
    shapes = {k: v.shape for k, v in mm.ref_inputs(name, cfg).items()}
    result = mm.forward(name, Shapes(), p, shapes, cfg)
    assert tuple(list(result.values())[-1]) == out
    assert math.isclose(mm.param_count(p), params, rel_tol=0.01), mm.param_count(p)


def test_the_kits_manifest_questions(small_models):
    import subprocess
    import sys

    mf = os.path.join(small_models, "manifest.json")
    assert report.manifest_field(mf, "min", "mobilenet_v2") == "0.8"
    assert report.manifest_field(mf, "min", "stateful") == "-"
    assert report.manifest_field(mf, "bench", "encoder") == "yes"
    assert report.manifest_field(mf, "bench", "image_classifier") == "no"
    assert report.manifest_field(mf, "onnx", "stateful") == ""
    assert report.manifest_field(mf, "onnx", "resnet50").endswith("resnet50/model.onnx")
    assert report.manifest_field(mf, "spec", "encoder") == "--spec input_ids=1,8:int32"
    words = report.manifest_field(mf, "ref-inputs", "mobilenet_v2").split()
    assert words[0] == "--input" and words[1].startswith("image=") and os.path.exists(words[1][len("image="):])
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(report.__file__), "report.py"), "field", mf,
                        "spec", "mobilenet_v2"], capture_output=True, text=True)
    assert r.stdout.strip() == "--spec image=1,3,32,32:float32"
