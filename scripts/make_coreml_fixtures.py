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
  image_classifier.mlpackage  mlProgram classifier: BGR 8x8 image input (scale 1/255), string
                          labels cat/dog/bird; outputs classLabel (string) + classLabel_probs (dict)
  nn_classifier.mlmodel   neuralNetworkClassifier: GRAYSCALE 4x4 image input, int64 labels 10/20/30
  stateful.mlpackage      mlProgram (macOS 15): fp16 state `acc` (ct.StateType), y = acc += x
  multifunction.mlpackage mlProgram (macOS 15), functions `double` (x [1,4]) and `triple`
                          (x [1,8]), default `double`
  int64_mapping.mlmodel   categoricalMapping: Int64 scalar input -> String scalar output
expected.json holds what coremltools reports for each (get_spec() of
MLModel(path, skip_model_load=True)).

`--large DIR` also writes mobilenet_v2_fp16.mlpackage (an fp16 ML Program with
MobileNetV2's layers and parameter count, random weights, ~7 MB) and its
expected.json into DIR (not committed; tests/reader_fixtures.rs reads
models/coreml/large/ and skips the check when it is absent):

    /tmp/ctvenv/bin/python scripts/make_coreml_fixtures.py --large models/coreml/large
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


def image_classifier():
    w = rng.standard_normal((3, 3 * 8 * 8)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.macOS13)
    def prog(image):
        h = mb.reshape(x=image, shape=[1, 3 * 8 * 8])
        h = mb.linear(x=h, weight=w)
        return mb.softmax(x=h, axis=-1, name="probs")

    m = ct.convert(prog, convert_to="mlprogram",
                   inputs=[ct.ImageType(name="image", shape=(1, 3, 8, 8),
                                        color_layout=ct.colorlayout.BGR, scale=1 / 255.0)],
                   classifier_config=ct.ClassifierConfig(["cat", "dog", "bird"]),
                   minimum_deployment_target=ct.target.macOS13, skip_model_load=True)
    metadata(m, "image_classifier")
    return save(m, "image_classifier.mlpackage")


def nn_classifier():
    b = NeuralNetworkBuilder([("image", datatypes.Array(1, 4, 4))], [("probs", datatypes.Array(3))],
                             mode="classifier", disable_rank5_shape_mapping=True)
    w = rng.standard_normal((3, 16)).astype(np.float32)
    b.add_flatten_to_2d("flat", "image", "flat", axis=1)
    b.add_inner_product("fc", W=w, b=None, input_channels=16, output_channels=3, has_bias=False,
                        input_name="flat", output_name="logits")
    b.add_softmax("softmax", "logits", "probs")
    b.set_class_labels([10, 20, 30], predicted_feature_name="label", prediction_blob="probs")
    spec = b.spec
    img = spec.description.input[0].type.imageType
    img.width, img.height = 4, 4
    img.colorSpace = ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    spec.specificationVersion = 4
    m = ct.models.MLModel(spec, skip_model_load=True)
    metadata(m, "nn_classifier")
    return save(m, "nn_classifier.mlmodel")


def stateful():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4)),
                             mb.StateTensorSpec(shape=(1, 4), dtype=types.fp16)],
                opset_version=ct.target.macOS15)
    def prog(x, acc):
        s = mb.add(x=mb.read_state(input=acc), y=mb.cast(x=x, dtype="fp16"))
        mb.coreml_update_state(state=acc, value=s)
        return mb.cast(x=s, dtype="fp32", name="y")

    return program(prog, None, "stateful.mlpackage", target=ct.target.macOS15)


def multifunction():
    import tempfile

    def part(k, n, tmp):
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, n))], opset_version=ct.target.macOS15)
        def prog(x):
            return mb.mul(x=x, y=np.float32(k), name="y")

        m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.macOS15,
                       skip_model_load=True)
        path = os.path.join(tmp, f"f{k}.mlpackage")
        m.save(path)
        return path

    with tempfile.TemporaryDirectory() as tmp:
        d = ct.utils.MultiFunctionDescriptor()
        d.add_function(part(2, 4, tmp), src_function_name="main", target_function_name="double")
        d.add_function(part(3, 8, tmp), src_function_name="main", target_function_name="triple")
        d.default_function_name = "double"
        joined = os.path.join(tmp, "multifunction.mlpackage")
        ct.utils.save_multifunction(d, joined)
        m = ct.models.MLModel(joined, skip_model_load=True)
        metadata(m, "multifunction")
        return save(m, "multifunction.mlpackage")


def int64_mapping():
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.specificationVersion = 1
    i = spec.description.input.add()
    i.name = "code"
    i.type.int64Type.SetInParent()
    o = spec.description.output.add()
    o.name = "name"
    o.type.stringType.SetInParent()
    for k, v in [(1, "one"), (2, "two"), (3, "three")]:
        spec.categoricalMapping.int64ToStringMap.map[k] = v
    spec.categoricalMapping.strValue = "unknown"
    m = ct.models.MLModel(spec, skip_model_load=True)
    metadata(m, "int64_mapping")
    m.input_description["code"] = "an integer code"
    return save(m, "int64_mapping.mlmodel")


