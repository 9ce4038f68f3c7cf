#!/usr/bin/env python3
"""Writes the small Core ML fixtures in models/coreml/ and expected.json.

Needs coremltools 9.0 and numpy, no torch (works on Linux: models are built
with coremltools' MIL builder and NeuralNetworkBuilder, never loaded):

    python3 -m venv /tmp/ctvenv && /tmp/ctvenv/bin/pip install coremltools==9.0 numpy
    /tmp/ctvenv/bin/python scripts/make_coreml_fixtures.py

Fixtures (each a few KB):
  nn_dense.mlmodel        neuralNetwork: innerProduct(4->3) + relu + softmax, FLOAT32 in/out
  mlp_program.mlpackage   mlProgram: linear(8->16) + relu + linear(16->4), fp16 weights in weight.bin
  enumerated.mlpackage    mlProgram, input with enumerated shapes [1,3,8,8] / [2,3,8,8] / [4,3,8,8]
  range.mlpackage         mlProgram, input with range shape [1..8, 3, 4..64]
  pipeline.mlmodel        pipeline of two neuralNetwork models (innerProduct 4->3, 3->2)
expected.json holds what coremltools reports for each (get_spec() of
MLModel(path, skip_model_load=True)).
"""
import json
import os
import shutil
import sys
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import coremltools as ct  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402
from coremltools.models import datatypes  # noqa: E402
from coremltools.models.neural_network import NeuralNetworkBuilder  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "models", "coreml")
rng = np.random.default_rng(7)


def metadata(m, name):
    m.author = "pomme fixtures"
    m.license = "MIT OR Apache-2.0"
    m.version = "1.2.3"
    m.short_description = f"pomme test fixture: {name}"
    m.user_defined_metadata["fixture"] = name
    m.user_defined_metadata["generator"] = "scripts/make_coreml_fixtures.py"


def save(m, name):
    path = os.path.join(OUT, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    m.save(path)
    return path


def nn_dense():
    b = NeuralNetworkBuilder(
        [("x", datatypes.Array(4))], [("probs", datatypes.Array(3))], disable_rank5_shape_mapping=True
    )
    w = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    b.add_inner_product("fc", W=w, b=bias, input_channels=4, output_channels=3, has_bias=True,
                        input_name="x", output_name="h")
    b.add_activation("relu", "RELU", "h", "r")
    b.add_softmax("softmax", "r", "probs")
    m = ct.models.MLModel(b.spec, skip_model_load=True)
    metadata(m, "nn_dense")
    m.input_description["x"] = "four features"
    m.output_description["probs"] = "class probabilities"
    return save(m, "nn_dense.mlmodel")


def pipeline():
    def stage(inp, n_in, out, n_out, name):
        b = NeuralNetworkBuilder([(inp, datatypes.Array(n_in))], [(out, datatypes.Array(n_out))],
                                 disable_rank5_shape_mapping=True)
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        b.add_inner_product(name, W=w, b=None, input_channels=n_in, output_channels=n_out,
                            has_bias=False, input_name=inp, output_name=out)
        return b.spec

    p = ct.models.pipeline.Pipeline(input_features=[("x", datatypes.Array(4))],
                                    output_features=[("y", datatypes.Array(2))])
    p.add_model(stage("x", 4, "h", 3, "fc1"))
    p.add_model(stage("h", 3, "y", 2, "fc2"))
    m = ct.models.MLModel(p.spec, skip_model_load=True)
    metadata(m, "pipeline")
    return save(m, "pipeline.mlmodel")


def program(fn, inputs, name, target=ct.target.macOS13, precision=ct.precision.FLOAT16):
    m = ct.convert(fn, convert_to="mlprogram", inputs=inputs, minimum_deployment_target=target,
                   compute_precision=precision, skip_model_load=True)
    metadata(m, name.split(".")[0])
    return save(m, name)


def mlp_program():
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((4, 16)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.macOS13)
    def prog(x):
        h = mb.linear(x=x, weight=w1, bias=b1)
        h = mb.relu(x=h)
        return mb.linear(x=h, weight=w2, bias=b2, name="y")

    return program(prog, None, "mlp_program.mlpackage")


def conv_prog(shape):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.macOS13)
    def prog(x):
        h = mb.conv(x=x, weight=w, pad_type="same")
        return mb.relu(x=h, name="y")

    return prog


