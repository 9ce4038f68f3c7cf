#!/usr/bin/env python3
"""Writes the broken model fixtures under models/bad/ that pomme's backends must
reject with a clear error. Needs the `onnx` package (see .venv).

    .venv/bin/python scripts/make_bad_models.py

Files (all tiny, deterministic):
  empty.onnx            0 bytes
  truncated.onnx        the first 100 bytes of models/add_one.onnx
  random.onnx           256 pseudo-random bytes (fixed seed), not a protobuf
  unsupported_op.onnx   a valid model using two operators no engine implements:
                        PommeFrobnicate and PommeTwiddle (domain com.pomme.test)
  no_input_shape.onnx   y = x + 1 where input x declares a type but no shape
"""

import pathlib
import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BAD = MODELS / "bad"


def save(model: onnx.ModelProto, name: str) -> None:
    path = BAD / name
    path.write_bytes(model.SerializeToString())
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


def main() -> None:
    BAD.mkdir(parents=True, exist_ok=True)

    (BAD / "empty.onnx").write_bytes(b"")
    (BAD / "truncated.onnx").write_bytes((MODELS / "add_one.onnx").read_bytes()[:100])
    rng = random.Random(20261122)
    (BAD / "random.onnx").write_bytes(bytes(rng.randrange(256) for _ in range(256)))

    opset = [helper.make_opsetid("", 17), helper.make_opsetid("com.pomme.test", 1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [
            helper.make_node("PommeFrobnicate", ["x"], ["t"], domain="com.pomme.test"),
            helper.make_node("Relu", ["t"], ["u"]),
            helper.make_node("PommeTwiddle", ["u"], ["y"], domain="com.pomme.test"),
        ],
        "unsupported_op",
        [x],
        [y],
    )
    model = helper.make_model(graph, opset_imports=opset, producer_name="make_bad_models.py")
    model.ir_version = 8
    save(model, "unsupported_op.onnx")

    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "no_input_shape", [x], [y], [one]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_bad_models.py"
    )
    model.ir_version = 8
    save(model, "no_input_shape.onnx")


if __name__ == "__main__":
    main()