def mobilenet_v2(out_dir):
    """MobileNetV2 (width 1.0, 224x224, batch norm folded into conv biases) with random weights."""
    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 224, 224))], opset_version=ct.target.macOS13)
    def prog(x):
        def conv(h, cin, cout, k, stride=1, groups=1, act=True):
            h = mb.conv(x=h, weight=w(cout, cin // groups, k, k), bias=w(cout),
                        strides=[stride, stride], pad_type="same", groups=groups)
            return mb.clip(x=h, alpha=0.0, beta=6.0) if act else h

        h = conv(x, 3, 32, 3, 2)
        cin = 32
        for t, c, n, s in cfg:
            for i in range(n):
                hidden = cin * t
                y = h if t == 1 else conv(h, cin, hidden, 1)
                y = conv(y, hidden, hidden, 3, s if i == 0 else 1, groups=hidden)
                y = conv(y, hidden, c, 1, act=False)
                h = mb.add(x=h, y=y) if (i > 0 or s == 1) and cin == c else y
                cin = c
        h = conv(h, cin, 1280, 1)
        h = mb.reduce_mean(x=h, axes=[2, 3], keep_dims=False)
        return mb.linear(x=h, weight=w(1000, 1280), bias=w(1000), name="logits")

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13,
                   compute_precision=ct.precision.FLOAT16, skip_model_load=True)
    metadata(m, "mobilenet_v2_fp16")
    path = os.path.join(out_dir, "mobilenet_v2_fp16.mlpackage")
    if os.path.isdir(path):
        shutil.rmtree(path)
    m.save(path)
    return path


ARRAY_TYPES = {65568: "FLOAT32", 65600: "DOUBLE", 131104: "INT32", 131080: "INT8", 65552: "FLOAT16", 0: "INVALID_ARRAY_DATA_TYPE"}


def feature(f):
    t = f.type
    kind = t.WhichOneof("Type")
    d = {"name": f.name, "description": f.shortDescription, "kind": kind.replace("Type", ""),
         "optional": t.isOptional, "data_type": "", "shape": [], "flexibility": {"kind": "fixed"}}
    if kind == "imageType":
        img = t.imageType
        d["data_type"] = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
        d["shape"] = [img.height, img.width]
        flex = img.WhichOneof("SizeFlexibility")
        if flex == "enumeratedSizes":
            d["flexibility"] = {"kind": "enumerated",
                                "shapes": [[s.height, s.width] for s in img.enumeratedSizes.sizes]}
        elif flex == "imageSizeRange":
            r = img.imageSizeRange
            d["flexibility"] = {"kind": "range", "shapes": [
                {"lower": x.lowerBound, "upper": (x.upperBound if x.upperBound >= 0 else None)}
                for x in (r.heightRange, r.widthRange)]}
    if kind in ("multiArrayType", "stateType"):
        a = t.multiArrayType if kind == "multiArrayType" else t.stateType.arrayType
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


NN_KINDS = ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor")


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
    elif kind in NN_KINDS:
        for layer in getattr(spec, kind).layers:
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
    if kind not in NN_KINDS:
        return 0
    total = 0
    for layer in getattr(spec, kind).layers:
        params = getattr(layer, layer.WhichOneof("layer"))
        for field, value in params.ListFields():
            if field.message_type is not None and field.message_type.name == "WeightParams":
                total += 4 * len(value.floatValue) + len(value.float16Value) + len(value.rawValue) \
                    + len(value.int8RawValue)
    return total


def class_labels(spec):
    """The labels as coremltools stored them: NN classifier fields or the ML Program's classify op."""
    kind = spec.WhichOneof("Type")
    if kind == "neuralNetworkClassifier":
        nn = spec.neuralNetworkClassifier
        which = nn.WhichOneof("ClassLabels")
        if which == "stringClassLabels":
            return {"kind": "string", "labels": list(nn.stringClassLabels.vector)}
        if which == "int64ClassLabels":
            return {"kind": "int64", "labels": list(nn.int64ClassLabels.vector)}
    if kind == "mlProgram":
        for f in spec.mlProgram.functions.values():
            for op in f.block_specializations[f.opset].operations:
                if op.type != "classify":
                    continue
                vals = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                tensors = [v.immediateValue.tensor for v in vals]
                if all(t.WhichOneof("value") == "strings" for t in tensors):
                    return {"kind": "string", "labels": [t.strings.values[0] for t in tensors]}
                return {"kind": "int64", "labels": [
                    (t.longInts.values[0] if t.WhichOneof("value") == "longInts" else t.ints.values[0])
                    for t in tensors]}
    if kind == "pipelineClassifier":
        for sub in reversed(spec.pipelineClassifier.pipeline.models):
            found = class_labels(sub)
            if found:
                return found
    return None


def describe(path):
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    md = spec.description.metadata
    d = spec.description
    return {
        "states": [feature(f) for f in d.state],
        "functions": [{"name": f.name, "inputs": [feature(x) for x in f.input],
                       "outputs": [feature(x) for x in f.output],
                       "states": [feature(x) for x in f.state]} for f in d.functions],
        "default_function": d.defaultFunctionName,
        "predicted_feature": d.predictedFeatureName,
        "probabilities_feature": d.predictedProbabilitiesName,
        "class_labels": class_labels(spec),
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


def write_expected(out_dir, paths):
    expected = {os.path.basename(p): describe(p) for p in paths}
    expected["_generator"] = f"scripts/make_coreml_fixtures.py, coremltools {ct.__version__}"
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")
    for p in paths:
        print(p)


def main(argv):
    if len(argv) == 2 and argv[0] == "--large":
        os.makedirs(argv[1], exist_ok=True)
        write_expected(argv[1], [mobilenet_v2(argv[1])])
        return 0
    if argv:
        print("usage: make_coreml_fixtures.py [--large DIR]", file=sys.stderr)
        return 2
    os.makedirs(OUT, exist_ok=True)
    paths = [nn_dense(), pipeline(), mlp_program(), enumerated(), ranged(), image_classifier(),
             nn_classifier(), stateful(), multifunction(), int64_mapping()]
    write_expected(OUT, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