def enumerated():
    shapes = [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)]
    prog = conv_prog((ct.converters.mil.mil.get_new_symbol(), 3, 8, 8))
    inputs = [ct.TensorType(name="x", shape=ct.EnumeratedShapes(shapes=shapes, default=shapes[0]))]
    return program(prog, inputs, "enumerated.mlpackage")


def ranged():
    w = rng.standard_normal((5, 3)).astype(np.float32)
    b0, s = ct.converters.mil.mil.get_new_symbol(), ct.converters.mil.mil.get_new_symbol()

    @mb.program(input_specs=[mb.TensorSpec(shape=(b0, 3, s))], opset_version=ct.target.macOS13)
    def prog(x):
        h = mb.transpose(x=x, perm=[0, 2, 1])
        h = mb.linear(x=h, weight=w)
        return mb.tanh(x=h, name="y")

    inputs = [ct.TensorType(name="x", shape=ct.Shape(shape=(ct.RangeDim(1, 8, default=1), 3,
                                                             ct.RangeDim(4, 64, default=16))))]
    return program(prog, inputs, "range.mlpackage")


ARRAY_TYPES = {65568: "FLOAT32", 65600: "DOUBLE", 131104: "INT32", 131080: "INT8", 65552: "FLOAT16", 0: "INVALID_ARRAY_DATA_TYPE"}


def feature(f):
    t = f.type
    kind = t.WhichOneof("Type")
    d = {"name": f.name, "description": f.shortDescription, "kind": kind.replace("Type", ""),
         "optional": t.isOptional}
    if kind == "multiArrayType":
        a = t.multiArrayType
        d["data_type"] = ARRAY_TYPES[a.dataType]
        d["shape"] = list(a.shape)
        flex = a.WhichOneof("ShapeFlexibility")
        if flex == "enumeratedShapes":
            d["flexibility"] = {"kind": "enumerated", "shapes": [list(s.shape) for s in a.enumeratedShapes.shapes]}
        elif flex == "shapeRange":
            d["flexibility"] = {"kind": "range", "shapes": [
                {"lower": r.lowerBound, "upper": (r.upperBound if r.upperBound >= 0 else None)}
                for r in a.shapeRange.sizeRanges]}
        else:
            d["flexibility"] = {"kind": "fixed"}
    return d


def weight_bytes(path):
    wdir = os.path.join(path, "Data", "com.apple.CoreML", "weights")
    if not os.path.isdir(wdir):
        return None
    return sum(os.path.getsize(os.path.join(wdir, f)) for f in os.listdir(wdir))


def op_histogram(spec):
    hist = {}
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        def walk(block):
            for op in block.operations:
                hist[op.type] = hist.get(op.type, 0) + 1
                for b in op.blocks:
                    walk(b)
        for f in spec.mlProgram.functions.values():
            walk(f.block_specializations[f.opset])
    elif kind == "neuralNetwork":
        for layer in spec.neuralNetwork.layers:
            k = layer.WhichOneof("layer")
            hist[k] = hist.get(k, 0) + 1
    elif kind == "pipeline":
        for sub in spec.pipeline.models:
            for k, v in op_histogram(sub).items():
                hist[k] = hist.get(k, 0) + v
    return hist


def nn_weight_bytes(spec):
    kind = spec.WhichOneof("Type")
    if kind == "pipeline":
        return sum(nn_weight_bytes(s) for s in spec.pipeline.models)
    if kind != "neuralNetwork":
        return 0
    total = 0
    for layer in spec.neuralNetwork.layers:
        params = getattr(layer, layer.WhichOneof("layer"))
        for field, value in params.ListFields():
            if field.message_type is not None and field.message_type.name == "WeightParams":
                total += 4 * len(value.floatValue) + len(value.float16Value) + len(value.rawValue) \
                    + len(value.int8RawValue)
    return total


def describe(path):
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    md = spec.description.metadata
    return {
        "specification_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "metadata": {"short_description": md.shortDescription, "version": md.versionString,
                     "author": md.author, "license": md.license,
                     "user_defined": dict(md.userDefined)},
        "op_histogram": op_histogram(spec),
        "weight_bytes": weight_bytes(path) if os.path.isdir(path) else nn_weight_bytes(spec),
        "sub_models": [s.WhichOneof("Type") for s in spec.pipeline.models]
        if spec.WhichOneof("Type") == "pipeline" else [],
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    paths = [nn_dense(), pipeline(), mlp_program(), enumerated(), ranged()]
    expected = {os.path.basename(p): describe(p) for p in paths}
    expected["_generator"] = f"scripts/make_coreml_fixtures.py, coremltools {ct.__version__}"
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
